//! Helpers over nginx's round-robin peers: the locks (C macros, reached through `shim.c`), the
//! test round robin applies before it picks a peer, and taking a peer for a connection the
//! way round robin does, so that its `free` callback balances the books.

use ngx::ffi::{
    ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_peer_connection_t, ngx_uint_t, time_t,
};

extern "C" {
    fn ngx_http_jvm_route_peers_rlock(peers: *mut ngx_http_upstream_rr_peers_t);
    fn ngx_http_jvm_route_peers_wlock(peers: *mut ngx_http_upstream_rr_peers_t);
    fn ngx_http_jvm_route_peers_unlock(peers: *mut ngx_http_upstream_rr_peers_t);
    fn ngx_http_jvm_route_peer_ref(
        peers: *mut ngx_http_upstream_rr_peers_t,
        peer: *mut ngx_http_upstream_rr_peer_t,
    );
    fn ngx_http_jvm_route_peers_generation(peers: *mut ngx_http_upstream_rr_peers_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_peers_locked_generation(
        peers: *mut ngx_http_upstream_rr_peers_t,
    ) -> ngx_uint_t;
    fn ngx_http_jvm_route_peers_can_change(us: *mut ngx_http_upstream_srv_conf_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_peers_wlock_current(
        rrp: *mut ngx_http_upstream_rr_peer_data_t,
    ) -> ngx_uint_t;
}

/// The `down` value that makes the balancing methods skip a draining server. nginx >= 1.29.6
/// has its own value for draining (`NGX_HTTP_UPSTREAM_DRAINING`), which its status and sticky
/// code understand; before, any non-zero `down` does.
#[cfg(nginx1_29_6)]
pub const DRAINING_DOWN: ngx_uint_t = 8;
/// The `down` value that makes the balancing methods skip a draining server.
#[cfg(not(nginx1_29_6))]
pub const DRAINING_DOWN: ngx_uint_t = 1;

const BITS: usize = usize::BITS as usize;

/// A read or write lock on a peer list, released on drop. A no-op without `zone`.
pub struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    /// Takes the read lock.
    ///
    /// # Safety
    /// `peers` must be a valid peer list of a running upstream.
    pub unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: per the function contract.
        unsafe { ngx_http_jvm_route_peers_rlock(peers) };
        PeersLock(peers)
    }

    /// Takes the write lock, as round robin does to pick a peer.
    ///
    /// # Safety
    /// `peers` must be a valid peer list of a running upstream.
    pub unsafe fn write(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: per the function contract.
        unsafe { ngx_http_jvm_route_peers_wlock(peers) };
        PeersLock(peers)
    }
}

impl PeersLock {
    /// Takes the write lock of the request's peer list, unless the request's view of it is
    /// stale (round robin answers `NGX_BUSY` then, and so must the caller). A list that cannot
    /// change (`can_change` false: no zone) has no lock and is never stale: nothing to do.
    ///
    /// # Safety
    /// `rrp` must be the request's round-robin data, with a valid peer list; `can_change` must
    /// be [`can_change`] of its upstream.
    #[inline]
    pub unsafe fn write_current(
        rrp: *mut ngx_http_upstream_rr_peer_data_t,
        can_change: bool,
    ) -> Option<Self> {
        if !can_change {
            return Some(PeersLock(std::ptr::null_mut()));
        }
        // SAFETY: per the function contract.
        let locked = unsafe { ngx_http_jvm_route_peers_wlock_current(rrp) } != 0;
        // SAFETY: as above.
        locked.then(|| PeersLock(unsafe { (*rrp).peers }))
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the lock was taken on this list in `read`, `write` or `write_current`.
            unsafe { ngx_http_jvm_route_peers_unlock(self.0) };
        }
    }
}

/// The list's generation: it changes when the zone's resolver changes the peers.
///
/// # Safety
/// `peers` must be valid and locked.
pub unsafe fn generation(peers: *mut ngx_http_upstream_rr_peers_t) -> ngx_uint_t {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_peers_generation(peers) }
}

/// Whether the upstream's peer list can change at run time (it is in a zone).
pub fn can_change(us: &ngx_http_upstream_srv_conf_t) -> bool {
    // SAFETY: reads one field of a valid configuration.
    unsafe { ngx_http_jvm_route_peers_can_change(std::ptr::from_ref(us).cast_mut()) != 0 }
}

