//! Real Tomcat instances for the tests (Debian's `tomcat10-user`, Tomcat 10.1, or
//! `tomcat11-user`): one installation (`/usr/share/tomcatN`), one `CATALINA_BASE` per instance in
//! a temporary directory, made by `tomcatN-instance-create`, serving the JSP of
//! `tests/tomcat/webapp`. `TEST_TOMCAT` names the package (`tomcat10` or `tomcat11`); without it,
//! the first of them that is installed. Without Tomcat the tests that use it fail and say what
//! to install.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::free_port;
use super::TempDir;

/// The Debian package name of the Tomcat under test: `tomcat10` or `tomcat11`.
pub fn tomcat_package() -> String {
    std::env::var("TEST_TOMCAT").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| {
        ["tomcat10", "tomcat11"]
            .into_iter()
            .find(|t| Path::new(&format!("/usr/share/{t}/bin/catalina.sh")).exists())
            .unwrap_or("tomcat10")
            .to_owned()
    })
}

fn catalina_home() -> String {
    format!("/usr/share/{}", tomcat_package())
}

fn instance_create() -> String {
    format!("/usr/bin/{}-instance-create", tomcat_package())
}

/// Fails the test (never skips it) when Tomcat is not installed.
pub fn require_tomcat() {
    let package = tomcat_package();
    for tool in [format!("{}/bin/catalina.sh", catalina_home()), instance_create()] {
        assert!(
            Path::new(&tool).exists(),
            "Tomcat ({package}) is not installed ({tool} is missing): these tests need a real \
             Tomcat; install it with `apt-get install --no-install-recommends {package}-user` \
             (as root, Debian 12 or later)"
        );
    }
}

