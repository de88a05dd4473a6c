//! The `jvm_route_status` location: the state and counters of every server line of the
//! upstreams with `jvm_route`, as text for people (default), JSON (`?format=json`) or
//! Prometheus text exposition (`?format=prometheus`), or a page for people (`?format=html`, and
//! the default for browsers); and, with `control`, runtime drain/undrain/down/up and weight by
//! upstream and srun_id (`POST ?upstream=NAME&srun_id=ID&action=drain`).
//!
//! A row is a `server` line: its counters and marks are the line's, and it lists the line's
//! current addresses (a name can have several, and a `resolve` server's change at run time).

mod control;
mod form;
mod html;
mod origin;
mod render;

use std::collections::HashMap;

use ngx::core::Status;
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_str_t, ngx_time, time_t, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_POST,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, Request};

use crate::conf::{server_name, servers, upstream_name, MainConf, StatusConf, UpstreamConf};
use crate::ffi::{self, bytes, lossy, str_bytes};
use crate::rules::marks::State;
use crate::rules::route::PeerList;
use crate::worker::{self, View};
use crate::zone::{ServerCounter, UpstreamCounter};
use crate::Module;

/// One address of a server line.
struct PeerRow {
    address: String,
    state: &'static str,
    active: u64,
}

/// One server line as the status page shows it.
struct ServerRow {
    srun_id: String,
    server: String,
    state: &'static str,
    /// The weight in force: set at run time, or as configured.
    weight: u64,
    configured_weight: u64,
    peers: Vec<PeerRow>,
    counters: [u64; 5],
}

impl ServerRow {
    /// The first address, or empty while a `resolve` server has none.
    fn address(&self) -> &str {
        self.peers.first().map_or("", |p| &p.address)
    }

    /// Connections open to the line's addresses.
    fn active(&self) -> u64 {
        self.peers.iter().map(|p| p.active).sum()
    }
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
    // SAFETY: as above.
    let method = unsafe { (*r).method } as u32;
    if method == NGX_HTTP_POST && conf.control {
        // SAFETY: `r` is live and its location has `jvm_route_status`.
        if let Some(rc) = unsafe { control::read_form(r) } {
            return rc;
        }
    }
    // Whatever the method, a body is read and dropped before answering, so that it is never
    // taken for the next request on the connection.
    // SAFETY: `r` is live.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    // SAFETY: `r` is live; `args` points into its request line.
    let args = unsafe { bytes((*r).args) };

    if method == NGX_HTTP_POST {
        // SAFETY: `r` is live.
        return unsafe { control::respond(r, conf, main, &[]) };
    }
    if method != NGX_HTTP_GET && method != NGX_HTTP_HEAD {
        let allow = if conf.control { "GET, HEAD, POST" } else { "GET, HEAD" };
        // SAFETY: `r` is live.
        return unsafe { send(r, 405, "text/plain", b"method not allowed\n", &[("Allow", allow)]) };
    }

    let rows = collect(conf, main);
    // SAFETY: `r` is live.
    let browser = unsafe { control::header(r, b"accept") }.is_some_and(html::prefers_html);
    let format = arg(args, b"format").or(browser.then_some(&b"html"[..]));
    if format == Some(b"html") {
        // SAFETY: `r` is live; its URI is this location's path.
        let path = conf.control.then(|| lossy(unsafe { bytes((*r).uri) }));
        let body = html::page(&rows, path.as_deref());
        let headers = [
            ("Content-Security-Policy", html::content_security_policy()),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
        ];
        // SAFETY: `r` is live.
        return unsafe { send(r, 200, "text/html; charset=utf-8", body.as_bytes(), &headers) };
    }
    let (content_type, body) = match format {
        None | Some(b"text") => ("text/plain", render::text(&rows)),
        Some(b"json") => ("application/json", render::json(&rows)),
        Some(b"prometheus") => ("text/plain; version=0.0.4", render::prometheus(&rows)),
        Some(other) => {
            let body = format!(
                "unknown format \"{}\": use text, json, prometheus or html\n",
                lossy(other)
            );
            // SAFETY: `r` is live.
            return unsafe { send(r, 400, "text/plain", body.as_bytes(), &[]) };
        }
    };
    // SAFETY: `r` is live.
    unsafe { send(r, 200, content_type, body.as_bytes(), &[]) }
}

/// The value of `name` in a query string (raw, not percent-decoded).
fn arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    args.split(|&b| b == b'&').find_map(|pair| {
        let rest = pair.strip_prefix(name)?;
        rest.strip_prefix(b"=")
    })
}

/// The upstreams this location shows, with their configuration.
pub(super) fn upstreams<'a>(
    conf: &StatusConf,
    main: &'a MainConf,
) -> impl Iterator<Item = (&'a ngx_http_upstream_srv_conf_t, &'a UpstreamConf)> + 'a {
    let only = conf.upstream.clone();
    main.upstreams.iter().filter_map(move |&uscf| {
        // SAFETY: the upstream configurations live as long as the cycle.
        let uscf = unsafe { &*uscf };
        let ucf = Module::server_conf(uscf)?;
        // SAFETY: as above.
        let name = unsafe { upstream_name(uscf) };
        only.as_deref().is_none_or(|only| name == only).then_some((uscf, ucf))
    })
}

