//! The shared zone: counters and runtime marks in shared memory, so that every worker counts
//! into, and obeys, the same numbers and marks.
//!
//! The zone `jvm_route` holds a header, one record per upstream that uses `jvm_route` (three
//! counters) and one record per `server` line of those upstreams (seven counters, the marks set
//! at run time, the runtime weight, and what the configuration says of the line: its weight,
//! `drain`, `down`, and whether the upstream takes runtime weights). Each record starts with a
//! key: a hash of the upstream's name, and for a server line of the upstream's name, the
//! server's name, its srun_id, whether it is a backup, and its rank among identical lines.
//! The configuration's marks and the runtime marks are separate facts; how they combine is
//! [`rules::marks`](crate::rules::marks).
//!
//! Lifetime across reloads, the rule of nginx's own upstream zone: the zone is declared
//! `noreuse`, so every cycle gets fresh shared memory, and the old cycle's memory is never
//! freed or reinterpreted by the new one. The old cycle's workers keep their mapping of it
//! until they exit, however long that is, and the master unmaps it once the new cycle is up.
//! When the new cycle is complete (the module's `init_module`, in the master, after every zone
//! and listening socket of the cycle is ready and before the new workers exist), the master
//! first sets the old zone's `superseded` word (the one word of the old zone it writes) and
//! then copies the counters and marks of every record whose key is in the old zone: unchanged
//! servers keep their numbers and marks whatever else the reload changed, and a runtime mark
//! follows [`rules::marks::carried`](crate::rules::marks::carried). A control action that an
//! old worker takes writes its mark and then reads `superseded`; the master writes
//! `superseded` and then reads the marks (sequentially consistent on both sides): either the
//! copy sees the mark, or the worker sees the flag and answers 503 with `Retry-After` (the
//! action is repeatable). So an action is never acknowledged and then lost. A reload that fails
//! never reaches `init_module`, and leaves the old zone as it was. What old workers count after
//! the copy is not carried over. A binary upgrade (`USR2`) starts a new master with a fresh
//! zone: marks set at run time are not carried to it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_list_part_t, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_slab_alloc, ngx_slab_pool_t, ngx_str_t,
};

use crate::rules::check::{CheckSpec, Health};
use crate::rules::failover::hash64;
use crate::rules::marks::{self, Configured, CONF_WEIGHTS};

/// The zone's name.
pub const ZONE_NAME: &str = "jvm_route";

/// Per-upstream counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum UpstreamCounter {
    /// Requests that carried a session id.
    WithSession = 1,
    /// Requests without a session id.
    WithoutSession = 2,
    /// Requests whose session ids named no route of the upstream.
    UnknownRoute = 3,
}

const UPSTREAM_WORDS: usize = 4;

/// Per-server counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ServerCounter {
    /// Attempts sent to the server, by any path.
    Requests = 1,
    /// Attempts sent because the session's route named the server.
    Hits = 2,
    /// Requests whose route named the server but that went elsewhere.
    FailoversFrom = 3,
    /// Requests of another route's session that came here instead.
    FailoversTo = 4,
    /// Attempts that failed (connection errors, timeouts, `proxy_next_upstream` cases).
    Failures = 5,
    /// Responses whose session cookie names another route than the server's srun_id.
    RouteMismatch = 10,
    /// Responses whose session cookie names no route.
    RouteMissing = 11,
}

/// The runtime marks ([`rules::marks`](crate::rules::marks)'s `RT_*` bits).
const STATE_WORD: usize = 6;
/// The weight set at run time (0: none, the configured weight applies).
const WEIGHT_WORD: usize = 7;
/// The configured weight the runtime weight was set against: a reload that changes the
/// configured weight drops the runtime one.
const CONFIGURED_WEIGHT_WORD: usize = 8;
/// What the configuration says of the line ([`Configured::to_word`]).
const CONFIG_WORD: usize = 9;
// Words 10 and 11: `ServerCounter::RouteMismatch` and `RouteMissing`.
/// Which warnings of the server's issued routes this cycle has logged ([`Stats::first_warning`]):
/// never carried over, so a reload warns again.
const WARNED_WORD: usize = 12;
/// The line's first check slot (an index into the check table), and how many it has.
const CHECK_BASE_WORD: usize = 13;
const CHECK_COUNT_WORD: usize = 14;
/// `slow_start=` of the line (ms; 0: none).
const SLOW_START_WORD: usize = 15;
/// When the line's slow start began (monotonic ms; 0: none): it takes new sessions at a weight
/// that grows to its full weight over `slow_start`.
const RAMP_WORD: usize = 16;
const SERVER_WORDS: usize = 17;

/// A check slot: the health of one address of a server line ([`rules::check`](crate::rules::check)).
/// Its key (a hash of the address; 0: free).
const CK_KEY: usize = 0;
/// When the next check of the address is due (ms): the worker that moves it on takes the turn.
const CK_DUE: usize = 1;
/// [`Health::to_word`].
const CK_HEALTH: usize = 2;
/// When the last check ended (ms; 0: never).
const CK_LAST: usize = 3;
/// Why the last check failed ([`check::error`]).
const CK_ERROR: usize = 4;
/// Checks done.
const CK_PROBES: usize = 5;
/// When a worker last saw the address among the peers (ms): a slot not seen for long is
/// taken by a new address of the line.
const CK_SEEN: usize = 6;
const CHECK_WORDS: usize = 7;
/// The key of a check slot being (re)claimed.
const RESERVED: u64 = u64::MAX;

/// The largest weight that can be set at run time (like Apache's load factor, up to 100 there).
pub const MAX_WEIGHT: u64 = 1000;

