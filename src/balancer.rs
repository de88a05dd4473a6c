//! The balancer: wraps the upstream's own method (round robin, least_conn, hash, ...) and
//! decides only the sticky case. nginx calls, in order: [`init_upstream`] once per upstream
//! at startup, `init_peer` once per request, then `get` and `free` once per attempt.
//!
//! `init_peer` reads the request's session id and looks up its route; `get` takes a usable peer
//! of that route, or (with `failover=consistent`) the peer the session id hashes to, or leaves
//! the choice to the wrapped method. Every stock method's per-request data begins with round
//! robin's, so the peer is taken in round robin's books and the wrapped `free` settles them.
//! Every attempt is counted in the shared statistics, and the outcome is kept in the request's
//! context for `$jvm_route_status`.

use std::alloc::Layout;
use std::cell::Cell;
use std::ffi::c_void;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_rr_peer_data_t,
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t,
    ngx_pool_cleanup_t, ngx_str_t, ngx_time, ngx_uint_t, NGX_PEER_FAILED,
};
use ngx::http::{HttpModule, HttpModuleServerConf, Request};
use ngx::ngx_log_debug_http;

use crate::config::{str_bytes, str_bytes_for, JvmRoute, SessionSource, UpstreamConf};
use crate::failover::{self, Failover};
use crate::peers::{self, PeersLock};
use crate::route::{
    first_usable, reverse_route, Route, RouteChooser, RouteId, RouteMode, RouteTable, SessionRoute,
};
use crate::session::{named_cookie_values, path_parameter, query_parameter};
use crate::stats::{ServerCounter, UpstreamCounter};
use crate::upstream::{self, PeerInfo, PeerRoutes};
use crate::Module;

/// How many `Cookie` header lines of one request are searched.
const MAX_COOKIE_LINES: usize = 16;

/// What happened to a request, for `$jvm_route_status`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// No session id.
    #[default]
    None = 0,
    /// A session id whose route this upstream does not know.
    Miss,
    /// Sent to the session's server.
    Hit,
    /// The session's server could not take it: sent elsewhere.
    Failover,
    /// The session's server could not take it and `failover=off`: refused with 503.
    Refused,
}

impl Outcome {
    /// The variable's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "NONE",
            Outcome::Miss => "MISS",
            Outcome::Hit => "HIT",
            Outcome::Failover => "FAILOVER",
            Outcome::Refused => "REFUSED",
        }
    }
}

/// Per-request state in the module context: read by the variables and the 503 filter.
#[repr(C)]
pub struct RequestCtx {
    /// What happened, as of the last attempt.
    pub outcome: Outcome,
    flags: u8,
    /// The length of the route within the session id.
    route_len: u32,
    /// The session id that decided: request memory (a Cookie header, the URI, the pool).
    session: ngx_str_t,
}

/// The request was refused (`failover=off`): nginx's 502 becomes a 503.
const REFUSED: u8 = 1;
/// The 503 page has been sent in place of nginx's 502 page.
const PAGE_SENT: u8 = 2;
/// The failover away from the session's route has been counted.
const FAILED_OVER: u8 = 4;
/// The route is the end of the session id (`reverse`), not its start.
const ROUTE_AT_END: u8 = 8;

impl RequestCtx {
    /// The route read from the session id (empty if none).
    pub fn route(&self) -> &[u8] {
        let session = str_bytes(&self.session);
        let len = (self.route_len as usize).min(session.len());
        if self.flags & ROUTE_AT_END != 0 {
            &session[session.len() - len..]
        } else {
            &session[..len]
        }
    }

    /// Whether the request was refused (`failover=off`).
    pub fn refused(&self) -> bool {
        self.flags & REFUSED != 0
    }

    /// Forgets the refusal: the response is not the 502 of a refused request.
    pub fn clear_refused(&mut self) {
        self.flags &= !REFUSED;
    }

    /// Whether the 503 page was sent; marks it sent.
    pub fn take_page_sent(&mut self) -> bool {
        let sent = self.flags & PAGE_SENT != 0;
        self.flags |= PAGE_SENT;
        sent
    }
}

