//! The balancer: wraps the upstream's own method (round robin, least_conn, hash, ip_hash,
//! random) and decides only the sticky case. nginx calls, in order: [`init_upstream`] once per
//! upstream at startup, `init_peer` once per request, then `get` and `free` once per attempt.
//!
//! `init_peer` reads the request's session id and looks up its route in the worker's view;
//! `get` takes a usable peer of that route ([`pick`]), or (with `failover=consistent`) the peer
//! the session id hashes to, or leaves the choice to the wrapped method. The wrapped methods'
//! per-request data begins with round robin's (the configuration refuses other methods), so
//! the peer is taken in round robin's books and the wrapped `free` settles them. Every attempt
//! is counted in the shared zone.

mod pick;
mod state;

use std::ffi::c_void;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_rr_peer_data_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t, ngx_pool_cleanup_add, ngx_time,
    ngx_uint_t, NGX_PEER_FAILED,
};
use ngx::http::{HttpModule, HttpModuleServerConf, Request};
use ngx::ngx_log_debug_http;

use crate::conf::UpstreamConf;
use crate::ffi;
use crate::request::{find_session, Outcome, RequestCtx, FAILED_OVER, KNOWN_ROUTE, REFUSED};
use crate::rules::failover::Failover;
use crate::rules::route::{reverse_route, RouteId, RouteMode, SessionRoute};
use crate::worker::{self, View};
use crate::zone::{ServerCounter, UpstreamCounter};
use crate::Module;
use pick::{pick_consistent_peer, pick_sticky_peer, Pick};
use state::Spares;

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

/// Everything a request needs: taken from [`SPARES`] and given back when the request pool is
/// destroyed, after the log phase.
#[repr(C)]
struct PeerData {
    /// Round robin's per-request data, when round robin is the wrapped method: its `init`
    /// takes this instead of allocating its own.
    rr: ngx_http_upstream_rr_peer_data_t,
    /// The wrapped method's data and callbacks.
    original_data: *mut c_void,
    wrapped: Wrapped,
    conf: *const UpstreamConf,
    us: *const ngx_http_upstream_srv_conf_t,
    /// The session's route in the view of `stamp`, if it names one of this upstream.
    route: RouteId,
    /// The view the route id refers to.
    stamp: u32,
    /// The module context of the request.
    ctx: RequestCtx,
    /// The request this state belongs to, once `init_peer` has written all of it (null
    /// before): how [`balanced_request_ctx`] finds it in the request pool's cleanups.
    request: *mut ngx_http_request_t,
}

/// This worker's spare request states.
static SPARES: Spares<PeerData> = Spares::new();

/// Spare states made when a worker starts: as many as requests a worker usually balances at
/// once (more are made when needed).
const PREPARED_STATES: usize = 64;

/// A worker starts: its spare request states are made before any request (see
/// [`Spares::prepare`]), if the configuration has an upstream with `jvm_route`.
///
/// # Safety
/// Called by nginx in a new worker process with its cycle.
pub unsafe fn init_process(cycle: *mut ngx::ffi::ngx_cycle_t) {
    // SAFETY: per the function contract.
    if unsafe { crate::check::main_conf_of(cycle) }.is_some_and(|m| !m.upstreams.is_empty()) {
        SPARES.prepare(PREPARED_STATES);
    }
}

/// The request pool's cleanup: the request is over, its state becomes spare.
unsafe extern "C" fn release_state(data: *mut c_void) {
    // SAFETY: `data` is the state taken in `init_peer`. Nothing refers to it any more: the peer
    // connection, the module context and the keepalive module's data all live in the pool being
    // destroyed, after the log phase.
    unsafe { SPARES.give(data.cast()) };
}

impl PeerData {
    /// Notes which server took the attempt, by its zone slot (for `$jvm_route_server` and the
    /// route cookie).
    #[inline(always)]
    fn answered_by(&mut self, slot: Option<usize>) {
        // SAFETY: `conf` is the upstream configuration, alive for the cycle.
        let ucf = unsafe { &*self.conf };
        let line = slot.and_then(|s| s.checked_sub(ucf.slot_base));
        // SAFETY: the srun_id is configuration memory, which outlives the request and so this
        // context.
        unsafe { self.ctx.set_server(line.and_then(|l| ucf.srun_id(l)), slot) };
    }

