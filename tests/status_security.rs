//! The status and control locations in front of browsers and proxies: a request body never
//! becomes a second request (smuggling), a browser's cross-site POST changes nothing (CSRF),
//! control arguments come percent-decoded from the query or a form body, and no reply is
//! cached.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn start(tomcats: &[Backend]) -> Nginx {
    let conf = format!(
        "http {{\n    log_format uri '$request_uri $status';\n    access_log logs/access.log uri;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n        location = /control {{\n            jvm_route_status tomcats control;\n        }}\n    }}\n}}\n",
        upstream("tomcats", tomcats, &[], "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID reverse;\n")
    );
    Nginx::start(2, &conf)
}

/// Everything the server sends on one keep-alive connection within `wait`.
fn exchange(port: u16, raw: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.write_all(raw).unwrap();
    let mut data = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

fn state(nginx: &Nginx, srun_id: &str) -> String {
    status_server(nginx, "/status", srun_id)["state"].as_str().unwrap().to_owned()
}

fn post(nginx: &Nginx, target: &str, headers: &[&str], body: &str) -> Response {
    let mut raw = format!("POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", nginx.port);
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    raw_request(nginx.port, raw.as_bytes())
}

#[test]
fn a_request_body_is_never_a_second_request() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = start(&tomcats);
    let smuggled = "GET /secret HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(smuggled.len(), 33);
    let chunked = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    for (method, path) in [
        ("GET", "/status"),
        ("HEAD", "/status"),
        ("DELETE", "/status"),
        ("POST", "/control"),
        ("POST", "/status"),
    ] {
        let with_length =
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 33\r\n\r\n{smuggled}");
        let with_chunks = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        );
        for raw in [with_length, with_chunks] {
            let got = exchange(nginx.port, raw.as_bytes(), Duration::from_millis(800));
            assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{method} {path}:\n{got}");
        }
    }
    let log = std::fs::read_to_string(nginx.dir().join("logs/access.log")).unwrap();
    assert!(!log.contains("/secret"), "{log}");
    nginx.assert_no_crash();
}

#[test]
fn cross_site_posts_change_nothing_and_curl_keeps_working() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = start(&tomcats);
    let drain = "/control?upstream=tomcats&srun_id=tomcat01&action=down";
    for header in [
        "Origin: http://evil.example",
        "Origin: null",
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Site: same-site",
        "Referer: http://evil.example/page",
    ] {
        let r = post(&nginx, drain, &[header], "");
        assert_eq!(r.status, 403, "{header}: {r:?}");
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        assert_eq!(state(&nginx, "tomcat01"), "up", "{header} changed the state");
    }
    // A form posted from another site, the arguments in the body.
    let r = post(
        &nginx,
        "/control",
        &["Origin: http://evil.example", "Content-Type: application/x-www-form-urlencoded"],
        "upstream=tomcats&srun_id=tomcat01&action=down",
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "up");

    // curl (no Origin, no Sec-Fetch-Site, no Referer), and the same origin, are obeyed.
    let r = post(&nginx, drain, &[], "");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat01 in tomcats: down\n"));
    assert_eq!(state(&nginx, "tomcat01"), "down");
    let same = format!("Origin: http://127.0.0.1:{}", nginx.port);
    let r = post(
        &nginx,
        "/control?upstream=tomcats&srun_id=tomcat01&action=up",
        &[&same, "Sec-Fetch-Site: same-origin"],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "up");
    nginx.assert_no_crash();
}

