//! The status page for people: a table rendered by the module (readable without JavaScript),
//! refreshed every few seconds from the JSON, with a chart of requests per server over the last
//! minutes and, where the location has `control`, buttons per server. No external assets: the
//! style and the script are inline, and the reply's Content-Security-Policy allows exactly
//! those two (by their SHA-256) and requests to this location.

use std::fmt::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{ServerRow, UpstreamRow};

const STYLE: &str = r##"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2433; background: #fafbfc; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .3em; }
.summary, .note { color: #556; margin: .2em 0 .6em; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { padding: .35em .6em; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
td.name, th.name, td.addr { text-align: left; }
.state { display: inline-block; min-width: 6em; text-align: center; border-radius: 3px; padding: 0 .4em; color: #fff; }
.s-up { background: #2e8540; } .s-backup { background: #4a77b4; } .s-draining { background: #d88b00; }
.s-down { background: #b3261e; } .s-failed { background: #7a1f1a; } .s-unresolved { background: #777; }
.s-unhealthy { background: #8e24aa; }
form { display: inline; margin: 0; }
button { font: inherit; font-size: .9em; margin: 0 .1em; padding: .1em .5em; cursor: pointer; }
input.weight { width: 4.5em; font: inherit; font-size: .9em; }
canvas { background: #fff; box-shadow: 0 1px 2px #0002; margin-top: .4em; }
.legend span { margin-right: 1em; white-space: nowrap; }
.legend i { display: inline-block; width: .8em; height: .8em; margin-right: .3em; border-radius: 2px; }
#message { min-height: 1.4em; color: #1d4ed8; }
tr.misrouted td { background: #fdecea; }
.mark { display: inline-block; margin-left: .4em; padding: 0 .3em; border-radius: 3px; background: #b3261e; color: #fff; font-size: .85em; }
"##;

const SCRIPT: &str = r##"
"use strict";
const COLORS = ["#1d4ed8", "#b45309", "#15803d", "#b91c1c", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f"];
const POINTS = 100;
const history = new Map();
let last = null;

function cell(row, name) { return row.querySelector("[data-field='" + name + "']"); }

function setText(element, text) { if (element) { element.textContent = String(text); } }

function update(data) {
  const now = Date.now();
  document.querySelectorAll("section.upstream").forEach((section, u) => {
    const upstream = data.upstreams[u];
    if (!upstream) { return; }
    setText(section.querySelector(".summary"), "requests with session " + upstream.requests_with_session +
      ", without session " + upstream.requests_without_session + ", unknown routes " + upstream.unknown_routes);
    section.querySelectorAll("tbody tr").forEach((row, i) => {
      const s = upstream.servers[i];
      if (!s) { return; }
      const state = cell(row, "state");
      if (state) { state.textContent = s.state; state.className = "state s-" + s.state; }
      setText(cell(row, "addresses"), s.peers.map((p) => p.address).join(", ") || "(none)");
      for (const f of ["weight", "active", "requests", "hits", "failovers_from", "failovers_to", "failures", "route_mismatch", "route_missing"]) {
        setText(cell(row, f), s[f]);
      }
      setText(cell(row, "check"), s.peers.filter((p) => p.check).map((p) => p.check.state + (p.check.last_error !== "-" ? " (" + p.check.last_error + ")" : "")).join(", ") || "-");
      setText(cell(row, "share"), s.requests ? Math.round(100 * s.hits / s.requests) + "%" : "-");
      const key = upstream.name + "\u0000" + i;
      const series = history.get(key) || { label: upstream.name + " " + (s.srun_id || s.server), points: [] };
      if (last) {
        const before = last.upstreams[u] && last.upstreams[u].servers[i];
        const seconds = (now - last.time) / 1000;
        if (before && seconds > 0) { series.points.push(Math.max(0, (s.requests - before.requests) / seconds)); }
        if (series.points.length > POINTS) { series.points.shift(); }
      }
      history.set(key, series);
    });
  });
  last = { time: now, upstreams: data.upstreams };
  draw();
}

function draw() {
  const canvas = document.getElementById("chart");
  const legend = document.getElementById("legend");
  if (!canvas || !canvas.getContext) { return; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  let max = 1;
  history.forEach((s) => s.points.forEach((p) => { max = Math.max(max, p); }));
  g.strokeStyle = "#e3e6ea"; g.fillStyle = "#556"; g.font = "11px sans-serif";
  for (let k = 0; k <= 4; k++) {
    const y = canvas.height - 18 - k * (canvas.height - 30) / 4;
    g.beginPath(); g.moveTo(40, y); g.lineTo(canvas.width, y); g.stroke();
    g.fillText((max * k / 4).toFixed(max < 8 ? 1 : 0), 2, y + 4);
  }
  g.fillText("requests/s, last " + Math.round(POINTS * 3 / 60) + " minutes", 44, canvas.height - 4);
  legend.textContent = "";
  let n = 0;
  history.forEach((s) => {
    const color = COLORS[n++ % COLORS.length];
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    s.points.forEach((p, i) => {
      const x = 40 + (canvas.width - 44) * (i + POINTS - s.points.length) / (POINTS - 1);
      const y = canvas.height - 18 - (canvas.height - 30) * p / max;
      if (i === 0) { g.moveTo(x, y); } else { g.lineTo(x, y); }
    });
    g.stroke();
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, s.label);
    legend.append(item);
  });
}

async function refresh() {
  try {
    const reply = await fetch(location.pathname + "?format=json", { cache: "no-store" });
    if (reply.ok) { update(await reply.json()); }
  } catch (e) { /* the next refresh tries again */ }
}

document.querySelectorAll("form.control").forEach((form) => {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form, event.submitter));
    // Not form.action: the form has controls named "action", which shadow that property.
    const reply = await fetch(form.getAttribute("action"), { method: "POST", body, cache: "no-store" });
    setText(document.getElementById("message"), (await reply.text()).trim());
    refresh();
  });
});
refresh();
setInterval(refresh, 3000);
"##;

/// `'sha256-...'` of an inline block, as a Content-Security-Policy source.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The page's Content-Security-Policy: its own style and script, requests to itself.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; \
             form-action 'self'; img-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            csp_hash(STYLE),
            csp_hash(SCRIPT)
        )
    })
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page. `control_path`: where the buttons post (this location), if it has `control`.
pub(super) fn page(
    rows: &[UpstreamRow],
    control_path: Option<&str>,
    state_file: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>jvm_route status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>jvm_route status</h1>\n\
         <p class=\"note\">Sticky sessions by Java session id. This page refreshes itself every \
         3 seconds; without JavaScript, reload it.</p>\n<p id=\"message\"></p>\n"
    );
    for upstream in rows {
        let _ = write!(
            out,
            "<section class=\"upstream\">\n<h2>upstream {}</h2>\n<p class=\"summary\">requests \
             with session {}, without session {}, unknown routes {}</p>\n<table>\n<thead><tr>\
             <th class=\"name\">srun_id</th><th class=\"name\">server</th>\
             <th class=\"name\">addresses</th><th>state</th><th>weight</th><th>active</th>\
             <th>requests</th><th>hits</th><th>sticky</th><th>failovers from</th>\
             <th>failovers to</th><th>failures</th><th>route mismatch</th>\
             <th>route missing</th><th class=\"name\">check</th>{}</tr></thead>\n<tbody>\n",
            escape(&upstream.name),
            upstream.with_session,
            upstream.without_session,
            upstream.unknown_routes,
            if control_path.is_some() { "<th class=\"name\">control</th>" } else { "" }
        );
        for server in &upstream.servers {
            row(&mut out, &upstream.name, server, control_path);
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }
    let _ = write!(
        out,
        "<p class=\"note\">{}</p>\n<h2>Requests per server</h2>\n<canvas id=\"chart\" width=\"760\" height=\"220\"></canvas>\n\
         <p class=\"legend\" id=\"legend\"></p>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        escape(&super::render::state_note(state_file))
    );
    out
}

fn row(out: &mut String, upstream: &str, s: &ServerRow, control_path: Option<&str>) {
    let [requests, hits, from, to, failures, mismatch, missing] = s.counters;
    let addresses: Vec<&str> = s.peers.iter().map(|p| p.address.as_str()).collect();
    let share = (hits * 100).checked_div(requests).map_or("-".to_string(), |p| format!("{p}%"));
    // A server whose session ids do not name its srun_id: its sessions do not stick.
    let (class, mark) = if mismatch + missing > 0 {
        (
            " class=\"misrouted\"",
            "<span class=\"mark\" title=\"its session ids do not name its srun_id: see the \
             error log\">route?</span>",
        )
    } else {
        ("", "")
    };
    let _ = write!(
        out,
        "<tr{class}><td class=\"name\">{}{mark}</td><td class=\"name\">{}</td>\
         <td class=\"addr\" data-field=\"addresses\">{}</td>\
         <td><span class=\"state s-{state}\" data-field=\"state\">{state}</span>{ramp}</td>\
         <td data-field=\"weight\">{}</td><td data-field=\"active\">{}</td>\
         <td data-field=\"requests\">{requests}</td><td data-field=\"hits\">{hits}</td>\
         <td data-field=\"share\">{share}</td><td data-field=\"failovers_from\">{from}</td>\
         <td data-field=\"failovers_to\">{to}</td><td data-field=\"failures\">{failures}</td>\
         <td data-field=\"route_mismatch\">{mismatch}</td>\
         <td data-field=\"route_missing\">{missing}</td>\
         <td class=\"name\" data-field=\"check\">{}</td>",
        escape(if s.srun_id.is_empty() { "-" } else { &s.srun_id }),
        escape(&s.server),
        if addresses.is_empty() { "(none)".to_string() } else { escape(&addresses.join(", ")) },
        s.weight,
        s.active(),
        escape(&super::render::check_text(s)),
        state = s.state,
        ramp = match s.ramp {
            Some((share, _)) => format!(
                " <span class=\"note\" data-field=\"slow_start\">starting {}%</span>",
                share / 10
            ),
            None => String::new(),
        },
    );
    if let Some(path) = control_path {
        out.push_str("<td class=\"name\">");
        if !s.srun_id.is_empty() {
            let hidden = format!(
                "<input type=\"hidden\" name=\"upstream\" value=\"{}\">\
                 <input type=\"hidden\" name=\"srun_id\" value=\"{}\">",
                escape(upstream),
                escape(&s.srun_id)
            );
            let _ = write!(
                out,
                "<form class=\"control\" method=\"post\" action=\"{path}\">{hidden}\
                 <button name=\"action\" value=\"drain\">drain</button>\
                 <button name=\"action\" value=\"undrain\">undrain</button>\
                 <button name=\"action\" value=\"down\">down</button>\
                 <button name=\"action\" value=\"up\">up</button></form>\
                 <form class=\"control\" method=\"post\" action=\"{path}\">{hidden}\
                 <input type=\"hidden\" name=\"action\" value=\"weight\">\
                 <input class=\"weight\" type=\"number\" name=\"value\" min=\"1\" max=\"1000\" \
                 value=\"{}\" aria-label=\"weight\"><button>set weight</button></form>",
                s.weight,
                path = escape(path)
            );
        }
        out.push_str("</td>");
    }
    out.push_str("</tr>\n");
}

/// Whether a request's `Accept` header asks for HTML by name (a browser), not only through
/// `*/*` (curl, scrapers).
pub fn prefers_html(accept: &[u8]) -> bool {
    accept.split(|&b| b == b',').any(|range| {
        let mut parts = range.split(|&b| b == b';');
        let media = parts.next().unwrap_or_default().trim_ascii();
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            p.len() >= 2
                && p[..2].eq_ignore_ascii_case(b"q=")
                && std::str::from_utf8(&p[2..]).ok().and_then(|q| q.parse::<f32>().ok())
                    == Some(0.0)
        });
        (media.eq_ignore_ascii_case(b"text/html")
            || media.eq_ignore_ascii_case(b"application/xhtml+xml"))
            && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_everywhere() {
        let hostile = "<a href=\"x\">&'";
        assert_eq!(escape(hostile), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let rows = vec![UpstreamRow {
            name: "u<".into(),
            with_session: 1,
            without_session: 2,
            unknown_routes: 3,
            servers: vec![ServerRow {
                srun_id: hostile.into(),
                server: "s\"".into(),
                state: "up",
                weight: 1,
                configured_weight: 1,
                peers: vec![],
                counters: [4, 2, 0, 0, 0, 1, 0],
                ramp: None,
            }],
        }];
        let html = page(&rows, Some("/c\"x"), Some("/var/lib/<x>/state"));
        assert!(html.contains("saved in /var/lib/&lt;x&gt;/state"), "{html}");
        assert!(!html.contains(hostile));
        assert!(!html.contains("u<"));
        assert!(html.contains("&lt;a href=&quot;x&quot;&gt;&amp;&#39;"));
        assert!(html.contains("action=\"/c&quot;x\""));
        assert!(html.contains(">50%<"));
        // A server with a route mismatch is marked.
        assert_eq!(html.matches("<tr class=\"misrouted\">").count(), 1);
        assert!(html.contains("data-field=\"route_mismatch\">1<"));
    }

    #[test]
    fn browsers_get_html_and_curl_gets_text() {
        assert!(prefers_html(b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
        assert!(prefers_html(b"TEXT/HTML"));
        assert!(!prefers_html(b"*/*"));
        assert!(!prefers_html(b"text/plain"));
        assert!(!prefers_html(b"application/json"));
        assert!(!prefers_html(b"text/html;q=0, */*"));
    }

    #[test]
    fn the_policy_names_the_blocks_of_the_rendered_page() {
        // The <style> and <script> text as the browser gets it, taken from the page itself,
        // hashed by the RustCrypto SHA-256 and checked against the policy.
        let page = page(&[], Some("/c"), None);
        let between = |open: &str, close: &str| {
            let start = page.find(open).map(|i| i + open.len()).expect("block in the page");
            let end = page[start..].find(close).expect("block end") + start;
            page[start..end].to_owned()
        };
        let csp = content_security_policy();
        for block in [between("<style>", "</style>"), between("<script>", "</script>")] {
            let digest = Sha256::digest(block.as_bytes());
            let source =
                format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest));
            assert!(csp.contains(&source), "{source} not in {csp}");
        }
        assert_eq!(page.matches("<script").count(), 1, "one inline script, no other");
        assert!(!csp.contains("unsafe-inline"));
        // A known vector: SHA-256 of the empty string, base64.
        assert_eq!(csp_hash(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }
}
