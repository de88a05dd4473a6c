//! The worker's view of one upstream's peers: which configured server line each peer belongs
//! to, its srun_id's route, its zone slot, and the runtime marks last applied to it.
//!
//! Each worker builds its own view on first use and again whenever the peer list is replaced
//! or changes (the zone's resolver adds and removes peers of `resolve` servers). A view is
//! never shared between workers and never trusted blindly: every use of its peer pointers or
//! indices happens under the list's lock, after checking that the list is still at the
//! generation the view was built from ([`View::lock`]).
//!
//! Peers are matched to server lines by identity, not by position: round robin creates the
//! peers of servers with fixed addresses in configuration order, `naddrs` each, and neither the
//! zone's copy nor its resolver reorders or removes them; peers of a `resolve` server carry the
//! host of that server's template, and the templates are in configuration order.

use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;

use ngx::ffi::{
    ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_uint_t,
};

use crate::conf::{server_name, servers, UpstreamConf};
use crate::ffi::{self, str_bytes, PeersLock};
use crate::rules::marks::State;
use crate::rules::route::{FastMap, PeerList, RouteMode, RouteTable};
use crate::zone::Stats;

/// One peer as this module sees it.
pub struct PeerInfo {
    /// The peer, in the upstream's (possibly shared) peer list.
    pub peer: *mut ngx_http_upstream_rr_peer_t,
    /// The index of its server line in `uscf->servers`, if it could be placed.
    pub line: Option<u32>,
    /// Its zone slot (that of its server line).
    pub slot: Option<usize>,
    /// `down` in the configuration.
    pub config_down: bool,
    /// `weight` in the configuration.
    pub config_weight: ngx_int_t,
    /// Its weight comes from a DNS SRV record (`service=`): this module never writes it, or
    /// nginx's resolver would no longer recognise the peer and would replace it.
    pub srv_weight: bool,
    /// The runtime `down` mark, or its active checks taking it out, as last applied.
    pub marked_down: Cell<bool>,
    /// The key of its address in the zone's check table.
    pub key: u64,
}

/// The view of one upstream's peer lists.
pub struct View {
    /// srun_id -> peer indices.
    pub table: RouteTable,
    /// The primary list this view was built from.
    pub list: *mut ngx_http_upstream_rr_peers_t,
    /// Whether the list can change at run time (a zone); else it never does.
    can_change: bool,
    /// The lists' generation when the view was built.
    generation: ngx_uint_t,
    /// Counts rebuilds, so that a request can tell its route id belongs to an older table.
    pub stamp: u32,
    /// Primary peers, in list order.
    pub primary: Vec<PeerInfo>,
    /// Backup peers, in list order.
    pub backup: Vec<PeerInfo>,
    /// Peer address -> zone slot.
    slot_of: FastMap<usize, usize>,
    /// The counters and runtime marks.
    pub stats: Option<Stats>,
    /// Where the next pick among peers sharing a route starts.
    pub cursor: Cell<usize>,
    /// The runtime-marks generation last applied to the peers.
    applied: Cell<Option<u64>>,
    /// How many peers drain (as last applied): they are not counted in the lists' `tries`,
    /// yet a session's request may go to one of them first.
    pub draining: Cell<usize>,
    /// With `check`: whether an address is out until its first check (`default_down`).
    pub check_default_down: Option<bool>,
    /// Whether a server line of the upstream has `slow_start=`.
    slow_start: bool,
    /// While a slow start is under way: when the weights are next brought up to date
    /// (monotonic ms; 0: none under way).
    ramp_next: Cell<u64>,
}

/// While a server of the upstream starts slowly, every weight is multiplied by this, so that
/// the starting server's share can grow in small steps (a weight of 1 has none to give).
const RAMP_SCALE: ngx_int_t = 100;
/// How often a worker brings the weights of a slow start up to date (ms).
const RAMP_STEP: u64 = 100;

impl View {
    /// Whether the lists can change at run time (they are in a zone).
    #[inline(always)]
    pub fn can_change(&self) -> bool {
        self.can_change
    }