/// The wrapped method's peer callbacks, as its per-request `init` set them.
#[derive(Clone, Copy)]
struct Wrapped {
    get: ngx::ffi::ngx_event_get_peer_pt,
    free: ngx::ffi::ngx_event_free_peer_pt,
    notify: ngx::ffi::ngx_event_notify_peer_pt,
    set_session: ngx::ffi::ngx_event_set_peer_session_pt,
    save_session: ngx::ffi::ngx_event_save_peer_session_pt,
}

/// No route: the session names none of this upstream's.
const NO_ROUTE: RouteId = RouteId::MAX;

/// Everything a request needs. It lives outside the request pool (see [`Spares`]).
#[repr(C)]
struct PeerData {
    /// Round robin's per-request data, when round robin is the wrapped method: its `init`
    /// takes this instead of allocating its own.
    rr: ngx_http_upstream_rr_peer_data_t,
    /// The wrapped method's data and callbacks.
    original_data: *mut c_void,
    wrapped: Wrapped,
    conf: *const UpstreamConf,
    /// The session's route, if it names one of this upstream (else `NO_ROUTE`).
    route: RouteId,
    /// The view the route id and slots refer to.
    stamp: u32,
    /// The module context of the request.
    ctx: RequestCtx,
    /// The next spare, while this one is spare.
    next_spare: *mut PeerData,
    /// The request pool's cleanup record that gives this state back (see [`Spares`]).
    cleanup: ngx_pool_cleanup_t,
}

impl PeerData {
    fn route(&self) -> Option<RouteId> {
        (self.route != NO_ROUTE).then_some(self.route)
    }
}

/// How many spare request states a worker keeps per upstream; more are freed.
const MAX_SPARES: usize = 1024;

/// A worker's spare request states for one upstream. `init_peer` takes one (or allocates it)
/// and links the state's own cleanup record into the request pool, whose destruction gives it
/// back. Keeping the state out of the request pool keeps the pool smaller than with round robin
/// alone (round robin's per-request data is part of the state), so a request that fits in its
/// pool's blocks with round robin fits with this module too.
///
/// The pool reads a cleanup record's `next` after its handler returns, so a state given back
/// must stay allocated until the next one is: when the list is full, the state given back
/// before it is freed, not the state itself.
pub struct Spares {
    head: Cell<*mut PeerData>,
    count: Cell<usize>,
    /// A state given back while the list was full, freed when the next one is given back.
    retired: Cell<*mut PeerData>,
}

impl Default for Spares {
    fn default() -> Self {
        Spares {
            head: Cell::new(std::ptr::null_mut()),
            count: Cell::new(0),
            retired: Cell::new(std::ptr::null_mut()),
        }
    }
}

impl Spares {
    /// A spare state, or a new allocation; null if memory ran out. Its content is undefined.
    fn take(&self) -> *mut PeerData {
        let head = self.head.get();
        if head.is_null() {
            // SAFETY: PeerData has a non-zero size.
            return unsafe { std::alloc::alloc(Layout::new::<PeerData>()) }.cast();
        }
        // SAFETY: a spare is a PeerData allocation whose `next_spare` was written by `give`.
        self.head.set(unsafe { (&raw const (*head).next_spare).read() });
        self.count.set(self.count.get().saturating_sub(1));
        head
    }

    /// Takes a state back. It stays allocated at least until the next call.
    ///
    /// # Safety
    /// `pd` must come from `take` and no longer be used, except for its cleanup record, which
    /// the pool may read until its destruction moves on to the next record.
    unsafe fn give(&self, pd: *mut PeerData) {
        if self.count.get() >= MAX_SPARES {
            let retired = self.retired.replace(pd);
            if !retired.is_null() {
                // SAFETY: `take` allocated it with this layout; the pool whose cleanup gave it
                // back was destroyed before this call (a pool's cleanups run one at a time, and
                // the record of the state before is behind it).
                unsafe { std::alloc::dealloc(retired.cast(), Layout::new::<PeerData>()) };
            }
            return;
        }
        // SAFETY: per the function contract, the state is ours again.
        unsafe { (&raw mut (*pd).next_spare).write(self.head.get()) };
        self.head.set(pd);
        self.count.set(self.count.get() + 1);
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let retired = self.retired.replace(std::ptr::null_mut());
        if !retired.is_null() {
            // SAFETY: as in `give`: no pool refers to it any more.
            unsafe { std::alloc::dealloc(retired.cast(), Layout::new::<PeerData>()) };
        }
        let mut pd = self.head.replace(std::ptr::null_mut());
        while !pd.is_null() {
            // SAFETY: every spare came from `take` and is used by no request; the
            // configuration is destroyed after the requests that used it.
            unsafe {
                let next = (&raw const (*pd).next_spare).read();
                std::alloc::dealloc(pd.cast(), Layout::new::<PeerData>());
                pd = next;
            }
        }
    }
}

