//! From a session id to a route, and from a route to the peers that serve it. Pure Rust: the
//! table is built once per peer list and looked up per request in time that does not depend on
//! the number of servers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The longest srun_id accepted (the original module had no limit; Tomcat's `jvmRoute` is
/// usually a short host name).
pub const MAX_SRUN_ID_LEN: usize = 64;

/// How a session id names its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMode {
    /// `reverse`: the text after the first `.` is the route (Tomcat, Jetty, WildFly).
    AfterFirstDot,
    /// No `reverse`: the longest srun_id that is a prefix of the session id (Resin).
    Prefix,
}

/// Which list of nginx's round-robin peers a peer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerList {
    /// The primary servers (`peers`).
    Primary,
    /// The `backup` servers (`peers->next`).
    Backup,
}

/// An index into a [`RouteTable`]'s routes.
pub type RouteId = u32;

/// One route: its srun_id and the peers that carry it, as indices into their lists.
#[derive(Debug, Default)]
pub struct Route {
    /// The srun_id, as configured.
    pub srun_id: Box<[u8]>,
    /// Indices of primary peers with this srun_id.
    pub primary: Vec<u32>,
    /// Indices of backup peers with this srun_id.
    pub backup: Vec<u32>,
}

/// A small, fast, deterministic hasher (the multiply-rotate scheme of rustc's FxHasher) for
/// tables whose keys come from the configuration. Lookups with hostile keys cannot degrade such
/// a table: only its fixed keys decide its shape. SipHash, the default, costs several hundred
/// instructions per lookup; this costs a few dozen.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits: move the well-mixed high bits there
        // (aligned pointer keys leave the low bits of the product zero).
        self.0.rotate_left(26)
    }
}

/// A hash map with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// srun_id -> peers, for one upstream's peer lists.
///
/// The srun_ids are found through an open-addressing table, at most half full, whose slots hold
/// each srun_id reduced to a [`Key`]: a lookup is a hash of the few bytes of the route, one or
/// two probes and a comparison of two words, whatever the number of servers (and no byte
/// comparison for srun_ids of up to 16 bytes). Only the configuration's srun_ids decide the
/// table's shape, so hostile session ids cannot make lookups longer.
#[derive(Debug)]
pub struct RouteTable {
    mode: RouteMode,
    /// The length is a power of two; no srun_id is empty, so an empty key marks a free slot.
    slots: Vec<Slot>,
    routes: Vec<Route>,
    /// Distinct srun_id lengths, longest first: prefix mode probes each once.
    lengths: Vec<usize>,
    longest: usize,
}

/// One slot of a [`RouteTable`]: a srun_id's key and its route; empty while `key.len` is 0.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: Key,
    id: RouteId,
}

/// Keys up to this length are held whole in a [`Key`]'s two words.
const WHOLE_KEY_LEN: usize = 16;

/// A table key as two words and a length. A key of at most [`WHOLE_KEY_LEN`] bytes is held
/// whole: its first and last eight bytes (overlapping), or first and last four, or three bytes
/// that cover a shorter key; so equal keys of that size mean equal bytes. A longer key's first
/// word mixes in its middle words: equal keys must be confirmed byte by byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Key {
    first: u64,
    last: u64,
    len: usize,
}

impl Key {
    /// The key of `bytes`.
    #[inline(always)]
    fn of(bytes: &[u8]) -> Key {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let len = bytes.len();
        // Fixed-size reads: each compiles to one load.
        let word = |at: usize, n: usize| match n {
            4 => bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, |b| u64::from(u32::from_le_bytes(b))),
            _ => {
                bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
            }
        };
        let (first, last) = match len {
            0 => (0, 0),
            1..=3 => {
                let v = u64::from(bytes[0])
                    | u64::from(bytes[len / 2]) << 8
                    | u64::from(bytes[len - 1]) << 16;
                (v, 0)
            }
            4..=7 => (word(0, 4), word(len - 4, 4)),
            _ => {
                let mut h = word(0, 8);
                let mut at = 8;
                while at + 8 < len {
                    h = (h ^ word(at, 8)).wrapping_mul(K).rotate_left(31);
                    at += 8;
                }
                (h, word(len - 8, 8))
            }
        };
        Key { first, last, len }
    }

    /// Whether the key holds all of its bytes.
    fn is_whole(&self) -> bool {
        self.len <= WHOLE_KEY_LEN
    }

    /// The key's hash: its words and length multiplied through.
    #[inline]
    fn hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let h = (self.first ^ (self.len as u64).rotate_left(56)).wrapping_mul(K) ^ self.last;
        let h = h.wrapping_mul(K);
        h ^ (h >> 32)
    }
}

