//! Test harness: the nginx built with the bindings, this module loaded into it, backends that
//! behave like Tomcat (each a small nginx process of its own), and a tiny HTTP client.
//!
//! Each nginx gets its own temporary prefix with `logs/`; everything listens on 127.0.0.1 on
//! ports the kernel hands out. Processes are stopped when their handle is dropped.

#![allow(dead_code)]

pub mod jetty;
pub mod tomcat;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The nginx binary: `TEST_NGINX_BINARY`, else the one built with the bindings.
pub fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_NGINX_BINARY") {
        return PathBuf::from(path);
    }
    match option_env!("JVM_ROUTE_NGINX_BINARY") {
        Some(path) => PathBuf::from(path),
        None => panic!("no nginx binary known: set TEST_NGINX_BINARY"),
    }
}

/// The module: `TEST_JVM_ROUTE_MODULE`, else the one cargo built beside this test binary.
pub fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_JVM_ROUTE_MODULE") {
        return PathBuf::from(path);
    }
    // cargo rebuilds the cdylib beside the test binaries (target/<profile>/deps) whenever it
    // builds the tests; the copy one level up is refreshed only by `cargo build`.
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let name = "libngx_http_upstream_jvm_route_module.so";
    [deps.join(name), deps.parent().expect("profile dir").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .expect("the module was not built")
}

/// Whether the tests run as root (nginx's workers must then stay root to read the temp dirs).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port that was free a moment ago, and that no other test process of this user is handed
/// while this one runs: the kernel may give a port that one test has just probed (and not yet
/// let its nginx bind) to another test running at once, so each port handed out is claimed
/// with a lock on a file named after it, held until the test process exits.
pub fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    static CLAIMED: std::sync::Mutex<Vec<fs::File>> = std::sync::Mutex::new(Vec::new());
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("jvm-route-test-ports-{uid}"));
    fs::create_dir_all(&dir).expect("create the directory of claimed ports");
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("open a port's claim file");
        // SAFETY: flock on a descriptor this function owns; LOCK_NB does not wait.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port that another test has not claimed");
}

/// A fresh temporary directory with `logs/`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("jvm-route-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs")).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TEST_KEEP_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn wait_for_port(port: u16, up: bool) {
    wait_for(("127.0.0.1", port), up)
}

fn wait_for(addr: (&str, u16), up: bool) {
    let port = addr.1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() == up {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} did not come {}", if up { "up" } else { "down" });
}

/// A backend that behaves like a Tomcat with `jvmRoute` = `route`: a request without a session
/// of its own gets `Set-Cookie: JSESSIONID=<32 hex>.<route>`; every reply names the route in its
/// body (`<route> <uri> connection_requests=<n>`) and in `X-Backend`. `/slow` answers slowly (about 3 s) to hold a
/// connection open.
pub struct Backend {
    pub route: String,
    /// The loopback address it listens on (127.0.0.1 unless started with `start_at`).
    pub ip: String,
    pub port: u16,
    /// Whether it starts sessions (`Set-Cookie: JSESSIONID`) like Tomcat; a plain application
    /// does not.
    sets_session: bool,
    dir: TempDir,
    child: Option<Child>,
}

impl Backend {
    pub fn start(route: &str) -> Backend {
        Backend::start_at(route, "127.0.0.1", free_port())
    }

    /// A plain application that sets no cookie at all (for the route cookie nginx sets).
    pub fn start_plain(route: &str) -> Backend {
        let mut backend = Backend {
            route: route.to_owned(),
            ip: "127.0.0.1".to_owned(),
            port: free_port(),
            sets_session: false,
            dir: TempDir::new(route),
            child: None,
        };
        backend.restart();
        backend
    }

    /// A backend on another loopback address (127.0.0.0/8), e.g. one that DNS names.
    pub fn start_at(route: &str, ip: &str, port: u16) -> Backend {
        let mut backend = Backend {
            route: route.to_owned(),
            ip: ip.to_owned(),
            port,
            sets_session: true,
            dir: TempDir::new(route),
            child: None,
        };
        backend.restart();
        backend
    }

