//! Active health checks: the state machine on nginx's events (timers and connections), in
//! one place. The rules (what `check` means, what answer passes, rise and fall) are in
//! [`rules::check`](crate::rules::check); the health of every checked address is in the shared
//! zone ([`zone::Stats::check_claim`](crate::zone::Stats::check_claim) and what follows it).
//!
//! Every worker runs a timer (`tick`). On each tick it walks the peers of every upstream with
//! `check` (through its own view of them, under the list's read lock, copying the addresses
//! into room it reserved before), finds or claims each address's check slot in the zone, and
//! starts a check of every slot whose turn it takes ([`zone::Stats::check_take_turn`]: one
//! worker per interval, whichever asks first once the check is due). So each address is
//! checked once per interval whatever `worker_processes` is, and when a worker dies the next
//! turn goes to another one. A check is one non-blocking connection
//! (`ngx_event_connect_peer`): for `tcp` it passes once connected; for `http` it sends the
//! request and reads the status line; for `ssl_hello` it sends a ClientHello and reads the
//! first byte of the answer. Its timers are those of the connection's events; the connection
//! is closed when the check ends, whatever ends it. The result goes to the zone; a change
//! between up and down moves the zone's generation, so every worker applies it to its peers
//! (`down`) before its next request ([`worker::View::apply_marks`](crate::worker::View)), and
//! the worker that saw the change logs it once.
//!
//! A worker that is exiting (reload, shutdown) or whose zone a newer cycle superseded starts no
//! more checks; the checks it has running end within their timeout.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr::{self, addr_of_mut};

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_cycle_t, ngx_event_connect_peer,
    ngx_event_get_peer, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_int_t,
    ngx_log_t, ngx_msec_t, ngx_peer_connection_t, ngx_str_t, NGX_AGAIN, NGX_ERROR, NGX_LOG_CRIT,
    NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::HttpModuleServerConf;

use crate::conf::{servers, CheckConf, UpstreamConf};
use crate::ffi::{lossy, str_bytes};
use crate::rules::check::{
    alive, error, framing, is_head, status_line, tls_answer, with_host, Answer, CheckType, Framing,
    Health,
};
use crate::rules::failover::hash64;
use crate::zone::Stats;
use crate::Module;

pub mod tls;

/// Check slots of a `resolve` server line: the addresses of it that are checked.
pub const RESOLVE_SLOTS: u32 = 8;

/// The most of a server's answer read: a status line, or the first byte of a TLS record; with
/// `check_keepalive_requests`, the whole answer (head and body), which must fit to keep the
/// connection.
const ANSWER_LEN: usize = 1024;

/// Room for one socket address (`struct sockaddr_storage`).
const SOCKADDR_LEN: usize = 128;

/// The check slots a server line needs: one per address (a `resolve` server: up to
/// [`RESOLVE_SLOTS`]).
pub fn slots_of(server: &ngx::ffi::ngx_http_upstream_server_t) -> u32 {
    if crate::ffi::server_resolves(server) {
        RESOLVE_SLOTS
    } else {
        u32::try_from(server.naddrs).unwrap_or(u32::MAX).max(1)
    }
}

/// The key of an address in the zone: a hash of its `sockaddr` bytes (never 0).
pub fn address_key(sockaddr: &[u8]) -> u64 {
    hash64(&[b"check", sockaddr]).max(1)
}

/// The key of a peer's address.
///
/// # Safety
/// `peer` must be valid and its list locked (or not shared).
pub unsafe fn peer_key(peer: *const ngx::ffi::ngx_http_upstream_rr_peer_t) -> u64 {
    // SAFETY: per the function contract; `sockaddr` is `socklen` bytes, written when the peer
    // is made.
    unsafe {
        let sa = (*peer).sockaddr;
        if sa.is_null() {
            return 1;
        }
        address_key(crate::ffi::slice(sa.cast::<u8>(), (*peer).socklen as usize))
    }
}

/// Monotonic milliseconds (the same clock in every process of the machine).
pub fn now() -> u64 {
    // SAFETY: nginx updates the cached time on its own thread of this process; a read of it.
    unsafe { ngx::ffi::ngx_current_msec as u64 }
}

/// Wall-clock milliseconds, for the status page.
fn wall_ms() -> u64 {
    // SAFETY: `ngx_cached_time` points to nginx's cached time of this process.
    unsafe {
        let tp = ngx::ffi::ngx_cached_time;
        if tp.is_null() {
            return 0;
        }
        ((*tp).sec as u64) * 1000 + (*tp).msec as u64
    }
}

/// One address to check this tick, copied out of the locked peer list.
struct Target {
    sockaddr: [u8; SOCKADDR_LEN],
    socklen: usize,
    /// The address as text (`10.0.0.1:8080`), for the log.
    name: [u8; 64],
    name_len: usize,
    /// Its server line (index in `uscf->servers`).
    line: usize,
}

