//! A worker's view of one upstream's peers: the route table, each peer's srun_id and
//! statistics slot, and the runtime drain/down marks applied to the peers.
//!
//! Built per worker on first use, and again whenever the peer list is replaced (`zone`) or
//! changes (the zone's resolver). Round robin creates peers server by server, `naddrs` peers
//! each (primaries in one list, backups in the other), and a zone copies them in the same
//! order; so peers are matched to servers by position, checked by name. A peer the walk cannot
//! place (added at run time by the resolver) is matched by its server name and has no slot.

use std::cell::Cell;

use ngx::ffi::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    ngx_uint_t,
};

use crate::config::{servers, str_bytes, UpstreamConf};
use crate::peers::{self, PeersLock};
use crate::route::{FastMap, PeerList, RouteTable};
use crate::stats::{Stats, STATE_DOWN, STATE_DRAIN};

/// One peer as this module sees it.
pub struct PeerInfo {
    /// The peer, in the upstream's (possibly shared) peer list.
    pub peer: *mut ngx_http_upstream_rr_peer_t,
    /// Its srun_id, if its server has one.
    pub srun_id: Option<Box<[u8]>>,
    /// Its statistics slot, if the configuration laid one out for it.
    pub slot: Option<usize>,
    /// `down` in the configuration.
    pub config_down: bool,
    /// The runtime `down` mark, as last applied.
    pub marked_down: Cell<bool>,
}

/// The route table of one peer list, with the peers it indexes.
pub struct PeerRoutes {
    /// srun_id -> peer indices.
    pub table: RouteTable,
    /// The primary list this view was built from.
    pub list: *mut ngx_http_upstream_rr_peers_t,
    /// Whether the list can change at run time (a zone's resolver); else it never does.
    can_change: bool,
    /// That list's generation when the view was built.
    generation: ngx_uint_t,
    /// Counts rebuilds, so that a request can tell its route id belongs to an older table.
    pub stamp: u32,
    /// Primary peers, in list order.
    pub primary: Vec<PeerInfo>,
    /// Backup peers, in list order.
    pub backup: Vec<PeerInfo>,
    /// Peer address -> statistics slot.
    slot_of: FastMap<usize, usize>,
    /// The counters and runtime marks.
    pub stats: Option<Stats>,
    /// Where the next pick among peers sharing a route starts.
    pub cursor: Cell<usize>,
    /// The runtime-marks generation last applied to the peers.
    applied: Cell<Option<u64>>,
}

impl PeerRoutes {
    /// Whether the list can change at run time (it is in a zone): only then does it have locks
    /// and generations.
    pub fn can_change(&self) -> bool {
        self.can_change
    }

    /// The statistics slot of a peer of either list.
    pub fn slot_of(&self, peer: *const ngx_http_upstream_rr_peer_t) -> Option<usize> {
        self.slot_of.get(&(peer as usize)).copied()
    }

    /// The peers of a list.
    pub fn list(&self, list: PeerList) -> &[PeerInfo] {
        match list {
            PeerList::Primary => &self.primary,
            PeerList::Backup => &self.backup,
        }
    }

    /// Whether the session of a route may go to this peer now: the configuration's `down` and
    /// the runtime `down` mark keep it away, a drain mark does not.
    pub fn is_down_for_sessions(&self, info: &PeerInfo) -> bool {
        match info.slot {
            Some(_) => info.config_down || info.marked_down.get(),
            // SAFETY: the peer belongs to the list the caller has locked.
            None => peers::is_down(unsafe { &*info.peer }),
        }
    }

    /// Brings the peers' `down` flags in line with the runtime marks, if they changed since
    /// this worker last looked: a drained or downed server is skipped by the balancing method
    /// (`down`), and the configuration's `down` always stays.
    #[inline]
    pub fn apply_marks(&self, stats: &Stats) {
        let generation = stats.generation();
        if self.applied.get() != Some(generation) {
            self.apply_changed_marks(stats, generation);
        }
    }

    /// [`apply_marks`](Self::apply_marks) once the marks have moved to `generation`.
    #[cold]
    fn apply_changed_marks(&self, stats: &Stats, generation: u64) {
        for (infos, list) in [(&self.primary, self.list), (&self.backup, self.backup_list())] {
            if list.is_null() {
                continue;
            }
            // SAFETY: the list is valid for the cycle; round robin changes peers under its
            // write lock, and so does this.
            let _lock = unsafe { PeersLock::write(list) };
            for info in infos {
                let Some(slot) = info.slot else { continue };
                if info.config_down {
                    continue;
                }
                let marks = stats.state(slot);
                info.marked_down.set(marks & STATE_DOWN != 0);
                let down = if marks & STATE_DOWN != 0 {
                    1
                } else if marks & STATE_DRAIN != 0 {
                    peers::DRAINING_DOWN
                } else {
                    0
                };
                // SAFETY: the peer belongs to the write-locked list.
                unsafe { (*info.peer).down = down };
            }
        }
        self.applied.set(Some(generation));
    }

    fn backup_list(&self) -> *mut ngx_http_upstream_rr_peers_t {
        // SAFETY: `list` is the upstream's valid primary list; `next` is null or the backups.
        unsafe { (*self.list).next }
    }
}

