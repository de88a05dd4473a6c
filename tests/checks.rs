//! Active health checks (`check`, `check_http_send`, `check_http_expect_alive`,
//! `check_status`), against stand-in backends whose health answer the test sets: each is a
//! small HTTP server in this process that answers `/health` with the status it is told and
//! anything else like a Tomcat with a `jvmRoute` (a `JSESSIONID` cookie ending in its route),
//! and counts what it receives.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A backend whose `/health` answers `health` (200 until told otherwise).
struct Stub {
    port: u16,
    health: Arc<AtomicU16>,
    /// `/health` requests received, and other requests.
    checks: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The head of the last `/health` request.
    last_check: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stub {
    fn start(route: &str) -> Stub {
        Stub::start_on(route, free_port())
    }

    fn start_on(route: &str, port: u16) -> Stub {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind stub");
        listener.set_nonblocking(true).expect("nonblocking");
        let (health, checks, requests) = (
            Arc::new(AtomicU16::new(200)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let last_check = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, c, r, l, s, name) = (
            health.clone(),
            checks.clone(),
            requests.clone(),
            last_check.clone(),
            stop.clone(),
            route.to_owned(),
        );
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, c, r, l, name) =
                            (h.clone(), c.clone(), r.clone(), l.clone(), name.clone());
                        thread::spawn(move || serve(stream, &name, &h, &c, &r, &l));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Stub { port, health, checks, requests, last_check, stop, thread: Some(thread) }
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::Relaxed)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    route: &str,
    health: &AtomicU16,
    checks: &AtomicUsize,
    requests: &AtomicUsize,
    last_check: &Mutex<String>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let reply = if head.starts_with("GET /health ") || head.starts_with("HEAD /health ") {
        checks.fetch_add(1, Ordering::Relaxed);
        *last_check.lock().unwrap_or_else(|e| e.into_inner()) = head.clone();
        let status = health.load(Ordering::Relaxed);
        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    } else {
        requests.fetch_add(1, Ordering::Relaxed);
        let has_own = head.contains(&format!(".{route}"));
        let cookie = if has_own {
            String::new()
        } else {
            format!(
                "Set-Cookie: JSESSIONID={:016x}.{route}; Path=/\r\n",
                requests.load(Ordering::Relaxed)
            )
        };
        let body = format!("{route}\n");
        format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {route}\r\n{cookie}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// The upstream `tomcats` over `servers` (address, srun_id), with `check_lines`, proxied at `/`
/// (`extra` in that location), the status page at `/status`.
fn conf(servers: &[(String, &str)], check_lines: &str, extra: &str) -> String {
    let mut upstream = String::from("    upstream tomcats {\n        zone tomcats 64k;\n");
    for (addr, srun_id) in servers {
        upstream.push_str(&format!("        server {addr} srun_id={srun_id};\n"));
    }
    upstream.push_str("        jvm_route $cookie_JSESSIONID reverse;\n");
    upstream.push_str(check_lines);
    upstream.push_str("    }\n");
    format!(
        "http {{\n    access_log off;\n{upstream}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n            proxy_next_upstream error timeout;\n{extra}\n        }}\n        location = /status {{\n            check_status json;\n        }}\n    }}\n}}\n"
    )
}

/// A self-signed certificate for `tomcat.test` in `dir` (key, certificate).
fn certificate(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=tomcat.test", "-addext", "subjectAltName=DNS:tomcat.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (package openssl) makes a certificate");
    assert!(made.status.success(), "{made:?}");
    (key, cert)
}

/// `openssl s_server` on a free port with that certificate (`-www`: it answers HTTP over TLS).
fn tls_server(key: &std::path::Path, cert: &std::path::Path) -> (std::process::Child, u16) {
    let port = free_port();
    let server = std::process::Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    assert!(eventually(10, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    (server, port)
}

const CHECK: &str = "        check interval=300 rise=2 fall=2 timeout=250 type=http;\n        check_http_send \"GET /health HTTP/1.0\\r\\n\\r\\n\";\n        check_http_expect_alive http_2xx http_3xx;\n";

/// The check state of each address of `srun_id` (from the status page), with its last error.
fn check_state(nginx: &Nginx, srun_id: &str) -> (String, String) {
    let s = status_server(nginx, "/status", srun_id);
    let c = &s["peers"][0]["check"];
    (
        c["state"].as_str().unwrap_or("?").to_owned(),
        c["last_error"].as_str().unwrap_or("?").to_owned(),
    )
}

fn wait_state(nginx: &Nginx, srun_id: &str, state: &str, seconds: u64) {
    assert!(
        eventually(seconds, || check_state(nginx, srun_id).0 == state),
        "{srun_id} did not become {state}: {:?}\n{}",
        check_state(nginx, srun_id),
        nginx.error_log()
    );
}

fn get_with_cookie(nginx: &Nginx, cookie: &str) -> Response {
    nginx.get_with("/", &[("Cookie", &format!("JSESSIONID={cookie}"))])
}

#[test]
fn a_server_failing_its_checks_is_out_and_its_sessions_come_back() {
    let (a, b) = (Stub::start("tomcat01"), Stub::start("tomcat02"));
    let servers = [
        (format!("127.0.0.1:{}", a.port), "tomcat01"),
        (format!("127.0.0.1:{}", b.port), "tomcat02"),
    ];
    let nginx = Nginx::start(2, &conf(&servers, CHECK, ""));
    // default_down (the check module's default): both start out, and are up after rise=2.
    wait_state(&nginx, "tomcat01", "up", 5);
    wait_state(&nginx, "tomcat02", "up", 5);
    // The check request got a Host line (check_http_send has none).
    let head = b.last_check.lock().unwrap().clone();
    assert!(head.starts_with("GET /health HTTP/1.0\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", b.port)), "{head}");

    // A session of tomcat02 sticks.
    for _ in 0..5 {
        assert_eq!(get_with_cookie(&nginx, "AB.tomcat02").backend(), "tomcat02");
    }
    // tomcat02's health answers 503 (it still serves traffic, as a deploying Tomcat does): its
    // checks take it out after fall=2, and its session goes to tomcat01 without ever trying
    // tomcat02 again.
    b.set_health(503);
    wait_state(&nginx, "tomcat02", "down", 5);
    assert_eq!(check_state(&nginx, "tomcat02").1, "status 503");
    let served = b.requests();
    for i in 0..20 {
        let r = get_with_cookie(&nginx, "AB.tomcat02");
        assert_eq!((r.status, r.backend()), (200, "tomcat01"), "request {i}: {r:?}");
    }
    assert_eq!(b.requests(), served, "a server out by its checks gets no request");
    let s = status_server(&nginx, "/status", "tomcat02");
    assert_eq!(s["state"], "unhealthy", "{s}");
    // New sessions avoid it too.
    for _ in 0..6 {
        assert_eq!(nginx.get("/").backend(), "tomcat01");
    }

    // Healthy again: after rise=2 passes it is back, and so is its session.
    b.set_health(200);
    wait_state(&nginx, "tomcat02", "up", 5);
    assert_eq!(get_with_cookie(&nginx, "AB.tomcat02").backend(), "tomcat02");
    let log = nginx.error_log();
    let down: Vec<&str> =
        log.lines().filter(|l| l.contains("check: server") && l.contains("is down")).collect();
    let up: Vec<&str> =
        log.lines().filter(|l| l.contains("(srun_id=tomcat02)") && l.contains("is up")).collect();
    assert_eq!(down.len(), 1, "one line per change:\n{log}");
    assert!(
        down[0].contains("[warn]")
            && down[0].contains("(srun_id=tomcat02)")
            && down[0].contains("status 503"),
        "{}",
        down[0]
    );
    assert_eq!(up.len(), 2, "up at the start and again:\n{log}");
    nginx.assert_no_crash();
}

#[test]
fn each_address_is_checked_once_per_interval_whatever_the_workers() {
    let a = Stub::start("tomcat01");
    let servers = [(format!("127.0.0.1:{}", a.port), "tomcat01")];
    let check = "        check interval=200 rise=1 fall=1 timeout=150 type=http;\n        check_http_send \"GET /health HTTP/1.0\\r\\n\\r\\n\";\n";
    let nginx = Nginx::start(4, &conf(&servers, check, ""));
    wait_state(&nginx, "tomcat01", "up", 5);
    let start = a.checks();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let n = a.checks() - start;
    let expected = t0.elapsed().as_millis() as usize / 200;
    eprintln!(
        "4 workers, interval=200: {n} checks in {:?} (one per interval: {expected})",
        t0.elapsed()
    );
    assert!(n + 3 >= expected && n <= expected + 3, "{n} checks in 3 s, expected about {expected}");

    // A worker killed: the others take its turns over at the next interval.
    let workers = nginx.workers();
    // SAFETY: a worker of our own nginx.
    unsafe { libc::kill(workers[0] as i32, libc::SIGKILL) };
    let start = a.checks();
    thread::sleep(Duration::from_secs(2));
    let n = a.checks() - start;
    assert!(n >= 7, "checks go on after a worker was killed: {n} in 2 s");
}

/// After a reload, the old workers (still serving a long request) check nothing: the rate
/// stays one check per interval.
#[test]
fn old_workers_stop_checking_after_a_reload() {
    let a = Stub::start("tomcat01");
    let hung = Hanging::start();
    let servers = [(format!("127.0.0.1:{}", a.port), "tomcat01")];
    let check = "        check interval=200 rise=1 fall=1 timeout=150 type=http;\n        check_http_send \"GET /health HTTP/1.0\\r\\n\\r\\n\";\n";
    let http = conf(&servers, check, "").replace(
        "        location = /status {",
        &format!(
            "        location /hang {{\n            proxy_pass http://{};\n            proxy_read_timeout 8s;\n        }}\n        location = /status {{",
            hung.addr()
        ),
    );
    let nginx = Nginx::start(2, &http);
    wait_state(&nginx, "tomcat01", "up", 5);
    let old = nginx.workers();
    // A request that holds an old worker through the reload.
    let port = nginx.port;
    let held = thread::spawn(move || request(port, "/hang", &[]).status);
    thread::sleep(Duration::from_millis(300));
    nginx.reload_with(
        &http.replace("access_log off;", "access_log off;\n    server_tokens off;"),
        2,
    );
    assert!(
        eventually(10, || nginx.workers().iter().filter(|p| !old.contains(p)).count() == 2),
        "new workers"
    );
    let start = a.checks();
    thread::sleep(Duration::from_secs(2));
    let n = a.checks() - start;
    let still = nginx.workers().iter().filter(|p| old.contains(p)).count();
    assert!(still >= 1, "an old worker still serves the held request");
    assert!((7..=13).contains(&n), "{n} checks in 2 s with old workers still running");
    assert_eq!(held.join().unwrap_or(0), 504);
    nginx.assert_no_crash();
}

#[test]
fn a_hung_server_is_out_after_its_timeouts_and_no_request_waits_for_it() {
    let a = Stub::start("tomcat01");
    let hung = Hanging::start();
    let servers = [(format!("127.0.0.1:{}", a.port), "tomcat01"), (hung.addr(), "tomcat02")];
    let extra = "            proxy_read_timeout 2s;";
    // Without checks: a session pinned to the hung server waits proxy_read_timeout.
    let nginx = Nginx::start(1, &conf(&servers, "", extra));
    let t = Instant::now();
    let r = get_with_cookie(&nginx, "X.tomcat02");
    let waited_without = t.elapsed();
    drop(nginx);
    // With checks (timeout=250, fall=2): out after about two intervals; then no request waits.
    let check = "        check interval=300 rise=1 fall=2 timeout=250 type=http default_down=false;\n        check_http_send \"GET /health HTTP/1.0\\r\\n\\r\\n\";\n";
    let nginx = Nginx::start(2, &conf(&servers, check, extra));
    wait_state(&nginx, "tomcat02", "down", 5);
    assert_eq!(check_state(&nginx, "tomcat02").1, "timed out");
    let mut waited = 0;
    for i in 0..20 {
        let t = Instant::now();
        let r = get_with_cookie(&nginx, &format!("S{i}.tomcat02"));
        assert_eq!((r.status, r.backend()), (200, "tomcat01"), "{r:?}");
        if t.elapsed() > Duration::from_millis(500) {
            waited += 1;
        }
    }
    eprintln!(
        "hung server: without checks a pinned request waited {:.1} s ({}); with checks, {waited} of 20 waited",
        waited_without.as_secs_f64(),
        r.status
    );
    assert!(
        waited_without >= Duration::from_secs(2),
        "without checks it waits: {waited_without:?}"
    );
    assert_eq!(waited, 0, "no request waits for a server its checks took out");
    nginx.assert_no_crash();
}

#[test]
fn stopped_server_tcp_and_ssl_hello_checks() {
    // type=tcp: a stopped server is refused, and out.
    let a = Stub::start("tomcat01");
    let b = Stub::start("tomcat02");
    let b_port = b.port;
    let servers = [
        (format!("127.0.0.1:{}", a.port), "tomcat01"),
        (format!("127.0.0.1:{b_port}"), "tomcat02"),
    ];
    let check = "        check interval=300 rise=1 fall=1 timeout=250 type=tcp;\n";
    let nginx = Nginx::start(1, &conf(&servers, check, ""));
    wait_state(&nginx, "tomcat02", "up", 5);
    drop(b);
    wait_state(&nginx, "tomcat02", "down", 5);
    assert_eq!(check_state(&nginx, "tomcat02").1, "connection refused");
    // Back on the same port: up again.
    let _b = Stub::start_on("tomcat02", b_port);
    wait_state(&nginx, "tomcat02", "up", 5);
    drop(nginx);

    // type=ssl_hello: a TLS server (openssl s_server) passes, a plain HTTP one fails.
    let dir = TempDir::new("tls");
    let (key, cert) = certificate(&dir);
    let (mut server, tls_port) = tls_server(&key, &cert);
    // An HTTP server (nginx) answers the ClientHello with a 400 page.
    let plain = Backend::start("plain01");
    let servers = [(format!("127.0.0.1:{tls_port}"), "tls01"), (plain.addr(), "plain01")];
    let check = "        check interval=300 rise=1 fall=1 timeout=250 type=ssl_hello;\n";
    let nginx = Nginx::start(1, &conf(&servers, check, ""));
    wait_state(&nginx, "tls01", "up", 5);
    assert!(
        eventually(5, || check_state(&nginx, "plain01")
            == ("down".into(), "invalid answer".into())),
        "{:?}",
        check_state(&nginx, "plain01")
    );
    let _ = server.kill();
    let _ = server.wait();
    nginx.assert_no_crash();
}

/// Sockets in TIME_WAIT on 127.0.0.1 with `port` at either end (IPv4, from /proc/net/tcp).
fn time_wait_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port_of =
        |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3
                && f[3] == "06"
                && (port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port))
        })
        .count()
}