/// The list's generation, read under its read lock.
///
/// # Safety
/// `peers` must be a valid peer list of a running upstream.
pub unsafe fn locked_generation(peers: *mut ngx_http_upstream_rr_peers_t) -> ngx_uint_t {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_peers_locked_generation(peers) }
}

/// The peers of a list, in order.
///
/// # Safety
/// `peers` must be valid and locked for as long as the iterator is used.
pub unsafe fn iter(
    peers: *mut ngx_http_upstream_rr_peers_t,
) -> impl Iterator<Item = *mut ngx_http_upstream_rr_peer_t> {
    // SAFETY: per the function contract: a NULL-terminated linked list.
    let first = if peers.is_null() { std::ptr::null_mut() } else { unsafe { (*peers).peer } };
    std::iter::successors((!first.is_null()).then_some(first), |&p| {
        // SAFETY: `p` is a peer of the locked list.
        let next = unsafe { (*p).next };
        (!next.is_null()).then_some(next)
    })
}

/// Whether the peer at `index` of the request's current list was tried for this request.
///
/// # Safety
/// `rrp->tried` must have a bit for `index`.
#[inline(always)]
pub unsafe fn is_tried(rrp: &ngx_http_upstream_rr_peer_data_t, index: usize) -> bool {
    // SAFETY: per the function contract.
    unsafe { *rrp.tried.add(index / BITS) & (1 << (index % BITS)) != 0 }
}

/// Whether `down` keeps the peer from a session's requests: a draining peer (nginx >= 1.29.6's
/// own value) still takes them.
pub fn is_down(peer: &ngx_http_upstream_rr_peer_t) -> bool {
    #[cfg(nginx1_29_6)]
    return peer.down & !DRAINING_DOWN != 0;
    #[cfg(not(nginx1_29_6))]
    return peer.down != 0;
}

/// Round robin's test, with `down` decided by the caller: not failed `max_fails` times within
/// `fail_timeout`, and below `max_conns`.
#[inline(always)]
pub fn is_usable(peer: &ngx_http_upstream_rr_peer_t, down: bool, now: time_t) -> bool {
    let failed = is_failed(peer, now);
    let full = peer.max_conns != 0 && peer.conns >= peer.max_conns;
    !down && !failed && !full
}

/// Whether round robin would consider the peer failed now (`max_fails` within `fail_timeout`).
#[inline(always)]
pub fn is_failed(peer: &ngx_http_upstream_rr_peer_t, now: time_t) -> bool {
    peer.max_fails != 0 && peer.fails >= peer.max_fails && now - peer.checked <= peer.fail_timeout
}

/// Gives `peer` (at `index` of `rrp`'s current list) to the connection, exactly as round robin
/// does after choosing it: current peer, reference, tried bit, `checked`, address, `conns`.
///
/// # Safety
/// `rrp->peers` must be write-locked and hold `peer` at `index`.
#[inline(always)]
pub unsafe fn take(
    pc: &mut ngx_peer_connection_t,
    rrp: &mut ngx_http_upstream_rr_peer_data_t,
    peer: *mut ngx_http_upstream_rr_peer_t,
    index: usize,
    now: time_t,
) {
    // SAFETY: per the function contract.
    unsafe {
        rrp.current = peer;
        ngx_http_jvm_route_peer_ref(rrp.peers, peer);
        *rrp.tried.add(index / BITS) |= 1 << (index % BITS);

        let p = &mut *peer;
        if now - p.checked > p.fail_timeout {
            p.checked = now;
        }
        pc.sockaddr = p.sockaddr;
        pc.socklen = p.socklen;
        pc.name = &mut p.name;
        pc.connection = std::ptr::null_mut();
        pc.set_cached(0);
        p.conns += 1;
    }
}

/// Switches the request to the backup list, as round robin does when no primary is usable.
///
/// # Safety
/// `backup` must be `rrp->peers->next`, and `rrp->tried` sized for it.
pub unsafe fn switch_to_backup(
    rrp: &mut ngx_http_upstream_rr_peer_data_t,
    backup: *mut ngx_http_upstream_rr_peers_t,
) {
    // SAFETY: per the function contract.
    unsafe {
        rrp.peers = backup;
        let words = (*backup).number.div_ceil(BITS);
        std::ptr::write_bytes(rrp.tried, 0, words);
    }
}