#[test]
fn control_arguments_are_decoded_from_a_form_body_or_else_the_query() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = start(&tomcats);
    let form = "Content-Type: application/x-www-form-urlencoded";
    let r = post(&nginx, "/control", &[form], "upstream=tomcats&srun_id=tomcat%30%31&action=drain");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat01 in tomcats: draining\n"), "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "draining");
    // One source: with a form body the query is not read.
    let r = post(&nginx, "/control?upstream=tom%63ats", &[form], "srun_id=tomcat01&action=undrain");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "draining");
    let r = post(
        &nginx,
        "/control?action=down",
        &[form],
        "upstream=tomcats&srun_id=tomcat01&action=undrain",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "up");
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat%302&action=down", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&nginx, "tomcat02"), "down");
    // Bad encoding, or a name given twice, is refused; an oversized form is refused; none
    // changes anything.
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat%G2&action=up", &[], "");
    assert_eq!(r.status, 400, "{r:?}");
    let r =
        post(&nginx, "/control?upstream=tomcats&srun_id=%G1&srun_id=tomcat02&action=up", &[], "");
    assert_eq!(r.status, 400, "{r:?}");
    let r = post(
        &nginx,
        "/control?upstream=tomcats&srun_id=tomcat01&srun_id=tomcat02&action=up",
        &[],
        "",
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "\"srun_id\" is given twice; nothing was changed\n")
    );
    let r =
        post(&nginx, "/control", &[form], "upstream=tomcats&srun_id=tomcat02&action=up&action=up");
    assert_eq!(r.status, 400, "{r:?}");
    let big = format!("upstream=tomcats&srun_id=tomcat02&action=up&pad={}", "x".repeat(5000));
    let r = post(&nginx, "/control", &[form], &big);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(state(&nginx, "tomcat02"), "down");
    nginx.assert_no_crash();
}