/// A check under way: owned by its connection (`c->data`) until it ends.
struct Probe {
    pc: ngx_peer_connection_t,
    sockaddr: [u8; SOCKADDR_LEN],
    name: ngx_str_t,
    name_bytes: [u8; 64],
    /// The zone slot of the check, and the zone.
    index: usize,
    stats: Stats,
    check: *const CheckConf,
    /// The request sent (`check_http_send` with `Host`, or the ClientHello), and how much of
    /// it is sent.
    request: Vec<u8>,
    sent: usize,
    answer: [u8; ANSWER_LEN],
    read: usize,
    connected: bool,
    /// The result, once the status line decided it, while the rest of the answer is read
    /// (`check_keepalive_requests`).
    verdict: Option<u64>,
    /// The connection may carry another check after this one (`type=http` with
    /// `check_keepalive_requests` not reached), and the request is a `HEAD`.
    keep: bool,
    head: bool,
    /// The connection is kept for the next check when this one ends: its answer was whole.
    park: bool,
    /// The connection was kept from an earlier check; the checks it has carried, this one
    /// included.
    reused: bool,
    requests: u32,
    /// `type=https`: the TLS handshake is done; the name sent and verified (NUL-terminated).
    tls_done: bool,
    tls_name: Vec<u8>,
    /// When the check must be over (monotonic ms).
    deadline: u64,
    /// For the log: the upstream, the server line's srun_id and its name.
    upstream: *const UpstreamConf,
    upstream_name: ngx_str_t,
    line: usize,
}

/// A connection kept open for the next check of a slot (`check_keepalive_requests`).
struct Idle {
    c: *mut ngx_connection_t,
    sockaddr: [u8; SOCKADDR_LEN],
    socklen: usize,
    /// The checks it has carried.
    requests: u32,
}

/// This worker's state: its timer, the log its checks' connections write to, the slots it
/// checks now, the connections kept for their next check, and the room for targets.
struct Worker {
    tick: ngx_event_t,
    log: ngx_log_t,
    busy: Vec<bool>,
    idle: Vec<Option<Idle>>,
    /// Per upstream (by index): when a check of it is next due (monotonic ms), as this worker
    /// last read the zone; ticks before that skip the upstream.
    next_run: Vec<u64>,
    targets: Vec<Target>,
    cycle: *mut ngx_cycle_t,
    period: u64,
}

struct WorkerCell(UnsafeCell<Option<Box<Worker>>>);

// SAFETY: only the worker's event-loop thread touches it (timers and connection handlers run
// there); nginx's thread pools never run these.
unsafe impl Sync for WorkerCell {}

static WORKER: WorkerCell = WorkerCell(UnsafeCell::new(None));

/// The worker's state.
///
/// # Safety
/// Only from the worker's event-loop thread, and no two references at once.
unsafe fn worker<'a>() -> Option<&'a mut Worker> {
    // SAFETY: per the function contract.
    unsafe { (*WORKER.0.get()).as_deref_mut() }
}

/// The module's `init_process`: a worker of a configuration with `check` starts its timer.
///
/// # Safety
/// Called by nginx in each new worker process with its cycle.
pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: per the function contract: the http module's main configuration of the cycle.
    let main = unsafe { main_conf_of(cycle) };
    let Some(main) = main else { return NGX_OK as ngx_int_t };
    if !main.checks {
        return NGX_OK as ngx_int_t;
    }
    let mut period = 1000u64;
    for &uscf in &main.upstreams {
        // SAFETY: the upstream configurations live as long as the cycle.
        if let Some(check) = Module::server_conf(unsafe { &*uscf }).and_then(|u| u.check.as_ref()) {
            period = period.min(check.spec.interval / 4);
        }
    }
    // SAFETY: an all-zero event and log are valid values of the C structs; both are set up
    // below before nginx sees them.
    let mut w: Box<Worker> = Box::new(unsafe {
        Worker {
            tick: std::mem::zeroed(),
            log: std::mem::zeroed(),
            busy: Vec::new(),
            idle: Vec::new(),
            next_run: Vec::new(),
            targets: Vec::new(),
            cycle,
            period: period.clamp(50, 1000),
        }
    });
    // SAFETY: `cycle->log` is the worker's log. The checks' connections log through a copy
    // that drops messages below `crit`: a server that refuses connections is reported once
    // per change by this module, not by nginx at every check.
    unsafe {
        w.log = *(*cycle).log;
        w.log.log_level = NGX_LOG_CRIT as ngx::ffi::ngx_uint_t;
        w.log.next = ptr::null_mut();
        w.log.handler = None;
        w.log.data = ptr::null_mut();
        w.tick.handler = Some(tick);
        w.tick.log = (*cycle).log;
        w.tick.data = cycle.cast();
        // A worker that exits does not wait for this timer.
        w.tick.set_cancelable(1);
    }
    // SAFETY: this worker's thread; the box lives until the process exits (never freed while
    // its timer may fire).
    unsafe {
        *WORKER.0.get() = Some(w);
        if let Some(w) = worker() {
            // A first round at once: with `default_down`, servers are out until checked.
            ngx::ffi::ngx_add_timer(addr_of_mut!(w.tick), 1);
        }
    }
    NGX_OK as ngx_int_t
}

