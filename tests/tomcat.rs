//! End to end with real Tomcat 10.1 or 11 (Debian's `tomcat10-user` or `tomcat11-user`, chosen
//! by `TEST_TOMCAT`; the version matrix runs both): two Tomcats with
//! `jvmRoute="tomcat01"` and `"tomcat02"` behind the nginx with this module, serving the JSP of
//! `tests/tomcat/webapp`. The JSP counts the requests of its HTTP session and answers one line,
//! `node=<node> session=<session id> count=<n> link=<encodeURL("index.jsp")>`, so a lost
//! session (a request routed to the wrong Tomcat) shows as a new session id and a reset count.
//!
//! One Tomcat installation (`/usr/share/tomcatN`), one `CATALINA_BASE` per instance in a
//! temporary directory, made by `tomcatN-instance-create`. Without Tomcat these tests fail and
//! say what to install.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::tomcat::*;
use common::*;

const NODES: [&str; 2] = ["tomcat01", "tomcat02"];
/// `fail_timeout` of both servers, in seconds.
const FAIL_TIMEOUT: u64 = 2;

/// Creates and starts tomcat01 and tomcat02; both JVMs start at once.
fn start_pair() -> Vec<Tomcat> {
    require_tomcat();
    let mut tomcats: Vec<Tomcat> = NODES.iter().map(|n| Tomcat::create(n)).collect();
    // Both spawned from this thread (the parent-death signal follows it), then awaited.
    for t in tomcats.iter_mut() {
        t.spawn();
    }
    for t in tomcats.iter_mut() {
        let took = t.wait_ready();
        eprintln!("Tomcat {} ready in {:.1} s", t.node, took.as_secs_f64());
    }
    tomcats
}

/// The proxy: both Tomcats tagged with their jvmRoute, plus `extra` lines in the upstream.
fn proxy_conf(tomcats: &[Tomcat], extra: &str) -> String {
    let mut upstream = String::from("    upstream tomcats {\n");
    for t in tomcats {
        upstream.push_str(&format!(
            "        server 127.0.0.1:{} srun_id={} max_fails=1 fail_timeout={FAIL_TIMEOUT}s;\n",
            t.port, t.node
        ));
    }
    upstream.push_str("        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n");
    upstream.push_str(extra);
    upstream.push_str("    }\n");
    http_block(&upstream, "            proxy_next_upstream error timeout;")
}

/// A reply of the JSP, parsed.
#[derive(Debug)]
struct Page {
    status: u16,
    node: String,
    session: String,
    count: u32,
    link: String,
    /// The value of a `Set-Cookie: JSESSIONID=...` in the reply, and the whole header.
    set_cookie: Option<(String, String)>,
    body: String,
}

impl Page {
    fn parse(response: Response) -> Page {
        let field = |name: &str| {
            response
                .body
                .split_whitespace()
                .find_map(|w| w.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
                .unwrap_or("")
                .to_owned()
        };
        let set_cookie =
            response.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).find_map(
                |(_, v)| {
                    let value = v.strip_prefix("JSESSIONID=")?.split(';').next()?;
                    Some((value.to_owned(), v.clone()))
                },
            );
        Page {
            status: response.status,
            node: field("node"),
            session: field("session"),
            count: field("count").parse().unwrap_or(0),
            link: field("link"),
            set_cookie,
            body: response.body.clone(),
        }
    }

    fn new_session(&self) -> Option<&str> {
        self.set_cookie.as_ref().map(|(v, _)| v.as_str())
    }
}

