//! The `jvm_route_status` location: the state and counters of every server of the upstreams
//! with `jvm_route`, as text for people (default), JSON (`?format=json`) or Prometheus text
//! exposition (`?format=prometheus`); and, with `control`, runtime drain/undrain/down/up by
//! upstream and srun_id (`POST ?upstream=NAME&srun_id=ID&action=drain`).

use std::fmt::Write as _;

use ngx::core::Status;
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_str_t, ngx_time, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_POST,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, Request};

use crate::config::{str_bytes, MainConf, StatusConf, UpstreamConf};
use crate::peers::{self, PeersLock};
use crate::route::PeerList;
use crate::stats::{ServerCounter, Stats, UpstreamCounter, STATE_DOWN, STATE_DRAIN};
use crate::upstream::{self, PeerInfo, PeerRoutes};
use crate::Module;

/// One server (peer) as the status page shows it.
struct ServerRow {
    srun_id: String,
    address: String,
    server: String,
    state: &'static str,
    active: u64,
    counters: [u64; 5],
}

const COUNTERS: [(ServerCounter, &str, &str); 5] = [
    (ServerCounter::Requests, "requests", "Attempts sent to the server, by any path."),
    (ServerCounter::Hits, "hits", "Attempts sent because the session's route named the server."),
    (
        ServerCounter::FailoversFrom,
        "failovers_from",
        "Requests whose route named the server but went to another one.",
    ),
    (
        ServerCounter::FailoversTo,
        "failovers_to",
        "Requests of another server's session that came to this one.",
    ),
    (ServerCounter::Failures, "failures", "Attempts that failed (error, timeout, next upstream)."),
];

/// One upstream as the status page shows it.
struct UpstreamRow {
    name: String,
    with_session: u64,
    without_session: u64,
    unknown_routes: u64,
    servers: Vec<ServerRow>,
}

/// The location's content handler.
///
/// # Safety
/// Called by nginx with a live request whose location has `jvm_route_status`.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: per the function contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let (Some(lcf), Some(main)) = (Module::location_conf(request), Module::main_conf(request))
    else {
        return Status::NGX_ERROR.0;
    };
    let Some(conf) = &lcf.status else { return Status::NGX_ERROR.0 };
    // SAFETY: `r` is live; `args` points into its request line.
    let args = str_bytes(unsafe { &(*r).args });
    // SAFETY: as above.
    let method = unsafe { (*r).method } as u32;

    if method == NGX_HTTP_POST {
        // SAFETY: `r` is live; the body of a control request carries nothing.
        let rc = unsafe { ngx_http_discard_request_body(r) };
        if rc != Status::NGX_OK.0 {
            return rc;
        }
        let (status, body) = control(conf, main, args);
        // SAFETY: `r` is live.
        return unsafe { send(r, status, "text/plain", body.as_bytes(), None) };
    }
    if method != NGX_HTTP_GET && method != NGX_HTTP_HEAD {
        let allow = if conf.control { "GET, HEAD, POST" } else { "GET, HEAD" };
        // SAFETY: `r` is live.
        return unsafe {
            send(r, 405, "text/plain", b"method not allowed\n", Some(("Allow", allow)))
        };
    }

    let rows = collect(conf, main);
    let (content_type, body) = match arg(args, b"format") {
        None | Some(b"text") => ("text/plain", render_text(&rows)),
        Some(b"json") => ("application/json", render_json(&rows)),
        Some(b"prometheus") => ("text/plain; version=0.0.4", render_prometheus(&rows)),
        Some(other) => {
            let body = format!(
                "unknown format \"{}\": use text, json or prometheus\n",
                String::from_utf8_lossy(other)
            );
            // SAFETY: `r` is live.
            return unsafe { send(r, 400, "text/plain", body.as_bytes(), None) };
        }
    };
    // SAFETY: `r` is live.
    unsafe { send(r, 200, content_type, body.as_bytes(), None) }
}

/// The value of `name` in a query string (raw, not percent-decoded).
fn arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    args.split(|&b| b == b'&').find_map(|pair| {
        let rest = pair.strip_prefix(name)?;
        rest.strip_prefix(b"=")
    })
}

/// The upstreams this location shows, with their configuration and view.
fn upstreams<'a>(
    conf: &StatusConf,
    main: &'a MainConf,
) -> impl Iterator<Item = (&'a ngx_http_upstream_srv_conf_t, &'a UpstreamConf)> + 'a {
    let only = conf.upstream.clone();
    main.upstreams.iter().filter_map(move |&uscf| {
        // SAFETY: the upstream configurations live as long as the cycle.
        let uscf = unsafe { &*uscf };
        let ucf = Module::server_conf(uscf)?;
        only.as_deref().is_none_or(|name| str_bytes(&uscf.host) == name).then_some((uscf, ucf))
    })
}