/// The http main configuration of this module in `cycle`.
///
/// # Safety
/// `cycle` must be a complete cycle.
pub unsafe fn main_conf_of<'a>(cycle: *mut ngx_cycle_t) -> Option<&'a crate::conf::MainConf> {
    // SAFETY: per the function contract: `conf_ctx` holds the http module's contexts.
    unsafe {
        let ctx = *(*cycle).conf_ctx.add(ngx::ffi::ngx_http_module.index);
        if ctx.is_null() {
            return None;
        }
        let http = &*ctx.cast::<ngx::ffi::ngx_http_conf_ctx_t>();
        let index = <Module as ngx::http::HttpModule>::module().ctx_index;
        http.main_conf.add(index).read().cast::<crate::conf::MainConf>().as_ref()
    }
}

/// The worker's timer: starts the checks that are due, and sets itself again.
unsafe extern "C" fn tick(ev: *mut ngx_event_t) {
    // SAFETY: nginx runs timers on the worker's thread; the state was set at `init_process`.
    let Some(w) = (unsafe { worker() }) else { return };
    // SAFETY: globals of this process, written by its signal handlers.
    let stopping = unsafe {
        ngx::ffi::ngx_exiting != 0 || ngx::ffi::ngx_terminate != 0 || ngx::ffi::ngx_quit != 0
    };
    if stopping {
        return;
    }
    // SAFETY: the cycle this worker runs.
    let Some(main) = (unsafe { main_conf_of(w.cycle) }) else { return };
    let mut superseded = false;
    for &uscf in &main.upstreams {
        // SAFETY: the upstream configurations live as long as the cycle.
        let uscf = unsafe { &*uscf };
        let Some(ucf) = Module::server_conf(uscf) else { continue };
        let (Some(check), Some(stats)) = (ucf.check.as_ref(), ucf.stats()) else { continue };
        if stats.superseded() {
            superseded = true;
            break;
        }
        let now = now();
        if w.next_run.len() <= ucf.index {
            w.next_run.resize(ucf.index + 1, 0);
        }
        if now < w.next_run[ucf.index] {
            continue;
        }
        // SAFETY: this worker's thread; `uscf` and `ucf` belong to its cycle.
        unsafe { run_upstream(w, uscf, ucf, check, &stats) };
        // Nothing to do before the earliest check of the upstream is due (another worker may
        // take that one: then the next tick reads the zone again); at the latest in an
        // interval, to see new addresses.
        let lines = ucf.srun_ids.len();
        let due = (ucf.slot_base..ucf.slot_base + lines)
            .filter_map(|slot| stats.check_next_due(slot))
            .min()
            .unwrap_or(u64::MAX);
        w.next_run[ucf.index] = due.min(now + check.spec.interval);
    }
    if superseded {
        // A newer cycle has this zone's successor: its workers check.
        return;
    }
    // SAFETY: `ev` is this worker's timer event.
    unsafe { ngx::ffi::ngx_add_timer(ev, w.period as ngx_msec_t) };
}

