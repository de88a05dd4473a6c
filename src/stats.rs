//! Counters and runtime state in shared memory, so that every worker counts into, and obeys,
//! the same numbers and marks.
//!
//! One shared memory zone, `jvm_route`, holds a header, three counters per upstream that uses
//! `jvm_route`, and one slot per server address (peer) of those upstreams: five counters and a
//! state word (drain and down marks set at run time). Slots are laid out at startup from the
//! configuration: each upstream's primary peers, then its backup peers, in the order round
//! robin creates them.
//!
//! Across a reload nginx keeps a zone whose name and size are unchanged. The layout's
//! fingerprint (upstream names, server names and address counts) decides whether the old
//! counters and marks still mean the same servers: if so they are kept, otherwise they start
//! again from zero. Servers with `drain` in the configuration drain again after every reload.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_pagesize, ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc,
    ngx_slab_free, ngx_slab_pool_t, ngx_str_t,
};

use crate::failover::hash64;

/// Per-upstream counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum UpstreamCounter {
    /// Requests that carried a session id.
    WithSession = 0,
    /// Requests without a session id.
    WithoutSession = 1,
    /// Requests whose session ids named no route of the upstream.
    UnknownRoute = 2,
}

const UPSTREAM_WORDS: usize = 3;

/// Per-server (peer) counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ServerCounter {
    /// Attempts sent to the server, by any path.
    Requests = 0,
    /// Attempts sent because the session's route named the server.
    Hits = 1,
    /// Requests whose route named the server but that went elsewhere.
    FailoversFrom = 2,
    /// Requests of another route's session that came here instead.
    FailoversTo = 3,
    /// Attempts that failed (connection errors, timeouts, `proxy_next_upstream` cases).
    Failures = 4,
}

const STATE_WORD: usize = 5;
const SERVER_WORDS: usize = 6;

/// Runtime mark: new sessions and fallback traffic avoid the server; its sessions still go.
pub const STATE_DRAIN: u64 = 1;
/// Runtime mark: no request goes to the server.
pub const STATE_DOWN: u64 = 2;

const MAGIC: u64 = 0x6a76_6d5f_726f_7574; // "jvm_rout"
const HEADER_WORDS: usize = 5;

/// What the zone must hold, decided at the end of the `http {}` block.
pub struct Layout {
    /// Number of upstreams with `jvm_route`.
    pub upstreams: usize,
    /// Number of peer slots in all.
    pub slots: usize,
    /// Upstream names, server names and address counts, hashed.
    pub fingerprint: u64,
    /// Slots that the configuration marks `drain`.
    pub drained: Vec<usize>,
}

impl Layout {
    fn words(&self) -> usize {
        HEADER_WORDS + UPSTREAM_WORDS * self.upstreams + SERVER_WORDS * self.slots
    }
}

/// The counters and marks, as a worker sees them.
#[derive(Clone, Copy)]
pub struct Stats {
    words: *const AtomicU64,
    upstreams: usize,
    slots: usize,
}

