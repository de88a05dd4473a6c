//! The status page's three formats. Every name is escaped for the format it goes into.

use std::fmt::Write as _;

use super::{ServerRow, UpstreamRow, COUNTERS};

/// Text for people: one line per server line, its addresses comma-separated.
pub(super) fn text(rows: &[UpstreamRow], state_file: Option<&str>) -> String {
    let mut out = String::new();
    for u in rows {
        let _ = writeln!(
            out,
            "upstream {}: requests with session {}, without session {}, unknown routes {}",
            u.name, u.with_session, u.without_session, u.unknown_routes
        );
        let _ = writeln!(
            out,
            "  {:<16} {:<24} {:<10} {:>6} {:>6} {:>9} {:>9} {:>14} {:>12} {:>8} {:>14} {:>13}  {:<10}  check",
            "srun_id",
            "address",
            "state",
            "weight",
            "active",
            "requests",
            "hits",
            "failovers_from",
            "failovers_to",
            "failures",
            "route_mismatch",
            "route_missing",
            "slow_start",
        );
        for s in &u.servers {
            let srun_id = if s.srun_id.is_empty() { "-" } else { &s.srun_id };
            let addresses: Vec<&str> = s.peers.iter().map(|p| p.address.as_str()).collect();
            let address = if addresses.is_empty() { s.server.clone() } else { addresses.join(",") };
            let [requests, hits, from, to, failures, mismatch, missing] = s.counters;
            let _ = writeln!(
                out,
                "  {:<16} {:<24} {:<10} {:>6} {:>6} {:>9} {:>9} {:>14} {:>12} {:>8} {:>14} {:>13}  {:<10}  {}",
                srun_id,
                address,
                s.state,
                s.weight,
                s.active(),
                requests,
                hits,
                from,
                to,
                failures,
                mismatch,
                missing,
                ramp_text(s),
                check_text(s)
            );
        }
    }
    out.push_str(&state_note(state_file));
    out.push('\n');
    out
}

/// Whether the runtime marks are kept across restarts, and where (`jvm_route_state`): a line
/// of the text format and a note of the HTML page.
pub(super) fn state_note(state_file: Option<&str>) -> String {
    match state_file {
        Some(path) => format!("runtime marks are saved in {path} (jvm_route_state)"),
        None => "runtime marks are not saved across restarts (no jvm_route_state)".into(),
    }
}