/// Starts the checks of one upstream whose turn this worker takes.
///
/// # Safety
/// The worker's thread; `uscf` and `ucf` belong to the running cycle.
unsafe fn run_upstream(
    w: &mut Worker,
    uscf: &ngx::ffi::ngx_http_upstream_srv_conf_t,
    ucf: &UpstreamConf,
    check: &CheckConf,
    stats: &Stats,
) {
    // SAFETY: the view is used in this function only.
    let Some(view) = (unsafe { crate::worker::current(ucf, uscf) }) else { return };
    w.targets.clear();
    // Room first: nothing is allocated under the lock.
    w.targets.reserve(view.primary.len() + view.backup.len());
    for (infos, list) in [(&view.primary, view.list), (&view.backup, view.backup_list())] {
        if list.is_null() {
            continue;
        }
        // SAFETY: `list` is one of the view's lists.
        let Some(_lock) = (unsafe { view.lock(list, false, None) }) else { return };
        for info in infos {
            let Some(line) = info.line else { continue };
            if w.targets.len() == w.targets.capacity() {
                break;
            }
            let peer = info.peer;
            // SAFETY: the peer belongs to the read-locked list at the view's generation; its
            // address and name are written only when it is made.
            let (sa, name) = unsafe {
                let sa = crate::ffi::slice((*peer).sockaddr.cast::<u8>(), (*peer).socklen as usize);
                (sa, str_bytes(&(*peer).name))
            };
            let mut t = Target {
                sockaddr: [0; SOCKADDR_LEN],
                socklen: sa.len().min(SOCKADDR_LEN),
                name: [0; 64],
                name_len: name.len().min(64),
                line: line as usize,
            };
            t.sockaddr[..t.socklen].copy_from_slice(&sa[..t.socklen]);
            t.name[..t.name_len].copy_from_slice(&name[..t.name_len]);
            w.targets.push(t);
        }
    }
    let spec = check.spec;
    let now = now();
    let stale = spec.interval.saturating_mul(3).saturating_add(spec.timeout);
    let period = spec.interval.max(spec.timeout);
    let initial = Health::initial(&spec);
    let targets = std::mem::take(&mut w.targets);
    for t in &targets {
        let slot = ucf.slot_base + t.line;
        let key = address_key(&t.sockaddr[..t.socklen]);
        let Some(index) = stats.check_claim(slot, key, now, stale, initial) else { continue };
        if w.busy.len() <= index {
            w.busy.resize(index + 1, false);
        }
        if w.busy[index] || !stats.check_take_turn(index, now, period) {
            continue;
        }
        // Busy until the check ends (`finish`, which may run within `start`).
        w.busy[index] = true;
        // SAFETY: the worker's thread; everything the probe points to outlives it (the
        // configuration lives until this worker exits).
        unsafe { start(w, t, index, stats, check, ucf, uscf) };
    }
    w.targets = targets;
}

/// Starts one check: on the connection kept from the slot's last check, or a new one. Its
/// steps run from the event loop (an event posted, or the connection's), never within this
/// call, which holds the worker's state; a connection that fails at once ends the check here.
///
/// # Safety
/// As [`run_upstream`].
unsafe fn start(
    w: &mut Worker,
    t: &Target,
    index: usize,
    stats: &Stats,
    check: &CheckConf,
    ucf: &UpstreamConf,
    uscf: &ngx::ffi::ngx_http_upstream_srv_conf_t,
) {
    // SAFETY: `uscf` is nginx's; its server names are configuration memory.
    let host = unsafe { servers(uscf) }
        .get(t.line)
        // SAFETY: as above.
        .map_or(&[][..], |s| unsafe { str_bytes(&s.name) });
    let request = match check.spec.kind {
        CheckType::Tcp => Vec::new(),
        CheckType::Http | CheckType::Https => with_host(&check.send, host),
        CheckType::SslHello => crate::rules::check::CLIENT_HELLO.to_vec(),
    };
    let tls_name = match (&check.ssl_name, check.spec.kind) {
        (Some(name), _) => name.to_vec(),
        (None, CheckType::Https) => sni_of(host),
        _ => Vec::new(),
    };
    let mut probe = Box::new(Probe {
        // SAFETY: an all-zero peer connection is a valid value of the C struct; the fields
        // nginx reads are set below.
        pc: unsafe { std::mem::zeroed() },
        sockaddr: t.sockaddr,
        name: ngx_str_t { len: 0, data: ptr::null_mut() },
        name_bytes: t.name,
        index,
        stats: *stats,
        check,
        request,
        sent: 0,
        answer: [0; ANSWER_LEN],
        read: 0,
        connected: false,
        verdict: None,
        keep: check.spec.kind == CheckType::Http && check.keepalive_requests > 1,
        head: is_head(&check.send),
        park: false,
        reused: false,
        requests: 1,
        tls_done: false,
        tls_name,
        deadline: now() + check.spec.timeout,
        upstream: ucf,
        // SAFETY: the upstream's name is configuration memory.
        upstream_name: uscf.host,
        line: t.line,
    });
    if check.spec.port != 0 {
        set_port(&mut probe.sockaddr, check.spec.port);
    }
    let p: *mut Probe = &mut *probe;
    // SAFETY: `p` is the box's, which stays where it is until `finish` frees it; the peer
    // connection points into it.
    unsafe {
        (*p).name = ngx_str_t { len: t.name_len, data: (*p).name_bytes.as_mut_ptr() };
        (*p).pc.sockaddr = (*p).sockaddr.as_mut_ptr().cast();
        (*p).pc.socklen = t.socklen as _;
        (*p).pc.name = &mut (*p).name;
        (*p).pc.get = Some(ngx_event_get_peer);
        (*p).pc.log = &mut w.log;
        (*p).pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_IGNORE_ECONNRESET);
    }
    // SAFETY: the worker's thread.
    let idle = unsafe { take_idle(w, index, &probe.sockaddr[..t.socklen]) };
    let probe = Box::into_raw(probe);
    if let Some(idle) = idle {
        // SAFETY: a connection of a check of this slot that ended with its answer whole; from
        // now on it owns the probe through `c->data` again.
        unsafe {
            let c = idle.c;
            (*c).set_idle(0);
            (*probe).pc.connection = c;
            (*probe).connected = true;
            (*probe).reused = true;
            (*probe).requests = idle.requests + 1;
            adopt(probe, c);
            ngx::ffi::ngx_add_timer((*c).write, (*(*probe).check).spec.timeout as ngx_msec_t);
            crate::ffi::post_event((*c).write);
        }
        return;
    }
    // SAFETY: `probe` came from `Box::into_raw` above and nothing else refers to it.
    unsafe { connect(w, probe) };
}