/// A check's connection ends with a reset, as HAProxy ends its checks: whether the server
/// closes first (an HTTP/1.0 answer) or the check does (`type=tcp`), neither side keeps a
/// socket in TIME_WAIT for it, where every check would otherwise leave one for a minute.
#[test]
fn checks_leave_no_socket_in_time_wait() {
    for (kind, send) in
        [("http", "        check_http_send \"GET / HTTP/1.0\\r\\n\\r\\n\";\n"), ("tcp", "")]
    {
        let backend = Backend::start("tomcat01");
        // The harness's own probe of the backend's port leaves one (once its close is done).
        thread::sleep(Duration::from_millis(300));
        let before = time_wait_sockets(backend.port);
        let servers = [(backend.addr(), "tomcat01")];
        let check =
            format!("        check interval=200 rise=1 fall=1 timeout=150 type={kind};\n{send}");
        let nginx = Nginx::start(1, &conf(&servers, &check, ""));
        wait_state(&nginx, "tomcat01", "up", 5);
        thread::sleep(Duration::from_millis(2500));
        let checks = status_server(&nginx, "/status", "tomcat01")["peers"][0]["check"]["checks"]
            .as_u64()
            .unwrap_or(0);
        let waiting = time_wait_sockets(backend.port).saturating_sub(before);
        eprintln!("type={kind}: {checks} checks, {waiting} sockets in TIME_WAIT");
        assert!(checks >= 8, "type={kind}: only {checks} checks in 2.5 s");
        assert_eq!(waiting, 0, "type={kind}: {checks} checks left {waiting} sockets in TIME_WAIT");
        nginx.assert_no_crash();
    }
}

