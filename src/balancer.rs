//! The balancer: wraps the upstream's own method (round robin, least_conn, hash, ...) and
//! decides only the sticky case. nginx calls, in order: [`init_upstream`] once per upstream
//! at startup, [`init_peer`] once per request, then `get` and `free` once per attempt.
//!
//! The request's session id is read and its route looked up in `init_peer`; `get` then takes a
//! usable peer of that route, or leaves the choice to the wrapped method. Every stock method's
//! per-request data begins with round robin's, so the peer is taken in round robin's books and
//! the wrapped `free` settles them.

use std::cell::Cell;
use std::ffi::c_void;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_rr_peer_data_t,
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_pcalloc, ngx_peer_connection_t, ngx_str_t, ngx_time, ngx_uint_t,
};
use ngx::http::{HttpModuleServerConf, Request};
use ngx::ngx_log_debug_http;

use crate::config::{servers, str_bytes, JvmRoute, SessionSource, UpstreamConf};
use crate::failover::{self, Failover};
use crate::peers::{self, PeersLock};
use crate::route::{choose_route, first_usable, PeerList, RouteId, RouteTable, SessionRoute};
use crate::session::{cookie_values, path_parameter, query_parameter};
use crate::Module;

/// How many `Cookie` header lines of one request are searched.
const MAX_COOKIE_LINES: usize = 16;

/// The route table of one peer list, with the peers it indexes. Built per worker process.
pub struct PeerRoutes {
    /// srun_id -> peer indices.
    pub table: RouteTable,
    /// The primary list this table was built from.
    list: *mut ngx_http_upstream_rr_peers_t,
    /// That list's generation when the table was built.
    generation: ngx_uint_t,
    /// Counts rebuilds, so that a request can tell its route id belongs to an older table.
    stamp: u64,
    primary: Vec<*mut ngx_http_upstream_rr_peer_t>,
    backup: Vec<*mut ngx_http_upstream_rr_peer_t>,
    /// Where the next pick among peers sharing a route starts.
    cursor: Cell<usize>,
}

/// Per-request state: the wrapped method's callbacks and data, and the route of the session.
#[repr(C)]
struct PeerData {
    original_data: *mut c_void,
    original_get: ngx::ffi::ngx_event_get_peer_pt,
    original_free: ngx::ffi::ngx_event_free_peer_pt,
    original_notify: ngx::ffi::ngx_event_notify_peer_pt,
    original_set_session: ngx::ffi::ngx_event_set_peer_session_pt,
    original_save_session: ngx::ffi::ngx_event_save_peer_session_pt,
    conf: *const UpstreamConf,
    /// The session's route, if it names one of this upstream.
    route: Option<RouteId>,
    /// The session id that decided (request memory: the Cookie header, the URI or the pool).
    session: ngx_str_t,
    stamp: u64,
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

/// Per-request `init`: runs the wrapped method's, reads the session's route, and wraps the
/// peer callbacks when there is one.
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
    // SAFETY: the wrapped method's per-request init with nginx's own arguments.
    let rc = unsafe { original(r, us) };
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    let Some(jvm_route) = &ucf.jvm_route else { return rc };
    let Some(routes) = current_routes(ucf, us_ref) else { return rc };

    // SAFETY: `r` is live; the URI and arguments are read-only during the request.
    let session = unsafe { find_session(r, jvm_route, &routes.table) };
    ngx_log_debug_http!(request, "jvm_route: session route {:?}", session);
    let (route, session) = match session {
        SessionRoute::Known(route, id) => (Some(route), id),
        SessionRoute::Unknown(id) if jvm_route.failover == Failover::Consistent => (None, id),
        _ => return rc,
    };

