//! When the session's server cannot take the request: killed under traffic, `down`, failed,
//! full (`max_conns`/`max_busy`), or a backup; and retries that never repeat a peer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

const JVM_ROUTE: &str = "        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n";

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

#[test]
fn killing_the_sessions_server_under_traffic_loses_no_request() {
    let mut tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let params = ["max_fails=1 fail_timeout=2s"; 3];
    let nginx = Nginx::start(
        2,
        &http_block(
            &upstream("tomcats", &tomcats, &params, JVM_ROUTE),
            "            proxy_next_upstream error timeout;",
        ),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = nginx.port;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::spawn(move || {
                let c = cookie("tomcat01");
                while !stop.load(Ordering::Relaxed) {
                    let r = request(port, "/", &[("Cookie", &c)]);
                    seen.lock().unwrap().push((r.status, r.backend().to_owned()));
                }
            })
        })
        .collect();

    // Traffic reaches tomcat01, then it is killed, and traffic goes on for a while after.
    let answered = |route: &str| seen.lock().unwrap().iter().filter(|(_, b)| b == route).count();
    assert!(eventually(10, || answered("tomcat01") >= 20), "no traffic to tomcat01");
    tomcats[0].kill();
    let moved = seen.lock().unwrap().len();
    assert!(eventually(10, || seen.lock().unwrap().len() >= moved + 40), "traffic stopped");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 50, "too little traffic: {}", seen.len());
    let failed: Vec<_> = seen.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), seen.len());
    assert!(seen.iter().any(|(_, b)| b == "tomcat01"), "traffic reached tomcat01 before the kill");
    assert!(seen.iter().any(|(_, b)| b != "tomcat01"), "traffic moved after the kill");

    // Restarted, and once fail_timeout has passed, the route works again.
    tomcats[0].restart();
    let c = cookie("tomcat01");
    // Within fail_timeout and a second (nginx compares whole seconds), the route works again.
    assert!(eventually(5, || nginx.get_with("/", &[("Cookie", &c)]).backend() == "tomcat01"));
    let back: Vec<Response> = (0..10).map(|_| nginx.get_with("/", &[("Cookie", &c)])).collect();
    assert!(back.iter().all(|r| r.status == 200 && r.backend() == "tomcat01"), "{back:?}");
    nginx.assert_no_crash();
}

#[test]
fn a_down_server_is_never_chosen_by_route() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let nginx =
        Nginx::start(1, &http_block(&upstream("tomcats", &tomcats, &["down"], JVM_ROUTE), ""));
    let c = cookie("tomcat01");
    let responses: Vec<Response> =
        (0..20).map(|_| nginx.get_with("/", &[("Cookie", &c)])).collect();
    let counts = tally(&responses);
    assert_eq!(counts.get("tomcat01"), None, "{counts:?}");
    assert_eq!(counts.get("tomcat02"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("tomcat03"), Some(&10), "{counts:?}");
    // The others still stick.
    assert_eq!(nginx.get_with("/", &[("Cookie", &cookie("tomcat03"))]).backend(), "tomcat03");
}

#[test]
fn a_failed_server_is_skipped_until_fail_timeout() {
    let mut tomcats = backends(&["tomcat01", "tomcat02"]);
    tomcats[0].kill();
    let params = ["max_fails=1 fail_timeout=30s"; 2];
    let nginx = Nginx::start(
        1,
        &http_block(
            &upstream("tomcats", &tomcats, &params, JVM_ROUTE),
            "            proxy_next_upstream error;",
        ),
    );
    let c = cookie("tomcat01");
    for _ in 0..10 {
        let r = nginx.get_with("/", &[("Cookie", &c)]);
        assert_eq!((r.status, r.backend()), (200, "tomcat02"));
    }
    // One attempt marked it failed; within fail_timeout it is not tried again.
    let refused = nginx.error_log().matches("connect() failed").count();
    assert_eq!(refused, 1, "{}", nginx.error_log());
}