fn collect(conf: &StatusConf, main: &MainConf) -> Vec<UpstreamRow> {
    let stats = main.stats();
    let now = ngx_time();
    upstreams(conf, main)
        .map(|(uscf, ucf)| {
            let count = |c| stats.as_ref().map_or(0, |s| s.upstream(ucf.index, c));
            // SAFETY: `uscf` is nginx's.
            let (name, lines) = unsafe { (upstream_name(uscf), servers(uscf)) };
            // A resolver in another worker may change the peers between the view's check and
            // the snapshot: then the view is rebuilt and read again.
            let mut peers: Vec<(u32, PeerSnapshot)> = Vec::new();
            for _ in 0..4 {
                // SAFETY: the view is used in this iteration only, before the next call.
                let Some(view) = (unsafe { worker::current(ucf, uscf) }) else { break };
                if let Some(stats) = &stats {
                    view.apply_marks(stats);
                }
                if let Some(read) = snapshot(view, now) {
                    peers = read;
                    break;
                }
            }
            // One pass over the peers: each line's, in order.
            let mut rows_of: HashMap<u32, Vec<PeerSnapshot>> = HashMap::new();
            for (line, peer) in peers {
                rows_of.entry(line).or_default().push(peer);
            }
            let servers = lines
                .iter()
                .enumerate()
                .map(|(line, server)| {
                    let slot = ucf.slot_base + line;
                    let marked = stats.as_ref().map(|s| s.effective(slot));
                    let rows = rows_of.get(&(line as u32)).map_or_else(Vec::new, |peers| {
                        peers.iter().map(|p| p.row()).collect::<Vec<PeerRow>>()
                    });
                    let state = if server.down != 0 || marked == Some(State::Down) {
                        "down"
                    } else if marked == Some(State::Draining) {
                        "draining"
                    } else if rows.is_empty() {
                        "unresolved"
                    } else if rows.iter().all(|p| p.state == "failed") {
                        "failed"
                    } else if server.backup() != 0 {
                        "backup"
                    } else {
                        "up"
                    };
                    ServerRow {
                        srun_id: lossy(ucf.srun_id(line).unwrap_or_default()),
                        // SAFETY: `server` is nginx's.
                        server: lossy(unsafe { server_name(server) }),
                        state,
                        weight: stats
                            .as_ref()
                            .and_then(|s| s.weight(slot))
                            .unwrap_or(server.weight as u64),
                        configured_weight: server.weight as u64,
                        peers: rows,
                        counters: COUNTERS
                            .map(|(c, _, _)| stats.as_ref().map_or(0, |s| s.server(slot, c))),
                    }
                })
                .collect();
            UpstreamRow {
                name: lossy(name),
                with_session: count(UpstreamCounter::WithSession),
                without_session: count(UpstreamCounter::WithoutSession),
                unknown_routes: count(UpstreamCounter::UnknownRoute),
                servers,
            }
        })
        .collect()
}

/// The longest address kept (nginx's own `NGX_SOCKADDR_STRLEN` is shorter).
const ADDRESS_LEN: usize = 128;

/// One peer as read under its list's lock: plain values, no allocation.
struct PeerSnapshot {
    address: [u8; ADDRESS_LEN],
    address_len: usize,
    state: &'static str,
    active: u64,
}

impl PeerSnapshot {
    fn row(&self) -> PeerRow {
        PeerRow {
            address: lossy(&self.address[..self.address_len]),
            state: self.state,
            active: self.active,
        }
    }
}

/// Every placed peer of the view with its server line, read under the lists' locks into room
/// allocated before they are taken. None if the lists changed since the view was built.
fn snapshot(view: &View, now: time_t) -> Option<Vec<(u32, PeerSnapshot)>> {
    let mut out = Vec::with_capacity(view.primary.len() + view.backup.len());
    for (kind, list) in [(PeerList::Primary, view.list), (PeerList::Backup, view.backup_list())] {
        if list.is_null() {
            continue;
        }
        // SAFETY: `list` is one of the view's lists.
        let _lock = unsafe { view.lock(list, false, None) }?;
        for info in view.peers(kind) {
            let Some(line) = info.line else { continue };
            let peer = info.peer;
            // SAFETY: the peer belongs to the read-locked list, at the view's generation. Other
            // workers write its `conns`, `fails` and `checked` under the read lock and the
            // peer's own lock: those are read through the raw pointer, never by a reference to
            // the peer. The name is written only when the peer is made.
            let (name, failed, active) = unsafe {
                let failed = ffi::is_failed_raw(peer, now);
                (str_bytes(&(*peer).name), failed, (&raw const (*peer).conns).read_volatile())
            };
            let mut address = [0u8; ADDRESS_LEN];
            let address_len = name.len().min(ADDRESS_LEN);
            address[..address_len].copy_from_slice(&name[..address_len]);
            // The line's state in the same words as the line's row; a peer of a line that is up
            // may have failed.
            let state = match info.slot.and_then(|slot| view.stats.map(|s| s.effective(slot))) {
                Some(State::Down) => "down",
                Some(State::Draining) => "draining",
                _ if info.config_down => "down",
                _ if failed => "failed",
                _ => "up",
            };
            out.push((line, PeerSnapshot { address, address_len, state, active: active as u64 }));
        }
    }
    Some(out)
}

/// Sends a complete response.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub(super) unsafe fn send(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> ngx_int_t {
    // SAFETY: per the function contract; the buffer comes from the request pool.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = status;
        out.content_type =
            ngx_str_t { len: content_type.len(), data: content_type.as_ptr().cast_mut() };
        out.content_type_len = content_type.len();
        out.content_length_n = body.len() as _;
        // State changes with every request: no cache may keep a reply.
        for (name, value) in [("Cache-Control", "no-store")].iter().chain(headers) {
            if ffi::push_header(r, name, value.as_bytes()).is_none() {
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
