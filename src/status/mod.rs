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
    ngx_int_t, ngx_str_t, ngx_time, time_t, NGX_HTTP_FLUSH, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_LAST, NGX_HTTP_POST,
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
    check: Option<CheckRow>,
}

/// What the active checks say of one address.
#[derive(Clone, Copy)]
struct CheckRow {
    /// Out by its checks.
    down: bool,
    /// Consecutive passes and failures.
    passes: u32,
    fails: u32,
    /// Seconds since its last check ended (None: never checked yet).
    age: Option<u64>,
    /// Why the last check failed ([`rules::check::error`](crate::rules::check::error)).
    error: u64,
    /// Checks done.
    checks: u64,
}

impl CheckRow {
    fn state(&self) -> &'static str {
        if self.down {
            "down"
        } else {
            "up"
        }
    }

    fn error(&self) -> String {
        crate::rules::check::error::describe(self.error)
    }
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
    counters: [u64; 7],
    /// A slow start under way: the share of its full weight the line has (per mille) and the
    /// ms left.
    ramp: Option<(u64, u64)>,
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

const COUNTERS: [(ServerCounter, &str, &str); 7] = [
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
    (
        ServerCounter::RouteMismatch,
        "route_mismatch",
        "Responses whose session cookie named another route than the server's srun_id.",
    ),
    (
        ServerCounter::RouteMissing,
        "route_missing",
        "Responses whose session cookie named no route.",
    ),
];

/// One upstream as the status page shows it.
struct UpstreamRow {
    name: String,
    with_session: u64,
    without_session: u64,
    unknown_routes: u64,
    servers: Vec<ServerRow>,
}

/// Content types of the replies: every one names its charset.
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The longest form body read; a longer one is refused (413) as soon as it passes this size,
/// while it is read. Control arguments are short.
pub const MAX_FORM: usize = 4096;

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
    if method == NGX_HTTP_POST {
        // SAFETY: `r` is live.
        return unsafe { control::respond(r, conf, main, None) };
    }
    // SAFETY: `r` is live.
    if let Some((status, text)) = unsafe { refusal(r, conf, false) } {
        // SAFETY: `r` is live.
        return unsafe { send(r, status, TEXT, text.as_bytes(), &[]) };
    }
    if method != NGX_HTTP_GET && method != NGX_HTTP_HEAD {
        let allow = if conf.control { "GET, HEAD, POST" } else { "GET, HEAD" };
        // SAFETY: `r` is live.
        return unsafe { send(r, 405, TEXT, b"method not allowed\n", &[("Allow", allow)]) };
    }

    // SAFETY: `r` is live; `args` points into its request line.
    let args = unsafe { bytes((*r).args) };
    // SAFETY: `r` is live.
    let browser = unsafe { control::header(r, b"accept") }.is_some_and(html::prefers_html);
    let format = arg(args, b"format").or(conf.default_format).or(browser.then_some(&b"html"[..]));
    let head = method == NGX_HTTP_HEAD;
    if format == Some(b"html") {
        // The forms post back to this location, by the path as the client wrote it (still
        // percent-encoded: a decoded `?` or `#` would become a query or a fragment).
        // SAFETY: `r` is live.
        let path = match conf.control.then(|| unsafe { raw_path(r) }) {
            None => None,
            Some(Some(path)) => Some(path),
            // SAFETY: `r` is live.
            Some(None) => return unsafe { bad_path(r) },
        };
        let headers = [
            ("Content-Security-Policy", html::content_security_policy()),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
        ];
        let body = if head {
            String::new()
        } else {
            html::page(&collect(conf, main), path, state_file(main).as_deref())
        };
        // SAFETY: `r` is live.
        return unsafe { send(r, 200, HTML, body.as_bytes(), &headers) };
    }
    let (content_type, render): (_, Renderer) = match format {
        None | Some(b"text") => (TEXT, render::text),
        Some(b"json") => (JSON, render::json),
        Some(b"prometheus") => (PROMETHEUS, render::prometheus),
        Some(other) => {
            let body = format!(
                "unknown format \"{}\": use text, json, prometheus or html\n",
                lossy(other)
            );
            // SAFETY: `r` is live.
            return unsafe { send(r, 400, TEXT, body.as_bytes(), &[]) };
        }
    };
    // HEAD: the headers only, nothing rendered.
    let body = if head {
        String::new()
    } else {
        render(&collect(conf, main), state_file(main).as_deref())
    };
    // SAFETY: `r` is live.
    unsafe { send(r, 200, content_type, body.as_bytes(), &[]) }
}