/// The request pool's cleanup: the request is over, its state becomes spare.
unsafe extern "C" fn release_state(data: *mut c_void) {
    let pd = data.cast::<PeerData>();
    // SAFETY: `data` is the state taken in `init_peer`, whose `conf` was written before this
    // cleanup was registered; the upstream configuration outlives the worker's requests.
    // Nothing refers to the state any more: the peer connection, the module context and the
    // keepalive module's data all live in the pool being destroyed.
    unsafe {
        let conf = (&raw const (*pd).conf).read();
        (*conf).spares.give(pd);
    }
}

/// `init_upstream` of an upstream with `jvm_route` (or beneath `keepalive`): initialises the
/// wrapped method, then takes its per-request `init`.
///
/// # Safety
/// Called by nginx at startup with valid `cf` and `us`.
pub unsafe extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: per the function contract.
    let us_ref = unsafe { &mut *us };
    let Some(ucf) = Module::server_conf_mut(us_ref) else {
        return Status::NGX_ERROR.0;
    };
    let original = ucf.original_init_upstream.unwrap_or(ngx_http_upstream_init_round_robin);
    // SAFETY: the wrapped method's init with nginx's own arguments.
    let rc = unsafe { original(cf, us) };
    if rc != Status::NGX_OK.0 || ucf.jvm_route.is_none() {
        return rc;
    }
    ucf.original_init_peer = us_ref.peer.init;
    us_ref.peer.init = Some(init_peer);
    Status::NGX_OK.0
}

