//! Real Jetty instances for the tests (Debian's `jetty9`, Jetty 9.4): one installation
//! (`/usr/share/jetty9`), one `jetty.base` per instance in a temporary directory, serving the
//! same JSP as the Tomcat tests (`tests/tomcat/webapp`, compiled by Jetty's Apache JSP).
//!
//! Jetty tags its session ids with the session id manager's `workerName` the way Tomcat does
//! with `jvmRoute`: `JSESSIONID=<workerName><random>.<workerName>`, and `;jsessionid=` in URLs.
//! Without Jetty the tests that use it fail and say what to install.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tomcat::{copy_dir, log_tail, stop_process, wait_http_ready};
use super::{free_port, TempDir};

const JETTY_HOME: &str = "/usr/share/jetty9";

/// Fails the test (never skips it) when Jetty is not installed.
pub fn require_jetty() {
    let start = format!("{JETTY_HOME}/start.jar");
    assert!(
        Path::new(&start).exists(),
        "Jetty is not installed ({start} is missing): these tests need a real Jetty; install it \
         with `apt-get install --no-install-recommends jetty9` (as root, Debian 12 or later)"
    );
}

/// The installed Jetty's version, from its server jar's name (`9.4.57.v20241219`).
pub fn jetty_version() -> Option<String> {
    fs::read_dir(format!("{JETTY_HOME}/lib")).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        Some(name.strip_prefix("jetty-server-")?.strip_suffix(".jar")?.to_owned())
    })
}

/// One Jetty: `java -jar start.jar` with its own `jetty.base`.
pub struct Jetty {
    /// Its name (`-Dnode=`, printed by the JSP) and its session id manager's `workerName`.
    pub node: String,
    pub port: u16,
    base: PathBuf,
    child: Option<Child>,
    spawned: Instant,
    // Last: the directory is removed after `drop` has stopped the process.
    _dir: TempDir,
}

impl Jetty {
    /// Creates the instance; does not start it.
    pub fn create(node: &str) -> Jetty {
        require_jetty();
        let dir = TempDir::new(&format!("jetty-{node}"));
        let base = dir.path().join("base");
        let webapp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tomcat/webapp");
        copy_dir(&webapp, &base.join("webapps/ROOT"));
        Jetty {
            node: node.to_owned(),
            port: free_port(),
            base,
            child: None,
            spawned: Instant::now(),
            _dir: dir,
        }
    }

    /// Starts Jetty in the background with the modules `http`, `deploy`, `jsp` and `sessions`
    /// (the last one carries `workerName`).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.node);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("console.log"))
            .expect("open Jetty console log");
        let mut command = Command::new("java");
        command
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"])
            .arg(format!("-Dnode={}", self.node))
            .arg("-jar")
            .arg(format!("{JETTY_HOME}/start.jar"))
            .arg(format!("jetty.home={JETTY_HOME}"))
            .arg(format!("jetty.base={}", self.base.display()))
            .arg("--module=http,deploy,jsp,sessions")
            .arg(format!("jetty.http.port={}", self.port))
            .arg("jetty.http.host=127.0.0.1")
            .arg(format!("jetty.sessionIdManager.workerName={}", self.node))
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The JVM gets SIGKILL when the test thread that
        // started it ends, so a killed test run leaves no Jetty behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("start java (Jetty)"));
        self.spawned = Instant::now();
    }

    /// Waits until `GET /` answers 200 (the JSP is then compiled); returns the time since
    /// `spawn`.
    pub fn wait_ready(&mut self) -> Duration {
        let what = format!("Jetty {}", self.node);
        let file = self.base.join("console.log");
        wait_http_ready(&mut self.child, self.port, self.spawned, &what, || log_tail(&file))
    }

    /// SIGTERM (Jetty shuts down cleanly), SIGKILL after 5 s; then waits until the port is
    /// closed.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_process(child, self.port, &self.node);
        }
    }

    /// The end of the instance's console log.
    pub fn log(&self) -> String {
        log_tail(&self.base.join("console.log"))
    }
}

impl Drop for Jetty {
    fn drop(&mut self) {
        self.stop();
    }
}