/// The view of the upstream's current peer list, built if needed.
#[inline]
pub fn current<'a>(
    ucf: &'a UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
) -> Option<&'a PeerRoutes> {
    let list = us.peer.data.cast::<ngx_http_upstream_rr_peers_t>();
    if list.is_null() {
        return None;
    }
    // SAFETY: worker processes are single-threaded and no reference into the cell outlives a
    // callback, so this is the only access.
    let built = unsafe { (*ucf.routes.get()).as_ref() };
    // Without a zone the peer list never changes once built.
    match built {
        Some(view) if !view.can_change && view.list == list => Some(view),
        _ => current_checked(ucf, us, list),
    }
}

/// [`current`] for a view not yet built, or of a list that can change: checks the list's
/// generation and rebuilds the view if it moved.
#[inline(never)]
fn current_checked<'a>(
    ucf: &'a UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
    list: *mut ngx_http_upstream_rr_peers_t,
) -> Option<&'a PeerRoutes> {
    // SAFETY: `list` is the upstream's peer list.
    let generation = unsafe { peers::locked_generation(list) };
    // SAFETY: worker processes are single-threaded and no reference into the cell outlives a
    // callback, so this is the only access.
    let slot = unsafe { &mut *ucf.routes.get() };
    let fresh = slot.as_ref().is_some_and(|t| t.list == list && t.generation == generation);
    if !fresh {
        let stamp = slot.as_ref().map_or(0, |t| t.stamp.wrapping_add(1));
        // SAFETY: `list` is valid; `build` takes the read lock itself.
        *slot = Some(unsafe { build(ucf, us, list, stamp) });
    }
    slot.as_ref()
}

/// Builds the view of `list` (see the module documentation).
///
/// # Safety
/// `list` must be the upstream's valid peer list.
unsafe fn build(
    ucf: &UpstreamConf,
    us: &ngx_http_upstream_srv_conf_t,
    list: *mut ngx_http_upstream_rr_peers_t,
    stamp: u32,
) -> PeerRoutes {
    // SAFETY: per the function contract.
    let _lock = unsafe { PeersLock::read(list) };
    let servers = servers(us);
    let mut entries: Vec<(Box<[u8]>, PeerList, u32)> = Vec::new();
    let mut slot_of = FastMap::default();

    let mut collect = |peers: *mut ngx_http_upstream_rr_peers_t, kind: PeerList| {
        let backup = kind == PeerList::Backup;
        let candidates: Vec<usize> =
            (0..servers.len()).filter(|&i| (servers[i].backup() != 0) == backup).collect();
        let mut walk = candidates.iter().flat_map(|&i| std::iter::repeat_n(i, servers[i].naddrs));
        let (slot_base, slot_count) = match kind {
            PeerList::Primary => (ucf.slot_base, ucf.primary_slots),
            PeerList::Backup => (ucf.slot_base + ucf.primary_slots, ucf.backup_slots),
        };
        let mut infos = Vec::new();
        // SAFETY: the list is read-locked for the walk.
        for (index, peer) in unsafe { peers::iter(peers) }.enumerate() {
            // SAFETY: `peer` belongs to the locked list.
            let name = str_bytes(unsafe { &(*peer).server });
            let by_position = walk.next().filter(|&i| str_bytes(&servers[i].name) == name);
            let slot = by_position.filter(|_| index < slot_count).map(|_| slot_base + index);
            let server = by_position.or_else(|| {
                candidates.iter().copied().find(|&i| str_bytes(&servers[i].name) == name)
            });
            let srun_id: Option<Box<[u8]>> =
                server.and_then(|i| ucf.srun_ids.get(i).cloned().flatten());
            if let Some(id) = &srun_id {
                entries.push((id.clone(), kind, index as u32));
            }
            if let Some(slot) = slot {
                slot_of.insert(peer as usize, slot);
            }
            let config_down = server.is_some_and(|i| servers[i].down != 0);
            infos.push(PeerInfo {
                peer,
                srun_id,
                slot,
                config_down,
                marked_down: Cell::new(false),
            });
        }
        infos
    };
    let primary = collect(list, PeerList::Primary);
    // SAFETY: `list` is valid; `next` is null or the backup list.
    let backup_list = unsafe { (*list).next };
    let backup =
        if backup_list.is_null() { Vec::new() } else { collect(backup_list, PeerList::Backup) };
    let mode = ucf.jvm_route.as_ref().map_or(crate::route::RouteMode::Prefix, |j| j.mode);
    PeerRoutes {
        table: RouteTable::build(mode, entries.iter().map(|(id, kind, i)| (&id[..], *kind, *i))),
        list,
        can_change: peers::can_change(us),
        // SAFETY: the list is read-locked.
        generation: unsafe { peers::generation(list) },
        stamp,
        primary,
        backup,
        slot_of,
        // SAFETY: the zone, if any, was declared for this configuration.
        stats: ucf.zone.and_then(|z| unsafe { crate::stats::from_zone(z.as_ptr()) }),
        cursor: Cell::new(0),
        applied: Cell::new(None),
    }
}