/// Per-request `init`: applies runtime marks, runs the wrapped method's init, reads the
/// session's route, counts the request, and wraps the peer callbacks.
unsafe extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its upstream configuration.
    let (request, us_ref) = unsafe { (Request::from_ngx_http_request(r), &*us) };
    let Some(ucf) = Module::server_conf(us_ref) else {
        return Status::NGX_ERROR.0;
    };
    let original = ucf.original_init_peer.unwrap_or(ngx_http_upstream_init_round_robin_peer);
    let Some(jvm_route) = &ucf.jvm_route else {
        // SAFETY: the wrapped method's per-request init with nginx's own arguments.
        return unsafe { original(r, us) };
    };
    let routes = upstream::current(ucf, us_ref);
    if let Some((routes, stats)) = routes.and_then(|r| Some((r, r.stats.as_ref()?))) {
        // Before the method's init, which counts the peers that are not down.
        routes.apply_marks(stats);
    }
    let pd = ucf.spares.take();
    if pd.is_null() {
        return Status::NGX_ERROR.0;
    }
    // SAFETY: `pd` is ours; `r` is live, with its pool. The state's own cleanup record goes
    // first in the pool's list, as `ngx_pool_cleanup_add` would put a record of the pool's
    // memory; it gives the state back when the pool is destroyed, after the upstream and the
    // log phase are done with it, and the state outlives the pool's reading of the record
    // (see `Spares`).
    unsafe {
        (&raw mut (*pd).conf).write(ucf);
        let pool = (*r).pool;
        let cleanup = &raw mut (*pd).cleanup;
        cleanup.write(ngx_pool_cleanup_t {
            handler: Some(release_state),
            data: pd.cast(),
            next: (*pool).cleanup,
        });
        (*pool).cleanup = cleanup;
    }
    if original as *const () == ngx_http_upstream_init_round_robin_peer as *const () {
        // SAFETY: `r->upstream` is set while its balancer is initialised; round robin's init
        // takes the data it finds there instead of allocating its own, and writes all of it.
        unsafe { (*(*r).upstream).peer.data = (&raw mut (*pd).rr).cast() };
    }
    // SAFETY: the wrapped method's per-request init with nginx's own arguments.
    let rc = unsafe { original(r, us) };
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    let Some(routes) = routes else { return rc };

    // SAFETY: `r` is live; the URI and arguments are read-only during the request.
    let session = unsafe { find_session(r, jvm_route, &routes.table) };
    ngx_log_debug_http!(request, "jvm_route: session {:?}", session);
    let (route, id, outcome, text) = match session {
        SessionRoute::Known(route, id) => {
            (route, id, Outcome::Hit, routes.table.route_text(route, id))
        }
        SessionRoute::Unknown(id) => {
            let text = match jvm_route.mode {
                RouteMode::AfterFirstDot => reverse_route(id),
                RouteMode::Prefix => None,
            };
            (NO_ROUTE, id, Outcome::Miss, text)
        }
        SessionRoute::NoSession => (NO_ROUTE, &[][..], Outcome::None, None),
    };
    if let Some(stats) = &routes.stats {
        let counter = match outcome {
            Outcome::None => UpstreamCounter::WithoutSession,
            _ => UpstreamCounter::WithSession,
        };
        stats.count_upstream(ucf.index, counter);
        if outcome == Outcome::Miss {
            stats.count_upstream(ucf.index, UpstreamCounter::UnknownRoute);
        }
    }
    let route_at_end = if jvm_route.mode == RouteMode::AfterFirstDot { ROUTE_AT_END } else { 0 };

    // SAFETY: `r->upstream` is set while its balancer is initialised; `pd` lives until the
    // request pool is destroyed and is written whole before use (its `rr` part is round robin's
    // to write); the session id is request memory.
    unsafe {
        let u = &mut *(*r).upstream;
        (&raw mut (*pd).original_data).write(u.peer.data);
        (&raw mut (*pd).wrapped).write(Wrapped {
            get: u.peer.get,
            free: u.peer.free,
            notify: u.peer.notify,
            set_session: u.peer.set_session,
            save_session: u.peer.save_session,
        });
        (&raw mut (*pd).route).write(route);
        (&raw mut (*pd).stamp).write(routes.stamp);
        (&raw mut (*pd).ctx).write(RequestCtx {
            outcome,
            flags: route_at_end,
            route_len: text.map_or(0, |t| t.len() as u32),
            session: ngx_str_t { len: id.len(), data: id.as_ptr().cast_mut() },
        });
        request.set_module_ctx((&raw mut (*pd).ctx).cast(), Module::module());
        u.peer.data = pd.cast();
        u.peer.get = Some(get_peer);
        u.peer.free = Some(free_peer);
        if u.peer.notify.is_some() {
            u.peer.notify = Some(notify_peer);
        }
        if u.peer.set_session.is_some() {
            u.peer.set_session = Some(set_peer_session);
        }
        if u.peer.save_session.is_some() {
            u.peer.save_session = Some(save_peer_session);
        }
    }
    rc
}