    // SAFETY: `r->upstream` is set while its balancer is initialised; the peer data lives in
    // the request pool as long as the upstream does.
    unsafe {
        let u = &mut *(*r).upstream;
        let pd = ngx_pcalloc((*r).pool, size_of::<PeerData>()).cast::<PeerData>();
        if pd.is_null() {
            return Status::NGX_ERROR.0;
        }
        pd.write(PeerData {
            original_data: u.peer.data,
            original_get: u.peer.get,
            original_free: u.peer.free,
            original_notify: u.peer.notify,
            original_set_session: u.peer.set_session,
            original_save_session: u.peer.save_session,
            conf: ucf,
            route,
            session: ngx_str_t { len: session.len(), data: session.as_ptr().cast_mut() },
            stamp: routes.stamp,
        });
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
    let mut lines = [ngx_str_t { len: 0, data: std::ptr::null_mut() }; MAX_COOKIE_LINES];
    let mut value = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    let mut cookie_name: &[u8] = &[];
    let line_count = match &jvm_route.source {
        SessionSource::Cookie(name) => {
            cookie_name = name;
            // SAFETY: `lines` has room for MAX_COOKIE_LINES values.
            let n = unsafe {
                peers::ngx_http_jvm_route_cookie_lines(r, lines.as_mut_ptr(), MAX_COOKIE_LINES)
            };
            n.min(MAX_COOKIE_LINES)
        }
        SessionSource::Value(cv) => {
            // SAFETY: `cv` was compiled at startup; `value` receives pool memory of `r`.
            if unsafe { ngx::ffi::ngx_http_complex_value(r, *cv, &mut value) } != Status::NGX_OK.0 {
                value.len = 0;
            }
            0
        }
    };

    // SAFETY: the header lines, the complex value (request pool), the raw URI and the
    // arguments all live in the request's memory for as long as the request.
    let (lines, value, uri, args) = unsafe {
        (
            lines.map(|line| request_bytes::<'r>(line)),
            request_bytes::<'r>(value),
            request_bytes::<'r>((*r).unparsed_uri),
            request_bytes::<'r>((*r).args),
        )
    };
    let cookies = lines[..line_count].iter().flat_map(|line| cookie_values(line, cookie_name));
    let source_value = Some(value).filter(|v| !v.is_empty());
    let url_name = jvm_route.url_name.as_deref();
    let from_path = url_name.and_then(|name| path_parameter(uri, name));
    let from_query = url_name.and_then(|name| query_parameter(args, name));

    choose_route(table, cookies.chain(source_value).chain(from_path).chain(from_query))
}

/// The bytes of an `ngx_str_t` that points into a request's memory, for that request's life.
///
/// # Safety
/// `s` must be empty or point to `len` bytes that stay valid and unchanged for `'r`.
unsafe fn request_bytes<'r>(s: ngx_str_t) -> &'r [u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: per the function contract.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// The route table of the upstream's current peer list, built on first use in each worker and
/// again whenever the list is replaced (zone) or changes (zone resolver).
fn current_routes<'a>(
    ucf: &'a UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
) -> Option<&'a PeerRoutes> {
    let list = us.peer.data.cast::<ngx_http_upstream_rr_peers_t>();
    if list.is_null() {
        return None;
    }
    // SAFETY: `list` is the upstream's peer list; reading its generation needs the read lock.
    let generation = unsafe {
        let _lock = PeersLock::read(list);
        peers::generation(list)
    };
    // SAFETY: worker processes are single-threaded and no reference into the cell outlives a
    // callback, so this is the only access.
    let slot = unsafe { &mut *ucf.routes.get() };
    let fresh = slot.as_ref().is_some_and(|t| t.list == list && t.generation == generation);
    if !fresh {
        let stamp = slot.as_ref().map_or(0, |t| t.stamp + 1);
        let jvm_route = ucf.jvm_route.as_ref()?;
        // SAFETY: `list` is valid; `build_routes` takes the read lock itself.
        *slot = Some(unsafe { build_routes(ucf, us, list, jvm_route, stamp) });
    }
    slot.as_ref()
}

/// Builds the route table: walks both peer lists in order and finds each peer's server.
///
/// Round robin creates peers server by server, `naddrs` peers each (primaries in one list,
/// backups in the other), and a zone copies them in the same order; so the walk matches peers
/// to servers by position, checked by name. A peer the walk cannot place (added at run time by
/// the zone's resolver) is matched by its server name.
///
/// # Safety
/// `list` must be the upstream's valid peer list.
unsafe fn build_routes(
    ucf: &UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
    list: *mut ngx_http_upstream_rr_peers_t,
    jvm_route: &JvmRoute,
    stamp: u64,
) -> PeerRoutes {
    let _lock = unsafe { PeersLock::read(list) };
    let servers = servers(us);
    let srun_id_of = |index: usize| ucf.srun_ids.get(index).and_then(|s| s.as_deref());

    let mut entries: Vec<(&[u8], PeerList, u32)> = Vec::new();
    let mut collect = |peers: *mut ngx_http_upstream_rr_peers_t, backup: bool, kind: PeerList| {
        let candidates: Vec<usize> =
            (0..servers.len()).filter(|&i| (servers[i].backup() != 0) == backup).collect();
        let mut walk = candidates.iter().flat_map(|&i| std::iter::repeat_n(i, servers[i].naddrs));
        let mut ptrs = Vec::new();
        // SAFETY: the list is read-locked for the walk.
        for (index, peer) in unsafe { peers::iter(peers) }.enumerate() {
            ptrs.push(peer);
            // SAFETY: `peer` belongs to the locked list.
            let name = str_bytes(unsafe { &(*peer).server });
            let by_position = walk.next().filter(|&i| str_bytes(&servers[i].name) == name);
            let server = by_position.or_else(|| {
                candidates.iter().copied().find(|&i| str_bytes(&servers[i].name) == name)
            });
            if let Some(srun_id) = server.and_then(srun_id_of) {
                entries.push((srun_id, kind, index as u32));
            }
        }
        ptrs
    };
    let primary = collect(list, false, PeerList::Primary);
    // SAFETY: `list` is valid; `next` is null or the backup list.
    let backup_list = unsafe { (*list).next };
    let backup = if backup_list.is_null() {
        Vec::new()
    } else {
        collect(backup_list, true, PeerList::Backup)
    };
    PeerRoutes {
        table: RouteTable::build(jvm_route.mode, entries),
        list,
        // SAFETY: the list is read-locked.
        generation: unsafe { peers::generation(list) },
        stamp,
        primary,
        backup,
        cursor: Cell::new(0),
    }
}

/// `get`: a usable peer of the session's route; else, with `failover=consistent`, the peer the
/// session id hashes to; else the wrapped method's choice.
unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the PeerData set in `init_peer`; `pc` is the request's connection.
    let (pd, pc_ref) = unsafe { (&*data.cast::<PeerData>(), &mut *pc) };
    // SAFETY: as above; the wrapped data begins with round robin's.
    if unsafe { pick_sticky_peer(pc_ref, pd) || pick_consistent_peer(pc_ref, pd) } {
        return Status::NGX_OK.0;
    }
    match pd.original_get {
        // SAFETY: the wrapped method's own callback and data.
        Some(get) => unsafe { get(pc, pd.original_data) },
        None => Status::NGX_ERROR.0,
    }
}