/// Opens the connection of a check; its steps run from the event loop. False if it failed at
/// once: the check ended then (its result recorded, the probe freed).
///
/// # Safety
/// `probe` must come from `Box::into_raw` in [`start`], with no connection, and not be used
/// after a false return; `w` is the worker's state.
unsafe fn connect(w: &mut Worker, probe: *mut Probe) -> bool {
    // SAFETY: the peer connection is complete; nginx opens a non-blocking socket and adds it to
    // the event loop, or returns an error with nothing left open.
    let rc = unsafe { ngx_event_connect_peer(&mut (*probe).pc) };
    if rc == NGX_ERROR as ngx_int_t || rc == ngx::ffi::NGX_BUSY as ngx_int_t
        || rc == ngx::ffi::NGX_DECLINED as ngx_int_t
        // SAFETY: `probe` is live.
        || unsafe { (*probe).pc.connection.is_null() }
    {
        // SAFETY: `probe` came from `Box::into_raw` and no connection refers to it.
        unsafe { finish_in(Some(w), probe, error::REFUSED) };
        return false;
    }
    // SAFETY: nginx made the connection; from now on it owns the probe through `c->data`, and
    // `finish` closes the connection and frees the probe, once.
    unsafe {
        let c = (*probe).pc.connection;
        adopt(probe, c);
        let left = (*probe).deadline.saturating_sub(now()).max(1);
        ngx::ffi::ngx_add_timer((*c).write, left as ngx_msec_t);
        if rc == NGX_OK as ngx_int_t {
            // Connected at once (nginx checked the socket): no pending error to read.
            (*probe).connected = true;
            crate::ffi::post_event((*c).write);
        }
    }
    true
}

/// Makes `c` the connection of `probe`: its events come to [`on_event`], its log is the
/// checks' one.
///
/// # Safety
/// `probe` must be live and `c` an open connection of the worker.
unsafe fn adopt(probe: *mut Probe, c: *mut ngx_connection_t) {
    // SAFETY: per the function contract; `pc.log` is the worker's log of checks.
    unsafe {
        let log = (*probe).pc.log;
        (*c).data = probe.cast();
        (*(*c).read).handler = Some(on_event);
        (*(*c).write).handler = Some(on_event);
        (*c).log = log;
        (*(*c).read).log = log;
        (*(*c).write).log = log;
    }
}

/// The connection kept for slot `index`, if it goes to `sockaddr` and is still open (nothing
/// came on it: the server has not closed it). Any other kept connection of the slot is closed.
///
/// # Safety
/// The worker's thread.
unsafe fn take_idle(w: &mut Worker, index: usize, sockaddr: &[u8]) -> Option<Idle> {
    let idle = w.idle.get_mut(index)?.take()?;
    // SAFETY: a kept connection is open until taken or closed by `idle_event`, which empties
    // its slot.
    let open = unsafe { still_open(idle.c) };
    if open && idle.sockaddr[..idle.socklen] == *sockaddr {
        return Some(idle);
    }
    // SAFETY: as above; taken from its slot, closed once.
    unsafe { close(idle.c) };
    None
}

/// Whether nothing came on an idle connection (no data, no close, no error): a peek that
/// would block.
///
/// # Safety
/// `c` must be an open connection.
unsafe fn still_open(c: *mut ngx_connection_t) -> bool {
    let mut byte = 0u8;
    // SAFETY: per the function contract; one byte into `byte`, not taken from the socket.
    let n = unsafe {
        libc::recv((*c).fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n == -1
        && matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EINTR)
        )
}