    /// Starts the process again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "backend {} already running", self.route);
        let dir = self.dir.path();
        fs::write(dir.join("slow"), vec![b'x'; 6000]).expect("write slow file");
        let conf = format!(
            r#"daemon off;
master_process off;
error_log logs/error.log;
pid logs/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    large_client_header_buffers 8 64k;
    server {{
        listen {ip}:{port};
        location /slow {{
            alias {dir}/slow;
            limit_rate 2k;
            add_header X-Backend {route} always;
        }}
        location / {{
{session}            add_header X-Backend {route} always;
            return 200 "{route} $request_uri connection_requests=$connection_requests\n";
        }}
    }}
}}
"#,
            ip = self.ip,
            port = self.port,
            route = self.route,
            session = if self.sets_session {
                format!(
                    "            if ($cookie_jsessionid !~ \"\\.{route}$\") {{\n                add_header Set-Cookie \"JSESSIONID=$request_id.{route}; Path=/\" always;\n            }}\n",
                    route = self.route
                )
            } else {
                String::new()
            },
            dir = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf).expect("write backend conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backend nginx");
        self.child = Some(child);
        wait_for((&self.ip, self.port), true);
    }

    /// Kills the process (SIGKILL, like a crash) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            wait_for((&self.ip, self.port), false);
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts one backend per route.
pub fn backends(routes: &[&str]) -> Vec<Backend> {
    routes.iter().map(|r| Backend::start(r)).collect()
}

/// nginx with this module loaded, as the proxy under test.
pub struct Nginx {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// The top of every proxy configuration: the module, a foreground master, logs in the prefix.
pub fn main_preamble(workers: usize) -> String {
    format!(
        "load_module {module};\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         {user}\
         error_log logs/error.log info;\n\
         pid logs/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n",
        module = module_path().display(),
        user = if running_as_root() { "user root;\n" } else { "" },
    )
}

/// The whole configuration file: the preamble, then `http_conf` with `{port}` replaced. Leading
/// `load_module` lines of `http_conf` move up into the preamble, where nginx requires them.
pub fn compose(workers: usize, http_conf: &str, port: u16) -> String {
    let body = http_conf.replace("{port}", &port.to_string());
    let (loads, rest): (Vec<&str>, Vec<&str>) =
        body.lines().partition(|l| l.trim_start().starts_with("load_module "));
    let preamble = main_preamble(workers);
    let (first, others) = preamble.split_once('\n').unwrap_or((&preamble, ""));
    let mut conf = format!("{first}\n");
    for l in loads {
        conf.push_str(l.trim());
        conf.push('\n');
    }
    conf.push_str(others);
    conf.push_str(&rest.join("\n"));
    conf.push('\n');
    conf
}

impl Nginx {
    /// Writes `main_preamble(workers)` + `http_conf` (the whole `http {}` block, with `{port}`
    /// standing for the proxy's listen port), checks it with `nginx -t` and starts nginx.
    pub fn start(workers: usize, http_conf: &str) -> Nginx {
        // Another test process may take the port between `free_port` and nginx's bind: then
        // this nginx exits, and it is started again on another port.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("proxy");
            fs::write(dir.path().join("nginx.conf"), compose(workers, http_conf, port))
                .expect("write nginx.conf");
            let test = nginx_command(dir.path(), &["-t"]).output().expect("run nginx -t");
            assert!(
                test.status.success(),
                "nginx -t failed:\n{}",
                String::from_utf8_lossy(&test.stderr)
            );
            let mut child = nginx_command(dir.path(), &[])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            // nginx writes its pid file once its listening sockets are bound; a master that
            // could not bind exits instead.
            let pid_file = dir.path().join("logs/nginx.pid");
            let started =
                eventually(10, || pid_file.exists() || child.try_wait().ok().flatten().is_some());
            if started && child.try_wait().ok().flatten().is_none() {
                wait_for_port(port, true);
                return Nginx { port, dir, child: Some(child) };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = fs::read_to_string(dir.path().join("logs/error.log")).unwrap_or_default();
        }
        panic!("nginx did not start:\n{last_log}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites the configuration (same port) and sends SIGHUP.
    pub fn reload_with(&self, http_conf: &str, workers: usize) {
        fs::write(self.dir().join("nginx.conf"), compose(workers, http_conf, self.port))
            .expect("write nginx.conf");
        self.signal(libc::SIGHUP);
    }

    /// [`reload_with`](Self::reload_with), then waits until the master has read the new
    /// configuration, its `workers` new workers run, and every old worker has exited (so
    /// that no request reaches the old configuration any more).
    pub fn reload_and_wait(&self, http_conf: &str, workers: usize) {
        let old = self.workers();
        let reloads = || self.error_log().matches("reconfiguring").count();
        let before = reloads();
        self.reload_with(http_conf, workers);
        assert!(eventually(10, || reloads() > before), "no reload:\n{}", self.error_log());
        assert!(
            eventually(15, || {
                let now = self.workers();
                now.iter().all(|p| !old.contains(p)) && now.len() >= workers
            }),
            "the old workers {old:?} did not hand over: {:?}\n{}",
            self.workers(),
            self.error_log()
        );
    }

    /// The master's worker processes (from /proc).
    pub fn workers(&self) -> Vec<u32> {
        let master = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        workers_of(master)
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("nginx running").id() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, signal) };
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir().join("logs/error.log")).unwrap_or_default()
    }

