//! Operations: `$jvm_route_route` and `$jvm_route_status` in the access log; the status page
//! in its three formats, with counters checked against the traffic sent through two workers;
//! counters across reloads; drain at startup and at run time; runtime down and up; control
//! refused where not enabled and bad control requests; forced stickiness (`failover=off`).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;

use common::*;
use serde_json::Value;

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

const ROUTES: [&str; 3] = ["tomcat01", "tomcat02", "tomcat03"];

/// Proxy on `/`, an access log of the variables, a read-only status page on `/status` and one
/// with control on `/control`.
fn start(tomcats: &[Backend], params: &[&str], jvm_route_options: &str, workers: usize) -> Nginx {
    let extra = format!(
        "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID|jsessionid reverse {jvm_route_options};\n"
    );
    let conf = format!(
        "http {{\n    log_format jvm '$request_uri $jvm_route_status [$jvm_route_route] $status';\n    access_log logs/access.log jvm;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n            proxy_next_upstream error timeout;\n        }}\n        location = /status {{\n            jvm_route_status;\n            access_log off;\n        }}\n        location = /control {{\n            jvm_route_status tomcats control;\n            access_log off;\n        }}\n    }}\n}}\n",
        upstream("tomcats", tomcats, params, &extra)
    );
    Nginx::start(workers, &conf)
}

fn status_json(nginx: &Nginx) -> Value {
    let r = nginx.get("/status?format=json");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json; charset=utf-8"));
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{}", r.body))
}

/// The JSON of the server with `srun_id` in upstream `tomcats`.
fn server<'a>(status: &'a Value, srun_id: &str) -> &'a Value {
    status["upstreams"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["srun_id"] == srun_id)
        .unwrap_or_else(|| panic!("no server {srun_id} in {status}"))
}

fn post(nginx: &Nginx, path: &str) -> Response {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw_request(nginx.port, raw.as_bytes())
}

/// Sends `requests` from `threads` threads at once.
fn concurrently(
    port: u16,
    threads: usize,
    requests: Vec<(String, Option<String>)>,
) -> Vec<Response> {
    let chunks: Vec<Vec<(String, Option<String>)>> =
        (0..threads).map(|t| requests.iter().skip(t).step_by(threads).cloned().collect()).collect();
    thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(path, cookie)| {
                            let headers: Vec<(&str, &str)> =
                                cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
                            request(port, path, &headers)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn variables_in_the_access_log() {
    let mut tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &["max_fails=1 fail_timeout=30s"], "", 2);
    nginx.get("/none");
    nginx.get_with("/hit", &[("Cookie", &cookie("tomcat02"))]);
    nginx.get_with("/miss", &[("Cookie", &cookie("gone"))]);
    nginx.get("/url;jsessionid=ABC.tomcat03");
    // A route can be at most as long as a srun_id (64 bytes): a longer one is not shown.
    let longest = "r".repeat(64);
    nginx.get_with("/longest", &[("Cookie", &format!("JSESSIONID=ABC.{longest}"))]);
    nginx.get_with("/too-long", &[("Cookie", &format!("JSESSIONID=ABC.{longest}x"))]);
    tomcats[0].kill();
    nginx.get_with("/failover", &[("Cookie", &cookie("tomcat01"))]);

    let log = fs::read_to_string(nginx.dir().join("logs/access.log")).expect("access log");
    let lines: HashMap<&str, &str> = log.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(lines.get("/none"), Some(&"NONE [] 200"), "{log}");
    assert_eq!(lines.get("/hit"), Some(&"HIT [tomcat02] 200"), "{log}");
    assert_eq!(lines.get("/miss"), Some(&"MISS [gone] 200"), "{log}");
    assert_eq!(lines.get("/url;jsessionid=ABC.tomcat03"), Some(&"HIT [tomcat03] 200"), "{log}");
    assert_eq!(lines.get("/failover"), Some(&"FAILOVER [tomcat01] 200"), "{log}");
    assert_eq!(lines.get("/longest"), Some(&format!("MISS [{longest}] 200").as_str()), "{log}");
    assert_eq!(lines.get("/too-long"), Some(&"MISS [] 200"), "{log}");
    // The session id itself is a credential: it is not in the log.
    assert!(!log.contains("0123456789ABCDEF"), "{log}");
    nginx.assert_no_crash();
}

#[test]
fn counters_match_the_traffic_in_every_format() {
    let tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &["weight=2"], "", 2);

    // 60 sessionless, 40 sticky per route, 30 with unknown routes, 8 threads at once.
    let mut requests: Vec<(String, Option<String>)> = Vec::new();
    requests.extend((0..60).map(|_| ("/".to_owned(), None)));
    for route in ROUTES {
        requests.extend((0..40).map(|_| ("/".to_owned(), Some(cookie(route)))));
    }
    requests.extend((0..30).map(|i| ("/".to_owned(), Some(cookie(&format!("gone{i}"))))));
    let responses = concurrently(nginx.port, 8, requests);
    assert!(responses.iter().all(|r| r.status == 200));
    let served = tally(&responses);

    let status = status_json(&nginx);
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["name"], "tomcats");
    assert_eq!(upstream["requests_with_session"], 150);
    assert_eq!(upstream["requests_without_session"], 60);
    assert_eq!(upstream["unknown_routes"], 30);
    let mut total = 0;
    for route in ROUTES {
        let s = server(&status, route);
        assert_eq!(s["hits"], 40, "{s}");
        assert_eq!(s["requests"], served[route] as u64, "{s}");
        assert_eq!(s["state"], "up");
        assert_eq!(s["failures"], 0);
        assert_eq!(s["active"], 0);
        assert!(s["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        total += s["requests"].as_u64().unwrap();
    }
    assert_eq!(total, 210);

    // Text, for people.
    let text = nginx.get("/status").body;
    assert!(
        text.starts_with(
            "upstream tomcats: requests with session 150, without session 60, unknown routes 30\n"
        ),
        "{text}"
    );
    for route in ROUTES {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(route) && l.contains(" up ")),
            "{text}"
        );
    }

    // Prometheus, read by the reference parser.
    let samples = parse_prometheus(&nginx.get("/status?format=prometheus").body);
    if samples.is_empty() {
        // Left out on request (JVM_ROUTE_TEST_SKIP=prometheus); said so.
        return;
    }
    let sample = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    };
    assert_eq!(
        sample("jvm_route_upstream_requests_total", &[("upstream", "tomcats"), ("session", "yes")]),
        150.0
    );
    assert_eq!(
        sample("jvm_route_upstream_requests_total", &[("upstream", "tomcats"), ("session", "no")]),
        60.0
    );
    assert_eq!(sample("jvm_route_unknown_routes_total", &[("upstream", "tomcats")]), 30.0);
    for route in ROUTES {
        let labels = [("upstream", "tomcats"), ("srun_id", route)];
        assert_eq!(sample("jvm_route_server_hits_total", &labels), 40.0);
        assert_eq!(sample("jvm_route_server_requests_total", &labels), served[route] as f64);
        assert_eq!(sample("jvm_route_server_state", &[("srun_id", route), ("state", "up")]), 1.0);
        assert_eq!(sample("jvm_route_server_state", &[("srun_id", route), ("state", "down")]), 0.0);
    }
    nginx.assert_no_crash();
}