fn get(port: u16, path: &str, cookie: Option<&str>) -> Page {
    let header = cookie.map(|c| format!("JSESSIONID={c}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
    Page::parse(request(port, path, &headers))
}

/// A browser that keeps the `JSESSIONID` cookie Tomcat sets and sends it back.
struct Browser {
    port: u16,
    jsessionid: Option<String>,
}

impl Browser {
    fn new(port: u16) -> Browser {
        Browser { port, jsessionid: None }
    }

    fn get(&mut self, path: &str) -> Page {
        let page = get(self.port, path, self.jsessionid.as_deref());
        if let Some(value) = page.new_session() {
            self.jsessionid = Some(value.to_owned());
        }
        page
    }
}

/// Checks the first reply of a new session: 200, count 1, a session id of the node that
/// answered, set as a cookie.
fn assert_new_session(page: &Page, what: &str) {
    assert_eq!(page.status, 200, "{what}: {page:?}");
    assert!(NODES.contains(&page.node.as_str()), "{what}: not the JSP's reply: {:?}", page.body);
    assert_eq!(page.count, 1, "{what}: not a new session: {page:?}");
    assert!(
        page.session.ends_with(&format!(".{}", page.node)),
        "{what}: the session id does not end with the jvmRoute of its node: {page:?}"
    );
    assert_eq!(page.new_session(), Some(page.session.as_str()), "{what}: {page:?}");
}

/// Requests number `counts` of a session that must stay on `node` with id `session`.
fn assert_sticks(
    browser: &mut Browser,
    node: &str,
    session: &str,
    counts: std::ops::RangeInclusive<u32>,
) {
    for n in counts {
        let page = browser.get("/");
        assert_eq!(
            (page.status, page.node.as_str(), page.session.as_str(), page.count),
            (200, node, session, n),
            "request {n} of session {session} (of {node}) went astray: {page:?}"
        );
        assert_eq!(page.set_cookie, None, "request {n}: Tomcat started a new session: {page:?}");
    }
}

/// Fails on a crash or alert in nginx's log, or on an `[error]` other than `expected` ones.
fn assert_clean_log(nginx: &Nginx, expected: &str) {
    nginx.assert_no_crash();
    let log = nginx.error_log();
    let errors: Vec<&str> =
        log.lines().filter(|l| l.contains("[error]") && !l.contains(expected)).collect();
    assert!(errors.is_empty(), "errors in nginx's log:\n{}", errors.join("\n"));
}

#[test]
fn sticky_cookie_url_and_spread() {
    let tomcats = start_pair();
    let nginx = Nginx::start(1, &proxy_conf(&tomcats, ""));
    let port = nginx.port;

    // 1. A browser keeping its cookie: 200 requests of one session on one node, none lost.
    let mut browser = Browser::new(port);
    let first = browser.get("/");
    assert_new_session(&first, "first request");
    let (_, header) = first.set_cookie.as_ref().expect("a session cookie");
    assert!(header.contains("Path=/") && header.contains("HttpOnly"), "cookie: {header}");
    assert_sticks(&mut browser, &first.node, &first.session, 2..=200);

    // 2. New clients are balanced: round robin over two equal servers alternates exactly.
    let mut spread = BTreeMap::new();
    for i in 1..=40 {
        let page = get(port, "/", None);
        assert_new_session(&page, &format!("new client {i}"));
        *spread.entry(page.node).or_insert(0) += 1;
    }
    let expected = BTreeMap::from([(NODES[0].to_owned(), 20), (NODES[1].to_owned(), 20)]);
    assert_eq!(spread, expected, "40 new sessions over two Tomcats");

    // 3. A client without cookies follows the links Tomcat rewrites with ";jsessionid=".
    let first = get(port, "/", None);
    assert_new_session(&first, "cookieless client");
    assert_eq!(first.link, format!("index.jsp;jsessionid={}", first.session), "{first:?}");
    let mut link = first.link.clone();
    for n in 2..=20 {
        let path = format!("/{link}");
        let page = get(port, &path, None);
        assert_eq!(
            (page.status, page.node.as_str(), page.session.as_str(), page.count),
            (200, first.node.as_str(), first.session.as_str(), n),
            "cookieless request {n} ({path}) went astray: {page:?}"
        );
        assert_eq!(page.set_cookie, None, "request {n} ({path}): a new session: {page:?}");
        link = page.link;
    }
    assert_eq!(link, first.link, "the link stays the same");
    assert_clean_log(&nginx, "no error is expected");
}

#[test]
fn failover_and_recovery() {
    let mut tomcats = start_pair();
    // Two workers sharing the peers' state (failures, round robin) through a zone.
    let nginx = Nginx::start(2, &proxy_conf(&tomcats, "        zone tomcats 64k;\n"));
    let port = nginx.port;

    let mut browser = Browser::new(port);
    let first = browser.get("/");
    assert_new_session(&first, "first request");
    assert_sticks(&mut browser, &first.node, &first.session, 2..=5);
    let x = NODES.iter().position(|n| *n == first.node).expect("known node");
    let y = 1 - x;
    let (x_node, y_node) = (NODES[x], NODES[y]);

    // Tomcat X goes away: the session's next request reaches Y without an error and starts a
    // session there, which then stays on Y.
    tomcats[x].stop();
    let moved = browser.get("/");
    let failed_at = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert_new_session(&moved, &format!("first request after stopping {x_node}"));
    assert_eq!(moved.node, y_node, "{moved:?}");
    assert_sticks(&mut browser, y_node, &moved.session, 2..=11);

    // nginx tried X once (by route), found it refused, and retried on Y; X was then skipped.
    let log = nginx.error_log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("connect() failed")).collect();
    assert_eq!(refused.len(), 1, "one refused connection:\n{log}");
    let x_upstream = format!("upstream: \"http://127.0.0.1:{}/\"", tomcats[x].port);
    assert!(refused[0].contains(&x_upstream), "the refused one is {x_node}:\n{log}");

    // X comes back. Once fail_timeout has passed (nginx counts whole seconds), new sessions
    // reach it again.
    let took = tomcats[x].start();
    eprintln!("Tomcat {x_node} restarted in {:.1} s", took.as_secs_f64());
    let usable_again = UNIX_EPOCH + Duration::from_secs(failed_at + FAIL_TIMEOUT + 1);
    if let Ok(wait) = usable_again.duration_since(SystemTime::now()) {
        thread::sleep(wait + Duration::from_millis(100));
    }
    let mut spread = BTreeMap::new();
    let mut on_x = None;
    for i in 1..=10 {
        let mut client = Browser::new(port);
        let page = client.get("/");
        assert_new_session(&page, &format!("new client {i} after the restart"));
        if page.node == x_node && on_x.is_none() {
            on_x = Some((client, page.session.clone()));
        }
        *spread.entry(page.node).or_insert(0) += 1;
    }
    // Round robin over both again. X restarts from the effective weight its failure left (0)
    // and regains one per choice, so the alternation starts after two picks of Y: Y Y X Y X ...
    let expected = BTreeMap::from([(x_node.to_owned(), 4), (y_node.to_owned(), 6)]);
    assert_eq!(spread, expected, "10 new sessions after {x_node} came back");
    // Both kinds of session stick: the new ones on X, the moved one on Y.
    let (mut client, session) = on_x.expect("a session on X");
    assert_sticks(&mut client, x_node, &session, 2..=4);
    assert_sticks(&mut browser, y_node, &moved.session, 12..=14);
    // The one refused connection above is the only error.
    assert_clean_log(&nginx, &x_upstream);
}

/// Tomcats without `jvmRoute` (session ids name no node) behind the route cookie that nginx
/// sets: a logged-in session (the counting page) keeps to one node for 100 requests.
#[test]
fn tomcat_without_jvm_route_behind_the_route_cookie() {
    require_tomcat();
    let mut tomcats: Vec<Tomcat> = NODES.iter().map(|n| Tomcat::create(n)).collect();
    for t in tomcats.iter_mut() {
        t.jvm_route = String::new();
        t.spawn();
    }
    for t in tomcats.iter_mut() {
        t.wait_ready();
    }
    let mut upstream = String::from("    upstream tomcats {\n");
    for t in &tomcats {
        upstream.push_str(&format!("        server 127.0.0.1:{} srun_id={};\n", t.port, t.node));
    }
    upstream.push_str("        jvm_route $cookie_ROUTEID reverse;\n");
    upstream.push_str("        jvm_route_cookie ROUTEID path=/ httponly;\n    }\n");
    let nginx = Nginx::start(1, &http_block(&upstream, ""));

    let (mut jsessionid, mut route): (Option<String>, Option<String>) = (None, None);
    let mut node = String::new();
    for n in 1..=100 {
        let mut cookies = Vec::new();
        if let Some(v) = &jsessionid {
            cookies.push(format!("JSESSIONID={v}"));
        }
        if let Some(v) = &route {
            cookies.push(format!("ROUTEID={v}"));
        }
        let header = cookies.join("; ");
        let headers: Vec<(&str, &str)> =
            if header.is_empty() { vec![] } else { vec![("Cookie", header.as_str())] };
        let response = request(nginx.port, "/", &headers);
        for (name, value) in &response.headers {
            if !name.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let value = value.split(';').next().unwrap_or("");
            if let Some(v) = value.strip_prefix("ROUTEID=") {
                assert_eq!(n, 1, "request {n}: a second route cookie: {response:?}");
                route = Some(v.to_owned());
            }
            if let Some(v) = value.strip_prefix("JSESSIONID=") {
                assert_eq!(n, 1, "request {n}: Tomcat started a new session: {response:?}");
                assert!(!v.contains('.'), "a session id without jvmRoute: {v}");
                jsessionid = Some(v.to_owned());
            }
        }
        let page = Page::parse(response);
        assert_eq!((page.status, page.count), (200, n), "request {n}: {page:?}");
        if n == 1 {
            node = page.node.clone();
            assert_eq!(route.as_deref(), Some(format!(".{node}").as_str()));
        }
        assert_eq!(page.node, node, "request {n} left its node");
    }
    assert_clean_log(&nginx, "no error is expected");
}