/// The status code of `GET /` sent straight to a port, if anything answered.
pub fn http_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    let text = String::from_utf8_lossy(&data);
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `GET /` on `port` answers 200, failing if `child` exits or 60 s pass since
/// `spawned`; returns the time since `spawned`. `what` names the server and `log` its output,
/// for the failure message.
pub fn wait_http_ready(
    child: &mut Option<Child>,
    port: u16,
    spawned: Instant,
    what: &str,
    log: impl Fn() -> String,
) -> Duration {
    let deadline = spawned + Duration::from_secs(60);
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{what} exited ({status}) while starting:\n{}", log());
        }
        if http_status(port) == Some(200) {
            return spawned.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer 200 on 127.0.0.1:{port} within 60 s:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a server process: SIGTERM (a clean shutdown), SIGKILL after 5 s; then waits until
/// `port` is closed.
pub fn stop_process(mut child: Child, port: u16, what: &str) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        if Instant::now() > deadline {
            // Not a second panic while a failed test unwinds (that would abort).
            assert!(thread::panicking(), "port {port} of {what} stays open");
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last 8,000 bytes of a console log file, headed by its name.
pub fn log_tail(file: &Path) -> String {
    let log = fs::read_to_string(file).unwrap_or_default();
    let start = log.len().saturating_sub(8000);
    let start = (start..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(0);
    format!("--- {} ---\n{}", file.display(), &log[start..])
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Replaces the one occurrence of `from` in the file, failing if it is not there.
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in {}:\n{text}", file.display());
    fs::write(file, text.replace(from, to)).expect("write Tomcat configuration");
}

/// One Tomcat instance (`CATALINA_BASE`) whose `jvmRoute` is `node`, listening on
/// 127.0.0.1:`port`, with the test web application as `ROOT`. Stopped when dropped.
pub struct Tomcat {
    pub node: String,
    /// The `jvmRoute` it appends to session ids (empty: none, like a Tomcat set up without).
    pub jvm_route: String,
    /// More system properties for `CATALINA_OPTS`.
    pub options: String,
    pub port: u16,
    pub base: PathBuf,
    child: Option<Child>,
    spawned: Instant,
    // Last: the directory is removed after `drop` has stopped the process.
    _dir: TempDir,
}

impl Tomcat {
    /// Creates the instance; does not start it.
    pub fn create(node: &str) -> Tomcat {
        Tomcat::create_with(node, "nginx-conf/docker/server.xml")
    }

    /// Creates the instance with `server_xml` (relative to the project); does not start it.
    pub fn create_with(node: &str, server_xml: &str) -> Tomcat {
        let dir = TempDir::new(&format!("tomcat-{node}"));
        let base = dir.path().join("base");
        let port = free_port();
        let output = Command::new(instance_create())
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(free_port().to_string())
            .arg(&base)
            .stdin(Stdio::null())
            .output()
            .expect("run tomcatN-instance-create");
        assert!(
            output.status.success() && base.join("conf/server.xml").exists(),
            "{}-instance-create failed: {}{}",
            tomcat_package(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The compose example's server.xml: jvmRoute, port and address are system properties
        // (see `spawn`), so this also proves that file on a real Tomcat.
        let shared_server_xml = Path::new(env!("CARGO_MANIFEST_DIR")).join(server_xml);
        fs::copy(shared_server_xml, base.join("conf/server.xml")).expect("copy server.xml");
        // No session persistence across restarts (StandardManager's SESSIONS.ser): a restarted
        // Tomcat starts empty, as a crashed one would.
        edit(
            &base.join("conf/context.xml"),
            "<Context>",
            "<Context>\n    <Manager pathname=\"\" />",
        );
        let webapp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tomcat/webapp");
        copy_dir(&webapp, &base.join("webapps/ROOT"));
        Tomcat {
            node: node.to_owned(),
            jvm_route: node.to_owned(),
            options: String::new(),
            port,
            base,
            child: None,
            spawned: Instant::now(),
            _dir: dir,
        }
    }

    /// Starts `catalina.sh run` in the background.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.node);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("logs/console.log"))
            .expect("open Tomcat console log");
        let mut command = Command::new(format!("{}/bin/catalina.sh", catalina_home()));
        command
            .arg("run")
            .current_dir(&self.base)
            .env("CATALINA_HOME", catalina_home())
            .env("CATALINA_BASE", &self.base)
            .env(
                "CATALINA_OPTS",
                format!(
                    "-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -Dnode={node} \
                     -DjvmRoute={route} -Dhttp.port={port} -Dhttp.address=127.0.0.1 {options}",
                    node = self.node,
                    route = self.jvm_route,
                    port = self.port,
                    options = self.options
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The JVM (catalina.sh execs it) gets SIGKILL when
        // the test thread that started it ends, so a killed test run leaves no Tomcat behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("start catalina.sh"));
        self.spawned = Instant::now();
    }

    /// Waits until `GET /` answers 200 (the JSP is then compiled); returns the time since
    /// `spawn`.
    pub fn wait_ready(&mut self) -> Duration {
        let what = format!("Tomcat {}", self.node);
        let file = self.base.join("logs/console.log");
        wait_http_ready(&mut self.child, self.port, self.spawned, &what, || log_tail(&file))
    }

    pub fn start(&mut self) -> Duration {
        self.spawn();
        self.wait_ready()
    }

    /// SIGKILL, like a crash of the machine: no shutdown, no goodbye to the cluster.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the JVM (`SIGSTOP`: a hung Tomcat that accepts connections and
    /// answers nothing; `SIGCONT` to wake it).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM (Tomcat shuts down cleanly), SIGKILL after 5 s; then waits until the port is
    /// closed.
    pub fn stop(&mut self) {
        let Some(child) = self.child.take() else { return };
        if let Some(rss) = self.rss_mb(&child) {
            eprintln!("Tomcat {}: {rss} MB resident before stop", self.node);
        }
        stop_process(child, self.port, &self.node);
    }

    fn rss_mb(&self, child: &Child) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024)
    }

    /// The end of the instance's console log (`catalina.sh run`'s stdout and stderr).
    pub fn log(&self) -> String {
        log_tail(&self.base.join("logs/console.log"))
    }
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        self.stop();
    }
}