const MAGIC: u64 = 0x6a76_6d5f_726f_7574; // "jvm_rout"
/// The record layout this code writes and reads; an old zone of another one is not copied.
const VERSION: u64 = 7;
/// Words: magic, version, generation, upstreams, servers, superseded, check slots.
const HEADER_WORDS: usize = 7;
const GENERATION_WORD: usize = 2;
/// Set (by the master) once a newer cycle has copied this zone's marks: a change written here
/// after that may not reach the running configuration.
const SUPERSEDED_WORD: usize = 5;

/// What the configuration says of one server line.
#[derive(Clone, Copy, Debug)]
pub struct ServerLayout {
    /// The record's key ([`server_key`]).
    pub key: u64,
    /// `weight=`.
    pub weight: u64,
    /// `drain` and `down`.
    pub configured: Configured,
    /// Whether the upstream takes runtime weights.
    pub weights: bool,
    /// Check slots of the line (0: the upstream has no `check`): one per address it can have.
    pub check_slots: u32,
    /// `slow_start=` in ms (0: none).
    pub slow_start: u64,
}

/// What the zone must hold, decided at the end of the `http {}` block.
pub struct Layout {
    /// The key of each upstream with `jvm_route`, by its index.
    pub upstreams: Vec<u64>,
    /// Each server line of those upstreams, by its slot.
    pub servers: Vec<ServerLayout>,
    /// The previous cycle's zone data (its header), if it had one: found by `add_zone` in the
    /// running cycle (nginx before 1.27 gives a `noreuse` zone's init no old data), or given
    /// to `init_zone`.
    previous: *const AtomicU64,
}

impl Layout {
    /// The layout of these records.
    pub fn new(upstreams: Vec<u64>, servers: Vec<ServerLayout>) -> Layout {
        Layout { upstreams, servers, previous: ptr::null() }
    }
}

/// A change that may not reach the running configuration: a newer cycle has already copied
/// this zone's marks (a reload is under way, and this worker belongs to the old cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded;

impl Layout {
    fn check_slots(&self) -> usize {
        self.servers.iter().map(|s| s.check_slots as usize).sum()
    }

    fn words(&self) -> usize {
        HEADER_WORDS
            + UPSTREAM_WORDS * self.upstreams.len()
            + SERVER_WORDS * self.servers.len()
            + CHECK_WORDS * self.check_slots()
    }
}

/// The key of an upstream's record.
pub fn upstream_key(name: &[u8]) -> u64 {
    hash64(&[b"upstream", name])
}

/// The key of a server line's record: what makes it "the same server" across a reload.
pub fn server_key(upstream: &[u8], server: &[u8], srun_id: &[u8], backup: bool, rank: u32) -> u64 {
    let kind: &[u8] = if backup { b"backup" } else { b"primary" };
    hash64(&[b"server", upstream, server, srun_id, kind, &rank.to_le_bytes()])
}

/// The counters and marks of the running cycle, as a worker sees them.
#[derive(Clone, Copy)]
pub struct Stats {
    words: *const AtomicU64,
    upstreams: usize,
    servers: usize,
    checks: usize,
}