    /// Whether this view describes the request's peers as they are: its generation is the one
    /// the request's round-robin data was set up with (a plain comparison: it says nothing about
    /// the list now; see [`lock`](Self::lock)).
    pub fn matches_request(&self, rrp: &ngx_http_upstream_rr_peer_data_t) -> bool {
        !self.can_change || ffi::request_generation(rrp) == self.generation
    }

    /// The backup list (null when there is none).
    pub fn backup_list(&self) -> *mut ngx_http_upstream_rr_peers_t {
        // SAFETY: `list` is the upstream's primary list, valid for the cycle; `next` is null or
        // the backups, and never changes after the configuration is read.
        unsafe { (*self.list).next }
    }

    /// Locks `list` (this view's primary or backup list) and checks under the lock that it is
    /// still at this view's generation, and, with `request`, at the request's too. `None`: the
    /// view is stale; nothing of it may be dereferenced.
    ///
    /// # Safety
    /// `list` must be this view's primary or backup list.
    #[inline]
    pub unsafe fn lock(
        &self,
        list: *mut ngx_http_upstream_rr_peers_t,
        write: bool,
        request: Option<&ngx_http_upstream_rr_peer_data_t>,
    ) -> Option<PeersLock> {
        // SAFETY: per the function contract, and `can_change` is the upstream's.
        unsafe { PeersLock::checked(list, write, self.can_change, self.generation, request) }
    }

    /// The zone slot of a peer of either list, as of this view's generation.
    pub fn slot_of(&self, peer: *const ngx_http_upstream_rr_peer_t) -> Option<usize> {
        self.slot_of.get(&(peer as usize)).copied()
    }

    /// The peers of a list.
    pub fn peers(&self, list: PeerList) -> &[PeerInfo] {
        match list {
            PeerList::Primary => &self.primary,
            PeerList::Backup => &self.backup,
        }
    }

    /// Whether the session of a route may go to this peer now: the configuration's `down` and
    /// the runtime `down` mark keep it away, a drain mark does not.
    ///
    /// # Safety
    /// The peer's list must be locked by [`lock`](Self::lock).
    #[inline(always)]
    pub unsafe fn is_down_for_sessions(&self, info: &PeerInfo) -> bool {
        match info.slot {
            Some(_) => info.config_down || info.marked_down.get(),
            // SAFETY: per the function contract.
            None => ffi::is_down(unsafe { &*info.peer }),
        }
    }

    /// Brings the peers' `down` flags and weights in line with the configuration and the
    /// runtime marks ([`rules::marks`](crate::rules::marks)), if the marks changed since this
    /// worker last looked: a drained or downed server is skipped by the balancing method
    /// (`down`), and the configuration's `down` always stays; a runtime weight replaces the
    /// configured one (never a weight from a DNS SRV record), and the list's total weight and
    /// `tries` follow, exactly as nginx keeps them (round robin, `hash` and `ip_hash` read the
    /// total; the zone's resolver adds and subtracts `tries` for peers that are not down).
    #[inline]
    pub fn apply_marks(&self, stats: &Stats) {
        let generation = stats.generation();
        let ramp_due = self.slow_start && {
            let next = self.ramp_next.get();
            next != 0 && crate::check::now() >= next
        };
        if self.applied.get() != Some(generation) || ramp_due {
            self.apply_changed_marks(stats, generation);
        }
    }

