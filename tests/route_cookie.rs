//! `jvm_route_cookie`: nginx sets a cookie naming the server (Apache's `ROUTEID=.route`) for
//! applications whose session id names no server, and follows it back. Backends here are plain
//! applications that set no cookie at all, unless the test says otherwise.

mod common;

use std::fs;

use common::*;

fn conf(servers: &[Backend], params: &[&str], cookie: &str, options: &str) -> String {
    let mut upstream = String::from("    upstream app {\n");
    for (i, b) in servers.iter().enumerate() {
        let p = params.get(i).copied().unwrap_or("");
        upstream.push_str(&format!("        server {} srun_id={} {p};\n", b.addr(), b.route));
    }
    upstream
        .push_str(&format!("        jvm_route $cookie_ROUTEID|jsessionid reverse {options};\n"));
    if !cookie.is_empty() {
        upstream.push_str(&format!("        jvm_route_cookie {cookie};\n"));
    }
    upstream.push_str("        zone app 64k;\n    }\n");
    format!(
        "http {{\n    log_format rc '$request_uri $jvm_route_status [$jvm_route_route] {{$jvm_route_server}} $status';\n    access_log logs/access.log rc;\n{upstream}    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://app;\n            proxy_next_upstream error timeout;\n        }}\n        location = /local {{\n            return 200 \"not from the upstream\\n\";\n        }}\n        location = /control {{\n            jvm_route_status app control;\n        }}\n    }}\n}}\n"
    )
}

/// The `Set-Cookie: ROUTEID=...` headers of a response.
fn route_cookies(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("ROUTEID="))
        .map(|(_, v)| v.clone())
        .collect()
}

/// A browser's cookie jar for `ROUTEID` only.
#[derive(Default)]
struct Jar {
    route: Option<String>,
    cookies_seen: usize,
}

impl Jar {
    fn get(&mut self, port: u16, path: &str) -> Response {
        let cookie = self.route.as_ref().map(|v| format!("ROUTEID={v}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let r = request(port, path, &headers);
        for c in route_cookies(&r) {
            self.cookies_seen += 1;
            let value = c.strip_prefix("ROUTEID=").unwrap().split(';').next().unwrap();
            self.route = Some(value.to_owned());
        }
        r
    }
}

const ATTRIBUTES: &str = "ROUTEID path=/ httponly samesite=lax";

#[test]
fn a_plain_application_sticks_by_the_route_cookie_and_moves_once_when_its_server_dies() {
    let mut servers = vec![Backend::start_plain("a"), Backend::start_plain("b")];
    let nginx = Nginx::start(2, &conf(&servers, &[], ATTRIBUTES, ""));
    let mut jar = Jar::default();
    let first = jar.get(nginx.port, "/");
    let home = first.backend().to_owned();
    assert_eq!(
        route_cookies(&first),
        vec![format!("ROUTEID=.{home}; Path=/; HttpOnly; SameSite=Lax")]
    );
    for i in 2..=100 {
        let r = jar.get(nginx.port, &format!("/r{i}"));
        assert_eq!((r.status, r.backend()), (200, home.as_str()), "request {i}");
    }
    assert_eq!(jar.cookies_seen, 1, "one Set-Cookie in 100 responses");

    // Its server dies: the next response comes from the other one and moves the client there.
    let index = servers.iter().position(|b| b.route == home).unwrap();
    servers[index].kill();
    let other = if home == "a" { "b" } else { "a" };
    let moved = jar.get(nginx.port, "/moved");
    assert_eq!((moved.status, moved.backend()), (200, other), "{moved:?}");
    assert_eq!(
        route_cookies(&moved),
        vec![format!("ROUTEID=.{other}; Path=/; HttpOnly; SameSite=Lax")]
    );
    for i in 0..20 {
        let r = jar.get(nginx.port, &format!("/after{i}"));
        assert_eq!(r.backend(), other);
    }
    assert_eq!(jar.cookies_seen, 2);

    // $jvm_route_server names the server that answered.
    let log = fs::read_to_string(nginx.dir().join("logs/access.log")).unwrap();
    assert!(log.lines().any(|l| l == format!("/r2 HIT [{home}] {{{home}}} 200")), "{log}");
    assert!(log.lines().any(|l| l == format!("/moved FAILOVER [{home}] {{{other}}} 200")), "{log}");
    // A response that is not the upstream's carries no route cookie.
    assert!(route_cookies(&nginx.get("/local")).is_empty());
    nginx.assert_no_crash();
}

#[test]
fn with_failover_off_a_refused_request_gets_503_and_no_cookie() {
    let mut servers = vec![Backend::start_plain("a"), Backend::start_plain("b")];
    let nginx = Nginx::start(
        1,
        &conf(&servers, &["max_fails=1 fail_timeout=30s"], ATTRIBUTES, "failover=off"),
    );
    servers[0].kill();
    for _ in 0..3 {
        let r = nginx.get_with("/", &[("Cookie", "ROUTEID=.a")]);
        assert_eq!(r.status, 503, "{r:?}");
        assert!(route_cookies(&r).is_empty(), "{r:?}");
    }
    nginx.assert_no_crash();
}

#[test]
fn a_drained_server_gets_no_new_cookies_but_keeps_its_clients() {
    let servers = vec![Backend::start_plain("a"), Backend::start_plain("b")];
    let nginx = Nginx::start(2, &conf(&servers, &["drain"], ATTRIBUTES, ""));
    for _ in 0..10 {
        let mut jar = Jar::default();
        assert_eq!(jar.get(nginx.port, "/").backend(), "b");
        assert_eq!(jar.route.as_deref(), Some(".b"));
    }
    let r = nginx.get_with("/", &[("Cookie", "ROUTEID=.a")]);
    assert_eq!(r.backend(), "a");
    assert!(route_cookies(&r).is_empty(), "a hit sets no cookie: {r:?}");
}

#[test]
fn attributes_appear_exactly_as_configured() {
    let servers = vec![Backend::start_plain("a")];
    let all = "ROUTEID path=/app domain=example.com max_age=1h secure httponly samesite=none";
    let nginx = Nginx::start(1, &conf(&servers, &[], all, ""));
    assert_eq!(
        route_cookies(&nginx.get("/")),
        vec!["ROUTEID=.a; Path=/app; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=None"]
    );
    drop(nginx);
    let nginx = Nginx::start(1, &conf(&servers, &[], "ROUTEID", ""));
    assert_eq!(route_cookies(&nginx.get("/")), vec!["ROUTEID=.a"]);
    // An unknown route is a new visit: the cookie is set.
    let r = nginx.get_with("/", &[("Cookie", "ROUTEID=.gone")]);
    assert_eq!(route_cookies(&r), vec!["ROUTEID=.a"]);
}

#[test]
fn beside_the_applications_session_cookie_and_jsessionid_urls() {
    // Tomcat-like backends: they set JSESSIONID (with their route) too.
    let servers = backends(&["a", "b"]);
    let nginx = Nginx::start(1, &conf(&servers, &[], "ROUTEID path=/", ""));
    let first = nginx.get("/");
    let route = first.backend().to_owned();
    assert_eq!(route_cookies(&first), vec![format!("ROUTEID=.{route}; Path=/")]);
    assert!(first.new_session().is_some(), "the application's own cookie is untouched");
    // A client without cookies, following a ;jsessionid= URL: routed by the URL, a hit.
    let r = nginx.get("/page;jsessionid=0123456789ABCDEF.b");
    assert_eq!(r.backend(), "b");
    assert!(route_cookies(&r).is_empty());
    nginx.assert_no_crash();
}