#[test]
fn no_reply_of_the_status_location_is_cached() {
    let tomcats = backends(&["tomcat01"]);
    let nginx = start(&tomcats);
    for path in ["/status", "/status?format=json", "/status?format=prometheus", "/status?format=x"]
    {
        assert_eq!(nginx.get(path).header("Cache-Control"), Some("no-store"), "{path}");
    }
    let r = post(&nginx, "/status", &[], "");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let r = raw_request(
        nginx.port,
        b"DELETE /control HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
}

#[test]
fn browsers_get_the_page_and_a_form_post_goes_back_to_it() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = start(&tomcats);
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let page = nginx.get_with("/control", &[("Accept", browser)]);
    assert_eq!(page.status, 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    let csp = page.header("Content-Security-Policy").expect("a policy");
    assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.body.contains("<form class=\"control\" method=\"post\" action=\"/control\">"));
    // Without control, no buttons; curl gets text unless it asks.
    let read_only = nginx.get_with("/status", &[("Accept", browser)]);
    assert!(read_only.body.contains("<table>") && !read_only.body.contains("<form"));
    assert_eq!(nginx.get("/status").header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert!(nginx.get("/status?format=html").body.starts_with("<!doctype html>"));

    let r = post(
        &nginx,
        "/control",
        &[
            "Content-Type: application/x-www-form-urlencoded",
            &format!("Accept: {browser}"),
            "Sec-Fetch-Site: same-origin",
            &format!("Origin: http://127.0.0.1:{}", nginx.port),
        ],
        "upstream=tomcats&srun_id=tomcat02&action=drain",
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("Location"), Some("/control?format=html"));
    assert_eq!(state(&nginx, "tomcat02"), "draining");
    nginx.assert_no_crash();
}

// ---------------------------------------------------------------------------------------------
// Under a prefix location, where the path after the prefix is the client's to choose.

fn start_prefix(servers: &[Backend], server_extra: &str) -> Nginx {
    let conf = format!(
        "http {{\n    access_log off;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n{server_extra}        location / {{\n            proxy_pass http://app;\n        }}\n        location /jvm-route/ {{\n            jvm_route_status app control;\n        }}\n    }}\n}}\n",
        upstream("app", servers, &[], "        zone app 64k;\n        jvm_route $cookie_JSESSIONID reverse;\n")
    );
    Nginx::start(1, &conf)
}

fn state_of(nginx: &Nginx, srun_id: &str) -> String {
    status_server(nginx, "/jvm-route/", srun_id)["state"].as_str().unwrap_or("").to_owned()
}

fn raw(nginx: &Nginx, request: &str) -> Response {
    raw_request(nginx.port, request.as_bytes())
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[test]
fn a_path_cannot_split_the_response_of_a_form_post() {
    let nginx = start_prefix(&backends(&["a", "b"]), "");
    let path = "/jvm-route/x%0d%0aSet-Cookie:%20JSESSIONID=FIXED.a%0d%0aX-Y:%20z";
    let r = raw(
        &nginx,
        &format!("POST {path}?upstream=app&srun_id=a&action=up HTTP/1.1\r\nHost: localhost\r\nAccept: {BROWSER}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("Set-Cookie"), None, "{r:?}");
    assert_eq!(r.header("X-Y"), None, "{r:?}");
    assert_eq!(r.header("Location"), Some(format!("{path}?format=html").as_str()));
    nginx.assert_no_crash();
}

#[test]
fn a_path_cannot_put_a_query_into_the_pages_buttons() {
    let nginx = start_prefix(&backends(&["a", "b"]), "");
    let path = "/jvm-route/%3Fupstream=app%26srun_id=b%26action=down%23";
    let page = raw(
        &nginx,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {BROWSER}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains(&format!("action=\"{path}\"")), "{}", page.body);
    assert!(!page.body.contains("action=\"/jvm-route/?"), "{}", page.body);
    // The operator's click on "drain a" posts the form to that action: only `a` changes.
    let form = "upstream=app&srun_id=a&action=drain";
    let r = raw(
        &nginx,
        &format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {BROWSER}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len()),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        (state_of(&nginx, "a").as_str(), state_of(&nginx, "b").as_str()),
        ("draining", "up")
    );
    nginx.assert_no_crash();
}

#[test]
fn a_rebound_name_is_not_answered_and_known_names_are() {
    let nginx = start_prefix(
        &backends(&["a", "b"]),
        "        server_name lb.example.com *.example.org ~^re\\.example\\.net$;\n",
    );
    let rebound = [
        "Host: rebind.attacker.example",
        "Origin: http://rebind.attacker.example",
        "Sec-Fetch-Site: same-origin",
    ]
    .join("\r\n");
    let r = raw(
        &nginx,
        &format!("POST /jvm-route/?upstream=app&srun_id=a&action=down HTTP/1.1\r\n{rebound}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(state_of(&nginx, "a"), "up");
    // The page with the backends' addresses is not readable by that page either.
    let r = raw(
        &nginx,
        &format!("GET /jvm-route/?format=json HTTP/1.1\r\n{rebound}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 421, "{r:?}");
    assert!(!r.body.contains("127.0.0.1"), "{}", r.body);
    // Wildcard and regular-expression names are not enough for a control request.
    for host in ["a.example.org", "re.example.net", "rebind.attacker.example"] {
        let r = raw(
            &nginx,
            &format!("POST /jvm-route/?upstream=app&srun_id=a&action=down HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 421, "{host}: {r:?}");
    }
    assert_eq!(state_of(&nginx, "a"), "up");
    // The exact server_name, addresses and localhost are answered.
    for host in ["lb.example.com", "LB.example.com:8080", "127.0.0.1", "[::1]:80", "localhost"] {
        let r = raw(
            &nginx,
            &format!("POST /jvm-route/?upstream=app&srun_id=a&action=drain HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    // A scraper or curl reading the status by any DNS name keeps working.
    let r = raw(
        &nginx,
        "GET /jvm-route/?format=prometheus HTTP/1.1\r\nHost: monitoring.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    nginx.assert_no_crash();
}

#[test]
fn a_page_of_the_other_scheme_is_another_site() {
    let nginx = start_prefix(&backends(&["a"]), "");
    let origin = format!("Origin: https://127.0.0.1:{}", nginx.port);
    let r = raw(
        &nginx,
        &format!("POST /jvm-route/?upstream=app&srun_id=a&action=down HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{origin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", nginx.port),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let referer = format!("Referer: https://127.0.0.1:{}/jvm-route/", nginx.port);
    let r = raw(
        &nginx,
        &format!("POST /jvm-route/?upstream=app&srun_id=a&action=down HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{referer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", nginx.port),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(state_of(&nginx, "a"), "up");
}

#[test]
fn every_reply_says_its_type_and_runs_nothing() {
    let nginx = start_prefix(&backends(&["a"]), "");
    for (path, accept, content_type) in [
        ("/jvm-route/", "*/*", "text/plain; charset=utf-8"),
        ("/jvm-route/?format=json", "*/*", "application/json; charset=utf-8"),
        ("/jvm-route/?format=prometheus", "*/*", "text/plain; version=0.0.4; charset=utf-8"),
        ("/jvm-route/?format=nope", "*/*", "text/plain; charset=utf-8"),
        ("/jvm-route/", BROWSER, "text/html; charset=utf-8"),
    ] {
        let r = nginx.get_with(path, &[("Accept", accept)]);
        assert_eq!(r.header("Content-Type"), Some(content_type), "{path}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"), "{path}");
        if content_type.starts_with("text/html") {
            assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
            assert!(r.header("Content-Security-Policy").is_some_and(|c| c.contains("'sha256-")));
        } else {
            assert_eq!(r.header("Content-Security-Policy"), Some("default-src 'none'"), "{path}");
        }
    }
    let r = raw(
        &nginx,
        "POST /jvm-route/?upstream=app&srun_id=a&action=nope HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("Content-Security-Policy"), Some("default-src 'none'"));
    // HEAD: the headers, no body.
    let head = exchange(
        nginx.port,
        b"HEAD /jvm-route/?format=json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/json; charset=utf-8"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after the header: {head}");
    nginx.assert_no_crash();
}

#[test]
fn a_chunked_form_is_refused_as_soon_as_it_is_too_large() {
    let nginx = start_prefix(&backends(&["a"]), "");
    let chunk = "x".repeat(5000);
    // The first chunk passes 4 KB; the body never ends.
    let head = format!(
        "POST /jvm-route/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    let reply = read_head(&mut send_head(nginx.port, &head));
    assert!(reply.starts_with("HTTP/1.1 413"), "refused before the body ended: {reply}");
    assert_eq!(state_of(&nginx, "a"), "up");
    nginx.assert_no_crash();
}

#[test]
fn a_form_sent_after_100_continue_is_obeyed() {
    let nginx = start_prefix(&backends(&["a", "b"]), "");
    let form = "upstream=app&srun_id=b&action=drain";
    let head = format!(
        "POST /jvm-route/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        form.len()
    );
    let mut stream = send_head(nginx.port, &head);
    let interim = read_head(&mut stream);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(form.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert_eq!(state_of(&nginx, "b"), "draining");
}

#[test]
fn a_control_post_over_http2_is_obeyed() {
    let servers = backends(&["a", "b"]);
    let conf = format!(
        "http {{\n    access_log off;\n{}\n    server {{\n        listen 127.0.0.1:{{port}} http2;\n        location /jvm-route/ {{\n            jvm_route_status app control;\n        }}\n    }}\n}}\n",
        upstream("app", &servers, &[], "        zone app 64k;\n        jvm_route $cookie_JSESSIONID reverse;\n")
    );
    let nginx = Nginx::start(1, &conf);
    let url = format!("http://127.0.0.1:{}/jvm-route/", nginx.port);
    let dir = TempDir::new("h2");
    // nghttp2's own client (h2c with prior knowledge): "STATUS\nBODY". A POST's body is sent
    // from a file; curl 7.88 is not used here, as it reports nginx's RST_STREAM(NO_ERROR),
    // which ends the client's half of a stream whose response is complete, as an error.
    let h2 = |url: &str, form: Option<&str>| {
        let mut cmd = std::process::Command::new("nghttp");
        cmd.args(["-v", "--timeout=10"]);
        if let Some(form) = form {
            let file = dir.path().join("form");
            std::fs::write(&file, form).unwrap();
            cmd.arg(format!("--data={}", file.display()));
            cmd.args(["-H", "content-type: application/x-www-form-urlencoded"]);
        }
        let out = cmd
            .arg(url)
            .output()
            .expect("nghttp (Debian package nghttp2-client) is needed for this test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status =
            text.lines().find_map(|l| l.split(") :status: ").nth(1)).unwrap_or("none").to_owned();
        (status, text)
    };
    let (status, text) = h2(&url, Some("upstream=app&srun_id=b&action=drain"));
    assert_eq!(status, "200", "{text}");
    assert!(text.contains("b in app: draining"), "{text}");
    let (status, text) = h2(&format!("{url}?upstream=app&srun_id=a&action=down"), Some(""));
    assert_eq!(status, "200", "{text}");
    let (status, json) = h2(&format!("{url}?format=json"), None);
    assert_eq!(status, "200", "{json}");
    assert!(json.contains("\"srun_id\":\"b\"") && json.contains("draining"), "{json}");
    assert!(json.contains("\"state\":\"down\""), "{json}");
    let big = format!("upstream=app&srun_id=a&action=up&pad={}", "x".repeat(5000));
    let (status, text) = h2(&url, Some(&big));
    assert_eq!(status, "413", "{text}");
    nginx.assert_no_crash();
}