/// The routes this request's route id and peer indices refer to, unless the table was rebuilt
/// since `init_peer`.
///
/// # Safety
/// `pd.conf` must point at the upstream configuration, alive for the whole cycle.
unsafe fn request_routes(pd: &PeerData) -> Option<&PeerRoutes> {
    // SAFETY: per the function contract; the cell is only touched from this worker's thread.
    let routes = unsafe { (*(*pd.conf).routes.get()).as_ref() }?;
    (routes.stamp == pd.stamp).then_some(routes)
}

/// `failover=consistent`: the usable primary peer with the highest rendezvous score for the
/// session id (weighted). Backups are left to the wrapped method, as round robin orders them.
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its peer connection.
unsafe fn pick_consistent_peer(pc: &mut ngx_peer_connection_t, pd: &PeerData) -> bool {
    // SAFETY: `conf` outlives the request.
    let Some(routes) = (unsafe { request_routes(pd) }) else { return false };
    // SAFETY: as above.
    let jvm_route = unsafe { (*pd.conf).jvm_route.as_ref() };
    if jvm_route.is_none_or(|j| j.failover != Failover::Consistent) {
        return false;
    }
    // SAFETY: every stock balancer's peer data begins with round robin's.
    let rrp = unsafe { &mut *pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
    let list = rrp.peers;
    // SAFETY: `list` is null or the request's current peer list, locked before it is read.
    if list.is_null() || list != routes.list || unsafe { (*list).single() } != 0 {
        return false;
    }
    // SAFETY: as above.
    let _lock = unsafe { PeersLock::write(list) };
    // SAFETY: the list is locked.
    if unsafe { peers::is_stale(rrp) } {
        return false;
    }
    let now = ngx_time();
    let session = str_bytes(&pd.session);
    // SAFETY (closure): `routes.primary` holds this locked list's peers; `tried` has a bit each.
    let candidates = routes.primary.iter().enumerate().filter_map(|(index, &peer)| unsafe {
        let p = &*peer;
        (!peers::is_tried(rrp, index) && peers::is_usable(p, now))
            .then(|| (index, str_bytes(&p.name), p.weight.max(1) as u64))
    });
    let Some(index) = failover::pick(session, candidates) else { return false };
    // SAFETY: the list is write-locked and holds the peer at `index`.
    unsafe { peers::take(pc, rrp, routes.primary[index], index, now) };
    true
}

/// Takes a usable peer of the request's route, as round robin would take it. A route that
/// names only backup servers is honoured only when no primary server is usable.
///
/// # Safety
/// `pd` must be this request's PeerData and `pc` its peer connection.
unsafe fn pick_sticky_peer(pc: &mut ngx_peer_connection_t, pd: &PeerData) -> bool {
    // SAFETY: `conf` outlives the request.
    let Some(routes) = (unsafe { request_routes(pd) }) else { return false };
    let Some(route) = pd.route.and_then(|id| routes.table.route(id)) else { return false };
    // SAFETY: every stock balancer's peer data begins with round robin's.
    let rrp = unsafe { &mut *pd.original_data.cast::<ngx_http_upstream_rr_peer_data_t>() };
    let list = rrp.peers;
    if list.is_null() {
        return false;
    }
    // SAFETY: `list` is the request's current peer list.
    let lock = unsafe { PeersLock::write(list) };
    // SAFETY: the list is locked.
    if unsafe { peers::is_stale(rrp) } {
        return false;
    }
    let now = ngx_time();

    let (candidates, ptrs) = if list == routes.list {
        // SAFETY: the list is locked.
        if unsafe { (*list).single() } != 0 {
            // One server, no backup: round robin's answer is the same.
            return false;
        }
        (&route.primary, &routes.primary)
    } else if list == unsafe { (*routes.list).next } {
        (&route.backup, &routes.backup)
    } else {
        return false;
    };

    // SAFETY (closure): `ptrs` holds this locked list's peers; `tried` has a bit for each.
    let usable = |rrp: &ngx_http_upstream_rr_peer_data_t, index: u32| unsafe {
        let index = index as usize;
        ptrs.get(index)
            .is_some_and(|&peer| !peers::is_tried(rrp, index) && peers::is_usable(&*peer, now))
    };

    let start = routes.cursor.get();
    routes.cursor.set(start.wrapping_add(1));
    if let Some(index) = first_usable(candidates, start, |i| usable(rrp, i)) {
        // SAFETY: the list is write-locked and holds the peer at `index`.
        unsafe { peers::take(pc, rrp, ptrs[index as usize], index as usize, now) };
        return true;
    }

    if list != routes.list || route.backup.is_empty() {
        return false;
    }
    // The route names backup servers: they are honoured only when no primary is usable.
    let any_primary = (0..routes.primary.len() as u32).any(|i| usable(rrp, i));
    // SAFETY: the list is locked; `next` is the backup list.
    let backup_list = unsafe { (*list).next };
    if any_primary || backup_list.is_null() {
        return false;
    }
    // SAFETY: `backup_list` is the primary list's `next`, and round robin sized `tried` for the
    // larger of the two lists.
    unsafe { peers::switch_to_backup(rrp, backup_list) };
    drop(lock);

    // SAFETY: `backup_list` is valid for the cycle.
    let _backup_lock = unsafe { PeersLock::write(backup_list) };
    let ptrs = &routes.backup;
    // SAFETY (closure): as above, for the backup list.
    let usable_backup = |index: u32| unsafe {
        let index = index as usize;
        ptrs.get(index)
            .is_some_and(|&peer| !peers::is_tried(rrp, index) && peers::is_usable(&*peer, now))
    };
    if let Some(index) = first_usable(&route.backup, start, usable_backup) {
        // SAFETY: the backup list is write-locked and holds the peer at `index`.
        unsafe { peers::take(pc, rrp, ptrs[index as usize], index as usize, now) };
        return true;
    }
    false
}

/// `free`: the wrapped method settles the attempt (failures, `conns`, references).
unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if let Some(free) = pd.original_free {
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
    if let Some(notify) = pd.original_notify {
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
    match pd.original_set_session {
        // SAFETY: the wrapped method's own callback and data.
        Some(set) => unsafe { set(pc, pd.original_data) },
        None => Status::NGX_OK.0,
    }
}

unsafe extern "C" fn save_peer_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: `data` is the PeerData set in `init_peer`.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if let Some(save) = pd.original_save_session {
        // SAFETY: the wrapped method's own callback and data.
        unsafe { save(pc, pd.original_data) };
    }
}