    /// [`apply_marks`](Self::apply_marks) once the marks have moved to `generation`.
    #[cold]
    fn apply_changed_marks(&self, stats: &Stats, generation: u64) {
        let mut draining = 0;
        // Slow starts under way: every weight is scaled, the starting servers' by their share.
        let now = crate::check::now();
        let ramping = self.slow_start
            && self
                .primary
                .iter()
                .chain(&self.backup)
                .any(|i| i.slot.is_some_and(|slot| stats.ramp(slot, now).is_some()));
        self.ramp_next.set(if ramping { now + RAMP_STEP } else { 0 });
        let scale = if ramping { RAMP_SCALE } else { 1 };
        let mut reweighted = false;
        // nginx's invariant, checked in debug builds: `tries` counts the peers not down.
        let mut drifted = false;
        for (infos, list) in [(&self.primary, self.list), (&self.backup, self.backup_list())] {
            if list.is_null() {
                continue;
            }
            // SAFETY: `list` is one of this view's lists; round robin changes peers under its
            // write lock, and so does this.
            let Some(_lock) = (unsafe { self.lock(list, true, None) }) else {
                // The list changed: the next use rebuilds the view and applies the marks.
                return;
            };
            if cfg!(debug_assertions) {
                // SAFETY: the list is write-locked; its peers are its own.
                unsafe {
                    let up = ffi::iter(list).filter(|&p| (*p).down == 0).count();
                    drifted |= (*list).tries != up as ngx_uint_t;
                }
            }
            for info in infos {
                let Some(slot) = info.slot else { continue };
                let peer = info.peer;
                if !info.srv_weight {
                    let base = stats.weight(slot).map_or(info.config_weight, |w| w as ngx_int_t);
                    let weight = match stats.ramp(slot, now) {
                        Some((share, _)) if ramping => {
                            (base * scale * share as ngx_int_t / 1000).max(1)
                        }
                        _ => base * scale,
                    };
                    // SAFETY: the peer belongs to the write-locked list, at the view's
                    // generation; fields are written through the raw pointer, as nginx does.
                    unsafe {
                        if (*peer).weight != weight {
                            (*peer).weight = weight;
                            (*peer).effective_weight = weight;
                            reweighted = true;
                        }
                    }
                }
                let state = stats.effective(slot);
                // A server its checks take out is out like a runtime `down` (sessions fail
                // over, nothing new goes there), whatever its marks say.
                let check_down =
                    self.check_default_down.is_some_and(|d| stats.check_down(slot, info.key, d));
                info.marked_down.set((state == State::Down || check_down) && !info.config_down);
                let down = match state {
                    _ if check_down => 1,
                    State::Down => 1,
                    State::Draining => {
                        draining += 1;
                        ffi::DRAINING_DOWN
                    }
                    State::Up => 0,
                };
                // SAFETY: as above.
                unsafe { (*peer).down = down };
            }
            // SAFETY: the list is write-locked; its peers are its own.
            unsafe {
                let (mut total, mut number, mut tries) = (0, 0, 0);
                for peer in ffi::iter(list) {
                    // New weights (a runtime weight, a slow start's step): smooth weighted
                    // round robin starts over from them, or the credit the peers built up under
                    // the old weights would decide the next picks.
                    if reweighted {
                        (*peer).current_weight = 0;
                    }
                    total += (*peer).weight as ngx_uint_t;
                    number += 1;
                    tries += ngx_uint_t::from((*peer).down == 0);
                }
                (*list).total_weight = total;
                (*list).set_weighted(u32::from(total != number));
                (*list).tries = tries;
            }
        }
        self.draining.set(draining);
        self.applied.set(Some(generation));
        if drifted {
            // SAFETY: the cycle's log is valid in a worker.
            let log = unsafe { (*ngx::ffi::ngx_cycle).log };
            ngx::ngx_log_error!(
                ngx::ffi::NGX_LOG_ALERT,
                log,
                "jvm_route: a peer list's \"tries\" differs from its peers that are not down"
            );
        }
    }
}

/// The views of this worker, by upstream index. nginx runs balancers and content handlers on
/// the worker's one event-loop thread only.
struct Views(UnsafeCell<Vec<Option<Box<View>>>>);

// SAFETY: only the worker's event-loop thread touches it (see above); nginx's thread pools run
// file I/O, never balancers or content handlers.
unsafe impl Sync for Views {}

static VIEWS: Views = Views(UnsafeCell::new(Vec::new()));

/// The view of the upstream's current peer list, built or rebuilt if needed.
///
/// # Safety
/// The reference is good until the next call of `current` for the same upstream, which may
/// free the view: the caller uses it within one callback and calls `current` for this upstream
/// again only after its last use.
#[inline]
pub unsafe fn current<'a>(
    ucf: &'a UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
) -> Option<&'a View> {
    let list = us.peer.data.cast::<ngx_http_upstream_rr_peers_t>();
    if list.is_null() {
        return None;
    }
    // SAFETY: see `Views`: this is the only access, and no reference into the vector outlives
    // the callback that took it, nor the next call of this function for this upstream.
    let views = unsafe { &*VIEWS.0.get() };
    match views.get(ucf.index) {
        // Without a zone the peer list never changes once built.
        Some(Some(view)) if !view.can_change && view.list == list => Some(view),
        _ => current_checked(ucf, us, list),
    }
}