fn collect(conf: &StatusConf, main: &MainConf) -> Vec<UpstreamRow> {
    let stats = main.stats();
    let now = ngx_time();
    upstreams(conf, main)
        .map(|(uscf, ucf)| {
            let count = |c| stats.as_ref().map_or(0, |s| s.upstream(ucf.index, c));
            let mut row = UpstreamRow {
                name: String::from_utf8_lossy(str_bytes(&uscf.host)).into_owned(),
                with_session: count(UpstreamCounter::WithSession),
                without_session: count(UpstreamCounter::WithoutSession),
                unknown_routes: count(UpstreamCounter::UnknownRoute),
                servers: Vec::new(),
            };
            if let Some(routes) = upstream::current(ucf, uscf) {
                if let Some(stats) = &stats {
                    routes.apply_marks(stats);
                }
                for list in [PeerList::Primary, PeerList::Backup] {
                    for info in routes.list(list) {
                        row.servers.push(server_row(routes, info, list, stats.as_ref(), now));
                    }
                }
            }
            row
        })
        .collect()
}

fn server_row(
    routes: &PeerRoutes,
    info: &PeerInfo,
    list: PeerList,
    stats: Option<&Stats>,
    now: ngx::ffi::time_t,
) -> ServerRow {
    let peers_list = match list {
        PeerList::Primary => routes.list,
        // SAFETY: `routes.list` is the upstream's valid primary list.
        PeerList::Backup => unsafe { (*routes.list).next },
    };
    // SAFETY: the list holds the peer and is valid for the cycle; read under its read lock.
    let _lock = unsafe { PeersLock::read(peers_list) };
    // SAFETY: as above.
    let peer = unsafe { &*info.peer };
    let marks = info.slot.zip(stats).map_or(0, |(slot, s)| s.state(slot));
    let state = if info.config_down || marks & STATE_DOWN != 0 {
        "down"
    } else if marks & STATE_DRAIN != 0
        || (info.slot.is_none() && peer.down != 0 && !peers::is_down(peer))
    {
        "draining"
    } else if info.slot.is_none() && peer.down != 0 {
        "down"
    } else if peers::is_failed(peer, now) {
        "failed"
    } else if list == PeerList::Backup {
        "backup"
    } else {
        "up"
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ServerRow {
        srun_id: info.srun_id.as_deref().map(lossy).unwrap_or_default(),
        address: lossy(str_bytes(&peer.name)),
        server: lossy(str_bytes(&peer.server)),
        state,
        active: peer.conns as u64,
        counters: COUNTERS
            .map(|(c, _, _)| info.slot.zip(stats).map_or(0, |(slot, s)| s.server(slot, c))),
    }
}

fn render_text(rows: &[UpstreamRow]) -> String {
    let mut out = String::new();
    for u in rows {
        let _ = writeln!(
            out,
            "upstream {}: requests with session {}, without session {}, unknown routes {}",
            u.name, u.with_session, u.without_session, u.unknown_routes
        );
        let _ = writeln!(
            out,
            "  {:<16} {:<24} {:<9} {:>6} {:>9} {:>9} {:>14} {:>12} {:>8}",
            "srun_id",
            "address",
            "state",
            "active",
            "requests",
            "hits",
            "failovers_from",
            "failovers_to",
            "failures"
        );
        for s in &u.servers {
            let srun_id = if s.srun_id.is_empty() { "-" } else { &s.srun_id };
            let [requests, hits, from, to, failures] = s.counters;
            let _ = writeln!(
                out,
                "  {:<16} {:<24} {:<9} {:>6} {:>9} {:>9} {:>14} {:>12} {:>8}",
                srun_id, s.address, s.state, s.active, requests, hits, from, to, failures
            );
        }
    }
    out
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

fn render_json(rows: &[UpstreamRow]) -> String {
    let upstreams: Vec<String> = rows
        .iter()
        .map(|u| {
            let servers: Vec<String> = u
                .servers
                .iter()
                .map(|s| {
                    let counters: Vec<String> = COUNTERS
                        .iter()
                        .zip(s.counters)
                        .map(|((_, name, _), v)| format!("\"{name}\":{v}"))
                        .collect();
                    format!(
                        "{{\"srun_id\":{},\"address\":{},\"server\":{},\"state\":\"{}\",\"active\":{},{}}}",
                        json_string(&s.srun_id),
                        json_string(&s.address),
                        json_string(&s.server),
                        s.state,
                        s.active,
                        counters.join(",")
                    )
                })
                .collect();
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
    format!("{{\"upstreams\":[{}]}}\n", upstreams.join(","))
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render_prometheus(rows: &[UpstreamRow]) -> String {
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
            label(&s.address)
        )
    };
    for (i, (_, name, help)) in COUNTERS.iter().enumerate() {
        let _ = writeln!(out, "# HELP jvm_route_server_{name}_total {help}");
        let _ = writeln!(out, "# TYPE jvm_route_server_{name}_total counter");
        for u in rows {
            for s in &u.servers {
                let _ = writeln!(
                    out,
                    "jvm_route_server_{name}_total{{{}}} {}",
                    labels(u, s),
                    s.counters[i]
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP jvm_route_server_active_connections Connections open to the server now."
    );
    let _ = writeln!(out, "# TYPE jvm_route_server_active_connections gauge");
    for u in rows {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "jvm_route_server_active_connections{{{}}} {}",
                labels(u, s),
                s.active
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP jvm_route_server_state The server's state: 1 for the state it is in."
    );
    let _ = writeln!(out, "# TYPE jvm_route_server_state gauge");
    for u in rows {
        for s in &u.servers {
            for state in ["up", "down", "draining", "failed", "backup"] {
                let _ = writeln!(
                    out,
                    "jvm_route_server_state{{{},state=\"{state}\"}} {}",
                    labels(u, s),
                    u8::from(s.state == state)
                );
            }
        }
    }
    out
}

/// A control request: `upstream=NAME&srun_id=ID&action=drain|undrain|down|up`.
fn control(conf: &StatusConf, main: &MainConf, args: &[u8]) -> (usize, String) {
    if !conf.control {
        return (403, "control is not enabled here: use \"jvm_route_status control;\"\n".into());
    }
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (Some(upstream_name), Some(srun_id), Some(action)) =
        (arg(args, b"upstream"), arg(args, b"srun_id"), arg(args, b"action"))
    else {
        return (400, "give upstream=NAME&srun_id=ID&action=drain|undrain|down|up\n".into());
    };
    let (set, clear, word) = match action {
        b"drain" => (STATE_DRAIN, 0, "draining"),
        b"undrain" => (0, STATE_DRAIN, "not draining"),
        b"down" => (STATE_DOWN, 0, "down"),
        b"up" => (0, STATE_DOWN, "up"),
        other => {
            return (
                400,
                format!("unknown action \"{}\": use drain, undrain, down or up\n", lossy(other)),
            );
        }
    };
    let Some(stats) = main.stats() else {
        return (500, "no statistics zone\n".into());
    };
    let Some((uscf, ucf)) =
        upstreams(conf, main).find(|(u, _)| str_bytes(&u.host) == upstream_name)
    else {
        return (404, format!("no upstream \"{}\" with jvm_route here\n", lossy(upstream_name)));
    };
    let Some(routes) = upstream::current(ucf, uscf) else {
        return (500, "the upstream has no peers\n".into());
    };
    let slots: Vec<usize> = routes
        .primary
        .iter()
        .chain(&routes.backup)
        .filter(|info| info.srun_id.as_deref() == Some(srun_id))
        .filter_map(|info| info.slot)
        .collect();
    if slots.is_empty() {
        return (
            404,
            format!(
                "no server with srun_id \"{}\" in upstream \"{}\"\n",
                lossy(srun_id),
                lossy(upstream_name)
            ),
        );
    }
    for &slot in &slots {
        stats.set_state(slot, set, clear);
    }
    routes.apply_marks(&stats);
    (200, format!("{} in {}: {word}\n", lossy(srun_id), lossy(upstream_name)))
}

/// Sends a complete response.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
unsafe fn send(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    body: &[u8],
    header: Option<(&str, &str)>,
) -> ngx_int_t {
    // SAFETY: per the function contract; the buffer comes from the request pool.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = status;
        out.content_type =
            ngx_str_t { len: content_type.len(), data: content_type.as_ptr().cast_mut() };
        out.content_type_len = content_type.len();
        out.content_length_n = body.len() as _;
        if let Some((name, value)) = header {
            let request = Request::from_ngx_http_request(r);
            if request.add_header_out(name, value).is_none() {
                return Status::NGX_ERROR.0;
            }
        }
        let rc = ngx_http_send_header(r);
        if rc == Status::NGX_ERROR.0 || rc > Status::NGX_OK.0 || (*r).header_only() != 0 {
            return rc;
        }
        let buf: *mut ngx_buf_t = ngx_create_temp_buf((*r).pool, body.len().max(1));
        if buf.is_null() {
            return Status::NGX_ERROR.0;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), (*buf).pos, body.len());
        (*buf).last = (*buf).pos.add(body.len());
        (*buf).set_last_buf(u32::from((*r).main == r));
        (*buf).set_last_in_chain(1);
        let mut chain = ngx_chain_t { buf, next: std::ptr::null_mut() };
        ngx_http_output_filter(r, &mut chain)
    }
}
