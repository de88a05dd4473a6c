//! The status page in a real browser (Debian's Chromium, headless, driven over WebDriver by
//! chromedriver): the rows are there and escaped, the page's own script runs under its
//! Content-Security-Policy, drain is a click and keeps new sessions away, a weight change moves
//! the spread. A screenshot is saved as `target/status-page.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session of headless Chromium.
struct Browser {
    port: u16,
    driver: Child,
    session: String,
    _profile: TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        let (driver, chromium) =
            (Path::new("/usr/bin/chromedriver"), Path::new("/usr/bin/chromium"));
        if !driver.exists() || !chromium.exists() {
            return None;
        }
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        assert!(eventually(20, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
        let profile = TempDir::new("chromium");
        let mut browser =
            Browser { port, driver: child, session: String::new(), _profile: profile };
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1600,820",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            // The console (CSP violations are reported there), read by `console`.
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let reply = browser.call("POST", "/session", Some(caps));
        browser.session = reply["value"]["sessionId"].as_str().expect("a session").to_owned();
        Some(browser)
    }

    /// One WebDriver command.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("chromedriver");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut data = Vec::new();
        let mut buf = [0u8; 65536];
        let (head_end, length) = loop {
            let n = stream.read(&mut buf).expect("chromedriver reply");
            assert!(n > 0, "chromedriver closed the connection");
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0usize);
                break (end + 4, length);
            }
        };
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).expect("chromedriver reply");
            assert!(n > 0, "chromedriver closed the connection");
            data.extend_from_slice(&buf[..n]);
        }
        let json = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {json}"))
    }

    fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{what}", self.session);
        let reply = self.call(method, &path, body);
        assert!(reply["value"].get("error").is_none(), "{method} {what}: {reply}");
        reply["value"].clone()
    }

    /// The browser console's messages since the last call.
    fn console(&self) -> Vec<String> {
        let log = self.command("POST", "/se/log", Some(json!({"type": "browser"})));
        log.as_array()
            .map(|entries| {
                entries.iter().map(|e| e["message"].as_str().unwrap_or("").to_owned()).collect()
            })
            .unwrap_or_default()
    }

    /// Fails on any Content-Security-Policy violation the console reported.
    fn assert_no_policy_violation(&self) {
        let console = self.console();
        let violations: Vec<&String> = console
            .iter()
            .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
            .collect();
        assert!(violations.is_empty(), "the page broke its own policy: {violations:#?}");
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let found =
            self.command("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_owned()).collect()
    }

    fn text(&self, css: &str) -> String {
        let element = self.find_all(css).into_iter().next().unwrap_or_else(|| panic!("no {css}"));
        self.command("GET", &format!("/element/{element}/text"), None).as_str().unwrap().to_owned()
    }

    fn click(&self, css: &str) {
        let element = self.find_all(css).into_iter().next().unwrap_or_else(|| panic!("no {css}"));
        self.command("POST", &format!("/element/{element}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find_all(css).into_iter().next().unwrap_or_else(|| panic!("no {css}"));
        self.command("POST", &format!("/element/{element}/clear"), Some(json!({})));
        self.command("POST", &format!("/element/{element}/value"), Some(json!({"text": text})));
    }

    fn screenshot(&self, to: &Path) {
        let png = self.command("GET", "/screenshot", None);
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(to, bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_status_page_in_a_browser_drains_and_weighs_by_click() {
    let Some(browser) = Browser::start() else {
        missing(
            "browser",
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; \
             the version matrix's images have them)",
        );
        return;
    };
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    // A third line names the second backend with a srun_id full of HTML's special characters.
    let conf = format!(
        "http {{\n    access_log off;\n    upstream tomcats {{\n        zone tomcats 64k;\n        server {} srun_id=tomcat01;\n        server {} srun_id=tomcat02;\n        server {} srun_id=<b>odd</b>&\"x' backup;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /admin {{\n            jvm_route_status control;\n        }}\n    }}\n}}\n",
        tomcats[0].addr(),
        tomcats[1].addr(),
        tomcats[1].addr(),
    );
    let nginx = Nginx::start(2, &conf);
    let page = format!("http://127.0.0.1:{}/admin", nginx.port);
    browser.open(&page);

    let rows = "section.upstream tbody tr";
    assert_eq!(browser.find_all(rows).len(), 3);
    assert_eq!(browser.text(&format!("{rows}:nth-child(1) td.name")), "tomcat01");
    assert_eq!(browser.text(&format!("{rows}:nth-child(3) td.name")), "<b>odd</b>&\"x'");
    assert!(browser.find_all("section.upstream tbody b").is_empty(), "a srun_id became markup");
    // The page's own script runs (the policy allows it): it draws the chart's legend.
    assert!(
        eventually(15, || !browser.find_all("#legend span").is_empty()),
        "the script did not run"
    );
    browser.assert_no_policy_violation();
    let state = |n: usize| browser.text(&format!("{rows}:nth-child({n}) [data-field='state']"));
    assert_eq!(state(1), "up");

    // Drain tomcat01 with a click: the row says so, and new sessions avoid it.
    browser.click(&format!("{rows}:nth-child(1) button[value='drain']"));
    assert!(
        eventually(15, || state(1) == "draining"),
        "state: {}, message: {}",
        state(1),
        browser.text("#message")
    );
    assert_eq!(browser.text("#message"), "tomcat01 in tomcats: draining");
    let counts = spread(&nginx, 20);
    assert_eq!(counts.get("tomcat01"), None, "{counts:?}");

    // Undrain it, then weigh tomcat02 three times tomcat01.
    browser.click(&format!("{rows}:nth-child(1) button[value='undrain']"));
    assert!(eventually(15, || state(1) == "up"), "state: {}", state(1));
    browser.type_into(&format!("{rows}:nth-child(2) input.weight"), "3");
    browser.click(&format!("{rows}:nth-child(2) form:nth-of-type(2) button"));
    let weight = || browser.text(&format!("{rows}:nth-child(2) [data-field='weight']"));
    assert!(eventually(15, || weight() == "3"), "weight: {}", weight());
    let counts = spread(&nginx, 40);
    let (a, b) = (
        counts.get("tomcat01").copied().unwrap_or(0),
        counts.get("tomcat02").copied().unwrap_or(0),
    );
    assert!((8..=12).contains(&a) && a + b == 40, "{counts:?}");

    // A fresh view with some sticky traffic for the chart, then the screenshot.
    browser.open(&page);
    let port = nginx.port;
    let traffic = std::thread::spawn(move || {
        for round in 0..40 {
            for route in ["tomcat01", "tomcat02", "tomcat02"] {
                let cookie = format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}");
                request(port, "/", &[("Cookie", cookie.as_str())]);
            }
            if round % 4 == 0 {
                request(port, "/", &[]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    traffic.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    browser.assert_no_policy_violation();
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    browser.screenshot(&shot);
    nginx.assert_no_crash();
}
