//! Running it for real: `zone` with several workers, `keepalive`, `proxy_pass` to a variable,
//! and `kill -HUP` reloads under traffic.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

fn connection_requests(r: &Response) -> usize {
    r.body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("connection_requests="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn zone_keepalive_and_two_workers() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03", "tomcat04"]);
    let nginx = Nginx::start(2, &example_config("zone-keepalive.conf", &tomcats));

    for t in &tomcats[..3] {
        let c = cookie(&t.route);
        let responses: Vec<Response> =
            (0..30).map(|_| nginx.get_with("/", &[("Cookie", &c)])).collect();
        assert!(
            responses.iter().all(|r| r.status == 200 && r.backend() == t.route),
            "{responses:?}"
        );
        // keepalive wraps jvm_route: sticky requests reuse the cached backend connections.
        let reused = responses.iter().filter(|r| connection_requests(r) > 1).count();
        assert!(reused >= 20, "only {reused} of 30 sticky requests reused a connection");
    }

    // New sessions spread 1:2:1 over the primaries; the backup gets none.
    let responses: Vec<Response> = (0..400).map(|_| nginx.get("/")).collect();
    let counts = tally(&responses);
    assert_eq!(counts.get("tomcat04"), None, "{counts:?}");
    let (a, b, c) = (counts["tomcat01"], counts["tomcat02"], counts["tomcat03"]);
    assert_eq!(a + b + c, 400);
    assert!(
        (180..=220).contains(&b) && (80..=120).contains(&a) && (80..=120).contains(&c),
        "{counts:?}"
    );
    nginx.assert_no_crash();
}

#[test]
fn keepalive_before_jvm_route() {
    // keepalive written first, jvm_route last: keepalive still wraps jvm_route.
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let extra = "        keepalive 8;\n        jvm_route $cookie_JSESSIONID reverse;\n";
    let upstreams = upstream("tomcats", &tomcats, &[], extra);
    let location =
        "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";";
    let nginx = Nginx::start(1, &http_block(&upstreams, location));
    let c = cookie("tomcat02");
    let responses: Vec<Response> =
        (0..20).map(|_| nginx.get_with("/", &[("Cookie", &c)])).collect();
    assert!(responses.iter().all(|r| r.backend() == "tomcat02"));
    assert!(responses.iter().filter(|r| connection_requests(r) > 1).count() >= 15);
}

#[test]
fn proxy_pass_to_a_variable_upstream_name() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let upstreams =
        upstream("tomcats", &tomcats, &[], "        jvm_route $cookie_JSESSIONID reverse;\n");
    let conf = format!(
        "http {{\n    access_log off;\n{upstreams}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            set $pool tomcats;\n            proxy_pass http://$pool;\n        }}\n    }}\n}}\n"
    );
    let nginx = Nginx::start(1, &conf);
    for t in &tomcats {
        let c = cookie(&t.route);
        for _ in 0..5 {
            assert_eq!(nginx.get_with("/", &[("Cookie", &c)]).backend(), t.route);
        }
    }
}

#[test]
fn reloads_under_traffic_keep_sessions_and_pick_up_changes() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let jvm_route = "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID reverse;\n";
    let location = "            proxy_next_upstream error timeout;";
    let first = http_block(&upstream("tomcats", &tomcats[..2], &[], jvm_route), location);
    let nginx = Nginx::start(2, &first);

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(0usize));
    let port = nginx.port;
    let clients: Vec<_> = ["tomcat01", "tomcat02"]
        .into_iter()
        .map(|route| {
            let (stop, wrong, sent) = (stop.clone(), wrong.clone(), sent.clone());
            thread::spawn(move || {
                let c = cookie(route);
                while !stop.load(Ordering::Relaxed) {
                    let r = request(port, "/", &[("Cookie", &c)]);
                    *sent.lock().unwrap() += 1;
                    if r.status != 200 || r.backend() != route {
                        wrong.lock().unwrap().push((route, r.status, r.backend().to_owned()));
                    }
                }
            })
        })
        .collect();

    let second = http_block(&upstream("tomcats", &tomcats, &[], jvm_route), location);
    // Each reload waits for the one before to be taken over, with traffic in between.
    let sent_now = || *sent.lock().unwrap();
    for i in 0..5 {
        let before = sent_now();
        assert!(eventually(10, || sent_now() >= before + 20), "traffic stopped");
        nginx.reload_and_wait(if i % 2 == 0 { &second } else { &first }, 2);
    }
    let before = sent_now();
    assert!(eventually(10, || sent_now() >= before + 40), "traffic stopped after the reloads");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let wrong = wrong.lock().unwrap();
    assert!(*sent.lock().unwrap() > 50);
    assert!(wrong.is_empty(), "requests that lost their server: {wrong:?}");

    // The server added by the reload has its route.
    let c = cookie("tomcat03");
    for _ in 0..10 {
        assert_eq!(nginx.get_with("/", &[("Cookie", &c)]).backend(), "tomcat03");
    }
    nginx.assert_no_crash();
}