impl Stats {
    fn word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: `words` points to the zone's array of `Layout::words()` atomics, laid out
        // before the workers started and mapped while this process lives; callers pass indices
        // below that length.
        unsafe { &*self.words.add(index) }
    }

    fn upstream_word(&self, upstream: usize, word: usize) -> Option<&AtomicU64> {
        (upstream < self.upstreams)
            .then(|| self.word(HEADER_WORDS + upstream * UPSTREAM_WORDS + word))
    }

    fn server_word(&self, slot: usize, word: usize) -> Option<&AtomicU64> {
        (slot < self.servers).then(|| {
            self.word(HEADER_WORDS + UPSTREAM_WORDS * self.upstreams + slot * SERVER_WORDS + word)
        })
    }

    fn check_word(&self, index: usize, word: usize) -> Option<&AtomicU64> {
        (index < self.checks).then(|| {
            self.word(
                HEADER_WORDS
                    + UPSTREAM_WORDS * self.upstreams
                    + SERVER_WORDS * self.servers
                    + index * CHECK_WORDS
                    + word,
            )
        })
    }

    fn check_load(&self, index: usize, word: usize) -> u64 {
        self.check_word(index, word).map_or(0, |w| w.load(Ordering::Acquire))
    }

    fn check_store(&self, index: usize, word: usize, value: u64) {
        if let Some(w) = self.check_word(index, word) {
            w.store(value, Ordering::Release);
        }
    }

    /// The check slots of server line `slot`: the first index and how many.
    fn check_range(&self, slot: usize) -> std::ops::Range<usize> {
        let load = |w| self.server_word(slot, w).map_or(0, |w| w.load(Ordering::Relaxed) as usize);
        let (base, count) = (load(CHECK_BASE_WORD), load(CHECK_COUNT_WORD));
        base..(base + count).min(self.checks)
    }

    /// Whether server line `slot` is checked.
    pub fn is_checked(&self, slot: usize) -> bool {
        !self.check_range(slot).is_empty()
    }

    /// The check slot of the address with `key` on server line `slot`, if it has one.
    pub fn check_find(&self, slot: usize, key: u64) -> Option<usize> {
        let key = key.clamp(1, RESERVED - 1);
        self.check_range(slot).find(|&i| self.check_load(i, CK_KEY) == key)
    }

    /// Whether server line `slot` has a check slot nobody took yet.
    fn check_has_free(&self, slot: usize) -> bool {
        self.check_range(slot).any(|i| self.check_load(i, CK_KEY) == 0)
    }

    /// The check slot of the address with `key` on server line `slot`, taking a free one (or
    /// one whose address no worker has seen for `stale` ms) if it has none, starting at
    /// `initial`; notes that the address was seen now. None: every slot of the line is taken.
    pub fn check_claim(
        &self,
        slot: usize,
        key: u64,
        now: u64,
        stale: u64,
        initial: Health,
    ) -> Option<usize> {
        let key = key.max(1);
        if let Some(i) = self.check_find(slot, key) {
            self.check_store(i, CK_SEEN, now);
            return Some(i);
        }
        for i in self.check_range(slot) {
            let Some(k) = self.check_word(i, CK_KEY) else { continue };
            let old = k.load(Ordering::Acquire);
            let free = old == 0
                || (old != RESERVED && self.check_load(i, CK_SEEN).saturating_add(stale) < now);
            // Reserved while its words are written: no reader finds it by the new key before
            // its health is the initial one.
            if free
                && k.compare_exchange(old, RESERVED, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                for (w, v) in [
                    (CK_DUE, 0),
                    (CK_HEALTH, initial.to_word()),
                    (CK_LAST, 0),
                    (CK_ERROR, 0),
                    (CK_PROBES, 0),
                    (CK_SEEN, now),
                ] {
                    self.check_store(i, w, v);
                }
                k.store(key, Ordering::Release);
                self.bump();
                return Some(i);
            }
        }
        None
    }

    /// Takes the turn to check slot `index` if it is due at `now`; the next turn is then due
    /// `period` ms later. Exactly one caller (of any worker) gets each turn.
    pub fn check_take_turn(&self, index: usize, now: u64, period: u64) -> bool {
        let Some(due) = self.check_word(index, CK_DUE) else { return false };
        let mut current = due.load(Ordering::Acquire);
        while current <= now {
            match due.compare_exchange(current, now + period, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
        false
    }

    /// When the earliest check of server line `slot`'s checked addresses is due (monotonic
    /// ms), if it has any.
    pub fn check_next_due(&self, slot: usize) -> Option<u64> {
        self.check_range(slot)
            .filter(|&i| !matches!(self.check_load(i, CK_KEY), 0 | RESERVED))
            .map(|i| self.check_load(i, CK_DUE))
            .min()
    }

    /// The health of check slot `index`.
    pub fn check_health(&self, index: usize) -> Health {
        Health::from_word(self.check_load(index, CK_HEALTH))
    }

    /// Whether the address with `key` of server line `slot` is out by its checks
    /// (`default_down` until it has a slot).
    pub fn check_down(&self, slot: usize, key: u64, default_down: bool) -> bool {
        match self.check_find(slot, key) {
            Some(i) => self.check_health(i).down,
            // Not checked yet: `default_down` says; an address beyond the line's slots (a
            // `resolve` server with more addresses than slots) is not checked at all.
            None => default_down && self.check_has_free(slot),
        }
    }

    /// What the status page shows of check slot `index`: its health, when the last check
    /// ended (ms), why it failed, and how many checks ran.
    pub fn check_info(&self, index: usize) -> (Health, u64, u64, u64) {
        (
            self.check_health(index),
            self.check_load(index, CK_LAST),
            self.check_load(index, CK_ERROR),
            self.check_load(index, CK_PROBES),
        )
    }

    /// Records a check of slot `index` that ended at `now` (`error` 0: it passed). Returns the
    /// health before and after when it changed between up and down (and then every worker
    /// applies it before its next request).
    pub fn check_record(
        &self,
        index: usize,
        now: u64,
        error: u64,
        spec: &CheckSpec,
    ) -> Option<(Health, Health)> {
        let word = self.check_word(index, CK_HEALTH)?;
        let before = Health::from_word(word.load(Ordering::Acquire));
        let (after, changed) = before.after(error == 0, spec);
        word.store(after.to_word(), Ordering::Release);
        self.check_store(index, CK_LAST, now);
        self.check_store(index, CK_ERROR, error);
        if let Some(w) = self.check_word(index, CK_PROBES) {
            w.fetch_add(1, Ordering::Relaxed);
        }
        if changed {
            self.bump();
            return Some((before, after));
        }
        None
    }

    /// Starts the slow start of server line `slot` at `now` (monotonic ms), if it has one.
    pub fn start_ramp(&self, slot: usize, now: u64) {
        let Some(ramp) = self.server_word(slot, RAMP_WORD) else { return };
        if self.server_word(slot, SLOW_START_WORD).is_some_and(|w| w.load(Ordering::Relaxed) > 0) {
            ramp.store(now.max(1), Ordering::Release);
            self.bump();
        }
    }

    /// Where server line `slot`'s slow start is at `now`: the share of its full weight it has
    /// (per mille, 1 to 999) and the ms left. None when it has none under way.
    pub fn ramp(&self, slot: usize, now: u64) -> Option<(u64, u64)> {
        let load = |w| self.server_word(slot, w).map_or(0, |w| w.load(Ordering::Acquire));
        let (start, length) = (load(RAMP_WORD), load(SLOW_START_WORD));
        let elapsed = now.checked_sub(start).filter(|_| start != 0 && length != 0)?;
        (elapsed < length).then(|| ((elapsed * 1000 / length).clamp(1, 999), length - elapsed))
    }

    /// Moves the generation on: every worker applies the marks and checks again.
    fn bump(&self) {
        self.word(GENERATION_WORD).fetch_add(1, Ordering::SeqCst);
    }

    /// Adds one to an upstream counter.
    pub fn count_upstream(&self, upstream: usize, counter: UpstreamCounter) {
        if let Some(w) = self.upstream_word(upstream, counter as usize) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An upstream counter.
    pub fn upstream(&self, upstream: usize, counter: UpstreamCounter) -> u64 {
        self.upstream_word(upstream, counter as usize).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Adds one to a server counter.
    pub fn count(&self, slot: usize, counter: ServerCounter) {
        if let Some(w) = self.server_word(slot, counter as usize) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to two server counters of the same slot (a sticky hit is a request and a hit).
    pub fn count_both(&self, slot: usize, first: ServerCounter, second: ServerCounter) {
        if let Some(base) = self.server_word(slot, 0) {
            let base: *const AtomicU64 = base;
            // SAFETY: both counters are words of the slot's record, below SERVER_WORDS.
            unsafe {
                (*base.add(first as usize)).fetch_add(1, Ordering::Relaxed);
                (*base.add(second as usize)).fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A server counter.
    pub fn server(&self, slot: usize, counter: ServerCounter) -> u64 {
        self.server_word(slot, counter as usize).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// The runtime marks of a server ([`rules::marks`](crate::rules::marks)'s `RT_*` bits).
    pub fn state(&self, slot: usize) -> u64 {
        self.server_word(slot, STATE_WORD).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// What the configuration says of a server's `drain` and `down`.
    pub fn configured(&self, slot: usize) -> Configured {
        Configured::from_word(
            self.server_word(slot, CONFIG_WORD).map_or(0, |w| w.load(Ordering::Relaxed)),
        )
    }

    /// The state of a server: its configuration and runtime marks combined.
    pub fn effective(&self, slot: usize) -> marks::State {
        marks::effective(self.configured(slot), self.state(slot))
    }

    /// Whether the server's upstream takes runtime weights.
    pub fn takes_weights(&self, slot: usize) -> bool {
        self.server_word(slot, CONFIG_WORD)
            .is_some_and(|w| w.load(Ordering::Relaxed) & CONF_WEIGHTS != 0)
    }

    /// Whether this is the first warning of kind `bit` (a bit of its own per kind) for the
    /// server in slot `slot` in this cycle: one worker, once, gets `true`.
    pub fn first_warning(&self, slot: usize, bit: u64) -> bool {
        self.server_word(slot, WARNED_WORD)
            .is_some_and(|w| w.fetch_or(bit, Ordering::Relaxed) & bit == 0)
    }

    /// Whether a newer cycle has copied this zone's marks.
    pub fn superseded(&self) -> bool {
        self.word(SUPERSEDED_WORD).load(Ordering::SeqCst) != 0
    }

    /// Writes a change with `write` unless a newer cycle has copied the marks already, then
    /// checks again (see the module documentation): `Err` if the change may not have reached
    /// the running configuration.
    fn change(&self, write: impl FnOnce()) -> Result<(), Superseded> {
        if self.superseded() {
            return Err(Superseded);
        }
        write();
        self.word(GENERATION_WORD).fetch_add(1, Ordering::SeqCst);
        if self.superseded() {
            return Err(Superseded);
        }
        Ok(())
    }

    /// Sets and clears runtime marks of a server, and bumps the generation so that every
    /// worker applies them before its next request.
    pub fn set_state(&self, slot: usize, set: u64, clear: u64) -> Result<(), Superseded> {
        let Some(w) = self.server_word(slot, STATE_WORD) else { return Ok(()) };
        self.change(|| {
            let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
                Some((current | set) & !clear)
            });
        })
    }

    /// The weight set at run time, if any, and if the upstream takes runtime weights.
    pub fn weight(&self, slot: usize) -> Option<u64> {
        let w = self.server_word(slot, WEIGHT_WORD).map_or(0, |w| w.load(Ordering::Acquire));
        (w != 0 && self.takes_weights(slot)).then_some(w)
    }

    /// Sets the runtime weight of a server (1 to [`MAX_WEIGHT`]; `None` goes back to the
    /// configured weight), and bumps the generation so that every worker applies it before
    /// its next request.
    pub fn set_weight(&self, slot: usize, weight: Option<u64>) -> Result<(), Superseded> {
        let Some(w) = self.server_word(slot, WEIGHT_WORD) else { return Ok(()) };
        let value = weight.map_or(0, |v| v.clamp(1, MAX_WEIGHT));
        self.change(|| w.store(value, Ordering::SeqCst))
    }

    /// Writes every server record's key and configuration, and where its check slots are.
    fn write_layouts(&self, servers: &[ServerLayout]) {
        let mut base = 0u64;
        for (slot, server) in servers.iter().enumerate() {
            self.write_layout(slot, server);
            if let Some(w) = self.server_word(slot, CHECK_BASE_WORD) {
                w.store(base, Ordering::Relaxed);
            }
            base += u64::from(server.check_slots);
        }
    }

    /// Writes a server record's key and configuration.
    fn write_layout(&self, slot: usize, server: &ServerLayout) {
        let words = [
            (0, server.key),
            (CONFIGURED_WEIGHT_WORD, server.weight),
            (CONFIG_WORD, server.configured.to_word(server.weights)),
            (CHECK_COUNT_WORD, u64::from(server.check_slots)),
            (SLOW_START_WORD, server.slow_start),
        ];
        for (word, value) in words {
            if let Some(w) = self.server_word(slot, word) {
                w.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Changes whenever a runtime mark changes.
    pub fn generation(&self) -> u64 {
        self.word(GENERATION_WORD).load(Ordering::Acquire)
    }
}

/// The statistics of a running cycle: the zone's data once nginx initialised it.
///
/// # Safety
/// `zone` must be null or the zone created by [`add_zone`] for the running cycle.
pub unsafe fn from_zone(zone: *mut ngx_shm_zone_t) -> Option<Stats> {
    // SAFETY: per the function contract. `data` is the Layout (configuration pool) until
    // `init_zone` ran, then the header inside the zone's own memory: only the latter is read.
    unsafe {
        let zone = zone.as_ref()?;
        let start = zone.shm.addr as usize;
        let at = zone.data as usize;
        if zone.shm.addr.is_null() || at < start || at >= start + zone.shm.size {
            return None;
        }
        read_header(zone.data.cast())
    }
}

/// The header at `header`, if it is one of this module's of this version.
///
/// # Safety
/// `header` must be null or point into a zone of this module, at a header written by
/// `init_zone`, in memory still mapped.
unsafe fn read_header(header: *const AtomicU64) -> Option<Stats> {
    if header.is_null() {
        return None;
    }
    // SAFETY: per the function contract.
    unsafe {
        if (*header).load(Ordering::Acquire) != MAGIC
            || (*header.add(1)).load(Ordering::Relaxed) != VERSION
        {
            return None;
        }
        Some(Stats {
            words: header,
            upstreams: (*header.add(3)).load(Ordering::Relaxed) as usize,
            servers: (*header.add(4)).load(Ordering::Relaxed) as usize,
            checks: (*header.add(6)).load(Ordering::Relaxed) as usize,
        })
    }
}

/// Why the zone could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// Another zone has the name.
    #[error(
        "the shared memory zone \"{ZONE_NAME}\" that \"jvm_route\" keeps its counters and marks \
         in is already declared for a different use: give the other zone another name"
    )]
    NameTaken,
    /// nginx could not add it.
    #[error("could not declare the shared memory zone \"{ZONE_NAME}\"")]
    NotAdded,
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
) -> Result<*mut ngx_shm_zone_t, ZoneError> {
    // SAFETY: `cf->cycle` is the cycle being configured.
    if unsafe { name_taken((*cf).cycle, tag) } {
        return Err(ZoneError::NameTaken);
    }
    // SAFETY: as above; `old_cycle` is the running cycle (or nginx's initial one) while the
    // new configuration is read; `layout` is valid per the function contract.
    unsafe { (*layout).previous = previous_data((*cf).cycle, tag) };
    // SAFETY: `ngx_pagesize` is set before any configuration is read.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    // SAFETY: per the function contract, `layout` is valid.
    let bytes = unsafe { (*layout).words() } * size_of::<u64>();
    // The slab allocator keeps its own header and page table in the zone; eight pages of room
    // is what nginx's own zones ask for at least.
    let size = bytes.div_ceil(page) * page + 8 * page;
    let mut name = ngx_str_t { len: ZONE_NAME.len(), data: ZONE_NAME.as_ptr().cast_mut() };
    // SAFETY: per the function contract.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    if zone.is_null() {
        return Err(ZoneError::NotAdded);
    }
    // SAFETY: a zone of this name and tag was declared by this module only.
    unsafe {
        (*zone).init = Some(init_zone);
        (*zone).data = layout.cast();
        // A new mapping every cycle: old workers keep theirs (see the module documentation).
        (*zone).noreuse = 1;
    }
    Ok(zone)
}

/// The shared memory zones of `cycle` named [`ZONE_NAME`].
///
/// # Safety
/// `cycle` must be null or a live cycle; the zones are used while it lives.
unsafe fn zones_named<'a>(cycle: *const ngx_cycle_t) -> impl Iterator<Item = &'a ngx_shm_zone_t> {
    let first: *const ngx_list_part_t = if cycle.is_null() {
        ptr::null()
    } else {
        // SAFETY: per the function contract: `shared_memory` is a list of `ngx_shm_zone_t`.
        unsafe { &(*cycle).shared_memory.part }
    };
    std::iter::successors((!first.is_null()).then_some(first), |&part| {
        // SAFETY: as above.
        let next = unsafe { (*part).next };
        (!next.is_null()).then_some(next.cast_const())
    })
    .flat_map(|part| {
        // SAFETY: as above: `nelts` zones at `elts` (null in the initial cycle's empty list).
        unsafe { crate::ffi::slice((*part).elts.cast::<ngx_shm_zone_t>(), (*part).nelts) }
    })
    .filter(|z| {
        // SAFETY: a zone's name lives as long as its cycle.
        (unsafe { crate::ffi::str_bytes(&z.shm.name) }) == ZONE_NAME.as_bytes()
    })
}

/// This module's zone data in the running cycle, if it has the zone.
///
/// # Safety
/// `cycle` must be the cycle being configured.
unsafe fn previous_data(cycle: *mut ngx_cycle_t, tag: *mut c_void) -> *const AtomicU64 {
    // SAFETY: per the function contract; `old_cycle` is null or the running cycle.
    let mut zones = unsafe { zones_named((*cycle).old_cycle) };
    zones.find(|z| z.tag == tag).map_or(ptr::null(), |z| z.data.cast_const().cast())
}

/// Whether the cycle already has a zone named [`ZONE_NAME`] with another tag.
///
/// # Safety
/// `cycle` must be the cycle being configured.
unsafe fn name_taken(cycle: *mut ngx_cycle_t, tag: *mut c_void) -> bool {
    // SAFETY: per the function contract.
    unsafe { zones_named(cycle) }.any(|z| z.tag != tag)
}

/// The zone's `init`: lays out the records in the new zone and copies the counters and marks of
/// the records the old cycle's zone has too.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this once per cycle, in the master before the workers start, with
    // the zone declared in `add_zone` (whose `data` is still the Layout, in the configuration
    // pool) and fresh shared memory (`noreuse`); `old` is null or the old cycle's data of this
    // zone: its header, still mapped in this process until the new cycle is up, and only read.
    unsafe {
        let layout = &*(*zone).data.cast::<Layout>();
        let shpool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        let words = layout.words();
        let header = ngx_slab_alloc(shpool, words * size_of::<u64>()).cast::<AtomicU64>();
        if header.is_null() {
            return Status::NGX_ERROR.0;
        }
        ptr::write_bytes(header, 0, words);
        (*header.add(1)).store(VERSION, Ordering::Relaxed);
        (*header.add(3)).store(layout.upstreams.len() as u64, Ordering::Relaxed);
        (*header.add(4)).store(layout.servers.len() as u64, Ordering::Relaxed);
        (*header.add(6)).store(layout.check_slots() as u64, Ordering::Relaxed);
        let stats = Stats {
            words: header,
            upstreams: layout.upstreams.len(),
            servers: layout.servers.len(),
            checks: layout.check_slots(),
        };
        for (i, &key) in layout.upstreams.iter().enumerate() {
            stats.word(HEADER_WORDS + i * UPSTREAM_WORDS).store(key, Ordering::Relaxed);
        }
        stats.write_layouts(&layout.servers);
        // nginx >= 1.27 passes the old cycle's data of a `noreuse` zone; before, it is found
        // at configuration time. Either way it stays mapped here until the new cycle is
        // complete: nginx unmaps the old cycle's zones after `init_module`.
        let old: *const AtomicU64 =
            if old.is_null() { layout.previous } else { old.cast_const().cast() };
        (*header).store(MAGIC, Ordering::Release);
        (*zone).data = header.cast();
        // The copy waits for `commit`: this cycle may still fail (a listening socket), and
        // then the old one goes on as it was.
        PENDING_NEW.store(header, Ordering::SeqCst);
        PENDING_OLD.store(old.cast_mut(), Ordering::SeqCst);
    }
    Status::NGX_OK.0
}

/// The zone just laid out by `init_zone` in the master, and its predecessor: read by
/// [`commit`] when the cycle is complete.
static PENDING_NEW: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());
static PENDING_OLD: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());

/// The new cycle is complete (the module's `init_module`, in the master, before the new
/// workers exist): marks the previous cycle's zone as superseded, then copies its counters and
/// marks into the new one. Nothing if `cycle` has no zone of this module laid out by this
/// process's last `init_zone`.
///
/// # Safety
/// `cycle` must be the cycle nginx just initialised; its predecessor's zones still mapped.
pub unsafe fn commit(cycle: *mut ngx_cycle_t, tag: *mut c_void) -> Option<Stats> {
    let new = PENDING_NEW.swap(ptr::null_mut(), Ordering::SeqCst);
    let old = PENDING_OLD.swap(ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: per the function contract.
    let ours = unsafe { zones_named(cycle) }.find(|z| z.tag == tag);
    // Only the zone of this cycle: a cycle that failed after `init_zone` left a pointer to
    // memory that is gone.
    if new.is_null() || ours.is_none_or(|z| z.data.cast::<AtomicU64>() != new) {
        return None;
    }
    // SAFETY: `new` is this cycle's header, written by `init_zone`; `old` null or the previous
    // cycle's, still mapped (see above).
    unsafe {
        let new = read_header(new)?;
        let Some(previous) = read_header(old) else { return Some(new) };
        previous.word(SUPERSEDED_WORD).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        carry_over(&previous, &new);
    }
    None
}

impl Stats {
    /// The slot of the server record with `key`.
    pub fn slot_of_key(&self, key: u64) -> Option<usize> {
        (0..self.servers).find(|&slot| {
            self.server_word(slot, 0).is_some_and(|w| w.load(Ordering::Relaxed) == key)
        })
    }

    /// Restores a line's runtime marks and weight from the state file, as a reload carries
    /// them ([`marks::carried`]): the configuration's marks then (`configured`) against now; the
    /// weight only while the configured weight is the same and the upstream takes weights.
    pub fn restore(
        &self,
        slot: usize,
        runtime: u64,
        weight: Option<u64>,
        configured: Configured,
        configured_weight: u64,
    ) {
        let kept = marks::carried(configured, self.configured(slot), runtime);
        if let Some(w) = self.server_word(slot, STATE_WORD) {
            w.store(kept, Ordering::Relaxed);
        }
        let same = self
            .server_word(slot, CONFIGURED_WEIGHT_WORD)
            .is_some_and(|w| w.load(Ordering::Relaxed) == configured_weight);
        if let (Some(weight), true, Some(w)) =
            (weight, same && self.takes_weights(slot), self.server_word(slot, WEIGHT_WORD))
        {
            w.store(weight.clamp(1, MAX_WEIGHT), Ordering::Relaxed);
        }
        self.bump();
    }

    /// The configured weight a line's record holds.
    pub fn configured_weight(&self, slot: usize) -> u64 {
        self.server_word(slot, CONFIGURED_WEIGHT_WORD).map_or(0, |w| w.load(Ordering::Relaxed))
    }
}

/// Copies the counters and marks of every record of `old` whose key `new` has; a runtime
/// weight only if the configured weight it was set against is unchanged.
fn carry_over(old: &Stats, new: &Stats) {
    let index = |count: usize, key: &dyn Fn(usize) -> u64| -> HashMap<u64, usize> {
        (0..count).map(|i| (key(i), i)).collect()
    };
    let old_upstreams = index(old.upstreams, &|i| {
        old.word(HEADER_WORDS + i * UPSTREAM_WORDS).load(Ordering::Relaxed)
    });
    for i in 0..new.upstreams {
        let key = new.word(HEADER_WORDS + i * UPSTREAM_WORDS).load(Ordering::Relaxed);
        if let Some(&j) = old_upstreams.get(&key) {
            for w in 1..UPSTREAM_WORDS {
                let v = old.word(HEADER_WORDS + j * UPSTREAM_WORDS + w).load(Ordering::Relaxed);
                new.word(HEADER_WORDS + i * UPSTREAM_WORDS + w).store(v, Ordering::Relaxed);
            }
        }
    }
    let server_key =
        |s: &Stats, slot: usize| s.server_word(slot, 0).map_or(0, |w| w.load(Ordering::Relaxed));
    let old_servers = index(old.servers, &|slot| server_key(old, slot));
    let read = |s: &Stats, slot: usize, w: usize| {
        s.server_word(slot, w).map_or(0, |w| w.load(Ordering::SeqCst))
    };
    let write = |slot: usize, w: usize, value: u64| {
        if let Some(to) = new.server_word(slot, w) {
            to.store(value, Ordering::Relaxed);
        }
    };
    for slot in 0..new.servers {
        let Some(&from) = old_servers.get(&server_key(new, slot)) else { continue };
        for w in (1..STATE_WORD)
            .chain([ServerCounter::RouteMismatch as usize, ServerCounter::RouteMissing as usize])
        {
            write(slot, w, read(old, from, w));
        }
        // A slow start under way goes on (the monotonic clock is the machine's).
        write(slot, RAMP_WORD, read(old, from, RAMP_WORD));
        // The health of each checked address (the next check is due at once).
        for (to, from) in new.check_range(slot).zip(old.check_range(from)) {
            for w in [CK_KEY, CK_HEALTH, CK_LAST, CK_ERROR, CK_PROBES, CK_SEEN] {
                new.check_store(to, w, old.check_load(from, w));
            }
        }
        let kept = marks::carried(old.configured(from), new.configured(slot), old.state(from));
        write(slot, STATE_WORD, kept);
        // A runtime weight only while the configured weight it was set against is the same
        // and the upstream still takes runtime weights.
        let same_weight =
            read(old, from, CONFIGURED_WEIGHT_WORD) == read(new, slot, CONFIGURED_WEIGHT_WORD);
        if same_weight && new.takes_weights(slot) {
            write(slot, WEIGHT_WORD, read(old, from, WEIGHT_WORD));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::check::error as check_error;
    use crate::rules::marks::{State, RT_DOWN, RT_DRAIN, RT_UNDRAIN};

    /// A zone of these records, each server line with two check slots.
    fn zone_of(upstreams: &[u64], servers: &[u64]) -> (Vec<AtomicU64>, Stats) {
        let layout: Vec<ServerLayout> = servers
            .iter()
            .map(|&key| ServerLayout {
                key,
                weight: 1,
                configured: Configured::default(),
                weights: true,
                check_slots: 2,
                slow_start: 10_000,
            })
            .collect();
        let checks = 2 * servers.len();
        let words = HEADER_WORDS
            + UPSTREAM_WORDS * upstreams.len()
            + SERVER_WORDS * servers.len()
            + CHECK_WORDS * checks;
        let words: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let stats = Stats {
            words: words.as_ptr(),
            upstreams: upstreams.len(),
            servers: servers.len(),
            checks,
        };
        for (i, &k) in upstreams.iter().enumerate() {
            stats.word(HEADER_WORDS + i * UPSTREAM_WORDS).store(k, Ordering::Relaxed);
        }
        stats.write_layouts(&layout);
        (words, stats)
    }

    #[test]
    fn check_slots_are_claimed_taken_in_turn_and_carried() {
        let spec = CheckSpec { rise: 1, fall: 2, default_down: true, ..CheckSpec::default() };
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_w, old) = zone_of(&[upstream_key(b"u")], &[a]);
        let initial = Health::initial(&spec);
        assert!(old.check_down(0, 7, true) && !old.check_down(0, 7, false), "no slot yet");
        let i = old.check_claim(0, 7, 1_000, 10_000, initial).expect("a free slot");
        assert_eq!(old.check_claim(0, 7, 1_001, 10_000, initial), Some(i), "the same address");
        let j = old.check_claim(0, 8, 1_000, 10_000, initial).expect("the second slot");
        assert_ne!(i, j);
        assert_eq!(old.check_claim(0, 9, 1_000, 10_000, initial), None, "two slots only");
        // An address not seen for longer than `stale` gives its slot up (7 is seen again, 8
        // is not).
        assert_eq!(old.check_claim(0, 7, 19_000, 10_000, initial), Some(i));
        assert_eq!(old.check_claim(0, 9, 20_000, 10_000, initial), Some(j));
        assert_eq!(old.check_find(0, 8), None);
        // One turn per period, whoever asks.
        assert!(old.check_take_turn(i, 1_000, 500));
        assert!(!old.check_take_turn(i, 1_200, 500));
        assert!(old.check_take_turn(i, 1_500, 500));
        // rise=1: one pass brings it up; fall=2: two failures take it out.
        let g = old.generation();
        assert_eq!(old.check_record(i, 1_600, 0, &spec).map(|(_, h)| h.down), Some(false));
        assert!(old.generation() > g, "a change moves the generation");
        assert!(!old.check_down(0, 7, true));
        assert_eq!(old.check_record(i, 1_700, check_error::REFUSED, &spec), None);
        assert_eq!(
            old.check_record(i, 1_800, check_error::TIMEOUT, &spec).map(|(_, h)| h.down),
            Some(true)
        );
        let (health, last, error, probes) = old.check_info(i);
        assert_eq!(
            (health.down, health.fails, last, error, probes),
            (true, 2, 1_800, check_error::TIMEOUT, 3)
        );
        // A reload keeps the line's checked addresses and their health.
        let (_w2, new) = zone_of(&[upstream_key(b"u")], &[a]);
        carry_over(&old, &new);
        assert!(new.check_down(0, 7, false));
        assert_eq!(new.check_info(new.check_find(0, 7).unwrap()).3, 3);
        assert!(new.check_take_turn(new.check_find(0, 7).unwrap(), 1_900, 500), "due at once");
    }

    #[test]
    fn a_slow_start_grows_and_ends_and_goes_on_across_a_reload() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_w, old) = zone_of(&[upstream_key(b"u")], &[a]);
        assert_eq!(old.ramp(0, 5_000), None, "none before it starts");
        let g = old.generation();
        old.start_ramp(0, 5_000);
        assert!(old.generation() > g);
        assert_eq!(old.ramp(0, 5_000), Some((1, 10_000)));
        assert_eq!(old.ramp(0, 7_500), Some((250, 7_500)));
        assert_eq!(old.ramp(0, 14_000), Some((900, 1_000)));
        assert_eq!(old.ramp(0, 15_000), None, "over after slow_start");
        old.start_ramp(0, 20_000);
        let (_w2, new) = zone_of(&[upstream_key(b"u")], &[a]);
        carry_over(&old, &new);
        assert_eq!(new.ramp(0, 25_000), Some((500, 5_000)), "a reload does not restart it");
    }

    #[test]
    fn a_reload_carries_the_records_whose_keys_stay_and_only_those() {
        let (a, b, c) = (
            server_key(b"u", b"a", b"t1", false, 0),
            server_key(b"u", b"b", b"t2", false, 0),
            server_key(b"u", b"c", b"t3", false, 0),
        );
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a, b]);
        old.count(0, ServerCounter::Requests);
        old.count(1, ServerCounter::Hits);
        old.set_state(1, RT_DRAIN, 0).unwrap();
        old.set_weight(1, Some(7)).unwrap();
        old.count_upstream(0, UpstreamCounter::WithSession);
        // The new layout: another upstream first, `a` gone, `c` new, `b` moved.
        let (_new_words, new) = zone_of(&[upstream_key(b"v"), upstream_key(b"u")], &[c, b]);
        carry_over(&old, &new);
        assert_eq!(new.upstream(1, UpstreamCounter::WithSession), 1);
        assert_eq!(new.upstream(0, UpstreamCounter::WithSession), 0);
        assert_eq!(new.server(1, ServerCounter::Hits), 1);
        assert_eq!(new.state(1), RT_DRAIN);
        assert_eq!(new.weight(1), Some(7));
        assert_eq!(new.weight(0), None);
        assert_eq!(new.server(0, ServerCounter::Requests), 0);
        assert_eq!(new.state(0), 0);
        // The old zone was only read.
        assert_eq!(old.server(0, ServerCounter::Requests), 1);
    }

    #[test]
    fn a_changed_configured_weight_drops_the_runtime_one_and_keeps_the_rest() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a]);
        old.set_weight(0, Some(9)).unwrap();
        old.set_state(0, RT_DOWN, 0).unwrap();
        let (_new_words, new) = zone_of(&[upstream_key(b"u")], &[a]);
        new.server_word(0, CONFIGURED_WEIGHT_WORD).unwrap().store(3, Ordering::Relaxed);
        carry_over(&old, &new);
        assert_eq!(new.weight(0), None);
        assert_eq!(new.state(0), RT_DOWN);
        assert_eq!(MAX_WEIGHT, 1000);
    }

    fn set_config(stats: &Stats, slot: usize, drain: bool, down: bool, weights: bool) {
        let word = Configured { drain, down }.to_word(weights);
        stats.server_word(slot, CONFIG_WORD).unwrap().store(word, Ordering::Relaxed);
    }

    #[test]
    fn drain_removed_from_the_configuration_ends_at_the_reload() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a]);
        set_config(&old, 0, true, false, true);
        assert_eq!(old.effective(0), State::Draining);
        let (_new_words, new) = zone_of(&[upstream_key(b"u")], &[a]);
        carry_over(&old, &new);
        assert_eq!(new.effective(0), State::Up);
    }

    #[test]
    fn a_runtime_undrain_outlives_a_reload_that_keeps_the_configuration() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a]);
        set_config(&old, 0, true, false, true);
        old.set_state(0, RT_UNDRAIN, RT_DRAIN).unwrap();
        assert_eq!(old.effective(0), State::Up);
        let (_new_words, new) = zone_of(&[upstream_key(b"u")], &[a]);
        set_config(&new, 0, true, false, true);
        carry_over(&old, &new);
        assert_eq!(new.effective(0), State::Up);
    }

    #[test]
    fn a_runtime_weight_is_dropped_where_weights_are_no_longer_taken() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a]);
        old.set_weight(0, Some(5)).unwrap();
        let (_new_words, new) = zone_of(&[upstream_key(b"u")], &[a]);
        set_config(&new, 0, false, false, false);
        carry_over(&old, &new);
        assert_eq!(new.weight(0), None);
        assert_eq!(new.server_word(0, WEIGHT_WORD).unwrap().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_change_after_the_copy_is_refused_and_one_before_is_carried() {
        let a = server_key(b"u", b"a", b"t1", false, 0);
        let (_old_words, old) = zone_of(&[upstream_key(b"u")], &[a]);
        assert_eq!(old.set_state(0, RT_DOWN, 0), Ok(()));
        let (_new_words, new) = zone_of(&[upstream_key(b"u")], &[a]);
        old.word(SUPERSEDED_WORD).store(1, Ordering::SeqCst);
        carry_over(&old, &new);
        assert_eq!(new.effective(0), State::Down);
        assert_eq!(old.set_state(0, 0, RT_DOWN), Err(Superseded));
        assert_eq!(old.set_weight(0, Some(3)), Err(Superseded));
        assert_eq!(old.state(0), RT_DOWN, "nothing written once superseded");
    }

    #[test]
    fn keys_tell_servers_apart() {
        let k = |u: &[u8], s: &[u8], id: &[u8], b, r| server_key(u, s, id, b, r);
        let base = k(b"u", b"a:80", b"t1", false, 0);
        assert_ne!(base, k(b"v", b"a:80", b"t1", false, 0));
        assert_ne!(base, k(b"u", b"a:81", b"t1", false, 0));
        assert_ne!(base, k(b"u", b"a:80", b"t2", false, 0));
        assert_ne!(base, k(b"u", b"a:80", b"t1", true, 0));
        assert_ne!(base, k(b"u", b"a:80", b"t1", false, 1));
        assert_eq!(base, k(b"u", b"a:80", b"t1", false, 0));
    }
}