/// A format of the page: the rows, and the state file (`jvm_route_state`) if there is one.
type Renderer = fn(&[UpstreamRow], Option<&str>) -> String;

/// Where the runtime marks are kept across restarts (`jvm_route_state`), if they are.
fn state_file(main: &MainConf) -> Option<String> {
    main.state_file.as_ref().map(|p| p.display().to_string())
}

/// The request's path as the client sent it, before percent-decoding, without the query; None
/// if it has a byte that may not stand in a header or an attribute as it is (controls, spaces,
/// non-ASCII), which a path nginx accepted never has unencoded but for those.
///
/// # Safety
/// `r` must be a live request.
pub(super) unsafe fn raw_path<'r>(r: *mut ngx_http_request_t) -> Option<&'r str> {
    // SAFETY: per the function contract: the request line lives as long as the request.
    let raw = unsafe { bytes((*r).unparsed_uri) };
    let path = raw.split(|&b| b == b'?').next().unwrap_or_default();
    if !path.starts_with(b"/") || !path.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    std::str::from_utf8(path).ok()
}

/// The answer to a path that [`raw_path`] refuses.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub(super) unsafe fn bad_path(r: *mut ngx_http_request_t) -> ngx_int_t {
    let text = b"the path has characters that must be percent-encoded\n";
    // SAFETY: per the function contract.
    unsafe { send(r, 400, TEXT, text, &[]) }
}

/// A request that must not be answered, and why: a control request (`control`), or any
/// request that a browser marks as such (`Origin`, `Sec-Fetch-*`), whose `Host` is a name that
/// is not this server's (DNS rebinding: [`origin::host_allowed`]; the server's exact names were
/// copied into `conf` with the configuration).
///
/// # Safety
/// `r` must be a live request.
pub(super) unsafe fn refusal(
    r: *mut ngx_http_request_t,
    conf: &StatusConf,
    control: bool,
) -> Option<(usize, &'static str)> {
    // SAFETY: per the function contract.
    let browser =
        unsafe { control::header(r, b"origin").is_some() || control::has_fetch_metadata(r) };
    if !control && !browser {
        return None;
    }
    // SAFETY: as above; nginx keeps the validated, lower-case host without its port here.
    let host = unsafe { bytes((*r).headers_in.server) };
    if origin::host_allowed(host, &conf.server_names) {
        return None;
    }
    Some((
        421,
        "refused: the Host names neither this server (server_name) nor an address; nothing was \
         changed\n",
    ))
}

/// The request's scheme.
///
/// # Safety
/// `r` must be a live request.
pub(super) unsafe fn scheme(r: *mut ngx_http_request_t) -> &'static [u8] {
    // SAFETY: per the function contract.
    if unsafe { (*(*r).connection).ssl.is_null() } {
        b"http"
    } else {
        b"https"
    }
}

/// Installs [`body_limit`] in nginx's request body filter chain.
///
/// # Safety
/// Called once per configuration, while nginx builds its filter chains.
pub unsafe fn add_body_limit() {
    // SAFETY: per the function contract.
    unsafe {
        NEXT_REQUEST_BODY_FILTER = ngx::ffi::ngx_http_top_request_body_filter;
        ngx::ffi::ngx_http_top_request_body_filter = Some(body_limit);
    }
}

static mut NEXT_REQUEST_BODY_FILTER: ngx::ffi::ngx_http_request_body_filter_pt = None;