#[test]
fn retries_never_repeat_a_peer() {
    // Two dead peers share the route "pair"; max_fails=0 keeps them eligible every time.
    let alive = Backend::start("alive");
    let dead = [free_port(), free_port()];
    let upstreams = format!(
        "    upstream tomcats {{\n        server 127.0.0.1:{} srun_id=pair max_fails=0;\n        server 127.0.0.1:{} srun_id=pair max_fails=0;\n        server {} srun_id=alive max_fails=0;\n{JVM_ROUTE}    }}\n",
        dead[0],
        dead[1],
        alive.addr()
    );
    let nginx = Nginx::start(1, &http_block(&upstreams, "            proxy_next_upstream error;"));
    let c = cookie("pair");
    for _ in 0..5 {
        let r = nginx.get_with("/", &[("Cookie", &c)]);
        assert_eq!((r.status, r.backend()), (200, "alive"));
    }
    let log = nginx.error_log();
    for port in dead {
        let attempts = log.matches(&format!("127.0.0.1:{port}/")).count();
        assert_eq!(attempts, 5, "each dead peer is tried once per request:\n{log}");
    }
}

#[test]
fn a_route_to_a_backup_is_honoured_only_without_usable_primaries() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat04", "tomcat05"]);
    let params = ["", "", "backup", "backup"];
    let nginx =
        Nginx::start(1, &http_block(&upstream("tomcats", &tomcats, &params, JVM_ROUTE), ""));
    // Primaries are up: a session of a backup server is balanced over the primaries.
    let c4 = cookie("tomcat04");
    let counts =
        tally(&(0..10).map(|_| nginx.get_with("/", &[("Cookie", &c4)])).collect::<Vec<_>>());
    assert_eq!(counts.get("tomcat01"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("tomcat02"), Some(&5), "{counts:?}");
    drop(nginx);

    let params = ["down", "down", "backup", "backup"];
    let nginx =
        Nginx::start(1, &http_block(&upstream("tomcats", &tomcats, &params, JVM_ROUTE), ""));
    let c5 = cookie("tomcat05");
    for _ in 0..6 {
        assert_eq!(nginx.get_with("/", &[("Cookie", &c4)]).backend(), "tomcat04");
        assert_eq!(nginx.get_with("/", &[("Cookie", &c5)]).backend(), "tomcat05");
    }
    // Sessions of a down primary and requests without a session use the backups.
    let c1 = cookie("tomcat01");
    let counts =
        tally(&(0..10).map(|_| nginx.get_with("/", &[("Cookie", &c1)])).collect::<Vec<_>>());
    assert_eq!(counts.get("tomcat04"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("tomcat05"), Some(&5), "{counts:?}");
}

#[test]
fn a_full_server_is_skipped_max_conns_and_max_busy() {
    for limit in ["max_conns=1", "max_busy=1"] {
        let tomcats = backends(&["tomcat01", "tomcat02"]);
        // With a status location, to see the slow request in flight.
        let conf = http_block(&upstream("tomcats", &tomcats, &[limit], JVM_ROUTE), "").replace(
            "        location / {",
            "        location = /status {\n            jvm_route_status;\n        }\n        location / {",
        );
        let nginx = Nginx::start(1, &conf);
        let c = cookie("tomcat01");
        let port = nginx.port;
        let slow_cookie = c.clone();
        let slow = thread::spawn(move || request(port, "/slow", &[("Cookie", &slow_cookie)]));
        assert!(
            eventually(5, || status_server(&nginx, "/status", "tomcat01")["active"] == 1),
            "{limit}: the slow request is not in flight on tomcat01"
        );
        // tomcat01 holds its one connection: its sessions go elsewhere meanwhile.
        let r = nginx.get_with("/", &[("Cookie", &c)]);
        assert_eq!((r.status, r.backend()), (200, "tomcat02"), "{limit}");
        assert!(!slow.is_finished(), "{limit}: the slow request still holds tomcat01");
        let held = slow.join().unwrap();
        assert_eq!((held.status, held.header("X-Backend")), (200, Some("tomcat01")), "{limit}");
        assert_eq!(held.body.len(), 6000);
        assert_eq!(nginx.get_with("/", &[("Cookie", &c)]).backend(), "tomcat01", "{limit}");
    }
}
