//! The thin FFI layer: byte views of `ngx_str_t`, the peer-list locks and peer helpers that
//! nginx keeps in C macros (reached through `shim.c`), and taking a peer for a connection the
//! way round robin does, so that its `free` callback balances the books.
//!
//! Everything that dereferences a peer of a list that can change at run time (`zone`) does so
//! under a [`PeersLock`] that was checked against the generation the caller's indices belong
//! to; see [`PeersLock::checked`].

use std::ffi::c_void;

use ngx::ffi::{
    ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_server_t, ngx_http_upstream_srv_conf_t, ngx_peer_connection_t, ngx_str_t,
    ngx_table_elt_t, ngx_uint_t, time_t,
};

extern "C" {
    fn ngx_http_jvm_route_peers_rlock(peers: *mut ngx_http_upstream_rr_peers_t);
    fn ngx_http_jvm_route_peers_unlock(peers: *mut ngx_http_upstream_rr_peers_t);
    fn ngx_http_jvm_route_peer_ref(
        peers: *mut ngx_http_upstream_rr_peers_t,
        peer: *mut ngx_http_upstream_rr_peer_t,
    );
    fn ngx_http_jvm_route_peers_generation(peers: *mut ngx_http_upstream_rr_peers_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_peers_can_change(us: *mut ngx_http_upstream_srv_conf_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_peers_lock_checked(
        peers: *mut ngx_http_upstream_rr_peers_t,
        write: ngx_uint_t,
        generation: ngx_uint_t,
        rrp: *const ngx_http_upstream_rr_peer_data_t,
    ) -> ngx_uint_t;
    fn ngx_http_jvm_route_request_generation(
        rrp: *const ngx_http_upstream_rr_peer_data_t,
    ) -> ngx_uint_t;
    fn ngx_http_jvm_route_peer_host(peer: *mut ngx_http_upstream_rr_peer_t) -> *mut c_void;
    fn ngx_http_jvm_route_peers_resolve(
        peers: *mut ngx_http_upstream_rr_peers_t,
    ) -> *mut ngx_http_upstream_rr_peer_t;
    fn ngx_http_jvm_route_server_resolves(server: *mut ngx_http_upstream_server_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_server_service(server: *mut ngx_http_upstream_server_t) -> ngx_uint_t;
    fn ngx_http_jvm_route_post_event(ev: *mut ngx::ffi::ngx_event_t);
}

/// Posts `ev`: nginx's event loop runs its handler after the current handler returns.
///
/// # Safety
/// `ev` must be an event of an open connection (or a timer event) of this worker, alive until
/// its handler runs or the connection is closed (which removes it from the queue).
pub unsafe fn post_event(ev: *mut ngx::ffi::ngx_event_t) {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_post_event(ev) }
}

/// `len` elements at `data`, or none when `data` is null (nginx's empty lists and buffers
/// have a null pointer, which `slice::from_raw_parts` does not allow even for no elements).
///
/// # Safety
/// `data` must be null or point to `len` initialised elements that stay valid and unchanged
/// for `'a`.
#[inline(always)]
pub unsafe fn slice<'a, T>(data: *const T, len: usize) -> &'a [T] {
    if data.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: per the function contract.
    unsafe { std::slice::from_raw_parts(data, len) }
}

/// The bytes of an `ngx_str_t`, for as long as the caller says they live.
///
/// # Safety
/// `s` must be empty (or have a null `data`) or point to `len` bytes that stay valid and
/// unchanged for `'a`.
#[inline(always)]
pub unsafe fn bytes<'a>(s: ngx_str_t) -> &'a [u8] {
    // SAFETY: per the function contract.
    unsafe { slice(s.data, s.len) }
}

/// The bytes of an `ngx_str_t`, borrowed with the structure that holds it.
///
/// # Safety
/// `s` must be empty (or have a null `data`) or point to `len` bytes that stay valid and
/// unchanged while `s` is borrowed: true of every string nginx keeps in its configuration,
/// its requests and its peers (under the peers' lock).
#[inline(always)]
pub unsafe fn str_bytes(s: &ngx_str_t) -> &[u8] {
    // SAFETY: per the function contract.
    unsafe { bytes(*s) }
}

/// Text for messages and pages: the bytes, invalid UTF-8 replaced.
pub fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
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

/// A read or write lock on a peer list, released on drop. Holds nothing for a list that is
/// not in a zone (it has no lock and never changes).
pub struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    /// Takes the read lock, with no check.
    ///
    /// # Safety
    /// `peers` must be a valid peer list of a running upstream.
    pub unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: per the function contract.
        unsafe { ngx_http_jvm_route_peers_rlock(peers) };
        PeersLock(peers)
    }

    /// Takes the read (or write) lock of `peers` and checks, under it, that the list's
    /// generation is still `generation`, and (with `request`) that the request's round-robin
    /// snapshot of it is too. On a mismatch the lock is released and `None` returned: peers the
    /// caller knew may be gone, and indices may have moved. A list that cannot change needs no
    /// lock and no check (`can_change` false).
    ///
    /// # Safety
    /// `peers` must be a valid peer list of a running upstream; `can_change` must be
    /// [`can_change`] of its upstream.
    #[inline]
    pub unsafe fn checked(
        peers: *mut ngx_http_upstream_rr_peers_t,
        write: bool,
        can_change: bool,
        generation: ngx_uint_t,
        request: Option<&ngx_http_upstream_rr_peer_data_t>,
    ) -> Option<Self> {
        if !can_change {
            return Some(PeersLock(std::ptr::null_mut()));
        }
        let rrp = request.map_or(std::ptr::null(), std::ptr::from_ref);
        // SAFETY: per the function contract; `rrp` is null or the request's data.
        let locked = unsafe {
            ngx_http_jvm_route_peers_lock_checked(peers, ngx_uint_t::from(write), generation, rrp)
        };
        // Not `then_some`: a PeersLock made and dropped on a mismatch would unlock again.
        (locked != 0).then(|| PeersLock(peers))
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the lock was taken on this list by `read` or `checked`.
            unsafe { ngx_http_jvm_route_peers_unlock(self.0) };
        }
    }
}

