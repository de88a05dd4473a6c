//! Taking a peer for a sticky session, or for an orphaned one with `failover=consistent`, the
//! way round robin takes one: under the list's write lock, after checking that the worker's
//! view and the request's round-robin data are both of the list's current generation.

use ngx::ffi::{ngx_http_upstream_rr_peer_data_t, ngx_peer_connection_t, ngx_time};

use crate::ffi::{self, str_bytes};
use crate::rules::failover;
use crate::rules::route::{first_usable, Route};
use crate::worker::{PeerInfo, View};

/// What a pick came to.
pub enum Pick {
    /// A peer was taken; its zone slot.
    Taken(Option<usize>),
    /// No peer of the candidates can take the request.
    NoneUsable,
    /// The list changed since the view or the request's data was made: nothing was looked at.
    Stale,
}

/// Takes a usable peer of the request's route, as round robin would take it. A route that
/// names only backup servers is honoured only when no primary server is usable.
///
/// # Safety
/// `rrp` must be the request's round-robin data and `pc` its peer connection; `view` the
/// upstream's current view, used within this callback.
pub unsafe fn pick_sticky_peer(
    pc: &mut ngx_peer_connection_t,
    rrp: &mut ngx_http_upstream_rr_peer_data_t,
    view: &View,
    route: &Route,
) -> Pick {
    let list = rrp.peers;
    let backup_list = view.backup_list();
    let (candidates, infos) = if list == view.list {
        (&route.primary, &view.primary)
    } else if !list.is_null() && list == backup_list {
        (&route.backup, &view.backup)
    } else {
        return Pick::Stale;
    };
    // SAFETY: `list` is one of the view's lists.
    let Some(lock) = (unsafe { view.lock(list, true, Some(rrp)) }) else { return Pick::Stale };
    let now = ngx_time();

    // A session may go to a draining server, not to a down, failed, full or tried one.
    let for_session = |rrp: &ngx_http_upstream_rr_peer_data_t, infos: &[PeerInfo], index: u32| {
        let index = index as usize;
        infos.get(index).is_some_and(|info| {
            // SAFETY: `infos` holds the locked list's peers at the view's generation, which is
            // the request's; `tried` has a bit for each.
            unsafe {
                !ffi::is_tried(rrp, index)
                    && ffi::is_usable(&*info.peer, view.is_down_for_sessions(info), now)
            }
        })
    };

    // Where a pick among `n` candidates starts: peers that share a route take turns; a route
    // of one peer leaves the cursor alone.
    let turn = |n: usize| {
        if n < 2 {
            return 0;
        }
        let start = view.cursor.get();
        view.cursor.set(start.wrapping_add(1));
        start
    };
    if let Some(index) =
        first_usable(candidates, turn(candidates.len()), |i| for_session(rrp, infos, i))
    {
        let info = &infos[index as usize];
        // SAFETY: the list is write-locked at the request's generation and holds the peer at
        // `index`.
        unsafe { ffi::take(pc, rrp, info.peer, index as usize, now) };
        return Pick::Taken(info.slot);
    }

    if list != view.list || route.backup.is_empty() || backup_list.is_null() {
        return Pick::NoneUsable;
    }
    // The route names backup servers: they are honoured only when no primary is usable for
    // any request (round robin would then go to the backups too).
    let any_primary = view.primary.iter().enumerate().any(|(index, info)| {
        // SAFETY: as above.
        unsafe {
            let p = &*info.peer;
            !ffi::is_tried(rrp, index) && ffi::is_usable(p, p.down != 0, now)
        }
    });
    if any_primary {
        return Pick::NoneUsable;
    }
    drop(lock);
    // SAFETY: the backup list is the view's; checked at the request's generation again.
    let Some(_backup_lock) = (unsafe { view.lock(backup_list, true, Some(rrp)) }) else {
        return Pick::Stale;
    };
    // SAFETY: `backup_list` is the primary list's `next`, and round robin sized `tried` for
    // the larger of the two lists.
    unsafe { ffi::switch_to_backup(rrp, backup_list) };
    let start = turn(route.backup.len());
    let Some(index) = first_usable(&route.backup, start, |i| for_session(rrp, &view.backup, i))
    else {
        return Pick::NoneUsable;
    };
    let info = &view.backup[index as usize];
    // SAFETY: the backup list is write-locked and holds the peer at `index`.
    unsafe { ffi::take(pc, rrp, info.peer, index as usize, now) };
    Pick::Taken(info.slot)
}

/// `failover=consistent`: the usable primary peer with the highest rendezvous score for the
/// session id (weighted). Drained servers take no orphans; backups are left to the wrapped
/// method, as round robin orders them.
///
/// # Safety
/// As for [`pick_sticky_peer`].
pub unsafe fn pick_consistent_peer(
    pc: &mut ngx_peer_connection_t,
    rrp: &mut ngx_http_upstream_rr_peer_data_t,
    view: &View,
    session: &[u8],
) -> Pick {
    let list = rrp.peers;
    if list.is_null() || list != view.list {
        return Pick::NoneUsable;
    }
    // SAFETY: `list` is the view's primary list.
    let Some(_lock) = (unsafe { view.lock(list, true, Some(rrp)) }) else { return Pick::Stale };
    let now = ngx_time();
    let candidates = view.primary.iter().enumerate().filter_map(|(index, info)| {
        // SAFETY: `view.primary` holds this locked list's peers at the request's generation;
        // `tried` has a bit for each; a peer's name lives as long as the peer.
        unsafe {
            let p = &*info.peer;
            (!ffi::is_tried(rrp, index) && ffi::is_usable(p, p.down != 0, now))
                .then(|| (index, str_bytes(&p.name), p.weight.max(1) as u64))
        }
    });
    let Some(index) = failover::pick(session, candidates) else { return Pick::NoneUsable };
    let info = &view.primary[index];
    // SAFETY: the list is write-locked and holds the peer at `index`.
    unsafe { ffi::take(pc, rrp, info.peer, index, now) };
    Pick::Taken(info.slot)
}