/// A slow start under way: the share of its weight the line has, and the seconds left
/// (`35% 6.5s`); `-` otherwise.
pub(super) fn ramp_text(s: &ServerRow) -> String {
    match s.ramp {
        Some((share, left)) => format!("{}% {:.1}s", share / 10, left as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The text format's check column: each address's check state, and why its last check failed
/// (`-` without `check`).
pub(super) fn check_text(s: &ServerRow) -> String {
    let parts: Vec<String> = s
        .peers
        .iter()
        .filter_map(|p| p.check)
        .map(|c| {
            if c.error == 0 {
                c.state().to_string()
            } else {
                format!("{} ({})", c.state(), c.error())
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_server(s: &ServerRow) -> String {
    let counters: Vec<String> = COUNTERS
        .iter()
        .zip(s.counters)
        .map(|((_, name, _), v)| format!("\"{name}\":{v}"))
        .collect();
    let peers: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            let check = p.check.map_or("null".to_string(), |c| {
                format!(
                    "{{\"state\":\"{}\",\"passes\":{},\"fails\":{},\"last_check_age\":{},\"last_error\":{},\"checks\":{}}}",
                    c.state(),
                    c.passes,
                    c.fails,
                    c.age.map_or("null".to_string(), |a| a.to_string()),
                    json_string(&c.error()),
                    c.checks
                )
            });
            format!(
                "{{\"address\":{},\"state\":\"{}\",\"active\":{},\"check\":{check}}}",
                json_string(&p.address),
                p.state,
                p.active
            )
        })
        .collect();
    let ramp = s.ramp.map_or("null".to_string(), |(share, left)| {
        format!("{{\"share\":{:.3},\"left\":{:.1}}}", share as f64 / 1000.0, left as f64 / 1000.0)
    });
    format!(
        "{{\"srun_id\":{},\"server\":{},\"address\":{},\"state\":\"{}\",\"weight\":{},\"configured_weight\":{},\"active\":{},{},\"slow_start\":{ramp},\"peers\":[{}]}}",
        json_string(&s.srun_id),
        json_string(&s.server),
        json_string(s.address()),
        s.state,
        s.weight,
        s.configured_weight,
        s.active(),
        counters.join(","),
        peers.join(",")
    )
}

/// JSON: upstreams, each with its server lines, each with its current addresses (`peers`).
pub(super) fn json(rows: &[UpstreamRow], state_file: Option<&str>) -> String {
    let upstreams: Vec<String> = rows
        .iter()
        .map(|u| {
            let servers: Vec<String> = u.servers.iter().map(json_server).collect();
            format!(
                "{{\"name\":{},\"requests_with_session\":{},\"requests_without_session\":{},\"unknown_routes\":{},\"servers\":[{}]}}",
                json_string(&u.name),
                u.with_session,
                u.without_session,
                u.unknown_routes,
                servers.join(",")
            )
        })
        .collect();
    // Whether the runtime marks are kept across restarts, and where.
    let state_file = state_file.map_or("null".to_string(), json_string);
    format!("{{\"upstreams\":[{}],\"state_file\":{state_file}}}\n", upstreams.join(","))
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The states a server line can be in, for the state gauge.
const STATES: [&str; 7] = ["up", "down", "draining", "failed", "backup", "unresolved", "unhealthy"];

/// Prometheus text exposition: one series per server line, labelled with its configured name.
pub(super) fn prometheus(rows: &[UpstreamRow], _state_file: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP jvm_route_upstream_requests_total Requests balanced by jvm_route, by whether they carried a session id.");
    let _ = writeln!(out, "# TYPE jvm_route_upstream_requests_total counter");
    for u in rows {
        for (session, v) in [("yes", u.with_session), ("no", u.without_session)] {
            let _ = writeln!(
                out,
                "jvm_route_upstream_requests_total{{upstream=\"{}\",session=\"{session}\"}} {v}",
                label(&u.name)
            );
        }
    }
    let _ = writeln!(out, "# HELP jvm_route_unknown_routes_total Requests whose session ids named no route of the upstream.");
    let _ = writeln!(out, "# TYPE jvm_route_unknown_routes_total counter");
    for u in rows {
        let _ = writeln!(
            out,
            "jvm_route_unknown_routes_total{{upstream=\"{}\"}} {}",
            label(&u.name),
            u.unknown_routes
        );
    }
    let labels = |u: &UpstreamRow, s: &ServerRow| {
        format!(
            "upstream=\"{}\",srun_id=\"{}\",server=\"{}\"",
            label(&u.name),
            label(&s.srun_id),
            label(&s.server)
        )
    };
    // One series per server line: its name, type, help and value.
    let mut series = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ServerRow) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for u in rows {
            for s in &u.servers {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(u, s), value(s));
            }
        }
    };
    for (i, (_, name, help)) in COUNTERS.iter().enumerate() {
        series(&format!("jvm_route_server_{name}_total"), "counter", help, &|s| s.counters[i]);
    }
    series(
        "jvm_route_server_active_connections",
        "gauge",
        "Connections open to the server's addresses now.",
        &|s| s.active(),
    );
    series(
        "jvm_route_server_slow_start_share",
        "gauge",
        "The share of its weight a server starting slowly has now, per mille (1000: not starting).",
        &|s| s.ramp.map_or(1000, |(share, _)| share),
    );
    series(
        "jvm_route_server_weight",
        "gauge",
        "The server's weight in force (set at run time, or configured).",
        &|s| s.weight,
    );
    let _ = writeln!(
        out,
        "# HELP jvm_route_server_state The server's state: 1 for the state it is in."
    );
    let _ = writeln!(out, "# TYPE jvm_route_server_state gauge");
    for u in rows {
        for s in &u.servers {
            for state in STATES {
                let _ = writeln!(
                    out,
                    "jvm_route_server_state{{{},state=\"{state}\"}} {}",
                    labels(u, s),
                    u8::from(s.state == state)
                );
            }
        }
    }
    // Per checked address.
    let checked = |f: &dyn Fn(&super::CheckRow) -> u64,
                   name: &str,
                   kind: &str,
                   help: &str,
                   out: &mut String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for u in rows {
            for s in &u.servers {
                for p in &s.peers {
                    if let Some(c) = &p.check {
                        let _ = writeln!(
                            out,
                            "{name}{{{},address=\"{}\"}} {}",
                            labels(u, s),
                            label(&p.address),
                            f(c)
                        );
                    }
                }
            }
        }
    };
    checked(
        &|c| u64::from(!c.down),
        "jvm_route_check_up",
        "gauge",
        "1 if the address passes its active checks, 0 if they took it out.",
        &mut out,
    );
    checked(
        &|c| c.checks,
        "jvm_route_check_total",
        "counter",
        "Active checks of the address.",
        &mut out,
    );
    checked(
        &|c| u64::from(c.fails),
        "jvm_route_check_consecutive_fails",
        "gauge",
        "Active checks of the address that failed in a row.",
        &mut out,
    );
    checked(
        &|c| u64::from(c.passes),
        "jvm_route_check_consecutive_passes",
        "gauge",
        "Active checks of the address that passed in a row.",
        &mut out,
    );
    out
}