/// The list's generation: it changes whenever the zone's resolver adds or removes a peer.
///
/// # Safety
/// `peers` must be valid and locked.
pub unsafe fn generation(peers: *mut ngx_http_upstream_rr_peers_t) -> ngx_uint_t {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_peers_generation(peers) }
}

/// The generation of the peer list that the request's round-robin data was set up with.
pub fn request_generation(rrp: &ngx_http_upstream_rr_peer_data_t) -> ngx_uint_t {
    // SAFETY: reads one field of the request's data.
    unsafe { ngx_http_jvm_route_request_generation(rrp) }
}

/// Whether the upstream's peer list can change at run time (it is in a zone).
pub fn can_change(us: &ngx_http_upstream_srv_conf_t) -> bool {
    // SAFETY: reads one field of a valid configuration.
    unsafe { ngx_http_jvm_route_peers_can_change(std::ptr::from_ref(us).cast_mut()) != 0 }
}

/// The identity of the `resolve` server a peer was resolved from (null for a peer of a server
/// with a fixed address).
///
/// # Safety
/// `peer` must be a peer of a locked list.
pub unsafe fn peer_host(peer: *mut ngx_http_upstream_rr_peer_t) -> *mut c_void {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_peer_host(peer) }
}

/// The list's `resolve` templates, one per `resolve` server of the list, in configuration
/// order (null when there are none).
///
/// # Safety
/// `peers` must be a valid, locked list.
pub unsafe fn resolve_templates(
    peers: *mut ngx_http_upstream_rr_peers_t,
) -> *mut ngx_http_upstream_rr_peer_t {
    // SAFETY: per the function contract.
    unsafe { ngx_http_jvm_route_peers_resolve(peers) }
}

/// Whether a configured server is resolved at run time (`resolve`).
pub fn server_resolves(server: &ngx_http_upstream_server_t) -> bool {
    // SAFETY: reads one field of a valid server.
    unsafe { ngx_http_jvm_route_server_resolves(std::ptr::from_ref(server).cast_mut()) != 0 }
}