impl Stats {
    fn word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: `words` points to the zone's array of `words()` atomics, laid out at startup
        // and alive while the cycle is; callers pass indices below that length.
        unsafe { &*self.words.add(index) }
    }

    /// Adds one to an upstream counter.
    pub fn count_upstream(&self, upstream: usize, counter: UpstreamCounter) {
        if upstream < self.upstreams {
            let at = HEADER_WORDS + upstream * UPSTREAM_WORDS + counter as usize;
            self.word(at).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An upstream counter.
    pub fn upstream(&self, upstream: usize, counter: UpstreamCounter) -> u64 {
        if upstream >= self.upstreams {
            return 0;
        }
        self.word(HEADER_WORDS + upstream * UPSTREAM_WORDS + counter as usize)
            .load(Ordering::Relaxed)
    }

    fn slot_word(&self, slot: usize, word: usize) -> Option<&AtomicU64> {
        (slot < self.slots).then(|| {
            self.word(HEADER_WORDS + UPSTREAM_WORDS * self.upstreams + slot * SERVER_WORDS + word)
        })
    }

    /// Adds one to a server counter.
    pub fn count(&self, slot: usize, counter: ServerCounter) {
        if let Some(w) = self.slot_word(slot, counter as usize) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to two server counters of the same slot (a sticky hit is a request and a hit).
    pub fn count_both(&self, slot: usize, first: ServerCounter, second: ServerCounter) {
        if let Some(base) = self.slot_word(slot, 0) {
            let base: *const AtomicU64 = base;
            // SAFETY: both counters are words of the slot, below SERVER_WORDS.
            unsafe {
                (*base.add(first as usize)).fetch_add(1, Ordering::Relaxed);
                (*base.add(second as usize)).fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A server counter.
    pub fn server(&self, slot: usize, counter: ServerCounter) -> u64 {
        self.slot_word(slot, counter as usize).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// The runtime marks of a server (`STATE_DRAIN`, `STATE_DOWN`).
    pub fn state(&self, slot: usize) -> u64 {
        self.slot_word(slot, STATE_WORD).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// Sets and clears runtime marks of a server, and bumps the generation so that every
    /// worker applies them before its next request.
    pub fn set_state(&self, slot: usize, set: u64, clear: u64) {
        if let Some(w) = self.slot_word(slot, STATE_WORD) {
            let mut current = w.load(Ordering::Acquire);
            loop {
                let next = (current | set) & !clear;
                match w.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(seen) => current = seen,
                }
            }
            self.word(2).fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Changes whenever a runtime mark changes.
    pub fn generation(&self) -> u64 {
        self.word(2).load(Ordering::Acquire)
    }
}

/// The statistics of a running cycle: the zone's data once nginx initialised it.
///
/// # Safety
/// `zone` must be null or the zone created by [`add_zone`].
pub unsafe fn from_zone(zone: *mut ngx_shm_zone_t) -> Option<Stats> {
    // SAFETY: per the function contract; `data` is null until `init_zone` ran.
    let header = unsafe { zone.as_ref()?.data.cast::<AtomicU64>() };
    if header.is_null() {
        return None;
    }
    // SAFETY: `init_zone` wrote the header: magic, fingerprint, generation, counts.
    unsafe {
        if (*header).load(Ordering::Relaxed) != MAGIC {
            return None;
        }
        Some(Stats {
            words: header,
            upstreams: (*header.add(3)).load(Ordering::Relaxed) as usize,
            slots: (*header.add(4)).load(Ordering::Relaxed) as usize,
        })
    }
}

/// Hashes the parts of the layout that give slots their meaning.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    parts.into_iter().fold(0, |acc, part| hash64(&[&acc.to_le_bytes(), part]))
}

/// Declares the shared memory zone for `layout`. The `Layout` is kept in the configuration
/// pool and read back by [`init_zone`].
///
/// # Safety
/// `cf` must be the configuration being read; `layout` a valid `Layout` that lives as long as
/// it; `tag` a stable address identifying the module.
pub unsafe fn add_zone(
    cf: *mut ngx_conf_t,
    layout: *mut Layout,
    tag: *mut c_void,
) -> Option<*mut ngx_shm_zone_t> {
    // SAFETY: `ngx_pagesize` is set before any configuration is read.
    let page = unsafe { ngx_pagesize };
    // SAFETY: per the function contract, `layout` is valid.
    let bytes = unsafe { (*layout).words() } * size_of::<u64>();
    // The slab allocator keeps its own header and page table in the zone; eight pages of room
    // is what nginx's own zones ask for at least.
    let size = bytes.div_ceil(page) * page + 8 * page;
    let mut name = ngx_str_t { len: 9, data: c"jvm_route".as_ptr().cast_mut().cast() };
    // SAFETY: per the function contract.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    if zone.is_null() {
        return None;
    }
    // SAFETY: a zone of that name may exist already only if this module declared it.
    unsafe {
        (*zone).init = Some(init_zone);
        (*zone).data = layout.cast();
    }
    Some(zone)
}

/// The zone's `init`: lays out the counters, or keeps those of the previous cycle when the
/// layout is the same.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this once per cycle with the zone declared in `add_zone`, whose
    // `data` is still the Layout; `old` is null or the previous cycle's header in this zone.
    unsafe {
        let layout = &*(*zone).data.cast::<Layout>();
        let shpool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        let words = layout.words();

        let old = old.cast::<AtomicU64>();
        let reuse = !old.is_null()
            && (*old).load(Ordering::Relaxed) == MAGIC
            && (*old.add(1)).load(Ordering::Relaxed) == layout.fingerprint
            && (*old.add(3)).load(Ordering::Relaxed) == layout.upstreams as u64
            && (*old.add(4)).load(Ordering::Relaxed) == layout.slots as u64;

        let header = if reuse {
            old
        } else {
            if !old.is_null() {
                ngx_slab_free(shpool, old.cast());
            }
            let fresh = ngx_slab_alloc(shpool, words * size_of::<u64>()).cast::<AtomicU64>();
            if fresh.is_null() {
                return Status::NGX_ERROR.0;
            }
            ptr::write_bytes(fresh, 0, words);
            (*fresh.add(1)).store(layout.fingerprint, Ordering::Relaxed);
            (*fresh.add(3)).store(layout.upstreams as u64, Ordering::Relaxed);
            (*fresh.add(4)).store(layout.slots as u64, Ordering::Relaxed);
            (*fresh).store(MAGIC, Ordering::Release);
            fresh
        };
        (*zone).data = header.cast();

        let stats = Stats { words: header, upstreams: layout.upstreams, slots: layout.slots };
        for &slot in &layout.drained {
            stats.set_state(slot, STATE_DRAIN, 0);
        }
        stats.word(2).fetch_add(1, Ordering::AcqRel);
    }
    Status::NGX_OK.0
}