/// A server that keeps its connections open (HTTP/1.1, `Content-Length`) and, like a server
/// whose keep-alive timeout passed, closes each one without a word after `close_after`
/// answers. Counts the connections it accepted and the requests it answered.
struct KeepAliveServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl KeepAliveServer {
    fn start(close_after: usize) -> KeepAliveServer {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (connections, requests) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, r, s) = (connections.clone(), requests.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let r = r.clone();
                thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    for _ in 0..close_after {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        head.clear();
                        r.fetch_add(1, Ordering::Relaxed);
                        let answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        KeepAliveServer { port, connections, requests, stop }
    }
}

impl Drop for KeepAliveServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `check_keepalive_requests`: a connection carries that many checks (when the answer says
/// where it ends and the server keeps it open); one the server closed meanwhile is replaced,
/// and no check fails for it.
#[test]
fn keepalive_checks_reuse_their_connection() {
    for (keepalive, close_after, per_connection) in [(4, 100, 4), (100, 3, 3), (1, 100, 1)] {
        let server = KeepAliveServer::start(close_after);
        let servers = [(format!("127.0.0.1:{}", server.port), "tomcat01")];
        let check = format!(
            "        check interval=200 rise=1 fall=1 timeout=150 type=http;\n        check_http_send \"GET /health HTTP/1.1\\r\\n\\r\\n\";\n        check_keepalive_requests {keepalive};\n"
        );
        let nginx = Nginx::start(1, &conf(&servers, &check, ""));
        wait_state(&nginx, "tomcat01", "up", 5);
        thread::sleep(Duration::from_millis(3000));
        let (requests, connections) =
            (server.requests.load(Ordering::Relaxed), server.connections.load(Ordering::Relaxed));
        let c = &status_server(&nginx, "/status", "tomcat01")["peers"][0]["check"];
        eprintln!(
            "check_keepalive_requests {keepalive}, server closes after {close_after}: {requests} \
             checks on {connections} connections; {c}"
        );
        assert!(requests >= 12, "{requests} checks in 3 s");
        let expected = requests.div_ceil(per_connection);
        assert!(
            connections >= expected && connections <= expected + 1,
            "{requests} checks on {connections} connections, expected {expected}"
        );
        assert_eq!(c["state"], "up", "{c}");
        // With fall=1 a single failed check would have taken the server out, and said so.
        let log = nginx.error_log();
        assert!(!log.contains("is down"), "{log}");
        if keepalive == 4 {
            // A reload: the old worker closes its kept connection and exits at once (within
            // the wait, not at the server's keep-alive timeout); the new one checks on.
            let http = conf(&servers, &check, "");
            nginx.reload_and_wait(
                &http.replace("access_log off;", "access_log off;\n    server_tokens off;"),
                1,
            );
            let before = server.requests.load(Ordering::Relaxed);
            assert!(
                eventually(5, || server.requests.load(Ordering::Relaxed) >= before + 3),
                "checks go on after the reload"
            );
            assert!(!nginx.error_log().contains("is down"), "{}", nginx.error_log());
        }
        nginx.assert_no_crash();
    }
}

#[test]
fn a_reload_keeps_the_checked_state() {
    let (a, b) = (Stub::start("tomcat01"), Stub::start("tomcat02"));
    let servers = [
        (format!("127.0.0.1:{}", a.port), "tomcat01"),
        (format!("127.0.0.1:{}", b.port), "tomcat02"),
    ];
    // A long interval: after the reload no check runs for a while, so what the status page
    // shows then is what the reload carried over.
    let check = "        check interval=3000 rise=1 fall=1 timeout=250 type=http;\n        check_http_send \"GET /health HTTP/1.0\\r\\n\\r\\n\";\n";
    let conf1 = conf(&servers, check, "");
    let nginx = Nginx::start(1, &conf1);
    wait_state(&nginx, "tomcat01", "up", 5);
    wait_state(&nginx, "tomcat02", "up", 5);
    // Requests all through the reload: none fails (default_down does not take the servers out
    // again: their state is carried).
    let stop = Arc::new(AtomicBool::new(false));
    let port = nginx.port;
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if request(port, "/", &[]).status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        })
    };
    let conf2 = conf1.replace("access_log off;", "access_log off;\n    server_tokens off;");
    nginx.reload_and_wait(&conf2, 1);
    assert_eq!(check_state(&nginx, "tomcat02").0, "up");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap_or(0);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{sent} requests through the reload");
    assert!(sent > 0);
    nginx.assert_no_crash();
}