    /// Fails the test if a worker crashed or nginx logged an alert.
    pub fn assert_no_crash(&self) {
        let log = self.error_log();
        for bad in ["exited on signal", "[alert]", "[crit]", "panicked"] {
            assert!(!log.contains(bad), "error log has {bad:?}:\n{log}");
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.port, path, headers)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn nginx_command(dir: &Path, extra: &[&str]) -> Command {
    nginx_command_with(&nginx_binary(), dir, &dir.join("nginx.conf"), extra)
}

fn nginx_command_with(binary: &Path, prefix: &Path, conf: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("-p").arg(prefix).arg("-c").arg(conf).arg("-e").arg("stderr").args(extra);
    cmd
}

/// `binary -t` on the configuration file `conf`, with `prefix` as nginx's prefix and errors
/// on stderr.
pub fn nginx_check(binary: &Path, prefix: &Path, conf: &Path) -> Output {
    nginx_command_with(binary, prefix, conf, &["-t"]).output().expect("run nginx -t")
}

/// Runs `nginx -t` on `preamble + http_conf` and returns its output (for configuration errors).
/// The configuration is written to `nginx.conf` in a fresh directory, whose path is returned.
pub fn nginx_test_config(http_conf: &str) -> (Output, PathBuf, TempDir) {
    let dir = TempDir::new("conftest");
    let path = dir.path().join("nginx.conf");
    fs::write(&path, compose(1, http_conf, free_port())).expect("write nginx.conf");
    let output = nginx_command(dir.path(), &["-t"]).output().expect("run nginx -t");
    (output, path, dir)
}

/// The line number (1-based) of the first line of the composed configuration that contains
/// `needle`.
pub fn line_of(http_conf: &str, needle: &str) -> usize {
    let conf = compose(1, http_conf, 0);
    conf.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in config")
}

/// An HTTP response, parsed just enough for the tests.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The route of the backend that answered (first word of the body).
    pub fn backend(&self) -> &str {
        self.body.split_whitespace().next().unwrap_or("")
    }

    /// The JSESSIONID value a backend set, if it set one.
    pub fn new_session(&self) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| v.strip_prefix("JSESSIONID="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
    }
}

/// Sends `GET path` with extra headers over a fresh connection and reads the whole response.
pub fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw_request(port, raw.as_bytes())
}

/// Opens a connection to nginx and sends `head` (a request's head, and perhaps part of its
/// body): for requests whose body follows later, or never. Reads time out after 20 s.
pub fn send_head(port: u16, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(head.as_bytes()).expect("send the request's head");
    stream
}

