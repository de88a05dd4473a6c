//! Route mismatch detection with real Tomcats (Debian's `tomcat10-user` or `tomcat11-user`):
//! four Tomcats behind one upstream, whose `jvmRoute`s are what goes wrong in real deployments:
//!
//! - tomcat01 has `jvmRoute="tomcat1"` (a typo): its session ids name another route;
//! - tomcat02 has no `jvmRoute`: its session ids name no route;
//! - tomcat03 has `jvmRoute="tomcat04"` (copied from another node): two nodes, one route;
//! - tomcat04 is right.
//!
//! Each server's responses that set a session cookie are counted (`route_mismatch`,
//! `route_missing`) in every format of the status page, the HTML page marks the three wrong
//! ones, and the error log has one `[warn]` per server and kind, naming the fix and never a
//! session id; a reload keeps the counts and warns again.

mod common;

use std::collections::BTreeMap;

use common::tomcat::*;
use common::*;

/// (srun_id, jvmRoute) of each Tomcat.
const NODES: [(&str, &str); 4] =
    [("tomcat01", "tomcat1"), ("tomcat02", ""), ("tomcat03", "tomcat04"), ("tomcat04", "tomcat04")];

fn conf(tomcats: &[Tomcat]) -> String {
    let mut upstream = String::from("    upstream tomcats {\n        zone tomcats 64k;\n");
    for (t, (srun_id, _)) in tomcats.iter().zip(NODES) {
        upstream.push_str(&format!("        server 127.0.0.1:{} srun_id={srun_id};\n", t.port));
    }
    upstream.push_str("        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n    }\n");
    http_block(&upstream, "        }\n        location = /status {\n            jvm_route_status;")
}

/// The value of the response's `Set-Cookie: JSESSIONID=...`, if any.
fn session_cookie(r: &Response) -> Option<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| Some(v.strip_prefix("JSESSIONID=")?.split(';').next()?.to_owned()))
}

/// `route_mismatch` and `route_missing` of each server, from the status page's JSON.
fn counts(nginx: &Nginx) -> BTreeMap<String, (u64, u64)> {
    NODES
        .iter()
        .map(|(srun_id, _)| {
            let s = status_server(nginx, "/status", srun_id);
            let n = |f: &str| s[f].as_u64().unwrap_or_else(|| panic!("no {f} in {s}"));
            (srun_id.to_string(), (n("route_mismatch"), n("route_missing")))
        })
        .collect()
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("[warn]") && l.contains("issues session ids")).collect()
}