impl RouteTable {
    /// Builds the table from `(srun_id, list, peer index)` triples; peers that share a srun_id
    /// share a route.
    pub fn build<'a>(
        mode: RouteMode,
        peers: impl IntoIterator<Item = (&'a [u8], PeerList, u32)>,
    ) -> Self {
        Self::build_with_routes(mode, std::iter::empty(), peers)
    }

    /// [`build`](Self::build), with a route for each of `srun_ids` even if no peer has it now
    /// (a server whose name resolves to no address at the moment): its sessions are still
    /// known, and find no usable peer.
    pub fn build_with_routes<'a>(
        mode: RouteMode,
        srun_ids: impl IntoIterator<Item = &'a [u8]>,
        peers: impl IntoIterator<Item = (&'a [u8], PeerList, u32)>,
    ) -> Self {
        let mut table = RouteTable {
            mode,
            slots: vec![Slot::default(); 2],
            routes: Vec::new(),
            lengths: Vec::new(),
            longest: 0,
        };
        for srun_id in srun_ids {
            if table.find(srun_id).is_none() {
                table.insert(srun_id);
            }
        }
        for (srun_id, list, index) in peers {
            let id = match table.find(srun_id) {
                Some(id) => id,
                None => table.insert(srun_id),
            };
            let route = &mut table.routes[id as usize];
            match list {
                PeerList::Primary => route.primary.push(index),
                PeerList::Backup => route.backup.push(index),
            }
        }
        table.lengths = table.routes.iter().map(|r| r.srun_id.len()).collect();
        table.lengths.sort_unstable_by(|a, b| b.cmp(a));
        table.lengths.dedup();
        table.longest = table.lengths.first().copied().unwrap_or(0);
        table
    }

    /// Adds a route for a non-empty srun_id of at most `MAX_SRUN_ID_LEN` bytes.
    fn insert(&mut self, srun_id: &[u8]) -> RouteId {
        let id = self.routes.len() as RouteId;
        self.routes.push(Route { srun_id: srun_id.into(), ..Route::default() });
        if self.routes.len() * 2 > self.slots.len() {
            let mut slots = vec![Slot::default(); self.slots.len() * 2];
            for (i, route) in self.routes.iter().enumerate() {
                Self::place(&mut slots, &route.srun_id, i as RouteId);
            }
            self.slots = slots;
        } else {
            Self::place(&mut self.slots, srun_id, id);
        }
        id
    }

    /// Puts `srun_id` in the first free slot of its probe sequence.
    fn place(slots: &mut [Slot], srun_id: &[u8], id: RouteId) {
        let key = Key::of(srun_id);
        let mask = slots.len() - 1;
        let mut at = key.hash() as usize & mask;
        while slots[at].key.len != 0 {
            at = (at + 1) & mask;
        }
        slots[at] = Slot { key, id };
    }

    /// The route whose srun_id is exactly `key`.
    #[inline(always)]
    fn find(&self, key: &[u8]) -> Option<RouteId> {
        let k = Key::of(key);
        let mask = self.slots.len() - 1;
        let mut at = k.hash() as usize & mask;
        // The table is at most half full: an empty slot ends every probe sequence.
        loop {
            let slot = self.slots.get(at)?;
            if slot.key.len == 0 {
                return None;
            }
            if slot.key == k
                && (k.is_whole()
                    || self.routes.get(slot.id as usize).is_some_and(|r| *r.srun_id == *key))
            {
                return Some(slot.id);
            }
            at = (at + 1) & mask;
        }
    }

    /// The route a session id names, if this table knows it.
    #[inline(always)]
    pub fn lookup(&self, session_id: &[u8]) -> Option<RouteId> {
        match self.mode {
            RouteMode::AfterFirstDot => {
                let route = reverse_route(session_id)?;
                if route.is_empty() || route.len() > self.longest {
                    return None;
                }
                self.find(route)
            }
            RouteMode::Prefix => self
                .lengths
                .iter()
                .filter(|&&len| len <= session_id.len())
                .find_map(|&len| self.find(&session_id[..len])),
        }
    }

