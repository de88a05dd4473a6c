//! Active health checks with real Tomcats (Debian's `tomcat10-user` or `tomcat11-user`): a
//! Tomcat that hangs (`SIGSTOP`: it accepts connections and answers nothing) under steady
//! traffic of 20 sessions pinned to it, with and without `check`; and a Tomcat stopped and
//! started again. The check request is `HEAD /health.txt` (a static file of the test
//! application: no session is made by it).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::tomcat::*;
use common::*;

const CHECK: &str = "        check interval=1000 rise=2 fall=2 timeout=500 type=http;\n        check_http_send \"HEAD /health.txt HTTP/1.0\\r\\n\\r\\n\";\n        check_http_expect_alive http_2xx http_3xx;\n";

fn conf(tomcats: &[Tomcat], check: &str) -> String {
    let mut upstream = String::from("    upstream tomcats {\n        zone tomcats 64k;\n");
    for t in tomcats {
        upstream.push_str(&format!(
            "        server 127.0.0.1:{} srun_id={} max_fails=1 fail_timeout=3s;\n",
            t.port, t.node
        ));
    }
    upstream.push_str("        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n");
    upstream.push_str(check);
    upstream.push_str("    }\n");
    format!(
        "http {{\n    access_log off;\n{upstream}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n            proxy_read_timeout 3s;\n            proxy_next_upstream error timeout;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n    }}\n}}\n"
    )
}

fn start_pair() -> Vec<Tomcat> {
    require_tomcat();
    let mut tomcats: Vec<Tomcat> =
        ["tomcat01", "tomcat02"].iter().map(|n| Tomcat::create(n)).collect();
    for t in tomcats.iter_mut() {
        t.spawn();
    }
    for t in tomcats.iter_mut() {
        t.wait_ready();
    }
    tomcats
}

/// 20 session cookies of tomcat02.
fn sessions_on_tomcat02(nginx: &Nginx) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..200 {
        let r = nginx.get("/");
        if let Some(id) = r.new_session() {
            if id.ends_with(".tomcat02") {
                out.push(id);
            }
        }
        if out.len() == 20 {
            return out;
        }
    }
    panic!("no 20 sessions on tomcat02: {out:?}");
}

/// Steady traffic of the 20 sessions (4 clients, 5 sessions each) while tomcat02 hangs for
/// `hang`; returns (requests, those that took over a second, those of them that started after
/// `out_at` said tomcat02 was out).
fn hang_under_traffic(
    nginx: &Nginx,
    tomcat02: &Tomcat,
    sessions: &[String],
    hang: Duration,
    out_at: impl Fn() -> bool,
) -> (usize, usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(AtomicBool::new(false));
    let (total, waited, waited_after) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let errors = Arc::new(Mutex::new(Vec::new()));
    let port = nginx.port;
    let clients: Vec<_> = sessions
        .chunks(5)
        .map(|chunk| {
            let chunk: Vec<String> = chunk.to_vec();
            let (stop, out, total, waited, waited_after, errors) = (
                stop.clone(),
                out.clone(),
                total.clone(),
                waited.clone(),
                waited_after.clone(),
                errors.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for id in &chunk {
                        let was_out = out.load(Ordering::Relaxed);
                        let t = Instant::now();
                        let r = request(port, "/", &[("Cookie", &format!("JSESSIONID={id}"))]);
                        if r.status != 200 {
                            errors.lock().unwrap_or_else(|e| e.into_inner()).push(r.status);
                        }
                        total.fetch_add(1, Ordering::Relaxed);
                        if t.elapsed() > Duration::from_secs(1) {
                            waited.fetch_add(1, Ordering::Relaxed);
                            if was_out {
                                waited_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    tomcat02.signal(libc::SIGSTOP);
    let t = Instant::now();
    while t.elapsed() < hang {
        if !out.load(Ordering::Relaxed) && out_at() {
            out.store(true, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    tomcat02.signal(libc::SIGCONT);
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    (
        total.load(Ordering::Relaxed),
        waited.load(Ordering::Relaxed),
        waited_after.load(Ordering::Relaxed),
    )
}

#[test]
fn a_hung_tomcat_is_out_by_its_checks_and_no_request_waits_for_it_after() {
    let tomcats = start_pair();
    let hang = Duration::from_secs(12);

    // Without checks: the passive failure detection (max_fails=1 fail_timeout=3s,
    // proxy_read_timeout 3s): after each fail_timeout, one more request tries the hung Tomcat.
    let nginx = Nginx::start(2, &conf(&tomcats, ""));
    let sessions = sessions_on_tomcat02(&nginx);
    let (total_off, waited_off, _) =
        hang_under_traffic(&nginx, &tomcats[1], &sessions, hang, || false);
    drop(nginx);
    // Give the Tomcat time to answer what it held while it was stopped.
    assert!(eventually(20, || http_status(tomcats[1].port) == Some(200)), "tomcat02 is back");

    // With checks (interval=1000 fall=2 timeout=500): out within about two intervals.
    let nginx = Nginx::start(2, &conf(&tomcats, CHECK));
    let check_state = |nginx: &Nginx| {
        status_server(nginx, "/status", "tomcat02")["peers"][0]["check"]["state"].clone()
    };
    assert!(eventually(10, || check_state(&nginx) == "up"), "tomcat02 checked up");
    let sessions = sessions_on_tomcat02(&nginx);
    let (total_on, waited_on, waited_after) =
        hang_under_traffic(&nginx, &tomcats[1], &sessions, hang, || check_state(&nginx) == "down");
    eprintln!(
        "a Tomcat hung for {} s under 20 pinned sessions (4 clients): without checks {waited_off} of \
         {total_off} requests waited over 1 s; with checks {waited_on} of {total_on} did, {waited_after} \
         of them after the checks took it out",
        hang.as_secs()
    );
    assert_eq!(waited_after, 0, "no request waits once the checks took the Tomcat out");
    let log = nginx.error_log();
    assert!(
        log.contains("(srun_id=tomcat02) of upstream \"tomcats\" is down: 2 checks failed, the last: timed out"),
        "{log}"
    );
    // Woken up, it passes rise=2 checks and its sessions go back to it.
    assert!(
        eventually(10, || check_state(&nginx) == "up"),
        "tomcat02 back up:\n{}",
        nginx.error_log()
    );
    nginx.assert_no_crash();
}

#[test]
fn a_stopped_tomcat_is_out_and_back_when_it_starts_again() {
    let mut tomcats = start_pair();
    let nginx = Nginx::start(2, &conf(&tomcats, CHECK));
    let state = |nginx: &Nginx| {
        let c = status_server(nginx, "/status", "tomcat01")["peers"][0]["check"].clone();
        (
            c["state"].as_str().unwrap_or("").to_owned(),
            c["last_error"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert!(eventually(10, || state(&nginx).0 == "up"));
    tomcats[0].stop();
    assert!(
        eventually(10, || state(&nginx) == ("down".into(), "connection refused".into())),
        "{:?}",
        state(&nginx)
    );
    // Its sessions are balanced without an attempt on it (no connect() error is logged).
    for i in 0..10 {
        let r = nginx.get_with("/", &[("Cookie", &format!("JSESSIONID=S{i}.tomcat01"))]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("node=tomcat02"), "{r:?}");
    }
    assert!(!nginx.error_log().contains("connect() failed"), "{}", nginx.error_log());
    tomcats[0].start();
    assert!(eventually(10, || state(&nginx).0 == "up"), "{:?}", state(&nginx));
    nginx.assert_no_crash();
}
