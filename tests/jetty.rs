//! End to end with real Jetty 9.4 (Debian's `jetty9`): two Jettys whose session id managers have
//! the `workerName`s `jetty01` and `jetty02` behind the nginx with this module, serving the JSP
//! of `tests/tomcat/webapp` (it prints `node=... session=... count=... link=...`; on Jetty the
//! session id it prints has no route, the cookie and the rewritten link have it).
//!
//! What the README says of Jetty, shown: it tags sessions like Tomcat
//! (`JSESSIONID=<id>.<workerName>` and `;jsessionid=` in URLs), so `srun_id=<workerName>` and the
//! configuration written for Tomcat make its sessions sticky, and a stopped Jetty's sessions fail
//! over without an error.

mod common;

use std::collections::BTreeMap;

use common::jetty::*;
use common::*;

const NODES: [&str; 2] = ["jetty01", "jetty02"];

fn start_pair() -> Vec<Jetty> {
    let mut jettys: Vec<Jetty> = NODES.iter().map(|n| Jetty::create(n)).collect();
    for j in jettys.iter_mut() {
        j.spawn();
    }
    for j in jettys.iter_mut() {
        let took = j.wait_ready();
        eprintln!("Jetty {} ({:?}) ready in {:.1} s", j.node, jetty_version(), took.as_secs_f64());
    }
    jettys
}

fn proxy_conf(jettys: &[Jetty], extra: &str) -> String {
    let mut upstream = String::from("    upstream tomcats {\n");
    for j in jettys {
        upstream.push_str(&format!(
            "        server 127.0.0.1:{} srun_id={} max_fails=1 fail_timeout=10s;\n",
            j.port, j.node
        ));
    }
    upstream.push_str("        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n");
    upstream.push_str(extra);
    upstream.push_str("    }\n");
    http_block(&upstream, "            proxy_next_upstream error timeout;")
}

#[derive(Debug)]
struct Page {
    status: u16,
    node: String,
    /// The session id as the JSP prints it (without the route on Jetty).
    session: String,
    count: u32,
    link: String,
    /// The value of a `Set-Cookie: JSESSIONID=...` in the reply.
    set_cookie: Option<String>,
}