/// The next response head on `stream` (up to its blank line; an interim `100 Continue` is a
/// head of its own), or what came before the connection closed.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The JSON row of `srun_id` on `/status` (the first upstream), as `control_conf` serves it.
pub fn server_row(nginx: &Nginx, srun_id: &str) -> serde_json::Value {
    status_server(nginx, "/status", srun_id)
}

/// Sends raw bytes as a request and parses the response. A connection nginx closed without
/// any response is status 0.
pub fn raw_request(port: u16, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(raw).expect("send request");
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    parse_response(&data)
}

fn parse_response(data: &[u8]) -> Response {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}

/// A browser-like client: keeps the JSESSIONID cookie the backends set.
#[derive(Default, Clone)]
pub struct Client {
    pub session: Option<String>,
}

impl Client {
    pub fn get(&mut self, port: u16, path: &str) -> Response {
        let cookie = self.session.as_ref().map(|s| format!("JSESSIONID={s}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let response = request(port, path, &headers);
        if let Some(session) = response.new_session() {
            self.session = Some(session);
        }
        response
    }
}

/// Counts responses per backend route.
pub fn tally<'a>(responses: impl IntoIterator<Item = &'a Response>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in responses {
        *counts.entry(r.backend().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// An upstream block with one `server` line per backend, each tagged with its route, plus
/// `extra` lines (for `jvm_route`, `zone`, ...).
pub fn upstream(name: &str, backends: &[Backend], params: &[&str], extra: &str) -> String {
    let mut s = format!("    upstream {name} {{\n");
    for (i, b) in backends.iter().enumerate() {
        let p = params.get(i).copied().unwrap_or("");
        s.push_str(&format!("        server {} srun_id={} {p};\n", b.addr(), b.route));
    }
    s.push_str(extra);
    s.push_str("    }\n");
    s
}

/// A whole `http {}` block: `upstreams` plus a server on `{port}` proxying `/` to `tomcats`.
pub fn http_block(upstreams: &str, location_extra: &str) -> String {
    format!(
        "http {{\n    access_log off;\n{upstreams}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n{location_extra}\n        }}\n    }}\n}}\n"
    )
}

/// A complete example configuration from `nginx-conf/`, with its addresses pointed at the
/// test's backends (`127.0.0.1:8081`.. in order) and its listen port at `{port}`.
pub fn example_config(file: &str, backends: &[Backend]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf").join(file);
    let text = fs::read_to_string(&path).expect("read example config");
    // The tests supply their own preamble (module path, logs, user); they use the http block.
    let start = text.find("\nhttp {").expect("example has an http block") + 1;
    let mut conf = text[start..].to_owned();
    for (i, b) in backends.iter().enumerate() {
        conf = conf.replace(&format!("127.0.0.1:{}", 8081 + i), &b.addr());
    }
    conf.replace("listen 80;", "listen 127.0.0.1:{port};")
}

/// A server that accepts connections and never answers, until dropped: a hung backend.
pub struct Hanging {
    pub ip: String,
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Hanging {
    pub fn start_at(ip: &str, port: u16) -> Hanging {
        let listener = TcpListener::bind((ip, port)).expect("bind hanging server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Hanging { ip: ip.to_owned(), port, stop, thread: Some(thread) }
    }

    pub fn start() -> Hanging {
        Hanging::start_at("127.0.0.1", free_port())
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `check` holds, up to `seconds`; false if it never did.
pub fn eventually(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// The version of the nginx under test, as a number like 1028003.
pub fn nginx_version() -> u64 {
    let out = Command::new(nginx_binary()).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let v = text.rsplit('/').next().unwrap_or("").split_whitespace().next().unwrap_or("");
    let parts: Vec<u64> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [a, b, c] => a * 1_000_000 + b * 1_000 + c,
        _ => 0,
    }
}

/// An `http {}` block with the upstream `tomcats` (one server per backend, `params` on each,
/// `extra` lines before `jvm_route $cookie_JSESSIONID reverse;`), proxied at `/`, its status
/// page at `/status` and its control location at `/control`.
pub fn control_conf(tomcats: &[Backend], params: &[&str], extra: &str) -> String {
    format!(
        "http {{\n    access_log off;\n{}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n        location = /control {{\n            jvm_route_status tomcats control;\n        }}\n    }}\n}}\n",
        upstream("tomcats", tomcats, params, &format!("{extra}        jvm_route $cookie_JSESSIONID reverse;\n"))
    )
}

/// A control POST to `/control?QUERY`, as curl sends it.
pub fn control_post(nginx: &Nginx, query: &str) -> Response {
    let raw = format!(
        "POST /control?{query} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw_request(nginx.port, raw.as_bytes())
}

/// New sessions of `n` sessionless requests on tomcat01 and tomcat02.
pub fn spread_of_two(nginx: &Nginx, n: usize) -> (usize, usize) {
    let t = spread(nginx, n);
    (t.get("tomcat01").copied().unwrap_or(0), t.get("tomcat02").copied().unwrap_or(0))
}

/// The status page's JSON of the server with `srun_id` in the first upstream, from `path`.
pub fn status_server(nginx: &Nginx, path: &str, srun_id: &str) -> serde_json::Value {
    let r = nginx.get(&format!("{path}?format=json"));
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    v["upstreams"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["srun_id"] == srun_id)
        .cloned()
        .unwrap_or_else(|| panic!("no {srun_id} in {v}"))
}

/// `n` requests without a session, each answered 200, counted per backend.
pub fn spread(nginx: &Nginx, n: usize) -> HashMap<String, usize> {
    let responses: Vec<Response> = (0..n).map(|_| nginx.get("/")).collect();
    assert!(responses.iter().all(|r| r.status == 200), "{responses:?}");
    tally(&responses)
}

/// The child processes of `parent` (nginx's workers, of its master), from /proc.
pub fn workers_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces.
            fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Skips: only at a real boundary (a version or build of nginx that lacks what the test needs,
// or a part the run does not test), or for a part the developer asked to leave out
// (JVM_ROUTE_TEST_SKIP). A skip says so in the runner's own output, and the test binary ends
// with the list of its skips.

static SKIPS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static SKIP_LIST: std::sync::Once = std::sync::Once::new();

extern "C" fn print_skips() {
    let skips = SKIPS.lock().map(|s| s.clone()).unwrap_or_default();
    if skips.is_empty() {
        return;
    }
    let mut text = format!("skipped: {}, because:\n", skips.len());
    for line in &skips {
        text.push_str(&format!("  {line}\n"));
    }
    // Straight to the process's stderr: the test harness does not capture it.
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The test does not apply here, for `reason`: says so and the test returns (the caller
/// returns right after).
pub fn skip(reason: &str) {
    let name = thread::current().name().unwrap_or("?").to_owned();
    // In the test's own output (the version matrix's summary reads it from JUnit) ...
    eprintln!("skipped: {reason}");
    // ... and in the runner's, which does not capture a direct write to stderr.
    let _ = std::io::stderr().write_all(format!("SKIPPED {name}: {reason}\n").as_bytes());
    if let Ok(mut skips) = SKIPS.lock() {
        skips.push(format!("{name}: {reason}"));
    }
    // SAFETY: registers a plain function with the C library, once.
    SKIP_LIST.call_once(|| unsafe {
        libc::atexit(print_skips);
    });
}

/// Whether the developer asked to leave `part` out (`JVM_ROUTE_TEST_SKIP=browser,docker`).
pub fn skip_requested(part: &str) -> bool {
    std::env::var("JVM_ROUTE_TEST_SKIP")
        .is_ok_and(|v| v.split([',', ' ']).any(|p| p == part || p == "all-optional"))
}

/// `part` of the suite is missing here (`what` says how to get it): the test fails, unless
/// the developer asked to leave the part out, and then it is skipped. Returns only then.
#[track_caller]
pub fn missing(part: &str, what: &str) {
    if skip_requested(part) {
        skip(&format!("{part} left out (JVM_ROUTE_TEST_SKIP): {what}"));
        return;
    }
    panic!("{what}; to leave this part out, set JVM_ROUTE_TEST_SKIP={part}");
}