    /// The text of `session_id` that named the route `id` (as [`lookup`](Self::lookup) found
    /// it): its end in `reverse` mode, its start otherwise. Slices the session id, so that the
    /// text lives as long as the request, however the table changes.
    pub fn route_text<'a>(&self, id: RouteId, session_id: &'a [u8]) -> Option<&'a [u8]> {
        let len = self.route(id)?.srun_id.len();
        match self.mode {
            RouteMode::AfterFirstDot => session_id.get(session_id.len().checked_sub(len)?..),
            RouteMode::Prefix => session_id.get(..len),
        }
    }

    /// The route with this id.
    pub fn route(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id as usize)
    }

    /// How many distinct routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no peer has a srun_id.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The route a session id names in `reverse` mode: the text after its first `.`.
#[inline(always)]
pub fn reverse_route(session_id: &[u8]) -> Option<&[u8]> {
    super::session::find_byte(b'.', session_id).map(|dot| &session_id[dot + 1..])
}

/// What a request's session ids say, taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRoute<'a> {
    /// No session id at all.
    NoSession,
    /// Session ids, but none names a route of this upstream: the first of them.
    Unknown(&'a [u8]),
    /// The first session id that names a known route, and that route.
    Known(RouteId, &'a [u8]),
}

/// Offers a request's session ids one at a time, in priority order: the first one that names a
/// known route wins. The request path offers them from plain loops (no iterator chains, and the
/// URL is searched only if no cookie won); [`choose_route`] offers them from an iterator.
pub struct RouteChooser<'t, 'a> {
    table: &'t RouteTable,
    first: Option<&'a [u8]>,
}

impl<'t, 'a> RouteChooser<'t, 'a> {
    /// A chooser over `table`.
    pub fn new(table: &'t RouteTable) -> Self {
        RouteChooser { table, first: None }
    }

    /// Offers the next session id: the decision, if it names a known route.
    #[inline(always)]
    pub fn offer(&mut self, id: &'a [u8]) -> Option<SessionRoute<'a>> {
        self.first.get_or_insert(id);
        self.table.lookup(id).map(|route| SessionRoute::Known(route, id))
    }

    /// The decision when no session id offered named a known route.
    pub fn finish(self) -> SessionRoute<'a> {
        self.first.map_or(SessionRoute::NoSession, SessionRoute::Unknown)
    }
}

/// Chooses the route of a request from its candidate session ids, in priority order: the
/// first one that names a known route wins.
pub fn choose_route<'a>(
    table: &RouteTable,
    session_ids: impl IntoIterator<Item = &'a [u8]>,
) -> SessionRoute<'a> {
    let mut chooser = RouteChooser::new(table);
    for id in session_ids {
        if let Some(known) = chooser.offer(id) {
            return known;
        }
    }
    chooser.finish()
}

/// The first candidate, starting at `start` and wrapping around, that `usable` accepts.
/// Several peers may share a route; starting at a moving offset spreads requests over them.
#[inline(always)]
pub fn first_usable(
    candidates: &[u32],
    start: usize,
    mut usable: impl FnMut(u32) -> bool,
) -> Option<u32> {
    // The usual route has one peer: no division, no loop.
    if let [only] = candidates {
        return usable(*only).then_some(*only);
    }
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    // `start` is a free-running counter: reduce it once; the rest wraps by rotation.
    let (wrapped, first) = candidates.split_at(start % n);
    first.iter().chain(wrapped).copied().find(|&c| usable(c))
}

/// Why a srun_id is rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrunIdError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_SRUN_ID_LEN`].
    #[error("is longer than {MAX_SRUN_ID_LEN} bytes")]
    TooLong,
    /// Contains a byte that is not visible ASCII, or one of `;`, `,`, `=`.
    #[error("must be visible ASCII without \";\", \",\" or \"=\"")]
    BadCharacter,
}

/// Checks a srun_id as written in the configuration.
pub fn validate_srun_id(srun_id: &[u8]) -> Result<(), SrunIdError> {
    if srun_id.is_empty() {
        return Err(SrunIdError::Empty);
    }
    if srun_id.len() > MAX_SRUN_ID_LEN {
        return Err(SrunIdError::TooLong);
    }
    if srun_id.iter().any(|&b| !b.is_ascii_graphic() || matches!(b, b';' | b',' | b'=')) {
        return Err(SrunIdError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