#[test]
fn wrong_missing_and_duplicated_jvm_routes_are_counted_and_warned_once() {
    require_tomcat();
    let mut tomcats: Vec<Tomcat> =
        NODES.iter().map(|(srun_id, _)| Tomcat::create(srun_id)).collect();
    for (t, (_, jvm_route)) in tomcats.iter_mut().zip(NODES) {
        t.jvm_route = jvm_route.to_owned();
        t.spawn();
    }
    for t in tomcats.iter_mut() {
        t.wait_ready();
    }
    let nginx = Nginx::start(2, &conf(&tomcats));

    // 40 new clients: round robin gives each Tomcat 10, and each sets a session cookie.
    let mut ids = Vec::new();
    let mut per_node = BTreeMap::new();
    for i in 0..40 {
        let r = nginx.get("/");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        ids.push(session_cookie(&r).unwrap_or_else(|| panic!("request {i}: no session: {r:?}")));
        let node = r.body.split_whitespace().find_map(|w| w.strip_prefix("node=")).unwrap_or("");
        *per_node.entry(node.to_owned()).or_insert(0) += 1;
    }
    assert!(per_node.values().all(|&n| n == 10), "40 new sessions over four: {per_node:?}");
    // The next request of a session of each: the wrong ones are unknown routes (no cookie is
    // set again, nothing more is counted).
    for id in &ids {
        let r = nginx.get_with("/", &[("Cookie", &format!("JSESSIONID={id}"))]);
        assert_eq!(r.status, 200, "{r:?}");
    }

    // A session of a wrong Tomcat is balanced again: where it lands on another Tomcat, that
    // one starts a new session, counted too. So at least 10 each, of its one kind; the right
    // Tomcat never.
    let c = counts(&nginx);
    let (m1, n1) = c["tomcat01"];
    let (m2, n2) = c["tomcat02"];
    let (m3, n3) = c["tomcat03"];
    assert!(m1 >= 10 && n1 == 0, "tomcat01 (jvmRoute tomcat1): {c:?}");
    assert!(m2 == 0 && n2 >= 10, "tomcat02 (no jvmRoute): {c:?}");
    assert!(m3 >= 10 && n3 == 0, "tomcat03 (jvmRoute tomcat04): {c:?}");
    assert_eq!(c["tomcat04"], (0, 0), "tomcat04 is right: {c:?}");

    // One warning per wrong server and kind, across both workers, naming the fix.
    let log = nginx.error_log();
    let warned = warnings(&log);
    eprintln!("warnings:\n{}", warned.join("\n"));
    assert_eq!(warned.len(), 3, "one warning per wrong server:\n{log}");
    let one = |srun_id: &str| -> &str {
        let of: Vec<&&str> =
            warned.iter().filter(|l| l.contains(&format!("(srun_id={srun_id})"))).collect();
        assert_eq!(of.len(), 1, "{srun_id}:\n{log}");
        of[0]
    };
    let w1 = one("tomcat01");
    assert!(
        w1.contains("route is \"tomcat1\"")
            && w1.contains("jvmRoute=\"tomcat01\"")
            && w1.contains(&format!("127.0.0.1:{}", tomcats[0].port))
            && w1.contains("upstream \"tomcats\""),
        "{w1}"
    );
    let w2 = one("tomcat02");
    assert!(w2.contains("without a route") && w2.contains("jvmRoute=\"tomcat02\""), "{w2}");
    let w3 = one("tomcat03");
    assert!(
        w3.contains("route is \"tomcat04\", the srun_id of another server")
            && w3.contains("jvmRoute=\"tomcat03\""),
        "{w3}"
    );
    assert!(!log.contains("(srun_id=tomcat04)"), "the right Tomcat is not warned about:\n{log}");
    // Session ids are credentials: none is in the log (their random part, without the route).
    for id in &ids {
        let secret = id.split('.').next().unwrap_or(id);
        assert!(!log.contains(secret), "a session id is in the error log:\n{log}");
    }

    // Every format shows the counts; the HTML page marks the three wrong servers.
    let text = nginx.get("/status?format=text").body;
    assert!(text.contains("route_mismatch") && text.contains("route_missing"), "{text}");
    let prom = nginx.get("/status?format=prometheus").body;
    let series = |name: &str, srun_id: &str| -> u64 {
        prom.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("srun_id=\"{srun_id}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} of {srun_id}:\n{prom}"))
    };
    let now = counts(&nginx);
    for (srun_id, (mismatch, missing)) in &now {
        assert_eq!(series("jvm_route_server_route_mismatch_total", srun_id), *mismatch);
        assert_eq!(series("jvm_route_server_route_missing_total", srun_id), *missing);
    }
    let html = nginx.get("/status?format=html").body;
    assert_eq!(html.matches("<tr class=\"misrouted\">").count(), 3, "{html}");

    // A reload keeps the counts and warns again once each.
    let before = counts(&nginx);
    nginx.reload_and_wait(&conf(&tomcats), 2);
    assert_eq!(counts(&nginx), before, "the counts are kept across a reload");
    for _ in 0..8 {
        assert_eq!(nginx.get("/").status, 200);
    }
    let log = nginx.error_log();
    assert_eq!(warnings(&log).len(), 6, "warned again after the reload:\n{log}");
    nginx.assert_no_crash();
    drop(tomcats);
}