fn get(port: u16, path: &str, cookie: Option<&str>) -> Page {
    let header = cookie.map(|c| format!("JSESSIONID={c}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
    let response = request(port, path, &headers);
    let field = |name: &str| {
        response
            .body
            .split_whitespace()
            .find_map(|w| w.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
            .unwrap_or("")
            .to_owned()
    };
    let set_cookie = response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| Some(v.strip_prefix("JSESSIONID=")?.split(';').next()?.to_owned()));
    Page {
        status: response.status,
        node: field("node"),
        session: field("session"),
        count: field("count").parse().unwrap_or(0),
        link: field("link"),
        set_cookie,
    }
}

/// The first reply of a new session: 200, count 1, and a cookie `<id>.<workerName>` of the node
/// that answered. Returns the cookie's value.
fn new_session(page: &Page, what: &str) -> String {
    assert_eq!(page.status, 200, "{what}: {page:?}");
    assert!(NODES.contains(&page.node.as_str()), "{what}: not the JSP's reply: {page:?}");
    assert_eq!(page.count, 1, "{what}: not a new session: {page:?}");
    let cookie = page.set_cookie.clone().unwrap_or_else(|| panic!("{what}: no cookie: {page:?}"));
    assert_eq!(
        cookie,
        format!("{}.{}", page.session, page.node),
        "{what}: Jetty's session cookie is not <id>.<workerName>: {page:?}"
    );
    cookie
}

/// Requests `counts` of the session `cookie` stay on `node`, with no new session.
fn assert_sticks(port: u16, cookie: &str, node: &str, counts: std::ops::RangeInclusive<u32>) {
    for n in counts {
        let page = get(port, "/", Some(cookie));
        assert_eq!(
            (page.status, page.node.as_str(), page.count),
            (200, node, n),
            "request {n} of a session of {node} went astray: {page:?}"
        );
        assert_eq!(page.set_cookie, None, "request {n}: Jetty started a new session: {page:?}");
    }
}

#[test]
fn jetty_cookie_and_url_sessions_stick() {
    let jettys = start_pair();
    let nginx = Nginx::start(1, &proxy_conf(&jettys, ""));
    let port = nginx.port;

    // New clients are balanced over both (round robin alternates exactly), and each session's
    // cookie names the node that made it.
    let mut spread = BTreeMap::new();
    let mut sessions = Vec::new();
    for i in 1..=20 {
        let page = get(port, "/", None);
        let cookie = new_session(&page, &format!("new client {i}"));
        *spread.entry(page.node.clone()).or_insert(0) += 1;
        sessions.push((cookie, page.node));
    }
    let expected = BTreeMap::from([(NODES[0].to_owned(), 10), (NODES[1].to_owned(), 10)]);
    assert_eq!(spread, expected, "20 new sessions over two Jettys");

    // Every session keeps to its node: 10 more requests each, interleaved.
    for n in 2..=11 {
        for (cookie, node) in &sessions {
            assert_sticks(port, cookie, node, n..=n);
        }
    }

    // A client without cookies follows the links Jetty rewrites with ";jsessionid=".
    let first = get(port, "/", None);
    let cookie = new_session(&first, "cookieless client");
    assert_eq!(first.link, format!("index.jsp;jsessionid={cookie}"), "{first:?}");
    let mut link = first.link.clone();
    for n in 2..=20 {
        let path = format!("/{link}");
        let page = get(port, &path, None);
        assert_eq!(
            (page.status, page.node.as_str(), page.session.as_str(), page.count),
            (200, first.node.as_str(), first.session.as_str(), n),
            "cookieless request {n} ({path}) went astray: {page:?}"
        );
        link = page.link;
    }
    nginx.assert_no_crash();
    assert!(!nginx.error_log().contains("[error]"), "{}", nginx.error_log());
}

#[test]
fn jetty_failover_when_a_node_stops() {
    let mut jettys = start_pair();
    let nginx = Nginx::start(2, &proxy_conf(&jettys, "        zone tomcats 64k;\n"));
    let port = nginx.port;

    // One session on each node.
    let a = get(port, "/", None);
    let a_cookie = new_session(&a, "first client");
    let b = get(port, "/", None);
    let b_cookie = new_session(&b, "second client");
    assert_ne!(a.node, b.node, "two new sessions go to both nodes");
    assert_sticks(port, &a_cookie, &a.node, 2..=5);
    assert_sticks(port, &b_cookie, &b.node, 2..=5);

    // The first session's Jetty stops: its next request reaches the other Jetty without an
    // error, which starts a session there (no replication between them), and it keeps to it.
    let x = NODES.iter().position(|n| *n == a.node).expect("known node");
    jettys[x].stop();
    let moved = get(port, "/", Some(&a_cookie));
    let moved_cookie = new_session(&moved, &format!("first request after stopping {}", a.node));
    assert_eq!(moved.node, b.node, "{moved:?}");
    assert_sticks(port, &moved_cookie, &b.node, 2..=10);
    // The other node's session was never disturbed.
    assert_sticks(port, &b_cookie, &b.node, 6..=10);
    // New clients all go to the Jetty that runs.
    for i in 1..=6 {
        let page = get(port, "/", None);
        new_session(&page, &format!("new client {i} with one Jetty"));
        assert_eq!(page.node, b.node, "new client {i}: {page:?}");
    }
    nginx.assert_no_crash();
    let log = nginx.error_log();
    let refused = log.lines().filter(|l| l.contains("connect() failed")).count();
    assert_eq!(refused, 1, "nginx tried the stopped Jetty once, then skipped it:\n{log}");
}
