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
fn control_arguments_are_decoded_from_the_query_or_a_form_body() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = start(&tomcats);
    let form = "Content-Type: application/x-www-form-urlencoded";
    let r = post(&nginx, "/control", &[form], "upstream=tomcats&srun_id=tomcat%30%31&action=drain");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat01 in tomcats: draining\n"), "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "draining");
    let r = post(&nginx, "/control?upstream=tom%63ats", &[form], "srun_id=tomcat01&action=undrain");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&nginx, "tomcat01"), "up");
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat%302&action=down", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&nginx, "tomcat02"), "down");
    // Bad encoding is a missing argument; an oversized form is refused; neither changes anything.
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat%G2&action=up", &[], "");
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
    assert_eq!(nginx.get("/status").header("Content-Type"), Some("text/plain"));
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