#[test]
fn bad_check_configurations_fail_nginx_t() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "check type=http; check_ssl_verify on;",
            "check type=http",
            "\"check\" has check_ssl_* directives but not type=https",
        ),
        (
            "check type=https; check_ssl_verify on;",
            "check type=https",
            "\"check\" check_ssl_verify on needs check_ssl_trusted_certificate",
        ),
        ("check interval=50;", "check interval=50;", "invalid value \"50\" of \"interval\" in \"check\" directive: milliseconds, 100 or more"),
        ("check type=mysql;", "check type=mysql;", "invalid type \"mysql\" in \"check\" directive"),
        ("check fall=0;", "check fall=0;", "invalid value \"0\" of \"fall\""),
        ("check_http_expect_alive http_200;", "check_http_expect_alive", "invalid value \"http_200\" in \"check_http_expect_alive\""),
        ("check_keepalive_requests 0;", "check_keepalive_requests", "invalid value \"0\" in \"check_keepalive_requests\""),
        ("check; check_keepalive_requests 2; check_keepalive_requests 3;", "check_keepalive_requests", "\"check_keepalive_requests\" directive is duplicate"),
        ("check_http_send \"GET / HTTP/1.0\\r\\n\\r\\n\";", "check_http_send", "\"check_http_send\" needs \"check\" in the same upstream"),
    ];
    for (line, needle, message) in cases {
        let http = format!(
            "http {{\n    upstream tomcats {{\n        server 127.0.0.1:1 srun_id=a;\n        jvm_route $cookie_JSESSIONID reverse;\n        {line}\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{ proxy_pass http://tomcats; }}\n    }}\n}}\n"
        );
        let (out, path, _dir) = nginx_test_config(&http);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}: nginx -t passed");
        let at = format!("{}:{}", path.display(), line_of(&http, needle));
        assert!(
            stderr.contains("[emerg]") && stderr.contains(message) && stderr.contains(&at),
            "{line}: {stderr} (want {message} in {at})"
        );
    }
    // check without jvm_route in the upstream.
    let http = "http {\n    upstream plain {\n        server 127.0.0.1:1;\n        check interval=1000;\n    }\n    server {\n        listen 127.0.0.1:{port};\n        location / { proxy_pass http://plain; }\n    }\n}\n";
    let (out, path, _dir) = nginx_test_config(http);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:{}", path.display(), line_of(http, "check interval"));
    assert!(
        stderr.contains("\"check\" needs \"jvm_route\" in the same upstream")
            && stderr.contains(&at),
        "{stderr}"
    );
    // A configuration written for nginx_upstream_check_module loads unchanged.
    let http = "http {\n    check_shm_size 1m;\n    upstream tomcats {\n        server 127.0.0.1:1 srun_id=a;\n        jvm_route $cookie_JSESSIONID reverse;\n        check interval=3000 rise=2 fall=5 timeout=1000 default_down=true type=http port=0;\n        check_http_send \"HEAD / HTTP/1.0\\r\\n\\r\\n\";\n        check_http_expect_alive http_2xx http_3xx;\n        check_keepalive_requests 1;\n    }\n    server {\n        listen 127.0.0.1:{port};\n        location / { proxy_pass http://tomcats; }\n        location /status { check_status; }\n        location /status.csv { check_status csv; }\n    }\n}\n";
    let (out, _path, _dir) = nginx_test_config(http);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `type=https` against a real TLS server (`openssl s_server -www`, which answers HTTP over
/// TLS): without verification, with a verified certificate and name, and with a name the
/// certificate does not have.
#[test]
fn https_checks_verify_the_certificate_when_asked() {
    let dir = TempDir::new("https");
    let (key, cert) = certificate(&dir);
    let (mut server, tls_port) = tls_server(&key, &cert);
    let upstream = |name: &str, lines: &str| {
        format!(
            "    upstream {name} {{\n        server 127.0.0.1:{tls_port} srun_id={name};\n        jvm_route $cookie_JSESSIONID reverse;\n        check interval=300 rise=1 fall=1 timeout=500 type=https;\n        check_http_send \"GET / HTTP/1.0\\r\\n\\r\\n\";\n{lines}    }}\n"
        )
    };
    let trusted = format!("        check_ssl_trusted_certificate {};\n", cert.display());
    let http = format!(
        "http {{\n    access_log off;\n{}{}{}    server {{\n        listen 127.0.0.1:{{port}};\n        location = /status {{\n            check_status json;\n        }}\n    }}\n}}\n",
        upstream("plain", ""),
        upstream("verified", &format!("        check_ssl_verify on;\n{trusted}        check_ssl_name tomcat.test;\n")),
        upstream("wrongname", &format!("        check_ssl_verify on;\n{trusted}        check_ssl_name other.test;\n")),
    );
    let nginx = Nginx::start(1, &http);
    let state = |u: usize| {
        let v: serde_json::Value =
            serde_json::from_str(&nginx.get("/status").body).unwrap_or_default();
        let c = &v["upstreams"][u]["servers"][0]["peers"][0]["check"];
        (
            c["state"].as_str().unwrap_or("").to_owned(),
            c["last_error"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert!(eventually(10, || state(0) == ("up".into(), "-".into())), "plain: {:?}", state(0));
    assert!(eventually(10, || state(1) == ("up".into(), "-".into())), "verified: {:?}", state(1));
    assert!(
        eventually(10, || state(2) == ("down".into(), "certificate not verified".into())),
        "wrong name: {:?}",
        state(2)
    );
    let _ = server.kill();
    let _ = server.wait();
    // The server gone: the handshake cannot even start.
    assert!(
        eventually(10, || state(0) == ("down".into(), "connection refused".into())),
        "{:?}",
        state(0)
    );
    nginx.assert_no_crash();
}