/// Whether a configured server takes its addresses and weights from DNS SRV records
/// (`service=`).
pub fn server_has_service(server: &ngx_http_upstream_server_t) -> bool {
    // SAFETY: reads one field of a valid server.
    unsafe { ngx_http_jvm_route_server_service(std::ptr::from_ref(server).cast_mut()) != 0 }
}

/// Adds a response header with every field set, as nginx sets its own: `next` (nginx >= 1.23
/// links headers of one name through it) is null. None if memory ran out.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub unsafe fn push_header(
    r: *mut ngx::ffi::ngx_http_request_t,
    key: &str,
    value: &[u8],
) -> Option<()> {
    // SAFETY: per the function contract; nginx copies key and value into the request pool.
    unsafe {
        let h = ngx::ffi::ngx_list_push(&mut (*r).headers_out.headers).cast::<ngx_table_elt_t>();
        if h.is_null() {
            return None;
        }
        // The element is pool memory, not initialised: every field starts as zero (`next`
        // null), then the key, value, lower-case key and hash are set.
        std::ptr::write_bytes(h, 0, 1);
        ngx::ffi::add_to_ngx_table(h, (*r).pool, key, value)
    }
}

/// The values of the `Set-Cookie` lines in the response header that the upstream server of
/// `r` sent (as it sent them: before `proxy_cookie_*` rewrote nginx's copies, and whatever
/// `proxy_hide_header` hides). Empty for a request without an upstream.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(nginx1_23_0)]
pub unsafe fn upstream_set_cookies<'r>(
    r: *mut ngx::ffi::ngx_http_request_t,
) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract; `upstream` is null or the request's upstream, whose
    // `set_cookie` is null or a NULL-terminated list of header lines in request memory.
    let first = unsafe { (*r).upstream.as_ref().and_then(|u| u.headers_in.set_cookie.as_ref()) };
    std::iter::successors(first, |h| {
        // SAFETY: as above.
        unsafe { h.next.as_ref() }
    })
    // SAFETY: a header line's value lives as long as the request.
    .map(|h| unsafe { bytes::<'r>(h.value) })
}

/// The values of the `Set-Cookie` lines in the response header that the upstream server of
/// `r` sent. Empty for a request without an upstream.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(not(nginx1_23_0))]
pub unsafe fn upstream_set_cookies<'r>(
    r: *mut ngx::ffi::ngx_http_request_t,
) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract; `upstream` is null or the request's upstream. Its
    // `cookies` array is created by the first `Set-Cookie` line (null and of element size 0
    // before), so it is read by hand, not with `as_slice`, which asserts the element size.
    let lines: &'r [*mut ngx_table_elt_t] = unsafe {
        match (*r).upstream.as_ref() {
            Some(u) if !u.headers_in.cookies.elts.is_null() => {
                slice(u.headers_in.cookies.elts.cast(), u.headers_in.cookies.nelts)
            }
            _ => &[],
        }
    };
    lines
        .iter()
        // SAFETY: every element is a header line of the response, alive as long as the
        // request; so is its value.
        .filter_map(|&h| unsafe { h.as_ref().map(|h| bytes::<'r>(h.value)) })
}

/// Calls `f` with the key and value of every header line of `list` (a request's
/// `headers_in.headers` or `headers_out.headers`) that is not deleted (`hash` 0).
///
/// # Safety
/// `list` must be a live list of `ngx_table_elt_t`; the lines live for `'r`.
pub unsafe fn each_header<'r>(
    list: *const ngx::ffi::ngx_list_t,
    mut f: impl FnMut(&'r [u8], &'r [u8]),
) {
    // SAFETY: per the function contract: parts linked by `next`, each with `nelts` elements.
    unsafe {
        let mut part: *const ngx::ffi::ngx_list_part_t = &(*list).part;
        while !part.is_null() {
            let lines = slice((*part).elts.cast::<ngx_table_elt_t>(), (*part).nelts);
            for h in lines {
                if h.hash != 0 {
                    f(bytes::<'r>(h.key), bytes::<'r>(h.value));
                }
            }
            part = (*part).next;
        }
    }
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

/// [`is_failed`] of a peer that other workers may be writing (under the list's read lock and
/// the peer's own lock): its fields are read through the raw pointer, one by one.
///
/// # Safety
/// `peer` must be a peer of a list locked at least for reading.
pub unsafe fn is_failed_raw(peer: *const ngx_http_upstream_rr_peer_t, now: time_t) -> bool {
    // SAFETY: per the function contract.
    unsafe {
        let max_fails = (&raw const (*peer).max_fails).read();
        let fails = (&raw const (*peer).fails).read_volatile();
        let checked = (&raw const (*peer).checked).read_volatile();
        let fail_timeout = (&raw const (*peer).fail_timeout).read();
        max_fails != 0 && fails >= max_fails && now - checked <= fail_timeout
    }
}

/// Whether a peer had reached `max_fails` (its failures are counted until an attempt after
/// `fail_timeout` succeeds): read as [`is_failed_raw`] reads it.
///
/// # Safety
/// `peer` must be a peer of a list locked at least for reading.
pub unsafe fn reached_max_fails_raw(peer: *const ngx_http_upstream_rr_peer_t) -> bool {
    // SAFETY: per the function contract.
    unsafe {
        let max_fails = (&raw const (*peer).max_fails).read();
        let fails = (&raw const (*peer).fails).read_volatile();
        max_fails != 0 && fails >= max_fails
    }
}

/// Gives `peer` (at `index` of `rrp`'s current list) to the connection, exactly as round robin
/// does after choosing it: current peer, reference, tried bit, `checked`, address, `conns`.
///
/// # Safety
/// `rrp->peers` must be write-locked (checked against the request's generation) and hold
/// `peer` at `index`; `rrp->tried` has a bit for every peer of that list.
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

#[cfg(test)]
mod tests {
    //! [`push_header`] against stand-ins for the three nginx functions it calls (the unit tests
    //! run without nginx): the list hands out memory full of garbage, as a reused pool block is.
    use super::*;
    use ngx::ffi::{ngx_http_request_t, ngx_list_t, ngx_pool_t, ngx_uint_t};
    use std::cell::RefCell;

    thread_local! {
        static ELEMENT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[no_mangle]
    extern "C" fn ngx_list_push(_list: *mut ngx_list_t) -> *mut c_void {
        ELEMENT.with(|e| {
            let mut e = e.borrow_mut();
            *e = vec![0xA5; size_of::<ngx_table_elt_t>() + 64];
            e.as_mut_ptr().cast()
        })
    }

    #[no_mangle]
    extern "C" fn ngx_pnalloc(_pool: *mut ngx_pool_t, size: usize) -> *mut c_void {
        Box::leak(vec![0u8; size.max(1)].into_boxed_slice()).as_mut_ptr().cast()
    }

    #[no_mangle]
    extern "C" fn ngx_hash_strlow(dst: *mut u8, src: *mut u8, n: usize) -> ngx_uint_t {
        let mut key: ngx_uint_t = 0;
        for i in 0..n {
            // SAFETY: nginx's contract: `n` bytes at each.
            unsafe {
                let c = (*src.add(i)).to_ascii_lowercase();
                *dst.add(i) = c;
                key = key.wrapping_mul(31).wrapping_add(ngx_uint_t::from(c));
            }
        }
        key
    }

    #[test]
    fn a_pushed_header_has_every_field_set() {
        // SAFETY: a zeroed request is a valid value of the C struct; only `headers_out.headers`
        // and `pool` are read, by the stand-ins above.
        let mut r: ngx_http_request_t = unsafe { std::mem::zeroed() };
        // SAFETY: `r` lives through the call; the element stays in ELEMENT.
        assert!(unsafe { push_header(&mut r, "Set-Cookie", b"ROUTE=.a") }.is_some());
        ELEMENT.with(|e| {
            let e = e.borrow();
            // SAFETY: push_header wrote a whole ngx_table_elt_t at the start of the element.
            let h = unsafe { &*e.as_ptr().cast::<ngx_table_elt_t>() };
            // SAFETY: key and value were copied by the stand-in allocator.
            unsafe {
                assert_eq!(str_bytes(&h.key), b"Set-Cookie");
                assert_eq!(str_bytes(&h.value), b"ROUTE=.a");
            }
            assert_ne!(h.hash, 0);
            #[cfg(nginx1_23_0)]
            assert!(h.next.is_null(), "next links headers of one name: it must be null");
        });
    }
}
