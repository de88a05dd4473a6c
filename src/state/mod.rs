//! `jvm_route_state FILE`: runtime marks (drain, undrain, down, weight) that survive a restart
//! and a binary upgrade. The format is [`rules::state`](crate::rules::state).
//!
//! - **Writing.** The worker that takes a control action writes the whole state (every server
//!   line with a runtime mark or weight, read from the zone) once the action is done: under an
//!   exclusive `flock` of `FILE.lock`, into `FILE.tmp.PID`, `fsync`, `rename` over `FILE`. The
//!   state is read from the zone after the lock is taken, so of two workers writing at once the
//!   second writes a state that has the first's change too; the file is always one whole state.
//! - **Reading.** Only when a cycle starts with a fresh zone (nginx's start, the new master of a
//!   binary upgrade, or a reload after a module of another zone layout): the master reads the
//!   file in the module's `init_module` and restores the marks of the server lines it names,
//!   by the zone's key, as a reload carries them. A reload otherwise carries the marks in
//!   memory and neither reads nor writes the file. A missing file is normal; one that cannot be
//!   read or parsed (truncated, corrupt, of a newer format) gives one `[warn]` with the file and
//!   the line, and nothing of it is applied.

use std::ffi::CString;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ngx::ffi::{ngx_cycle_t, NGX_LOG_WARN};
use ngx::http::HttpModuleServerConf;

use crate::conf::{server_name, servers, upstream_name, MainConf};
use crate::ffi::lossy;
use crate::rules::state::{self, Record};
use crate::zone::{self, Stats};
use crate::Module;

/// The records of every server line that has a runtime mark or weight now.
pub fn snapshot(main: &MainConf, stats: &Stats) -> Vec<Record> {
    let mut out = Vec::new();
    for &uscf in &main.upstreams {
        // SAFETY: the upstream configurations live as long as the cycle.
        let uscf = unsafe { &*uscf };
        let Some(ucf) = Module::server_conf(uscf) else { continue };
        // SAFETY: `uscf` is nginx's.
        let (name, lines) = unsafe { (upstream_name(uscf), servers(uscf)) };
        for (i, server) in lines.iter().enumerate() {
            let slot = ucf.slot_base + i;
            let (marks, weight) = (stats.state(slot), stats.weight(slot));
            if marks == 0 && weight.is_none() {
                continue;
            }
            out.push(Record {
                upstream: lossy(name),
                // SAFETY: `server` belongs to `uscf`.
                server: lossy(unsafe { server_name(server) }),
                srun_id: lossy(ucf.srun_id(i).unwrap_or_default()),
                backup: server.backup() != 0,
                rank: ucf.ranks.get(i).copied().unwrap_or(0),
                marks,
                weight,
                configured: stats.configured(slot),
                configured_weight: stats.configured_weight(slot),
            });
        }
    }
    out
}

/// Writes the state now in the zone to `main`'s state file (nothing without one).
pub fn save(main: &MainConf, stats: &Stats) -> Result<(), String> {
    let Some(path) = &main.state_file else { return Ok(()) };
    write_locked(path, || state::write(&snapshot(main, stats)))
        .map_err(|e| format!("could not write \"{}\": {e}", path.display()))
}

/// Takes `FILE.lock`, then writes what `text` gives (read under the lock) to a temporary file
/// beside `path`, syncs it and renames it over `path`.
fn write_locked(path: &Path, text: impl FnOnce() -> String) -> std::io::Result<()> {
    let lock_path = with_suffix(path, ".lock");
    let lock = fs::OpenOptions::new().create(true).append(true).mode(0o644).open(&lock_path)?;
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().and_then(|d| fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    drop(lock);
    result
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Restores the runtime marks of the state file into a fresh zone (in the master, from the
/// module's `init_module`). Warns once, and applies nothing, when the file cannot be used.
///
/// # Safety
/// `cycle` must be the cycle nginx just initialised; `stats` its zone.
pub unsafe fn restore(cycle: *mut ngx_cycle_t, stats: &Stats) {
    // SAFETY: per the function contract.
    let Some(main) = (unsafe { crate::check::main_conf_of(cycle) }) else { return };
    let Some(path) = &main.state_file else { return };
    // SAFETY: the cycle's log.
    let log = unsafe { (*cycle).log };
    // SAFETY: as above: the cycle's configuration is complete.
    unsafe { warn_if_not_writable(cycle, path) };
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "jvm_route_state \"{}\": cannot be read ({}): no runtime mark is restored",
                path.display(),
                e
            );
            return;
        }
    };
    let records = match std::str::from_utf8(&text)
        .map_err(|_| "the file is not text".to_string())
        .and_then(|t| state::read(t).map_err(|e| e.to_string()))
    {
        Ok(records) => records,
        Err(why) => {
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "jvm_route_state \"{}\": {}: the file is ignored, no runtime mark is restored",
                path.display(),
                why
            );
            return;
        }
    };
    let mut restored = 0;
    for r in &records {
        let key = zone::server_key(
            r.upstream.as_bytes(),
            r.server.as_bytes(),
            r.srun_id.as_bytes(),
            r.backup,
            r.rank,
        );
        // Records of server lines that are gone are left out (and dropped at the next write).
        if let Some(slot) = stats.slot_of_key(key) {
            stats.restore(slot, r.marks, r.weight, r.configured, r.configured_weight);
            restored += 1;
        }
    }
    ngx::ngx_log_error!(
        ngx::ffi::NGX_LOG_NOTICE,
        log,
        "jvm_route_state \"{}\": runtime marks of {} server line(s) restored, {} record(s) of \
         lines no longer configured left out",
        path.display(),
        restored,
        records.len() - restored
    );
}

/// Warns when the worker processes' user cannot write the state file's directory (the file
/// is written by a worker).
///
/// # Safety
/// `cycle` must be a complete cycle.
unsafe fn warn_if_not_writable(cycle: *mut ngx_cycle_t, path: &Path) {
    // SAFETY: per the function contract: the core module's configuration of the cycle.
    let (uid, gid) = unsafe {
        let ccf = (*(*cycle).conf_ctx.add(ngx::ffi::ngx_core_module.index))
            .cast::<ngx::ffi::ngx_core_conf_t>();
        if ccf.is_null() {
            return;
        }
        ((*ccf).user, (*ccf).group)
    };
    // SAFETY: the cycle's log.
    let log = unsafe { (*cycle).log };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Ok(dir_c) = CString::new(dir.as_os_str().as_bytes()) else { return };
    // SAFETY: a stat buffer of our own and a NUL-terminated path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::stat(dir_c.as_ptr(), &mut st) } != 0 {
        ngx::ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "jvm_route_state \"{}\": its directory \"{}\" does not exist: runtime marks will not \
             be saved",
            path.display(),
            dir.display()
        );
        return;
    }
    // `user` unset (nginx not started as root): the workers run as this process does.
    let (uid, gid) = if uid == libc::uid_t::MAX {
        // SAFETY: plain system calls without arguments.
        unsafe { (libc::geteuid(), libc::getegid()) }
    } else {
        (uid, gid)
    };
    let writable = uid == 0
        || (st.st_uid == uid && st.st_mode & 0o200 != 0)
        || (st.st_gid == gid && st.st_mode & 0o020 != 0)
        || st.st_mode & 0o002 != 0;
    if !writable {
        ngx::ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "jvm_route_state \"{}\": the worker processes' user (uid {}) cannot write its \
             directory \"{}\": runtime marks will not be saved (on Debian: install -d -o \
             www-data /var/lib/nginx/jvm-route)",
            path.display(),
            uid,
            dir.display()
        );
    }
}