/// Keeps the connection of a check whose answer was whole for the next check of its slot:
/// no timers, events to [`idle_event`], marked idle (a worker that exits closes it).
///
/// # Safety
/// The worker's thread; `c` the open connection of `p`, which is ending.
unsafe fn park(w: &mut Worker, p: &Probe, c: *mut ngx_connection_t) {
    if w.idle.len() <= p.index {
        w.idle.resize_with(p.index + 1, || None);
    }
    if let Some(old) = w.idle[p.index].take() {
        // SAFETY: a kept connection, taken from its slot.
        unsafe { close(old.c) };
    }
    // SAFETY: per the function contract.
    unsafe {
        if (*(*c).read).timer_set() != 0 {
            ngx::ffi::ngx_del_timer((*c).read);
        }
        if (*(*c).write).timer_set() != 0 {
            ngx::ffi::ngx_del_timer((*c).write);
        }
        (*c).data = ptr::null_mut();
        (*c).set_idle(1);
        (*(*c).read).handler = Some(idle_event);
        (*(*c).write).handler = Some(idle_write);
    }
    // SAFETY: as above: what already came (the server's close) is seen now.
    unsafe {
        if (*(*c).read).ready() != 0 {
            if !still_open(c) {
                close(c);
                return;
            }
            (*(*c).read).set_ready(0);
            if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                close(c);
                return;
            }
        }
    }
    w.idle[p.index] = Some(Idle {
        c,
        sockaddr: p.sockaddr,
        socklen: p.pc.socklen as usize,
        requests: p.requests,
    });
}

/// A kept connection's read event: the server closed it, sent something unasked, or the
/// worker exits (`c->close`): it is closed. A spurious event leaves it kept.
unsafe extern "C" fn idle_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for a kept connection of this worker; the worker's thread.
    unsafe {
        let c = (*ev).data.cast::<ngx_connection_t>();
        if (*c).close() == 0 && (*ev).timedout() == 0 && still_open(c) {
            (*ev).set_ready(0);
            if ngx_handle_read_event(ev, 0) == NGX_OK as ngx_int_t {
                return;
            }
        }
        if let Some(w) = worker() {
            for slot in w.idle.iter_mut() {
                if slot.as_ref().is_some_and(|i| i.c == c) {
                    *slot = None;
                }
            }
        }
        close(c);
    }
}

/// A kept connection's write event: nothing to write.
unsafe extern "C" fn idle_write(_ev: *mut ngx_event_t) {}

/// Closes a check's connection with a reset (its TLS first).
///
/// # Safety
/// `c` must be an open connection of a check, closed once.
unsafe fn close(c: *mut ngx_connection_t) {
    // SAFETY: per the function contract.
    unsafe {
        tls::shutdown(c);
        reset_on_close(c);
        ngx_close_connection(c);
    }
}

/// Sets the port of an IPv4 or IPv6 socket address (`port=`).
fn set_port(sockaddr: &mut [u8; SOCKADDR_LEN], port: u16) {
    let family = u16::from_ne_bytes([sockaddr[0], sockaddr[1]]);
    if family == libc::AF_INET as u16 || family == libc::AF_INET6 as u16 {
        sockaddr[2..4].copy_from_slice(&port.to_be_bytes());
    }
}

/// The handler of both events of a check's connection.
unsafe extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for the events of a check's connection only, whose `data` is
    // the probe until `finish`, which closes the connection (no event of it fires after).
    unsafe {
        let c = (*ev).data.cast::<ngx_connection_t>();
        let probe = (*c).data.cast::<Probe>();
        if (*ev).timedout() != 0 {
            // An answer whose status line came in time passed or failed by it.
            finish(probe, (*probe).verdict.unwrap_or(error::TIMEOUT));
            return;
        }
        step(probe);
    }
}

