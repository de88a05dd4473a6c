//! `jvm_route_state FILE`: runtime marks that survive a restart and a binary upgrade. Real nginx
//! with stand-in backends: a drain kept through `nginx -s stop` and a start; a weight kept
//! through `kill -USR2` and the old master's exit; two workers changing marks at once while the
//! file is read over and over (always one whole state); a corrupt file (one warning, a clean
//! start); a reload that leaves the file alone; what a write costs a control action.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn conf(tomcats: &[Backend], state: &Path) -> String {
    control_conf(tomcats, &["weight=1"], "        zone tomcats 64k;\n").replacen(
        "http {\n",
        &format!("http {{\n    jvm_route_state {};\n", state.display()),
        1,
    )
}

fn row(nginx: &Nginx, srun_id: &str) -> serde_json::Value {
    status_server(nginx, "/status", srun_id)
}

/// Stand-in backends with `routes`, a directory for the state file, its path, and the
/// configuration that keeps the marks there.
fn setup(routes: &[&str]) -> (Vec<Backend>, TempDir, PathBuf, String) {
    let tomcats = backends(routes);
    let dir = TempDir::new("state");
    let state = dir.path().join("jvm-route.state");
    let http = conf(&tomcats, &state);
    (tomcats, dir, state, http)
}

/// Whether `text` is one whole state file: its format line, records of nine fields, and a
/// newline at the end.
fn whole(text: &str) -> bool {
    text.ends_with('\n')
        && text.lines().any(|l| l == "jvm_route_state 1")
        && text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("jvm_route_state"))
            .all(|l| l.split('\t').count() == 9)
}

#[test]
fn a_drain_survives_a_stop_and_a_start() {
    let (_tomcats, _dir, state, http) = setup(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(2, &http);
    assert!(!state.exists(), "nothing is written before a change");
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=drain");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("not saved"), "{r:?}");
    let text = fs::read_to_string(&state).expect("the state file");
    assert!(whole(&text), "{text}");
    assert!(text.contains("\ttomcat02\tprimary\t0\tdrain\t-\t-\t1\n"), "{text}");
    assert!(!text.contains("tomcat01"), "only lines with a runtime mark: {text}");
    let json = nginx.get("/status?format=json").body;
    assert!(json.contains(&format!("\"state_file\":\"{}\"", state.display())), "{json}");
    drop(nginx);

    // Started again: still draining, and told so in the log.
    let nginx = Nginx::start(2, &http);
    assert_eq!(row(&nginx, "tomcat02")["state"], "draining");
    let (a, b) = spread_of_two(&nginx, 10);
    assert_eq!((a, b), (10, 0), "a drained server takes no new sessions after the restart");
    assert!(
        nginx.error_log().contains("runtime marks of 1 server line(s) restored"),
        "{}",
        nginx.error_log()
    );
    // Undrained: the record goes.
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=undrain").status,
        200
    );
    let text = fs::read_to_string(&state).unwrap();
    assert!(whole(&text) && !text.contains("tomcat02"), "{text}");
}

/// A daemonised nginx (a binary upgrade needs a master whose parent is init: nginx ignores
/// `USR2` otherwise), stopped by its pid file when dropped.
struct Daemon {
    dir: TempDir,
    port: u16,
}

impl Daemon {
    fn start(http: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let port = free_port();
        let conf = compose(1, http, port).replace("daemon off;", "daemon on;");
        fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let out = std::process::Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .expect("start nginx");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let d = Daemon { dir, port };
        assert!(eventually(10, || d.master().is_some()), "{}", d.log());
        d
    }