/// A request body filter: a form body of a `jvm_route_status` location is refused (413) as soon
/// as what was read of it passes [`MAX_FORM`], chunked or not, before the rest is read.
unsafe extern "C" fn body_limit(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the buffers just read; `request_body` is set
    // while a body is read, and its saved buffers are a chain of the request pool.
    unsafe {
        let request = Request::from_ngx_http_request(r);
        let ours = Module::location_conf(request).is_some_and(|l| l.status.is_some());
        if ours && !(*r).request_body.is_null() {
            let size = |mut cl: *mut ngx_chain_t| {
                let mut n = 0usize;
                while !cl.is_null() {
                    let b = (*cl).buf;
                    if !b.is_null() && (*b).in_file() == 0 && !(*b).pos.is_null() {
                        n += (*b).last.offset_from((*b).pos).max(0) as usize;
                    } else if !b.is_null() && (*b).in_file() != 0 {
                        n += MAX_FORM + 1;
                    }
                    cl = (*cl).next;
                }
                n
            };
            if size((*(*r).request_body).bufs) + size(chain) > MAX_FORM {
                return 413;
            }
        }
        match *std::ptr::addr_of!(NEXT_REQUEST_BODY_FILTER) {
            Some(next) => next(r, chain),
            None => Status::NGX_ERROR.0,
        }
    }
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
                    let unhealthy =
                        !rows.is_empty() && rows.iter().all(|p| p.check.is_some_and(|c| c.down));
                    let state = if server.down != 0 || marked == Some(State::Down) {
                        "down"
                    } else if unhealthy {
                        "unhealthy"
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
                        ramp: stats.as_ref().and_then(|s| s.ramp(slot, crate::check::now())),
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
    check: Option<CheckRow>,
}

impl PeerSnapshot {
    fn row(&self) -> PeerRow {
        PeerRow {
            address: lossy(&self.address[..self.address_len]),
            state: self.state,
            active: self.active,
            check: self.check,
        }
    }
}

/// Every placed peer of the view with its server line, read under the lists' locks into room
/// allocated before they are taken. None if the lists changed since the view was built.
fn snapshot(view: &View, now: time_t) -> Option<Vec<(u32, PeerSnapshot)>> {
    let mut out = Vec::with_capacity(view.primary.len() + view.backup.len());
    let wall = crate::check::wall_now();
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
            let check = match (info.slot, view.stats, view.check_default_down) {
                (Some(slot), Some(stats), Some(default_down)) => {
                    crate::check::peer_health(&stats, slot, info.key, default_down).map(
                        |(health, last, error, checks)| CheckRow {
                            down: health.down,
                            passes: health.passes,
                            fails: health.fails,
                            age: (last != 0).then(|| wall.saturating_sub(last) / 1000),
                            error,
                            checks,
                        },
                    )
                }
                _ => None,
            };
            let state = match info.slot.and_then(|slot| view.stats.map(|s| s.effective(slot))) {
                Some(State::Down) => "down",
                _ if info.config_down => "down",
                _ if check.is_some_and(|c| c.down) => "unhealthy",
                Some(State::Draining) => "draining",
                _ if failed => "failed",
                _ => "up",
            };
            out.push((
                line,
                PeerSnapshot { address, address_len, state, active: active as u64, check },
            ));
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
        // State changes with every request: no cache may keep a reply. No reply is to be
        // sniffed as another type; a reply that is not the page runs nothing.
        let own: &[(&str, &str)] = if content_type.starts_with("text/html") {
            &[("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        } else {
            &[
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "default-src 'none'"),
            ]
        };
        for (name, value) in own.iter().chain(headers) {
            if ffi::push_header(r, name, value.as_bytes()).is_none() {
                return Status::NGX_ERROR.0;
            }
        }
        if (*r).method as u32 == NGX_HTTP_HEAD {
            // Nothing was rendered: the length is not known.
            out.content_length_n = -1;
        }
        let rc = ngx_http_send_header(r);
        if rc == Status::NGX_ERROR.0 || rc > Status::NGX_OK.0 || (*r).header_only() != 0 {
            return rc;
        }
        if body.is_empty() {
            // Nothing to send (a HEAD request): the end of the response alone, as nginx's own
            // handlers do (an empty memory buffer is an error to nginx's writer).
            let last = if (*r).main == r { NGX_HTTP_LAST } else { NGX_HTTP_FLUSH };
            return ngx::ffi::ngx_http_send_special(r, last as ngx::ffi::ngx_uint_t);
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