/// Moves a check on as far as its socket allows.
///
/// # Safety
/// `probe` must be a live probe whose connection is open.
unsafe fn step(probe: *mut Probe) {
    // SAFETY: per the function contract.
    unsafe {
        let p = &mut *probe;
        let c = p.pc.connection;
        if !p.connected {
            if let Err(code) = connect_result(c) {
                finish(probe, code);
                return;
            }
            p.connected = true;
            if (*p.check).spec.kind == CheckType::Tcp {
                finish(probe, error::NONE);
                return;
            }
        }
        if (*p.check).spec.kind == CheckType::Https && !p.tls_done {
            let started = if tls::has_tls(c) {
                tls::finished(c, &*p.check, &p.tls_name)
            } else {
                tls::start(c, &*p.check, &p.tls_name)
            };
            match started {
                tls::Handshake::Done => {
                    p.tls_done = true;
                    // nginx's handshake handlers stood in for ours while it waited.
                    (*(*c).read).handler = Some(on_event);
                    (*(*c).write).handler = Some(on_event);
                }
                tls::Handshake::Again => {
                    tls::on_done(c, handshake_done);
                    return;
                }
                tls::Handshake::Failed(code) => {
                    finish(probe, code);
                    return;
                }
            }
        }
        while p.sent < p.request.len() {
            let Some(send) = (*c).send else {
                fail(probe, error::SOCKET);
                return;
            };
            let n = send(c, p.request.as_mut_ptr().add(p.sent), p.request.len() - p.sent);
            if n == NGX_AGAIN as isize {
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                    fail(probe, error::SOCKET);
                }
                return;
            }
            if n <= 0 {
                fail(probe, error::SOCKET);
                return;
            }
            p.sent += n as usize;
        }
        // Sent: the rest of the time is the answer's.
        if (*(*c).write).timer_set() != 0 {
            ngx::ffi::ngx_del_timer((*c).write);
        }
        if (*(*c).read).timer_set() == 0 {
            let left = p.deadline.saturating_sub(now()).max(1);
            ngx::ffi::ngx_add_timer((*c).read, left as ngx_msec_t);
        }
        loop {
            let Some(recv) = (*c).recv else {
                fail(probe, error::SOCKET);
                return;
            };
            if p.read == ANSWER_LEN {
                finish(probe, p.verdict.unwrap_or(error::INVALID));
                return;
            }
            let n = recv(c, p.answer.as_mut_ptr().add(p.read), ANSWER_LEN - p.read);
            if n == NGX_AGAIN as isize {
                if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                    fail(probe, error::SOCKET);
                }
                return;
            }
            if n < 0 {
                fail(probe, error::SOCKET);
                return;
            }
            if n == 0 {
                fail(probe, error::CLOSED);
                return;
            }
            p.read += n as usize;
            let check = &*p.check;
            if p.verdict.is_none() {
                let answer = match check.spec.kind {
                    CheckType::SslHello => tls_answer(&p.answer[..p.read]),
                    _ => status_line(&p.answer[..p.read]),
                };
                let result = match answer {
                    Answer::Incomplete => continue,
                    Answer::Invalid => {
                        finish(probe, error::INVALID);
                        return;
                    }
                    Answer::Status(_) if check.spec.kind == CheckType::SslHello => error::NONE,
                    Answer::Status(code) if alive(code, check.expect) => error::NONE,
                    Answer::Status(code) => error::STATUS + u64::from(code),
                };
                if !p.keep || p.requests >= check.keepalive_requests {
                    finish(probe, result);
                    return;
                }
                // Decided; the rest of the answer is read to keep the connection.
                p.verdict = Some(result);
            }
            let verdict = p.verdict.unwrap_or(error::INVALID);
            match framing(&p.answer[..p.read], p.head, ANSWER_LEN) {
                Framing::More => continue,
                Framing::Reusable => {
                    p.park = true;
                    finish(probe, verdict);
                }
                Framing::Close => finish(probe, verdict),
            }
            return;
        }
    }
}

/// A check's connection failed. Once its status line decided the check, that result stands;
/// a kept connection that fails before any answer (the server closed it as the check began)
/// is replaced by a new one, once; otherwise the check failed with `code`.
///
/// # Safety
/// `probe` must be a live probe whose connection is open; not used after this.
unsafe fn fail(probe: *mut Probe, code: u64) {
    // SAFETY: per the function contract.
    unsafe {
        let p = &mut *probe;
        if let Some(verdict) = p.verdict {
            finish(probe, verdict);
            return;
        }
        if p.reused && p.read == 0 {
            let c = p.pc.connection;
            p.pc.connection = ptr::null_mut();
            close(c);
            p.reused = false;
            p.requests = 1;
            p.sent = 0;
            p.connected = false;
            match worker() {
                Some(w) => {
                    connect(w, probe);
                }
                None => finish_in(None, probe, code),
            }
            return;
        }
        finish(probe, code);
    }
}

/// Called by nginx when a handshake that waited is over (or its timer fired).
unsafe extern "C" fn handshake_done(c: *mut ngx_connection_t) {
    // SAFETY: nginx calls this for a check's connection with TLS, whose `data` is the probe.
    unsafe {
        let probe = (*c).data.cast::<Probe>();
        if (*(*c).read).timedout() != 0 || (*(*c).write).timedout() != 0 {
            finish(probe, error::TIMEOUT);
            return;
        }
        step(probe);
    }
}

/// The name sent with a TLS check (SNI) and verified: the host of the server's name, unless it
/// is an IP address (then none); NUL-terminated.
fn sni_of(server: &[u8]) -> Vec<u8> {
    let host = if server.first() == Some(&b'[') {
        return Vec::new();
    } else {
        server.split(|&b| b == b':').next().unwrap_or_default()
    };
    let is_ip = !host.is_empty() && host.iter().all(|b| b.is_ascii_digit() || *b == b'.');
    if host.is_empty() || is_ip {
        return Vec::new();
    }
    [host, b"\0"].concat()
}