/// (name, labels, value) of every sample, as `prometheus_client`'s text parser reads them.
fn parse_prometheus(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    // Python with `prometheus_client` (Debian: python3-prometheus-client; the version
    // matrix's images have it): TEST_PYTHON, else python3 on PATH.
    let python =
        std::env::var_os("TEST_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let check = Command::new(&python).args(["-c", "import prometheus_client"]).output();
    if !check.as_ref().is_ok_and(|o| o.status.success()) {
        missing(
            "prometheus",
            &format!(
                "needs Python's prometheus_client to parse the page as Prometheus does: {} has none \
                 (apt-get install python3-prometheus-client, or set TEST_PYTHON to a python that has it)",
                python.display()
            ),
        );
        return Vec::new();
    }
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
        out = []\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    \
        for s in f.samples:\n        out.append([s.name, s.labels, s.value])\nprint(json.dumps(out))\n";
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the page:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert!(!parsed.is_empty());
    parsed
}

#[test]
fn counters_survive_a_reload_unless_their_server_changes() {
    let tomcats = backends(&ROUTES);
    let conf_with = |servers: &[Backend], params: &[&str]| {
        format!(
            "http {{\n    access_log off;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{ proxy_pass http://tomcats; }}\n        location = /status {{ jvm_route_status; }}\n    }}\n}}\n",
            upstream("tomcats", servers, params, "        jvm_route $cookie_JSESSIONID reverse;\n")
        )
    };
    let conf = |servers: &[Backend]| conf_with(servers, &[]);
    let nginx = Nginx::start(2, &conf(&tomcats));
    for _ in 0..7 {
        nginx.get_with("/", &[("Cookie", &cookie("tomcat01"))]);
    }
    let hits = |nginx: &Nginx| server(&status_json(nginx), "tomcat01")["hits"].as_u64().unwrap();
    assert_eq!(hits(&nginx), 7);

    let same = conf(&tomcats);
    nginx.reload_and_wait(&same, 2);
    assert_eq!(hits(&nginx), 7, "same servers: the counters are kept");

    nginx.reload_and_wait(&conf(&tomcats[..2]), 2);
    assert_eq!(hits(&nginx), 7, "another server removed: this one's counters are kept");

    nginx.reload_and_wait(&conf_with(&tomcats[..2], &["backup"]), 2);
    assert_eq!(hits(&nginx), 0, "the server line changed: its counters start again");
    nginx.assert_no_crash();
}

#[test]
fn drain_at_startup_and_at_run_time() {
    let tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &["drain"], "", 2);
    let status = status_json(&nginx);
    assert_eq!(server(&status, "tomcat01")["state"], "draining");
    let check_drained = |drained: &str| {
        let counts = tally(&(0..20).map(|_| nginx.get("/")).collect::<Vec<_>>());
        assert_eq!(counts.get(drained), None, "no new session on {drained}: {counts:?}");
        for _ in 0..5 {
            let r = nginx.get_with("/", &[("Cookie", &cookie(drained))]);
            assert_eq!(r.backend(), drained, "its sessions still go there");
        }
    };
    check_drained("tomcat01");

    // At run time, through the control location, under traffic from another thread.
    let port = nginx.port;
    let traffic = thread::spawn(move || {
        (0..200).map(|_| request(port, "/", &[("Cookie", &cookie("tomcat02"))])).collect::<Vec<_>>()
    });
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat02&action=drain");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat02 in tomcats: draining\n"));
    assert!(traffic.join().unwrap().iter().all(|r| r.status == 200 && r.backend() == "tomcat02"));
    assert_eq!(server(&status_json(&nginx), "tomcat02")["state"], "draining");
    let counts = tally(&(0..20).map(|_| nginx.get("/")).collect::<Vec<_>>());
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["tomcat03"], "{counts:?}");

    // Undrain both: new sessions reach them again.
    for route in ["tomcat01", "tomcat02"] {
        let r = post(&nginx, &format!("/control?upstream=tomcats&srun_id={route}&action=undrain"));
        assert_eq!(r.status, 200, "{r:?}");
    }
    let counts = tally(&(0..30).map(|_| nginx.get("/")).collect::<Vec<_>>());
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(server(&status_json(&nginx), "tomcat01")["state"], "up");
    nginx.assert_no_crash();
}