/// The values of the request's first `MAX_COOKIE_LINES` `Cookie` header lines.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(nginx1_23_0)]
unsafe fn cookie_lines<'r>(r: *mut ngx_http_request_t) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract: a NULL-terminated list of header lines.
    let first = unsafe { (*r).headers_in.cookie };
    std::iter::successors(first.as_ref(), |h| {
        // SAFETY: as above.
        unsafe { h.next.as_ref() }
    })
    .take(MAX_COOKIE_LINES)
    // SAFETY: a header line's value lives as long as the request.
    .map(|h| unsafe { str_bytes_for::<'r>(h.value) })
}

/// The values of the request's first `MAX_COOKIE_LINES` `Cookie` header lines.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(not(nginx1_23_0))]
unsafe fn cookie_lines<'r>(r: *mut ngx_http_request_t) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract: an array of header line pointers.
    let lines: &'r [*mut ngx::ffi::ngx_table_elt_t] = unsafe { (*r).headers_in.cookies.as_slice() };
    lines
        .iter()
        .take(MAX_COOKIE_LINES)
        // SAFETY: every element is a header line of the request, alive as long as it; so is
        // its value.
        .filter_map(|&h| unsafe { h.as_ref().map(|h| str_bytes_for::<'r>(h.value)) })
}

/// The request's candidate session ids, in priority order (cookies, then the URL's path
/// parameter, then its query), reduced to a route.
///
/// # Safety
/// `r` must be a live request.
unsafe fn find_session<'r>(
    r: *mut ngx_http_request_t,
    jvm_route: &'r JvmRoute,
    table: &RouteTable,
) -> SessionRoute<'r> {
    // Candidates in priority order; the URL is searched only when no cookie named a route.
    let mut chooser = RouteChooser::new(table);
    let mut value = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    // SAFETY: the header lines, the complex value (request pool), the raw URI and the
    // arguments all live in the request's memory for as long as the request.
    unsafe {
        match &jvm_route.source {
            SessionSource::Cookie(name) => {
                // The configuration checked the name (`$cookie_NAME`).
                for line in cookie_lines::<'r>(r) {
                    for id in named_cookie_values(line, name) {
                        if let Some(known) = chooser.offer(id) {
                            return known;
                        }
                    }
                }
            }
            SessionSource::Value(cv) => {
                // `cv` was compiled at startup; `value` receives pool memory of `r`.
                if ngx::ffi::ngx_http_complex_value(r, *cv, &mut value) != Status::NGX_OK.0 {
                    value.len = 0;
                }
            }
        }
        let value = str_bytes_for::<'r>(value);
        if !value.is_empty() {
            if let Some(known) = chooser.offer(value) {
                return known;
            }
        }
        if let Some(name) = jvm_route.url_name.as_deref() {
            let from_path = path_parameter(str_bytes_for::<'r>((*r).unparsed_uri), name);
            if let Some(known) = from_path.and_then(|id| chooser.offer(id)) {
                return known;
            }
            let from_query = query_parameter(str_bytes_for::<'r>((*r).args), name);
            if let Some(known) = from_query.and_then(|id| chooser.offer(id)) {
                return known;
            }
        }
    }
    chooser.finish()
}

/// `get`: a usable peer of the session's route; else, with `failover=off`, refusal; else, with
/// `failover=consistent`, the peer the session id hashes to; else the wrapped method's choice.
unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the PeerData set in `init_peer`; `pc` is the request's connection.
    let (pd, pc_ref) = unsafe { (&mut *data.cast::<PeerData>(), &mut *pc) };
    // SAFETY: as above.
    if pd.route != NO_ROUTE && unsafe { take_only_peer(pc_ref, pd) } {
        return Status::NGX_OK.0;
    }
    // SAFETY: as above.
    unsafe { get_peer_in_full(pc, pd) }
}

/// The usual sticky hit, decided without the general pick: the session's route has one
/// server, a primary one, in a peer list without a zone (no lock, never replaced), and that
/// server is usable. Takes it and counts it; false if any of that does not hold (nothing was
/// changed then, and [`get_peer_in_full`] decides).
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its peer connection.
#[inline(always)]
unsafe fn take_only_peer(pc: &mut ngx_peer_connection_t, pd: &mut PeerData) -> bool {
    // SAFETY: per the function contract.
    let Some(routes) = (unsafe { request_routes(pd) }) else { return false };
    let Some(route) = routes.table.route(pd.route) else { return false };
    let ([index], false) = (&route.primary[..], routes.can_change()) else { return false };
    let index = *index as usize;
    let Some(info) = routes.primary.get(index) else { return false };
    // SAFETY: every stock balancer's peer data begins with round robin's.
    let rrp = unsafe { &mut *pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
    if rrp.peers != routes.list {
        return false;
    }
    let now = ngx_time();
    // SAFETY: `routes.primary` holds the peers of `rrp.peers`, a list without a zone (nothing to
    // lock); `tried` has a bit for each.
    unsafe {
        if peers::is_tried(rrp, index)
            || !peers::is_usable(&*info.peer, routes.is_down_for_sessions(info), now)
        {
            return false;
        }
        peers::take(pc, rrp, info.peer, index, now);
    }
    pd.ctx.outcome = Outcome::Hit;
    if let (Some(stats), Some(slot)) = (&routes.stats, info.slot) {
        stats.count_both(slot, ServerCounter::Requests, ServerCounter::Hits);
    }
    true
}

/// [`get_peer`] for every case.
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its live peer connection.
#[inline(never)]
unsafe fn get_peer_in_full(pc: *mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    // SAFETY: per the function contract; the view, when its stamp matches, is this worker's
    // current one.
    let (pc_ref, routes) = unsafe { (&mut *pc, request_routes(pd)) };
    // SAFETY: `conf` and `ctx` outlive the request.
    let jvm_route = unsafe { (*pd.conf).jvm_route.as_ref() };
    let failover = jvm_route.map_or(Failover::Balance, |j| j.failover);
    let stats = routes.and_then(|r| r.stats.as_ref());
    let count = |slot: Option<usize>, counter: ServerCounter| {
        if let (Some(stats), Some(slot)) = (stats, slot) {
            stats.count(slot, counter);
        }
    };

    if let (Some(routes), Some(route)) = (routes, pd.route().and_then(|id| routes?.table.route(id)))
    {
        // SAFETY: the wrapped data begins with round robin's.
        if let Some(slot) = unsafe { pick_sticky_peer(pc_ref, pd, routes, route) } {
            pd.ctx.outcome = Outcome::Hit;
            if let (Some(stats), Some(slot)) = (stats, slot) {
                stats.count_both(slot, ServerCounter::Requests, ServerCounter::Hits);
            }
            return Status::NGX_OK.0;
        }
        if pd.ctx.flags & FAILED_OVER == 0 {
            pd.ctx.flags |= FAILED_OVER;
            let first = route.primary.first().map(|&i| &routes.primary[i as usize]);
            let first = first.or_else(|| route.backup.first().map(|&i| &routes.backup[i as usize]));
            count(first.and_then(|p| p.slot), ServerCounter::FailoversFrom);
        }
        if failover == Failover::Off {
            pd.ctx.outcome = Outcome::Refused;
            pd.ctx.flags |= REFUSED;
            // SAFETY: every stock balancer's peer data begins with round robin's.
            let rrp = unsafe { &*pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
            if !rrp.peers.is_null() {
                // SAFETY: the list is valid for the cycle; nginx logs "no live upstreams"
                // with this name, as round robin does.
                pc_ref.name = unsafe { (*rrp.peers).name };
            }
            return Status::NGX_BUSY.0;
        }
    }

    if failover == Failover::Consistent && pd.ctx.session.len > 0 {
        if let Some(routes) = routes {
            // SAFETY: the wrapped data begins with round robin's.
            if let Some(peer) = unsafe { pick_consistent_peer(pc_ref, pd, routes) } {
                let slot = routes.slot_of(peer);
                count(slot, ServerCounter::Requests);
                if pd.route().is_some() {
                    pd.ctx.outcome = Outcome::Failover;
                    count(slot, ServerCounter::FailoversTo);
                }
                return Status::NGX_OK.0;
            }
        }
    }

    let Some(get) = pd.wrapped.get else { return Status::NGX_ERROR.0 };
    // SAFETY: the wrapped method's own callback and data.
    let rc = unsafe { get(pc, pd.original_data) };
    if rc == Status::NGX_OK.0 {
        if let Some(routes) = routes {
            // SAFETY: every stock balancer's peer data begins with round robin's, whose
            // `current` is the peer the method just took.
            let current =
                unsafe { (*pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>()).current };
            let slot = routes.slot_of(current);
            count(slot, ServerCounter::Requests);
            if pd.route().is_some() {
                pd.ctx.outcome = Outcome::Failover;
                count(slot, ServerCounter::FailoversTo);
            }
        }
    }
    rc
}

/// The view this request's route id and peer indices refer to, unless it was rebuilt since
/// `init_peer`.
///
/// # Safety
/// `pd.conf` must point at the upstream configuration, alive for the whole cycle.
unsafe fn request_routes<'a>(pd: &PeerData) -> Option<&'a PeerRoutes> {
    // SAFETY: per the function contract; the cell is only touched from this worker's thread.
    let routes = unsafe { (*(*pd.conf).routes.get()).as_ref() }?;
    (routes.stamp == pd.stamp).then_some(routes)
}

/// `failover=consistent`: the usable primary peer with the highest rendezvous score for the
/// session id (weighted). Drained servers take no orphans; backups are left to the wrapped
/// method, as round robin orders them.
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its peer connection.
unsafe fn pick_consistent_peer(
    pc: &mut ngx_peer_connection_t,
    pd: &PeerData,
    routes: &PeerRoutes,
) -> Option<*mut ngx_http_upstream_rr_peer_t> {
    // SAFETY: every stock balancer's peer data begins with round robin's.
    let rrp = unsafe { &mut *pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
    let list = rrp.peers;
    if list.is_null() || list != routes.list {
        return None;
    }
    // SAFETY: `rrp` is the request's round-robin data, with its current peer list.
    let _lock = unsafe { PeersLock::write_current(rrp, routes.can_change()) }?;
    let now = ngx_time();
    let session = str_bytes(&pd.ctx.session);
    let candidates = routes.primary.iter().enumerate().filter_map(|(index, info)| {
        // SAFETY: `routes.primary` holds this locked list's peers; `tried` has a bit for each.
        unsafe {
            let p = &*info.peer;
            (!peers::is_tried(rrp, index) && peers::is_usable(p, p.down != 0, now))
                .then(|| (index, str_bytes(&p.name), p.weight.max(1) as u64))
        }
    });
    let index = failover::pick(session, candidates)?;
    let peer = routes.primary[index].peer;
    // SAFETY: the list is write-locked and holds the peer at `index`.
    unsafe { peers::take(pc, rrp, peer, index, now) };
    Some(peer)
}

/// Takes a usable peer of the request's route, as round robin would take it, and tells its
/// statistics slot. A route that names only backup servers is honoured only when no primary
/// server is usable.
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its peer connection.
unsafe fn pick_sticky_peer(
    pc: &mut ngx_peer_connection_t,
    pd: &PeerData,
    routes: &PeerRoutes,
    route: &Route,
) -> Option<Option<usize>> {
    // SAFETY: every stock balancer's peer data begins with round robin's.
    let rrp = unsafe { &mut *pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
    let list = rrp.peers;
    if list.is_null() {
        return None;
    }
    // SAFETY: `rrp` is the request's round-robin data, with its current peer list.
    let lock = unsafe { PeersLock::write_current(rrp, routes.can_change()) }?;
    let now = ngx_time();
    // SAFETY: `list` is valid; `next` is null or the backup list.
    let backup_list = unsafe { (*list).next };

    // SAFETY: `routes.list` is the upstream's valid primary list.
    let (candidates, infos) = if list == routes.list {
        (&route.primary, &routes.primary)
    } else if list == unsafe { (*routes.list).next } {
        (&route.backup, &routes.backup)
    } else {
        return None;
    };

    // A session may go to a draining server, not to a down, failed, full or tried one.
    let for_session = |rrp: &ngx_http_upstream_rr_peer_data_t, infos: &[PeerInfo], index: u32| {
        let index = index as usize;
        infos.get(index).is_some_and(|info| {
            // SAFETY: `infos` holds the locked list's peers; `tried` has a bit for each.
            unsafe {
                !peers::is_tried(rrp, index)
                    && peers::is_usable(&*info.peer, routes.is_down_for_sessions(info), now)
            }
        })
    };

    // Where a pick among `n` candidates starts: peers that share a route take turns; a route
    // of one peer leaves the cursor alone.
    let turn = |n: usize| {
        if n < 2 {
            return 0;
        }
        let start = routes.cursor.get();
        routes.cursor.set(start.wrapping_add(1));
        start
    };
    if let Some(index) =
        first_usable(candidates, turn(candidates.len()), |i| for_session(rrp, infos, i))
    {
        let info = &infos[index as usize];
        // SAFETY: the list is write-locked and holds the peer at `index`.
        unsafe { peers::take(pc, rrp, info.peer, index as usize, now) };
        return Some(info.slot);
    }

    if list != routes.list || route.backup.is_empty() || backup_list.is_null() {
        return None;
    }
    // The route names backup servers: they are honoured only when no primary is usable for
    // any request (round robin would then go to the backups too).
    let any_primary = routes.primary.iter().enumerate().any(|(index, info)| {
        // SAFETY: as above.
        unsafe {
            let p = &*info.peer;
            !peers::is_tried(rrp, index) && peers::is_usable(p, p.down != 0, now)
        }
    });
    if any_primary {
        return None;
    }
    // SAFETY: `backup_list` is the primary list's `next`, and round robin sized `tried` for
    // the larger of the two lists.
    unsafe { peers::switch_to_backup(rrp, backup_list) };
    drop(lock);

    // SAFETY: `backup_list` is valid for the cycle.
    let _backup_lock = unsafe { PeersLock::write(backup_list) };
    let start = turn(route.backup.len());
    let index = first_usable(&route.backup, start, |i| for_session(rrp, &routes.backup, i))?;
    let info = &routes.backup[index as usize];
    // SAFETY: the backup list is write-locked and holds the peer at `index`.
    unsafe { peers::take(pc, rrp, info.peer, index as usize, now) };
    Some(info.slot)
}

/// `free`: counts a failed attempt, then the wrapped method settles it (failures, `conns`,
/// references).
unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if state & NGX_PEER_FAILED as ngx_uint_t != 0 {
        // SAFETY: `conf` outlives the request.
        let routes = unsafe { request_routes(pd) };
        // SAFETY: the wrapped data begins with round robin's, whose `current` is the peer tried.
        let current =
            unsafe { (*pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>()).current };
        let stats = routes.and_then(|r| Some((r.stats.as_ref()?, r.slot_of(current)?)));
        if let Some((stats, slot)) = stats {
            stats.count(slot, ServerCounter::Failures);
        }
    }
    if let Some(free) = pd.wrapped.free {
        // SAFETY: the wrapped method's own callback and data.
        unsafe { free(pc, pd.original_data, state) };
    }
}

unsafe extern "C" fn notify_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    kind: ngx_uint_t,
) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if let Some(notify) = pd.wrapped.notify {
        // SAFETY: the wrapped method's own callback and data.
        unsafe { notify(pc, pd.original_data, kind) };
    }
}

unsafe extern "C" fn set_peer_session(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
) -> ngx_int_t {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    match pd.wrapped.set_session {
        // SAFETY: the wrapped method's own callback and data.
        Some(set) => unsafe { set(pc, pd.original_data) },
        None => Status::NGX_OK.0,
    }
}

unsafe extern "C" fn save_peer_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if let Some(save) = pd.wrapped.save_session {
        // SAFETY: the wrapped method's own callback and data.
        unsafe { save(pc, pd.original_data) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spare_list_frees_the_state_given_back_before_the_last() {
        let spares = Spares::default();
        let states: Vec<*mut PeerData> = (0..MAX_SPARES + 3).map(|_| spares.take()).collect();
        assert!(states.iter().all(|pd| !pd.is_null()));
        for &pd in &states {
            // SAFETY: each state comes from `take` and is used by nothing.
            unsafe { spares.give(pd) };
        }
        assert_eq!(spares.count.get(), MAX_SPARES);
        // The last state given back stays allocated (a pool may still read its cleanup
        // record); the ones given back before it while the list was full were freed.
        assert_eq!(spares.retired.get(), states[MAX_SPARES + 2]);
        // Spares are taken newest first, and given back again.
        let pd = spares.take();
        assert_eq!(pd, states[MAX_SPARES - 1]);
        assert_eq!(spares.count.get(), MAX_SPARES - 1);
        // SAFETY: as above.
        unsafe { spares.give(pd) };
    }
}