/// Whether the connection opened: the socket's pending error, as nginx's upstream module reads
/// it.
///
/// # Safety
/// `c` must be an open connection.
unsafe fn connect_result(c: *mut ngx_connection_t) -> Result<(), u64> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: per the function contract: `c->fd` is its socket; `err` and `len` are ours.
    let rc = unsafe {
        libc::getsockopt(
            (*c).fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast::<c_void>(),
            &mut len,
        )
    };
    let err =
        if rc == -1 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { err };
    match err {
        0 => Ok(()),
        libc::ECONNREFUSED | libc::ECONNRESET => Err(error::REFUSED),
        libc::ETIMEDOUT => Err(error::TIMEOUT),
        _ => Err(error::SOCKET),
    }
}

/// Makes the close of a check's connection a reset (`SO_LINGER` with a zero time), as HAProxy
/// closes its checks: no FIN exchange and no TIME_WAIT socket on either side for a
/// connection whose answer is read whole or no longer wanted; a server sees one check a
/// second, not thousands of sockets waiting out their TIME_WAIT. A failure leaves the normal
/// close.
///
/// # Safety
/// `c` must be an open connection.
unsafe fn reset_on_close(c: *mut ngx_connection_t) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: per the function contract: `c->fd` is its socket; `linger` is ours.
    unsafe {
        libc::setsockopt(
            (*c).fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<c_void>(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Ends a check from an event handler: [`finish_in`] with the worker's state.
///
/// # Safety
/// As `finish_in`; the worker's state is not borrowed elsewhere (an event handler).
unsafe fn finish(probe: *mut Probe, code: u64) {
    // SAFETY: per the function contract.
    unsafe { finish_in(worker(), probe, code) }
}

/// Ends a check: keeps its connection for the slot's next check (its answer was whole) or
/// closes it, records the result (`code` 0: it passed), logs a change between up and down,
/// and frees the probe.
///
/// # Safety
/// `probe` must come from `Box::into_raw` in [`start`] and not be used after this; `w` is the
/// worker's state (None: none, in a process that is not a worker).
unsafe fn finish_in(w: Option<&mut Worker>, probe: *mut Probe, code: u64) {
    // SAFETY: per the function contract; the connection is kept (its events then no longer
    // reach the probe) or closed before the probe is freed.
    let p = unsafe { Box::from_raw(probe) };
    let c = p.pc.connection;
    if let Some(w) = w {
        if !c.is_null() {
            // SAFETY: the worker's thread; the connection nginx made (or kept) for this probe,
            // kept for the next check of its slot or closed, once.
            unsafe {
                if p.park {
                    park(w, &p, c);
                } else {
                    close(c);
                }
            }
        }
        if let Some(busy) = w.busy.get_mut(p.index) {
            *busy = false;
        }
    } else if !c.is_null() {
        // SAFETY: as above.
        unsafe { close(c) };
    }
    // SAFETY: the configuration lives until this worker exits.
    let check = unsafe { &*p.check };
    let Some((before, after)) = p.stats.check_record(p.index, wall_ms(), code, &check.spec) else {
        return;
    };
    // SAFETY: as above.
    let ucf = unsafe { &*p.upstream };
    // Back after its checks took it out (not its first pass at start): its slow start.
    if !after.down && (before.passes > 0 || before.fails > 0) {
        p.stats.start_ramp(ucf.slot_base + p.line, now());
    }
    let srun_id = ucf.srun_id(p.line).map(lossy).unwrap_or_else(|| "-".into());
    // SAFETY: configuration memory.
    let upstream = lossy(unsafe { str_bytes(&p.upstream_name) });
    let address = lossy(&p.name_bytes[..p.name.len]);
    // SAFETY: the cycle's log is valid in a worker.
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    if after.down {
        ngx::ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "jvm_route: check: server {} (srun_id={}) of upstream \"{}\" is down: {} checks \
             failed, the last: {}",
            address,
            srun_id,
            upstream,
            after.fails,
            error::describe(code)
        );
    } else {
        ngx::ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "jvm_route: check: server {} (srun_id={}) of upstream \"{}\" is up: {} checks passed",
            address,
            srun_id,
            upstream,
            after.passes
        );
    }
}

/// The check state of a peer for the status page: its health, the wall-clock ms of its last
/// check, why that failed, and how many checks ran. None: its line is not checked.
pub fn peer_health(
    stats: &Stats,
    slot: usize,
    key: u64,
    default_down: bool,
) -> Option<(Health, u64, u64, u64)> {
    if !stats.is_checked(slot) {
        return None;
    }
    match stats.check_find(slot, key) {
        Some(i) => Some(stats.check_info(i)),
        None if stats.check_down(slot, key, default_down) => {
            Some((Health { down: true, passes: 0, fails: 0 }, 0, 0, 0))
        }
        // Not checked (no slot for it), or not yet.
        None => None,
    }
}

/// Wall-clock milliseconds now, for ages on the status page.
pub fn wall_now() -> u64 {
    wall_ms()
}