#[test]
fn down_and_up_at_run_time() {
    let tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &[], "", 2);
    let r = post(&nginx, "/control?upstream=tomcats&srun_id=tomcat03&action=down");
    assert_eq!(r.status, 200, "{r:?}");
    let status = status_json(&nginx);
    assert_eq!(server(&status, "tomcat03")["state"], "down");
    for _ in 0..10 {
        let r = nginx.get_with("/", &[("Cookie", &cookie("tomcat03"))]);
        assert_eq!(r.status, 200);
        assert_ne!(r.backend(), "tomcat03");
    }
    assert_eq!(server(&status_json(&nginx), "tomcat03")["failovers_from"], 10);
    assert_eq!(post(&nginx, "/control?upstream=tomcats&srun_id=tomcat03&action=up").status, 200);
    for _ in 0..10 {
        assert_eq!(nginx.get_with("/", &[("Cookie", &cookie("tomcat03"))]).backend(), "tomcat03");
    }
}

#[test]
fn control_refused_and_bad_requests_change_nothing() {
    let tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &[], "", 1);
    let before = status_json(&nginx);
    let cases: [(&str, &str, u16); 8] = [
        ("POST", "/status?upstream=tomcats&srun_id=tomcat01&action=drain", 403),
        ("POST", "/control?upstream=nope&srun_id=tomcat01&action=drain", 404),
        ("POST", "/control?upstream=tomcats&srun_id=nope&action=drain", 404),
        ("POST", "/control?upstream=tomcats&srun_id=tomcat01&action=explode", 400),
        ("POST", "/control?upstream=tomcats&srun_id=tomcat01", 400),
        ("PUT", "/control?upstream=tomcats&srun_id=tomcat01&action=drain", 405),
        ("DELETE", "/control?upstream=tomcats&srun_id=tomcat01&action=down", 405),
        ("GET", "/status?format=xml", 400),
    ];
    for (method, path, status) in cases {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = raw_request(nginx.port, raw.as_bytes());
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert!(!r.body.is_empty(), "{method} {path}: a reason is given");
    }
    let after = status_json(&nginx);
    for route in ROUTES {
        assert_eq!(server(&before, route)["state"], server(&after, route)["state"]);
    }
    assert_eq!(server(&after, "tomcat01")["state"], "up");
}