    fn master(&self) -> Option<i32> {
        fs::read_to_string(self.dir.path().join("logs/nginx.pid")).ok()?.trim().parse().ok()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    fn row(&self, srun_id: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&request(self.port, "/status?format=json", &[]).body)
                .unwrap_or_default();
        v["upstreams"][0]["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["srun_id"] == srun_id).cloned())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for file in ["logs/nginx.pid", "logs/nginx.pid.oldbin"] {
            if let Some(pid) = fs::read_to_string(self.dir.path().join(file))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: a master this test started (or its upgraded successor).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_weight_survives_a_binary_upgrade() {
    let (_tomcats, _dir, _state, http) = setup(&["tomcat01", "tomcat02"]);
    let nginx = Daemon::start(&http);
    let raw = "POST /control?upstream=tomcats&srun_id=tomcat02&action=weight&value=3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(nginx.port, raw.as_bytes()).status, 200);
    let old_master = nginx.master().unwrap();
    // The binary upgrade: a new master from the same binary, then the old one quits.
    // SAFETY: our nginx's master.
    unsafe { libc::kill(old_master, libc::SIGUSR2) };
    assert!(
        eventually(10, || nginx.master().is_some_and(|m| m != old_master)),
        "no new master:\n{}",
        nginx.log()
    );
    let new_master = nginx.master().unwrap();
    assert!(eventually(10, || workers_of(new_master as u32).len() == 1), "{}", nginx.log());
    // SAFETY: the old master.
    unsafe { libc::kill(old_master, libc::SIGQUIT) };
    assert!(eventually(10, || !alive(old_master)), "the old master quits");
    assert_eq!(
        nginx.row("tomcat02")["weight"],
        3,
        "the new binary keeps the runtime weight:\n{}",
        nginx.log()
    );
    assert!(nginx.log().contains("runtime marks of 1 server line(s) restored"), "{}", nginx.log());
}

#[test]
fn two_workers_changing_marks_leave_one_whole_state() {
    let (tomcats, _dir, state, http) = setup(&["tomcat01", "tomcat02", "tomcat03"]);
    let nginx = Nginx::start(2, &http);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, torn) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, reads, torn, state) = (stop.clone(), reads.clone(), torn.clone(), state.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = fs::read_to_string(&state) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !whole(&text) {
                        torn.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let port = nginx.port;
    let writers: Vec<_> = ["tomcat01", "tomcat02", "tomcat03"]
        .into_iter()
        .map(|srun_id| {
            thread::spawn(move || {
                let mut times = Vec::new();
                for i in 0..40 {
                    let action = if i % 2 == 0 { "drain" } else { "undrain" };
                    let raw = format!(
                        "POST /control?upstream=tomcats&srun_id={srun_id}&action={action} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let t = Instant::now();
                    let r = raw_request(port, raw.as_bytes());
                    times.push(t.elapsed());
                    assert_eq!(r.status, 200, "{r:?}");
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(torn.load(Ordering::Relaxed), 0, "of {} reads", reads.load(Ordering::Relaxed));
    assert!(reads.load(Ordering::Relaxed) > 0);
    // Each server ended undrained (40 actions, the last an undrain): the file says so.
    let text = fs::read_to_string(&state).unwrap();
    assert!(whole(&text) && !text.contains("\tdrain\t"), "{text}");
    times.sort();
    let with_file = times[times.len() / 2];

    // The same actions without a state file, for the cost of a write.
    let plain =
        Nginx::start(2, &control_conf(&tomcats, &["weight=1"], "        zone tomcats 64k;\n"));
    let mut plain_times = Vec::new();
    for i in 0..60 {
        let action = if i % 2 == 0 { "drain" } else { "undrain" };
        let t = Instant::now();
        assert_eq!(
            control_post(&plain, &format!("upstream=tomcats&srun_id=tomcat01&action={action}"))
                .status,
            200
        );
        plain_times.push(t.elapsed());
    }
    plain_times.sort();
    eprintln!(
        "a control action (median): {:.2} ms with jvm_route_state (write, fsync, rename), {:.2} ms without; {} reads of the file saw no partial state",
        with_file.as_secs_f64() * 1000.0,
        plain_times[plain_times.len() / 2].as_secs_f64() * 1000.0,
        reads.load(Ordering::Relaxed)
    );
    nginx.assert_no_crash();
}

#[test]
fn a_corrupt_file_warns_once_and_nginx_starts_clean() {
    let (_tomcats, _dir, state, http) = setup(&["tomcat01", "tomcat02"]);
    for (text, why) in [
        ("jvm_route_state 1\ntomcats\tx\n", "line 2: a record has 9 fields"),
        ("jvm_route_state 7\n", "line 1: format 7 is not known"),
        ("jvm_route_state 1\ntomcats\t127.0.0.1:1\ttomcat02\tprimary\t0\tdrain", "is truncated"),
        ("\u{0}\u{7f}binary", "is truncated"),
    ] {
        fs::write(&state, text).unwrap();
        let nginx = Nginx::start(1, &http);
        let log = nginx.error_log();
        let warned: Vec<&str> =
            log.lines().filter(|l| l.contains("[warn]") && l.contains("jvm_route_state")).collect();
        // Once per process that reads it: the harness's `nginx -t`, then the master.
        assert!((1..=2).contains(&warned.len()), "{text:?}:\n{log}");
        assert!(
            warned[0].contains(&state.display().to_string()) && warned[0].contains(why),
            "{text:?}: {}",
            warned[0]
        );
        assert_eq!(row(&nginx, "tomcat02")["state"], "up", "nothing is applied");
        nginx.assert_no_crash();
    }
    // A record of a server line that is no longer configured is left out, the others apply.
    fs::write(&state, "jvm_route_state 1\ntomcats\t127.0.0.1:1\tgone\tprimary\t0\tdown\t-\t-\t1\n")
        .unwrap();
    let nginx = Nginx::start(1, &http);
    assert!(
        nginx.error_log().contains(
            "0 server line(s) restored, 1 record(s) of lines no longer configured left out"
        ),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn a_reload_leaves_the_file_alone_and_a_bad_directory_is_reported() {
    let (tomcats, _dir, state, http) = setup(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(1, &http);
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=down").status, 200);
    let before =
        (fs::read_to_string(&state).unwrap(), fs::metadata(&state).unwrap().modified().unwrap());
    thread::sleep(Duration::from_millis(20));
    nginx.reload_and_wait(
        &http.replace("access_log off;", "access_log off;\n    server_tokens off;"),
        1,
    );
    assert_eq!(row(&nginx, "tomcat01")["state"], "down", "the reload carries the mark in memory");
    let after =
        (fs::read_to_string(&state).unwrap(), fs::metadata(&state).unwrap().modified().unwrap());
    assert_eq!(before, after, "a reload does not write the file");

    // A directory that does not exist: nginx -t warns, and a control action says it was not
    // saved (it is in force all the same).
    let missing = PathBuf::from("/nonexistent-jvm-route-dir/state");
    let http = conf(&tomcats, &missing);
    let (out, _path, _dir) = nginx_test_config(&http);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("[warn]")
            && stderr.contains("does not exist: runtime marks will not be saved"),
        "{stderr}"
    );
    let nginx = Nginx::start(1, &http);
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=drain");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("in force, but not saved"), "{r:?}");
    assert_eq!(row(&nginx, "tomcat01")["state"], "draining");
}