/// [`current`] for a view not yet built, or of a list that can change: compares the list's
/// generation with the view's and rebuilds the view if it moved.
#[inline(never)]
fn current_checked<'a>(
    ucf: &'a UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
    list: *mut ngx_http_upstream_rr_peers_t,
) -> Option<&'a View> {
    // SAFETY: as in `current`.
    let views = unsafe { &mut *VIEWS.0.get() };
    if views.len() <= ucf.index {
        views.resize_with(ucf.index + 1, || None);
    }
    let entry = &mut views[ucf.index];
    if let Some(view) = entry {
        if view.list == list {
            // SAFETY: `list` is the upstream's peer list.
            let lock = unsafe { view.lock(list, false, None) };
            if lock.is_some() {
                return entry.as_deref();
            }
        }
    }
    let stamp = entry.as_ref().map_or(0, |v| v.stamp.wrapping_add(1));
    // SAFETY: `list` is the upstream's valid peer list; `build` takes the lock itself.
    *entry = unsafe { build(ucf, us, list, stamp) }.map(Box::new);
    entry.as_deref()
}

/// One list's peers as read under its lock, before the tables are built.
struct Walk {
    infos: Vec<PeerInfo>,
    /// The resolve templates' hosts, in order.
    hosts: Vec<*mut c_void>,
}

/// Builds the view of `list` (see the module documentation). Reads the peers under the read
/// lock into vectors allocated before it is taken, and builds the tables after it is released:
/// nothing is allocated while the lock is held.
///
/// # Safety
/// `list` must be the upstream's valid peer list.
unsafe fn build(
    ucf: &UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
    list: *mut ngx_http_upstream_rr_peers_t,
    stamp: u32,
) -> Option<View> {
    // SAFETY: `us` is nginx's upstream configuration.
    let servers = unsafe { servers(us) };
    let resolving = |backup: bool| {
        servers.iter().filter(|s| (s.backup() != 0) == backup && ffi::server_resolves(s)).count()
    };
    let can_change = ffi::can_change(us);
    // A few tries: the resolver of another worker may change the list between the count and
    // the walk.
    for _ in 0..4 {
        // SAFETY: per the function contract; `next` is null or the backup list.
        let (generation, counts) = unsafe {
            let _lock = PeersLock::read(list);
            let backup = (*list).next;
            let backup_count = if backup.is_null() { 0 } else { (*backup).number };
            (ffi::generation(list), [(*list).number, backup_count])
        };
        let mut walks = [false, true].map(|backup| Walk {
            infos: Vec::with_capacity(counts[usize::from(backup)] + 1),
            hosts: Vec::with_capacity(resolving(backup)),
        });
        // SAFETY: per the function contract.
        let Some(lock) = (unsafe { PeersLock::checked(list, false, can_change, generation, None) })
        else {
            continue;
        };
        // SAFETY: the lists are read-locked at `generation`.
        let complete = unsafe {
            let backup = (*list).next;
            walk(ucf, servers, list, false, &mut walks[0])
                && (backup.is_null() || walk(ucf, servers, backup, true, &mut walks[1]))
        };
        drop(lock);
        if !complete {
            continue;
        }
        let [primary, backup] = walks;
        return Some(finish(ucf, list, can_change, generation, stamp, primary.infos, backup.infos));
    }
    None
}