#[test]
fn forced_stickiness_refuses_with_503() {
    let mut tomcats = backends(&ROUTES);
    let nginx = start(&tomcats, &["max_fails=1 fail_timeout=30s"], "failover=off", 2);
    tomcats[0].kill();
    for _ in 0..4 {
        let r = nginx.get_with("/forced", &[("Cookie", &cookie("tomcat01"))]);
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.body.contains("503 Service Temporarily Unavailable"), "{}", r.body);
        assert_eq!(
            r.header("Content-Length").map(|l| l.parse::<usize>().unwrap()),
            Some(r.body.len())
        );
    }
    // Without a session, or with an unknown route, requests still balance.
    for _ in 0..6 {
        assert_eq!(nginx.get("/").status, 200);
        assert_eq!(nginx.get_with("/", &[("Cookie", &cookie("gone"))]).status, 200);
    }
    // Other sessions are unaffected.
    assert_eq!(nginx.get_with("/", &[("Cookie", &cookie("tomcat02"))]).backend(), "tomcat02");
    let log = fs::read_to_string(nginx.dir().join("logs/access.log")).unwrap();
    assert!(
        log.lines()
            .filter(|l| l.starts_with("/forced "))
            .all(|l| l == "/forced REFUSED [tomcat01] 503"),
        "{log}"
    );
    // HEAD gets the status without a body.
    let r = raw_request(
        nginx.port,
        format!(
            "HEAD / HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            cookie("tomcat01")
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 503);
    nginx.assert_no_crash();
}

#[test]
fn status_directive_errors() {
    let base = |location: &str| {
        format!(
            "http {{\n    upstream tomcats {{\n        server 127.0.0.1:1 srun_id=a;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location /s {{\n            {location}\n        }}\n    }}\n}}\n"
        )
    };
    let cases = [
        (
            "jvm_route_status nope;",
            "no upstream \"nope\" with \"jvm_route\" for \"jvm_route_status\"",
        ),
        (
            "jvm_route_status tomcats control extra;",
            "invalid number of arguments in \"jvm_route_status\" directive",
        ),
        (
            "jvm_route_status control control;",
            "invalid parameter \"control\" in \"jvm_route_status\" directive",
        ),
        ("jvm_route_status a b;", "invalid parameter \"b\" in \"jvm_route_status\" directive"),
        ("jvm_route_status; jvm_route_status;", "\"jvm_route_status\" directive is duplicate"),
    ];
    for (location, message) in cases {
        let conf = base(location);
        let (out, path, _dir) = nginx_test_config(&conf);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{location}: accepted");
        let line = line_of(&conf, "jvm_route_status");
        let expected = format!("{message} in {}:{line}", path.display());
        assert!(
            stderr.contains("[emerg]") && stderr.contains(&expected),
            "{location}: expected {expected:?}:\n{stderr}"
        );
    }
}

/// `error_page 502` in front of `failover=off`: the page is the configured one, the status
/// stays 503, and the access log still says REFUSED.
#[test]
fn forced_stickiness_keeps_503_behind_an_error_page() {
    // Also beneath `keepalive`, which wraps the balancer's per-request data.
    for extra in ["", "        keepalive 8;\n"] {
        let mut tomcats = backends(&ROUTES);
        let conf = format!(
            "http {{\n    log_format jvm '$request_uri $jvm_route_status [$jvm_route_route] $status';\n    access_log logs/access.log jvm;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            error_page 502 /bad-gateway.html;\n        }}\n        location = /bad-gateway.html {{\n            internal;\n            return 200 \"the site's own error page\\n\";\n        }}\n    }}\n}}\n",
            upstream(
                "tomcats",
                &tomcats,
                &["max_fails=1 fail_timeout=30s"],
                &format!("        jvm_route $cookie_JSESSIONID reverse failover=off;\n{extra}")
            )
        );
        let nginx = Nginx::start(1, &conf);
        tomcats[0].kill();
        for _ in 0..3 {
            let r = nginx.get_with("/forced", &[("Cookie", &cookie("tomcat01"))]);
            assert_eq!(r.status, 503, "{extra}: {r:?}");
            assert_eq!(r.body, "the site's own error page\n");
        }
        // A real 502 (every server gone) keeps its status.
        for t in &mut tomcats {
            t.kill();
        }
        assert_eq!(nginx.get("/").status, 502);
        let log = fs::read_to_string(nginx.dir().join("logs/access.log")).unwrap();
        let forced: Vec<&str> = log.lines().filter(|l| l.starts_with("/forced ")).collect();
        assert_eq!(forced, vec!["/forced REFUSED [tomcat01] 503"; 3], "{extra}: {log}");
        nginx.assert_no_crash();
    }
}