    /// The wrapped method's data: every accepted method's begins with round robin's. When the
    /// method is round robin, that data is this state's own `rr`, borrowed from `self` (a
    /// reference made from `original_data` would alias the `&mut self`).
    fn rrp(&mut self) -> &mut ngx_http_upstream_rr_peer_data_t {
        let own = (&raw mut self.rr).cast::<c_void>();
        if self.original_data == own {
            return &mut self.rr;
        }
        // SAFETY: `original_data` is the wrapped method's per-request data (not inside this
        // state, checked above), which the configuration only accepts from methods whose data
        // begins with round robin's; it lives in the request pool, which outlives the request's
        // balancer callbacks.
        unsafe { &mut *self.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() }
    }

    /// The worker's view of the upstream, with the request's route brought up to date if the
    /// view was rebuilt since `init_peer` (the route is looked up again by the session id).
    ///
    /// # Safety
    /// The view is used within the current callback only, and no other view of this upstream
    /// is taken while it is (see `worker::current`).
    #[inline(always)]
    unsafe fn view<'v>(&mut self) -> Option<&'v View> {
        // SAFETY: `conf` and `us` are the upstream's configuration, alive for the cycle.
        let (ucf, us) = unsafe { (&*self.conf, &*self.us) };
        // SAFETY: the view's use is bounded per the function contract.
        let view = unsafe { worker::current(ucf, us) }?;
        if view.stamp != self.stamp {
            self.stamp = view.stamp;
            self.route = view.table.lookup(self.ctx.session()).unwrap_or(NO_ROUTE);
        }
        // SAFETY: per the function contract.
        Some(unsafe { &*std::ptr::from_ref(view) })
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
    // SAFETY: the view is used in this callback only, which takes no other.
    let view = unsafe { worker::current(ucf, us_ref) };
    let (Some(jvm_route), Some(view)) = (&ucf.jvm_route, view) else {
        // SAFETY: the wrapped method's per-request init with nginx's own arguments.
        return unsafe { original(r, us) };
    };
    if let Some(stats) = &view.stats {
        // Before the method's init, which counts the peers that are not down.
        view.apply_marks(stats);
    }
    // SAFETY: `r` is live, with its pool. The record's handler stays unset (skipped by the
    // pool) until the state is taken.
    let cleanup = unsafe { ngx_pool_cleanup_add((*r).pool, 0) };
    if cleanup.is_null() {
        return Status::NGX_ERROR.0;
    }
    let pd = SPARES.take();
    if pd.is_null() {
        return Status::NGX_ERROR.0;
    }
    // SAFETY: the record was just added to the request pool; the state is given back when the
    // pool is destroyed. `request` stays null until the state is written whole.
    unsafe {
        (&raw mut (*pd).request).write(std::ptr::null_mut());
        (*cleanup).handler = Some(release_state);
        (*cleanup).data = pd.cast();
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

    // SAFETY: `r` is live; the session id is request memory.
    let session = unsafe { find_session(r, jvm_route, &view.table) };
    let reverse = jvm_route.mode == RouteMode::AfterFirstDot;
    let (route, id, outcome, text) = match session {
        SessionRoute::Known(route, id) => {
            (route, id, Outcome::Hit, view.table.route_text(route, id))
        }
        SessionRoute::Unknown(id) => {
            (NO_ROUTE, id, Outcome::Miss, if reverse { reverse_route(id) } else { None })
        }
        SessionRoute::NoSession => (NO_ROUTE, &[][..], Outcome::None, None),
    };
    // SAFETY: the session id is request memory, and the context lives until the request pool is
    // destroyed.
    let mut ctx = unsafe { RequestCtx::new(outcome, id, text, reverse) };
    ctx.cookie = ucf.cookie.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    if ucf.checks_issued {
        ctx.upstream = ucf;
    }
    // The route only: a session id is a credential and is never logged.
    ngx_log_debug_http!(
        request,
        "jvm_route: {} route \"{}\"",
        outcome.as_str(),
        ffi::lossy(ctx.route())
    );
    if let Some(stats) = &view.stats {
        let counter = match outcome {
            Outcome::None => UpstreamCounter::WithoutSession,
            _ => UpstreamCounter::WithSession,
        };
        stats.count_upstream(ucf.index, counter);
        if outcome == Outcome::Miss {
            stats.count_upstream(ucf.index, UpstreamCounter::UnknownRoute);
        }
    }

    // SAFETY: `r->upstream` is set while its balancer is initialised; `pd` lives until the
    // request pool is destroyed, and every field but `rr` (round robin's to write, or unused)
    // is written here, through raw pointers, before any is read.
    unsafe {
        let u = &mut *(*r).upstream;
        if outcome == Outcome::Hit {
            // Draining servers are not in the lists' `tries` (nginx counts only peers that are
            // not down), yet this session may go to one first: it keeps every retry it would
            // have had without the drain.
            u.peer.tries += view.draining.get() as ngx_uint_t;
        }
        (&raw mut (*pd).original_data).write(u.peer.data);
        (&raw mut (*pd).wrapped).write(Wrapped {
            get: u.peer.get,
            free: u.peer.free,
            notify: u.peer.notify,
            set_session: u.peer.set_session,
            save_session: u.peer.save_session,
        });
        (&raw mut (*pd).conf).write(ucf);
        (&raw mut (*pd).us).write(us);
        (&raw mut (*pd).route).write(route);
        (&raw mut (*pd).stamp).write(view.stamp);
        (&raw mut (*pd).ctx).write(ctx);
        (&raw mut (*pd).request).write(r);
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
    // SAFETY: the view is used within this callback.
    let Some(view) = (unsafe { pd.view() }) else { return false };
    let Some(route) = view.table.route(pd.route) else { return false };
    let ([index], false) = (&route.primary[..], view.can_change()) else { return false };
    let index = *index as usize;
    let Some(info) = view.primary.get(index) else { return false };
    let rrp = pd.rrp();
    if rrp.peers != view.list {
        return false;
    }
    let now = ngx_time();
    // SAFETY: `view.primary` holds the peers of `rrp.peers`, a list without a zone (nothing to
    // lock, never changed); `tried` has a bit for each.
    unsafe {
        if ffi::is_tried(rrp, index)
            || !ffi::is_usable(&*info.peer, view.is_down_for_sessions(info), now)
        {
            return false;
        }
        ffi::take(pc, rrp, info.peer, index, now);
    }
    pd.ctx.outcome = Outcome::Hit;
    pd.answered_by(info.slot);
    if let (Some(stats), Some(slot)) = (&view.stats, info.slot) {
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
    // SAFETY: per the function contract.
    let pc_ref = unsafe { &mut *pc };
    // SAFETY: the view is used within this callback.
    let view = unsafe { pd.view() };
    // SAFETY: `conf` outlives the request.
    let failover =
        unsafe { (*pd.conf).jvm_route.as_ref() }.map_or(Failover::Balance, |j| j.failover);
    let stats = view.and_then(|v| v.stats);
    let count = |slot: Option<usize>, counter: ServerCounter| {
        if let (Some(stats), Some(slot)) = (stats, slot) {
            stats.count(slot, counter);
        }
    };
    let known = pd.ctx.flags & KNOWN_ROUTE != 0;
    let route = view.and_then(|v| v.table.route(pd.route));

    if let Some(view) = view.filter(|_| route.is_some() || known) {
        let picked = match route {
            // SAFETY: `pd` is the request's data, `view` the upstream's current view.
            Some(route) => unsafe { pick_sticky_peer(pc_ref, pd.rrp(), view, route) },
            // The session's servers were removed since the request began.
            None => Pick::NoneUsable,
        };
        match picked {
            Pick::Taken(slot) => {
                pd.ctx.outcome = Outcome::Hit;
                pd.answered_by(slot);
                if let (Some(stats), Some(slot)) = (stats, slot) {
                    stats.count_both(slot, ServerCounter::Requests, ServerCounter::Hits);
                }
                return Status::NGX_OK.0;
            }
            Pick::Stale => return delegate(pc, pd, None),
            Pick::NoneUsable => {}
        }
        if pd.ctx.flags & FAILED_OVER == 0 {
            pd.ctx.flags |= FAILED_OVER;
            let first = route.and_then(|r| {
                let primary = r.primary.first().map(|&i| &view.primary[i as usize]);
                primary.or_else(|| r.backup.first().map(|&i| &view.backup[i as usize]))
            });
            count(first.and_then(|p| p.slot), ServerCounter::FailoversFrom);
        }
        if failover == Failover::Off {
            pd.ctx.outcome = Outcome::Refused;
            pd.ctx.flags |= REFUSED;
            let rrp = pd.rrp();
            if !rrp.peers.is_null() {
                // SAFETY: the list is valid for the cycle and its name never changes; nginx
                // logs "no live upstreams" with it, as round robin does.
                pc_ref.name = unsafe { (*rrp.peers).name };
            }
            return Status::NGX_BUSY.0;
        }
    }

    if failover == Failover::Consistent && pd.ctx.session.len > 0 {
        if let Some(view) = view {
            // SAFETY: the session id is request memory, alive for the whole request.
            let session = unsafe { ffi::bytes(pd.ctx.session) };
            // SAFETY: `pd` is the request's data, `view` the upstream's current view.
            match unsafe { pick_consistent_peer(pc_ref, pd.rrp(), view, session) } {
                Pick::Taken(slot) => {
                    pd.answered_by(slot);
                    count(slot, ServerCounter::Requests);
                    if pd.route != NO_ROUTE || known {
                        pd.ctx.outcome = Outcome::Failover;
                        count(slot, ServerCounter::FailoversTo);
                    }
                    return Status::NGX_OK.0;
                }
                Pick::Stale => return delegate(pc, pd, None),
                Pick::NoneUsable => {}
            }
        }
    }
    delegate(pc, pd, view)
}

/// Leaves the choice to the wrapped method, and counts it against the view if the view is of
/// the request's generation.
fn delegate(pc: *mut ngx_peer_connection_t, pd: &mut PeerData, view: Option<&View>) -> ngx_int_t {
    let Some(get) = pd.wrapped.get else { return Status::NGX_ERROR.0 };
    // SAFETY: the wrapped method's own callback and data.
    let rc = unsafe { get(pc, pd.original_data) };
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    let sticky = pd.route != NO_ROUTE || pd.ctx.flags & KNOWN_ROUTE != 0;
    let rrp = pd.rrp();
    let mut answered = None;
    if let Some(view) = view.filter(|v| v.matches_request(rrp)) {
        // The method took `current` under its lock at the request's generation, which is the
        // view's: the view's peer pointers are that list's.
        let slot = view.slot_of(rrp.current);
        answered = slot;
        if let (Some(stats), Some(slot)) = (&view.stats, slot) {
            stats.count(slot, ServerCounter::Requests);
            if sticky {
                stats.count(slot, ServerCounter::FailoversTo);
            }
        }
    }
    pd.answered_by(answered);
    if sticky {
        pd.ctx.outcome = Outcome::Failover;
    }
    rc
}

/// `free`: counts a failed attempt, then the wrapped method settles it (failures, `conns`,
/// references).
unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &mut *data.cast::<PeerData>() };
    if state & NGX_PEER_FAILED as ngx_uint_t != 0 {
        // The attempt failed: whatever answers now, that server did not.
        // SAFETY: no slice is kept.
        unsafe { pd.ctx.set_server(None, None) };
        // SAFETY: the view is used within this callback.
        let view = unsafe { pd.view() };
        let rrp = pd.rrp();
        // The peer tried is `current`; the view's pointers are the request's list's only if
        // the generations agree.
        if let Some(view) = view.filter(|v| v.matches_request(rrp)) {
            if let (Some(stats), Some(slot)) = (&view.stats, view.slot_of(rrp.current)) {
                stats.count(slot, ServerCounter::Failures);
            }
        }
    // SAFETY: `conf` is the upstream configuration, alive for the cycle.
    } else if unsafe { (*pd.conf).has_slow_start } {
        // A server that had reached max_fails answered after fail_timeout: it is back, and
        // starts slowly (read before round robin's `free` clears its failures).
        // SAFETY: the view is used within this callback.
        let view = unsafe { pd.view() };
        let rrp = pd.rrp();
        let (list, current) = (rrp.peers, rrp.current);
        if let Some(view) = view.filter(|v| v.matches_request(rrp)) {
            if let (Some(stats), Some(slot)) = (&view.stats, view.slot_of(current)) {
                // SAFETY: `list` is the request's current list, one of the view's; the peer
                // is read under its read lock, at the request's generation.
                let back = unsafe { view.lock(list, false, Some(rrp)) }
                    // SAFETY: as above.
                    .is_some_and(|_lock| unsafe { ffi::reached_max_fails_raw(current) });
                if back {
                    stats.start_ramp(slot, crate::check::now());
                }
            }
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

/// The context of a request that this module balanced, found even after an internal redirect
/// (an `error_page`) cleared the module contexts: its state is the data of a cleanup record of
/// the request pool (whatever wraps the balancer, `keepalive` included). The newest state of
/// this request wins; subrequests, which share the pool, have states of their own.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn balanced_request_ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    // SAFETY: per the function contract: the pool's cleanups are a NULL-terminated list; a
    // record whose handler is `release_state` holds a state taken in `init_peer`, whose
    // `request` is null until the state was written whole, and which lives until the pool is
    // destroyed.
    unsafe {
        let mut c = (*(*r).pool).cleanup;
        // `release_state` is not generic nor inlined where it is stored: one address.
        let ours = release_state as *const () as usize;
        while !c.is_null() {
            if (*c).handler.map(|h| h as usize) == Some(ours) {
                let pd = (*c).data.cast::<PeerData>();
                if (&raw const (*pd).request).read() == r {
                    return Some(&mut (*pd).ctx);
                }
            }
            c = (*c).next;
        }
        None
    }
}