/// Places every peer of a locked list: its server line, slot and `down`. False if the list
/// holds more peers or templates than there is room for (it changed since it was counted).
///
/// # Safety
/// `peers` must be read-locked; `servers` the upstream's servers.
unsafe fn walk(
    ucf: &UpstreamConf,
    servers: &[ngx::ffi::ngx_http_upstream_server_t],
    peers: *mut ngx_http_upstream_rr_peers_t,
    backup: bool,
    out: &mut Walk,
) -> bool {
    let of_list = |i: &usize| (servers[*i].backup() != 0) == backup;
    // SAFETY: the list is locked; templates form a NULL-terminated list.
    let mut template = unsafe { ffi::resolve_templates(peers) };
    while !template.is_null() {
        if out.hosts.len() == out.hosts.capacity() {
            return false;
        }
        // SAFETY: as above.
        unsafe {
            out.hosts.push(ffi::peer_host(template));
            template = (*template).next;
        }
    }
    // Servers with fixed addresses, in order, and how many of their peers remain to be seen.
    let mut fixed =
        (0..servers.len()).filter(of_list).filter(|&i| !ffi::server_resolves(&servers[i]));
    let mut current: Option<(usize, usize)> = None;
    // SAFETY: the list is locked.
    for peer in unsafe { ffi::iter(peers) } {
        if out.infos.len() == out.infos.capacity() {
            return false;
        }
        // SAFETY: `peer` belongs to the locked list.
        let (host, name) = unsafe { (ffi::peer_host(peer), str_bytes(&(*peer).server)) };
        let line = if host.is_null() {
            if current.is_none_or(|(_, left)| left == 0) {
                current = fixed.next().map(|i| (i, servers[i].naddrs));
            }
            let by_position = current.map(|(i, _)| i).filter(|&i| {
                // SAFETY: `servers` are nginx's.
                (unsafe { server_name(&servers[i]) }) == name
            });
            if let Some((_, left)) = &mut current {
                *left = left.saturating_sub(1);
            }
            by_position.or_else(|| {
                // SAFETY: as above.
                (0..servers.len())
                    .filter(of_list)
                    .find(|&i| unsafe { server_name(&servers[i]) } == name)
            })
        } else {
            let k = out.hosts.iter().position(|&h| h == host);
            let resolving =
                (0..servers.len()).filter(of_list).filter(|&i| ffi::server_resolves(&servers[i]));
            k.and_then(|k| resolving.clone().nth(k))
        };
        out.infos.push(PeerInfo {
            peer,
            line: line.map(|i| i as u32),
            slot: line.map(|i| ucf.slot_base + i),
            config_down: line.is_some_and(|i| servers[i].down != 0),
            config_weight: line.map_or(1, |i| servers[i].weight as ngx_int_t),
            srv_weight: line.is_some_and(|i| ffi::server_has_service(&servers[i])),
            marked_down: Cell::new(false),
            // SAFETY: the peer belongs to the locked list being walked.
            key: unsafe { crate::check::peer_key(peer) },
        });
    }
    true
}

/// Builds the tables of a view from the placed peers (no lock held).
fn finish(
    ucf: &UpstreamConf,
    list: *mut ngx_http_upstream_rr_peers_t,
    can_change: bool,
    generation: ngx_uint_t,
    stamp: u32,
    primary: Vec<PeerInfo>,
    backup: Vec<PeerInfo>,
) -> View {
    let mut slot_of = FastMap::default();
    let mut entries = Vec::new();
    for (kind, infos) in [(PeerList::Primary, &primary), (PeerList::Backup, &backup)] {
        for (index, info) in infos.iter().enumerate() {
            if let Some(slot) = info.slot {
                slot_of.insert(info.peer as usize, slot);
            }
            if let Some(id) = info.line.and_then(|line| ucf.srun_id(line as usize)) {
                entries.push((id, kind, index as u32));
            }
        }
    }
    let mode = ucf.jvm_route.as_ref().map_or(RouteMode::Prefix, |j| j.mode);
    // Every configured srun_id is a route, also while its server has no address (`resolve`).
    let configured = ucf.srun_ids.iter().filter_map(|id| id.as_deref());
    View {
        table: RouteTable::build_with_routes(mode, configured, entries),
        list,
        can_change,
        generation,
        stamp,
        primary,
        backup,
        slot_of,
        stats: ucf.stats(),
        cursor: Cell::new(0),
        applied: Cell::new(None),
        draining: Cell::new(0),
        check_default_down: ucf.check.as_ref().map(|c| c.spec.default_down),
        slow_start: ucf.has_slow_start,
        ramp_next: Cell::new(0),
    }
}
