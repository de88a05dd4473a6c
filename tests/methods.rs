//! Any balancing method as the fallback: `jvm_route` decides only the sticky case, and requests
//! without a session follow the upstream's own method. The directive order inside `upstream {}`
//! does not matter, with or without `zone`.

mod common;

use std::thread;

use common::*;

const JVM_ROUTE: &str = "jvm_route $cookie_JSESSIONID reverse;";

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

/// Every arrangement of `method` and `jvm_route` (either first, with or without `zone`),
/// each started as a proxy to `tomcats`, handed to `check` with a description.
fn for_each_arrangement(tomcats: &[Backend], method: &str, check: impl Fn(&Nginx, &str)) {
    for zone in [false, true] {
        for method_first in [true, false] {
            let (first, second) =
                if method_first { (method, JVM_ROUTE) } else { (JVM_ROUTE, method) };
            let zone_line = if zone { "        zone tomcats 64k;\n" } else { "" };
            let extra = format!("{zone_line}        {first}\n        {second}\n");
            // With a status location, to see requests in flight.
            let conf = http_block(&upstream("tomcats", tomcats, &[], &extra), "").replace(
                "        location / {",
                "        location = /status {\n            jvm_route_status;\n        }\n        location / {",
            );
            let nginx = Nginx::start(1, &conf);
            let what = format!("{first} then {second}{}", if zone { " with zone" } else { "" });
            assert_sticky(&nginx, tomcats, &what);
            check(&nginx, &what);
            assert!(!nginx.error_log().contains("method redefined"), "{what}");
            nginx.assert_no_crash();
        }
    }
}

fn assert_sticky(nginx: &Nginx, tomcats: &[Backend], what: &str) {
    for t in tomcats {
        let c = cookie(&t.route);
        for _ in 0..5 {
            assert_eq!(nginx.get_with("/?x=k1", &[("Cookie", &c)]).backend(), t.route, "{what}");
        }
    }
}

fn three() -> Vec<Backend> {
    backends(&["tomcat01", "tomcat02", "tomcat03"])
}

#[test]
fn least_conn_prefers_the_idle_servers() {
    let tomcats = three();
    for_each_arrangement(&tomcats, "least_conn;", |nginx, what| {
        // A slow sessionless request keeps one server busy.
        let port = nginx.port;
        let slow = thread::spawn(move || request(port, "/slow", &[]));
        let in_flight = || {
            let status: serde_json::Value =
                serde_json::from_str(&nginx.get("/status?format=json").body).unwrap_or_default();
            status["upstreams"][0]["servers"]
                .as_array()
                .map_or(0, |s| s.iter().filter_map(|s| s["active"].as_u64()).sum::<u64>())
        };
        assert!(eventually(5, || in_flight() == 1), "{what}: the slow request is not in flight");
        let quick: Vec<Response> = (0..10).map(|_| nginx.get("/")).collect();
        let held = slow.join().unwrap();
        let busy = held.header("X-Backend").expect("slow reply names its backend").to_owned();
        let counts = tally(&quick);
        assert_eq!(counts.get(busy.as_str()), None, "{what}: {busy} was busy: {counts:?}");
        assert_eq!(counts.len(), 2, "{what}: {counts:?}");
    });
}

#[test]
fn hash_is_stable_per_key() {
    let tomcats = three();
    for method in ["hash $arg_x;", "hash $arg_x consistent;"] {
        for_each_arrangement(&tomcats, method, |nginx, what| {
            let mut servers = std::collections::BTreeSet::new();
            for key in 0..12 {
                let path = format!("/?x=key{key}");
                let first = nginx.get(&path).backend().to_owned();
                for _ in 0..4 {
                    assert_eq!(nginx.get(&path).backend(), first, "{what}: key{key}");
                }
                servers.insert(first);
            }
            assert!(servers.len() >= 2, "{what}: all keys on {servers:?}");
        });
    }
}

#[test]
fn ip_hash_keeps_one_client_on_one_server() {
    let tomcats = three();
    for_each_arrangement(&tomcats, "ip_hash;", |nginx, what| {
        let counts = tally(&(0..15).map(|_| nginx.get("/")).collect::<Vec<_>>());
        assert_eq!(counts.len(), 1, "{what}: {counts:?}");
    });
}

#[test]
fn random_spreads_over_all_servers() {
    let tomcats = three();
    for method in ["random;", "random two;", "random two least_conn;"] {
        for_each_arrangement(&tomcats, method, |nginx, what| {
            let counts = tally(&(0..90).map(|_| nginx.get("/")).collect::<Vec<_>>());
            assert_eq!(counts.len(), 3, "{what}: {counts:?}");
            assert!(counts.values().all(|&n| n >= 10), "{what}: {counts:?}");
        });
    }
}

#[test]
fn round_robin_is_the_default() {
    let tomcats = three();
    let nginx = Nginx::start(
        1,
        &http_block(&upstream("tomcats", &tomcats, &[], &format!("        {JVM_ROUTE}\n")), ""),
    );
    assert_sticky(&nginx, &tomcats, "round robin");
    let order: Vec<String> = (0..6).map(|_| nginx.get("/").backend().to_owned()).collect();
    assert_eq!(order[..3], order[3..], "round robin cycles: {order:?}");
    assert_eq!(tally(&(0..30).map(|_| nginx.get("/")).collect::<Vec<_>>()).len(), 3);
}

#[test]
fn a_sticky_server_that_fails_falls_back_to_the_method() {
    // With hash, a session whose server is down is balanced by the hash of the key.
    let tomcats = three();
    let nginx = Nginx::start(
        1,
        &http_block(
            &upstream(
                "tomcats",
                &tomcats,
                &["down"],
                &format!("        hash $arg_x;\n        {JVM_ROUTE}\n"),
            ),
            "",
        ),
    );
    let c = cookie("tomcat01");
    for key in 0..6 {
        let path = format!("/?x=key{key}");
        let plain = nginx.get(&path).backend().to_owned();
        let sticky = nginx.get_with(&path, &[("Cookie", &c)]);
        assert_eq!(sticky.backend(), plain, "key{key}: a down server's session follows the hash");
        assert_ne!(plain, "tomcat01");
    }
}
