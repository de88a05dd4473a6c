//! Hostile traffic and faults under load, through nginx with two workers: nothing may crash a
//! worker, no request may get a 5xx because of the module, and with `proxy_next_upstream`
//! killing a backend or reloading nginx under load loses no request.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

#[test]
fn hostile_requests_never_crash_or_fail() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03", "tomcat04"]);
    let params = ["", "down", "drain", "backup"];
    let extra =
        "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n";
    let conf = http_block(&upstream("tomcats", &tomcats, &params, extra), "").replace(
        "    access_log off;\n",
        "    access_log off;\n    large_client_header_buffers 8 64k;\n",
    );
    let nginx = Nginx::start(2, &conf);

    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    let get = |target: &str, headers: &[String]| {
        let mut r = format!("GET {target} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        for h in headers {
            r.extend_from_slice(h.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"Connection: close\r\n\r\n");
        r
    };
    let big_id = format!("Cookie: JSESSIONID={}.tomcat01", "A".repeat(16 * 1024));
    raw.push(("16 KB session id".into(), get("/", &[big_id])));
    let big_route = format!("Cookie: JSESSIONID=X.{}", "t".repeat(16 * 1024));
    raw.push(("16 KB route".into(), get("/", &[big_route])));
    let many: String = (0..300).map(|i| format!("c{i}=v{i}; ")).collect();
    raw.push(("300 cookies".into(), get("/", &[format!("Cookie: {many}JSESSIONID=X.tomcat01")])));
    let lines: Vec<String> = (0..40).map(|i| format!("Cookie: JSESSIONID=X{i}.nosuch")).collect();
    raw.push(("40 Cookie lines".into(), get("/", &lines)));
    let mut control = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=\x01\x02\x7f.tomcat01\r\nConnection: close\r\n\r\n".to_vec();
    raw.push(("control bytes".into(), control.clone()));
    control = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=\xff\xfe\xc3(.tomcat\xe2\x82\r\nConnection: close\r\n\r\n".to_vec();
    raw.push(("invalid UTF-8".into(), control));
    raw.push(("NUL byte".into(), b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=A\x00B.tomcat01\r\nConnection: close\r\n\r\n".to_vec()));
    raw.push((
        "quotes".into(),
        get("/", &["Cookie: JSESSIONID=\"\"\"; JSESSIONID=\"A.tomcat01".into()]),
    ));
    raw.push(("separators only".into(), get("/", &["Cookie: ;;;===;;; ; =".into()])));
    raw.push((
        "percent-encoded path parameter".into(),
        get("/a%3Bjsessionid%3DX.tomcat01?x=%26jsessionid%3DY.tomcat01", &[]),
    ));
    raw.push((
        "encoded and raw".into(),
        get("/a;jsessionid=%41.tomcat01;jsessionid=;?jsessionid=&&jsessionid=X.tomcat01", &[]),
    ));
    for route in ["tomcat02", "tomcat03", "tomcat04"] {
        raw.push((format!("route to {route}"), get("/", &[format!("Cookie: {}", cookie(route))])));
        raw.push((
            format!("URL route to {route}"),
            get(&format!("/x;jsessionid=ABC.{route}"), &[]),
        ));
    }
    let long_path = format!("/{};jsessionid=X.tomcat01", "p/".repeat(3000));
    raw.push(("6 KB path".into(), get(&long_path, &[])));
    let long_query = format!("/?{}&jsessionid=X.tomcat01", "a=b&".repeat(3000));
    raw.push(("12 KB query".into(), get(&long_query, &[])));
    let long_param = format!("/x;jsessionid={}", "Z".repeat(20_000));
    raw.push(("20 KB path parameter".into(), get(&long_param, &[])));

    // Every case 20 times, from 4 threads at once.
    let port = nginx.port;
    let raw = Arc::new(raw);
    let results: Vec<(String, u16)> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let raw = raw.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    for _ in 0..5 {
                        for (name, bytes) in raw.iter() {
                            out.push((name.clone(), raw_request(port, bytes).status));
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut by_case: HashMap<&str, Vec<u16>> = HashMap::new();
    for (name, status) in &results {
        by_case.entry(name.as_str()).or_default().push(*status);
    }
    for (name, statuses) in &by_case {
        assert!(
            statuses.iter().all(|&s| s == 200 || (400..500).contains(&s)),
            "{name}: {statuses:?}"
        );
    }
    // Those that nginx itself accepts are balanced: sessions of unusable servers fall back.
    for name in
        ["16 KB session id", "300 cookies", "40 Cookie lines", "route to tomcat02", "6 KB path"]
    {
        assert!(by_case[name].iter().all(|&s| s == 200), "{name}: {:?}", by_case[name]);
    }
    let r = nginx.get_with("/", &[("Cookie", &cookie("tomcat02"))]);
    assert_ne!(r.backend(), "tomcat02", "a down server gets no session");
    let r = nginx.get_with("/", &[("Cookie", &cookie("tomcat03"))]);
    assert_eq!(r.backend(), "tomcat03", "a draining server keeps its sessions");
    let r = nginx.get_with("/", &[("Cookie", &cookie("tomcat04"))]);
    assert_ne!(r.backend(), "tomcat04", "a backup is honoured only without usable primaries");
    nginx.assert_no_crash();
}

#[test]
fn faults_under_load_lose_no_request() {
    let mut tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let params = ["max_fails=1 fail_timeout=2s"; 3];
    let extra =
        "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n";
    let conf = http_block(
        &upstream("tomcats", &tomcats, &params, extra),
        "            proxy_next_upstream error timeout;\n            proxy_connect_timeout 2s;",
    );
    let nginx = Nginx::start(2, &conf);
    let duration = Duration::from_secs(30);
    let sessions = 100;

    let stop = Arc::new(AtomicBool::new(false));
    // Per session: every backend that served it, in order, and failed requests.
    let journeys: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); sessions]));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let port = nginx.port;
    let clients: Vec<_> = (0..sessions)
        .map(|i| {
            let (stop, journeys, failures) = (stop.clone(), journeys.clone(), failures.clone());
            thread::spawn(move || {
                let mut client = Client::default();
                while !stop.load(Ordering::Relaxed) {
                    let r = client.get(port, "/");
                    if r.status != 200 {
                        failures.lock().unwrap().push((i, r.status));
                    } else {
                        journeys.lock().unwrap()[i].push(r.backend().to_owned());
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();

    let start = Instant::now();
    let at = |secs: u64| {
        let t = Duration::from_secs(secs);
        if let Some(wait) = t.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    };
    at(3);
    nginx.reload_with(&conf, 2);
    at(6);
    tomcats[1].kill();
    at(9);
    nginx.reload_with(&conf, 2);
    at(13);
    nginx.reload_with(&conf, 2);
    at(16);
    tomcats[1].restart();
    at(20);
    nginx.reload_with(&conf, 2);
    at(25);
    nginx.reload_with(&conf, 2);
    at(duration.as_secs());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    let journeys = journeys.lock().unwrap();
    let total: usize = journeys.iter().map(Vec::len).sum();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        total + failures.len(),
        &failures[..failures.len().min(10)]
    );
    // A session moves when its server dies, once, and then stays.
    let moves: Vec<usize> =
        journeys.iter().map(|j| j.windows(2).filter(|w| w[0] != w[1]).count()).collect();
    let mut histogram: HashMap<usize, usize> = HashMap::new();
    for &m in &moves {
        *histogram.entry(m).or_default() += 1;
    }
    println!("{total} requests of {sessions} sessions over {duration:?}, 1 backend killed and restarted, 5 reloads; moves per session: {histogram:?}");
    for (i, j) in journeys.iter().enumerate() {
        let m = moves[i];
        let first = j.first().map(String::as_str).unwrap_or("");
        if first == "tomcat02" {
            assert!(m <= 1, "session {i} on the killed server moved {m} times: {j:?}");
        } else {
            assert_eq!(m, 0, "session {i} on {first} moved although its server stayed up");
        }
    }
    nginx.assert_no_crash();
}

/// A session id is a credential: the debug log names the route and the outcome, never the id
/// (needs an nginx built `--with-debug`, as Debian's is).
#[test]
fn the_debug_log_names_routes_not_session_ids() {
    let debug = std::process::Command::new(nginx_binary()).arg("-V").output().expect("nginx -V");
    if !String::from_utf8_lossy(&debug.stderr).contains("--with-debug") {
        skip("this nginx is built without a debug log (--with-debug); Debian's has one");
        return;
    }
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let conf = http_block(
        &upstream(
            "tomcats",
            &tomcats,
            &[],
            "        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n",
        ),
        "",
    )
    .replace("    access_log off;\n", "    access_log off;\n    error_log logs/debug.log debug;\n");
    let nginx = Nginx::start(1, &conf);
    assert_eq!(nginx.get_with("/", &[("Cookie", &cookie("tomcat02"))]).backend(), "tomcat02");
    nginx.get_with("/", &[("Cookie", &cookie("gone"))]);
    nginx.get("/x;jsessionid=FEDCBA9876543210FEDCBA9876543210.tomcat01");
    let log = std::fs::read_to_string(nginx.dir().join("logs/debug.log")).expect("debug log");
    assert!(log.contains("jvm_route: HIT route \"tomcat02\""), "no route in the debug log");
    assert!(log.contains("jvm_route: MISS route \"gone\""), "no unknown route in the debug log");
    // nginx itself logs every request header and the request line at debug level; the
    // module's own lines never hold an id.
    let from_module: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("jvm_route"))
        .filter(|l| l.contains("0123456789ABCDEF") || l.contains("FEDCBA98"))
        .collect();
    assert!(from_module.is_empty(), "the module logged a session id: {from_module:?}");
}
