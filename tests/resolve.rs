//! `resolve` servers (nginx >= 1.27.3) mixed with servers of fixed addresses, with a real DNS
//! server (dnsmasq) whose answers change while nginx runs: routing, drain, down/up by control,
//! counters and status rows follow the right server line through addresses added, replaced and
//! removed, and a name that stops resolving.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

const SESSION: &str = "JSESSIONID=0123456789ABCDEF0123456789ABCDEF.";

/// dnsmasq answering from a hosts file, on 127.0.0.1.
struct Dns {
    port: u16,
    hosts: std::path::PathBuf,
    child: Child,
    _dir: TempDir,
}

impl Dns {
    fn start(entries: &[(&str, &str)]) -> Dns {
        let dir = TempDir::new("dns");
        let hosts = dir.path().join("hosts");
        let port = free_port();
        let mut dns = Dns { port, hosts, child: Command::new("true").spawn().unwrap(), _dir: dir };
        dns.set(entries);
        dns.child = dnsmasq(port, &[format!("--addn-hosts={}", dns.hosts.display())]);
        dns
    }

    /// Replaces the answers (address, name) and tells dnsmasq to read them again.
    fn set(&self, entries: &[(&str, &str)]) {
        let text: String = entries.iter().map(|(ip, name)| format!("{ip} {name}\n")).collect();
        fs::write(&self.hosts, text).expect("write hosts");
        // SAFETY: signalling our own child (or a finished `true` before dnsmasq starts).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(nginx: &Nginx) -> Value {
    let r = nginx.get("/status?format=json");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).expect("status JSON")
}

fn row(status: &Value, srun_id: &str) -> Value {
    status["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["srun_id"] == srun_id)
        .cloned()
        .unwrap_or_else(|| panic!("no {srun_id} in {status}"))
}

fn addresses(status: &Value, srun_id: &str) -> Vec<String> {
    let r = row(status, srun_id);
    let mut list: Vec<String> = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

fn control(nginx: &Nginx, srun_id: &str, action: &str) -> Response {
    let raw = format!(
        "POST /control?upstream=tomcats&srun_id={srun_id}&action={action} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw_request(nginx.port, raw.as_bytes())
}

fn session(nginx: &Nginx, route: &str) -> Response {
    nginx.get_with("/", &[("Cookie", &format!("{SESSION}{route}"))])
}

/// Whether this nginx resolves upstream names at run time (1.27.3+); says so if not.
fn resolve_supported() -> bool {
    let version = nginx_version();
    if version < 1_027_003 {
        skip(&format!("nginx {version} has no `resolve` in the open-source upstream zone"));
    }
    version >= 1_027_003
}

#[test]
fn resolve_servers_keep_drain_control_and_counters_on_the_right_server() {
    if !resolve_supported() {
        return;
    }
    let port = free_port();
    let mut first = Backend::start_at("tomcat01", "127.0.0.1", port);
    let tomcat02 = Backend::start("tomcat02");
    let tomcat03 = Backend::start("tomcat03");
    let dns = Dns::start(&[("127.0.0.1", "a.test")]);
    let conf = format!(
        "http {{\n    access_log off;\n    resolver 127.0.0.1:{dns} valid=1s ipv6=off;\n    upstream tomcats {{\n        zone tomcats 64k;\n        server a.test:{port} resolve srun_id=tomcat01;\n        server {t2} srun_id=tomcat02 drain;\n        server {t3} srun_id=tomcat03;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n        location = /control {{\n            jvm_route_status tomcats control;\n        }}\n    }}\n}}\n",
        dns = dns.port,
        t2 = tomcat02.addr(),
        t3 = tomcat03.addr(),
    );
    let nginx = Nginx::start(2, &conf);
    let at = |ip: &str| format!("{ip}:{port}");
    assert!(
        eventually(15, || addresses(&status(&nginx), "tomcat01") == [at("127.0.0.1")]),
        "{}",
        status(&nginx)
    );

    // Drain of the server after the resolve server: no new sessions.
    let counts = spread(&nginx, 30);
    assert_eq!(counts.get("tomcat02"), None, "{counts:?}");
    assert!(counts.contains_key("tomcat01") && counts.contains_key("tomcat03"), "{counts:?}");
    for id in ["tomcat01", "tomcat02", "tomcat03"] {
        assert_eq!(session(&nginx, id).backend(), id);
    }
    let s = status(&nginx);
    assert_eq!(row(&s, "tomcat01")["state"], "up");
    assert_eq!(row(&s, "tomcat02")["state"], "draining");
    assert_eq!(row(&s, "tomcat03")["state"], "up");
    assert_eq!(row(&s, "tomcat02")["server"], tomcat02.addr());
    assert_eq!(row(&s, "tomcat01")["server"], format!("a.test:{port}"));

    // Control of the last server.
    assert_eq!(control(&nginx, "tomcat03", "down").status, 200);
    let counts = spread(&nginx, 10);
    assert_eq!(counts.get("tomcat01"), Some(&10), "{counts:?}");
    assert_eq!(session(&nginx, "tomcat03").backend(), "tomcat01");
    assert_eq!(row(&status(&nginx), "tomcat03")["state"], "down");
    assert_eq!(control(&nginx, "tomcat03", "up").status, 200);

    // The name moves to another address: the old one stops, the new one is tomcat01.
    let second = Backend::start_at("tomcat01", "127.0.0.2", port);
    dns.set(&[("127.0.0.2", "a.test")]);
    assert!(
        eventually(15, || addresses(&status(&nginx), "tomcat01") == [at("127.0.0.2")]),
        "{}",
        status(&nginx)
    );
    first.kill();
    let hits = row(&status(&nginx), "tomcat01")["hits"].as_u64().unwrap();
    for _ in 0..10 {
        let r = session(&nginx, "tomcat01");
        assert_eq!((r.status, r.backend()), (200, "tomcat01"), "{r:?}");
    }
    assert_eq!(row(&status(&nginx), "tomcat01")["hits"].as_u64().unwrap(), hits + 10);

    // A drain mark reaches the resolved peer, and one more address resolved later.
    assert_eq!(control(&nginx, "tomcat01", "drain").status, 200);
    let third = Backend::start_at("tomcat01", "127.0.0.3", port);
    dns.set(&[("127.0.0.2", "a.test"), ("127.0.0.3", "a.test")]);
    assert!(
        eventually(15, || addresses(&status(&nginx), "tomcat01")
            == [at("127.0.0.2"), at("127.0.0.3")]),
        "{}",
        status(&nginx)
    );
    let counts = spread(&nginx, 20);
    assert_eq!(counts.get("tomcat01"), None, "{counts:?}");
    assert_eq!(session(&nginx, "tomcat01").backend(), "tomcat01");
    assert_eq!(row(&status(&nginx), "tomcat01")["state"], "draining");
    assert_eq!(control(&nginx, "tomcat01", "undrain").status, 200);

    // The name stops resolving (NXDOMAIN): no addresses; its sessions fail over; then it comes
    // back.
    dns.set(&[]);
    assert!(
        eventually(15, || addresses(&status(&nginx), "tomcat01").is_empty()),
        "{}",
        status(&nginx)
    );
    assert_eq!(row(&status(&nginx), "tomcat01")["state"], "unresolved");
    let r = session(&nginx, "tomcat01");
    assert_eq!((r.status, r.backend()), (200, "tomcat03"), "{r:?}");
    dns.set(&[("127.0.0.3", "a.test")]);
    assert!(
        eventually(15, || addresses(&status(&nginx), "tomcat01") == [at("127.0.0.3")]),
        "{}",
        status(&nginx)
    );
    assert_eq!(session(&nginx, "tomcat01").backend(), "tomcat01");
    let s = status(&nginx);
    assert_eq!(row(&s, "tomcat02")["state"], "draining");
    assert_eq!(row(&s, "tomcat03")["state"], "up");
    drop((second, third));
    nginx.assert_no_crash();
}

/// The failover modes follow a `resolve` server too: with `failover=off` its sessions are
/// refused while its name does not resolve, and with `failover=consistent` each orphaned
/// session keeps to one server.
#[test]
fn failover_modes_follow_a_resolve_server() {
    if !resolve_supported() {
        return;
    }
    let port = free_port();
    let _first = Backend::start_at("tomcat01", "127.0.0.1", port);
    let others = backends(&["tomcat02", "tomcat03", "tomcat04"]);
    let dns = Dns::start(&[("127.0.0.1", "a.test")]);
    let conf = |mode: &str| {
        format!(
            "http {{\n    access_log off;\n    resolver 127.0.0.1:{dns} valid=1s ipv6=off;\n    upstream tomcats {{\n        zone tomcats 64k;\n        server {t2} srun_id=tomcat02;\n        server a.test:{port} resolve srun_id=tomcat01;\n        server {t3} srun_id=tomcat03;\n        server {t4} srun_id=tomcat04;\n        jvm_route $cookie_JSESSIONID reverse failover={mode};\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n    }}\n}}\n",
            dns = dns.port,
            t2 = others[0].addr(),
            t3 = others[1].addr(),
            t4 = others[2].addr(),
        )
    };
    let nginx = Nginx::start(2, &conf("off"));
    let resolved = || addresses(&status(&nginx), "tomcat01") == [format!("127.0.0.1:{port}")];
    assert!(eventually(15, resolved), "{}", status(&nginx));
    assert_eq!(session(&nginx, "tomcat01").backend(), "tomcat01");
    dns.set(&[]);
    assert!(eventually(15, || addresses(&status(&nginx), "tomcat01").is_empty()));
    for _ in 0..5 {
        assert_eq!(session(&nginx, "tomcat01").status, 503);
        assert_eq!(session(&nginx, "tomcat03").backend(), "tomcat03");
    }

    // Waited for: an old worker, still with failover=off, must not answer the checks below.
    nginx.reload_and_wait(&conf("consistent"), 2);
    assert!(eventually(15, || {
        let r = session(&nginx, "tomcat01");
        r.status == 200
    }));
    // Orphans of the unresolved server: each session id keeps to one server.
    for i in 0..20 {
        let cookie = format!("JSESSIONID={i:032X}.tomcat01");
        let seen: std::collections::HashSet<String> = (0..5)
            .map(|_| nginx.get_with("/", &[("Cookie", &cookie)]).backend().to_owned())
            .collect();
        assert_eq!(seen.len(), 1, "session {i} went to {seen:?}");
        assert!(!seen.contains("tomcat01"));
    }
    dns.set(&[("127.0.0.1", "a.test")]);
    assert!(eventually(15, resolved), "{}", status(&nginx));
    assert_eq!(session(&nginx, "tomcat01").backend(), "tomcat01");
    nginx.assert_no_crash();
}

/// dnsmasq on 127.0.0.1:`port` for the zone `test`, answering from `answers` (its options),
/// running once it accepts connections.
fn dnsmasq(port: u16, answers: &[String]) -> Child {
    let mut cmd = Command::new("dnsmasq");
    cmd.args(["-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--local=/test/"])
        .args(answers)
        .arg(format!("--port={port}"))
        .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--local-ttl=1", "--pid-file="]);
    if running_as_root() {
        cmd.arg("--user=root");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (Debian package dnsmasq-base)");
    assert!(eventually(10, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    child
}

/// dnsmasq answering SRV records `_http._tcp.app.test` with (target port, weight) pairs, each
/// target named `bN.test` at 127.0.0.1.
fn srv_dns(records: &[(u16, u16)]) -> (Child, u16) {
    let port = free_port();
    let answers: Vec<String> = records
        .iter()
        .enumerate()
        .flat_map(|(i, (target, weight))| {
            [
                format!("--host-record=b{i}.test,127.0.0.1"),
                format!("--srv-host=_http._tcp.app.test,b{i}.test,{target},0,{weight}"),
            ]
        })
        .collect();
    (dnsmasq(port, &answers), port)
}

/// `service=` takes its weights from the SRV records: with `jvm_route` the spread is the same
/// as without it, across many re-resolutions (`valid=1s`), and a failed peer stays failed for
/// `fail_timeout` (the module never writes a weight that nginx's resolver compares, so the
/// peers are never replaced).
#[test]
fn srv_weights_and_failure_memory_are_nginx_own() {
    if !resolve_supported() {
        return;
    }
    let heavy = Backend::start("heavy");
    let light = Backend::start("light");
    let port_of = |b: &Backend| b.addr().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (mut dns, dns_port) = srv_dns(&[(port_of(&heavy), 5), (port_of(&light), 1)]);
    let conf = |jvm_route: &str| {
        format!(
            "http {{\n    access_log off;\n    resolver 127.0.0.1:{dns_port} valid=1s ipv6=off;\n    upstream tomcats {{\n        zone tomcats 64k;\n        server app.test service=http resolve srun_id=a max_fails=1 fail_timeout=60s;\n{jvm_route}    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n    }}\n}}\n"
        )
    };
    let measure = |nginx: &Nginx| {
        // Until nginx has resolved the name, it has no peer and answers 502.
        assert!(
            eventually(15, || {
                let answers: Vec<Response> = (0..12).map(|_| nginx.get("/")).collect();
                let t = tally(answers.iter().filter(|r| r.status == 200));
                t.contains_key("heavy") && t.contains_key("light")
            }),
            "both SRV targets in use"
        );
        // Over three seconds, so that nginx re-resolves the name several times meanwhile.
        let mut counts = std::collections::HashMap::new();
        for _ in 0..6 {
            for (k, v) in spread(nginx, 12) {
                *counts.entry(k).or_insert(0) += v;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        (counts.get("heavy").copied().unwrap_or(0), counts.get("light").copied().unwrap_or(0))
    };
    let stock = Nginx::start(1, &conf(""));
    let (h0, l0) = measure(&stock);
    drop(stock);
    let nginx = Nginx::start(1, &conf("        jvm_route $cookie_JSESSIONID reverse;\n"));
    let (h, l) = measure(&nginx);
    assert!(h0 >= 50 && l0 <= 22, "stock nginx follows the SRV weights: {h0}:{l0}");
    assert!(h >= 50 && l <= 22, "the same with jvm_route: {h}:{l} (stock {h0}:{l0})");

    // Failure memory: the light target fails once and stays out for fail_timeout, however
    // often the name is resolved again.
    let mut light = light;
    light.kill();
    let failed = spread(&nginx, 12);
    assert_eq!(failed.get("light"), None, "{failed:?}");
    light.restart();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = spread(&nginx, 24);
    assert_eq!(later.get("light"), None, "still failed within fail_timeout: {later:?}");
    nginx.assert_no_crash();
    let _ = dns.kill();
    let _ = dns.wait();
}

/// Active checks of a `resolve` server follow its addresses: each address is checked on its
/// own, one that fails is out while the others of the line take its sessions, a new address is
/// checked as soon as it appears, and one that is gone leaves the status page.
#[test]
fn checks_follow_the_addresses_of_a_resolve_server() {
    if !resolve_supported() {
        return;
    }
    let port = free_port();
    let one = Backend::start_at("tomcat01", "127.0.0.1", port);
    let mut two = Backend::start_at("tomcat01", "127.0.0.2", port);
    let tomcat02 = Backend::start("tomcat02");
    let dns = Dns::start(&[("127.0.0.1", "a.test"), ("127.0.0.2", "a.test")]);
    let conf = format!(
        "http {{\n    access_log off;\n    resolver 127.0.0.1:{dns} valid=1s ipv6=off;\n    upstream tomcats {{\n        zone tomcats 64k;\n        server a.test:{port} resolve srun_id=tomcat01;\n        server {t2} srun_id=tomcat02;\n        jvm_route $cookie_JSESSIONID reverse;\n        check interval=300 rise=1 fall=1 timeout=250 type=tcp;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n    }}\n}}\n",
        dns = dns.port,
        t2 = tomcat02.addr(),
    );
    let nginx = Nginx::start(2, &conf);
    let at = |ip: &str| format!("{ip}:{port}");
    // Each address with its own check state.
    let checks = |nginx: &Nginx| -> Vec<(String, String)> {
        let s = status(nginx);
        row(&s, "tomcat01")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["address"].as_str().unwrap_or("").to_owned(),
                    p["check"]["state"].as_str().unwrap_or("-").to_owned(),
                )
            })
            .collect()
    };
    let both_up = vec![(at("127.0.0.1"), "up".to_owned()), (at("127.0.0.2"), "up".to_owned())];
    assert!(eventually(15, || checks(&nginx) == both_up), "{:?}", checks(&nginx));

    // One address stops: it alone is out; the line stays up and takes its sessions on the
    // other address.
    two.kill();
    let one_out = vec![(at("127.0.0.1"), "up".to_owned()), (at("127.0.0.2"), "down".to_owned())];
    assert!(eventually(10, || checks(&nginx) == one_out), "{:?}", checks(&nginx));
    assert_eq!(row(&status(&nginx), "tomcat01")["state"], "up");
    let refused_before = nginx.error_log().matches("connect() failed").count();
    for _ in 0..10 {
        let r = session(&nginx, "tomcat01");
        assert_eq!((r.status, r.backend()), (200, "tomcat01"), "{r:?}");
    }
    assert_eq!(
        nginx.error_log().matches("connect() failed").count(),
        refused_before,
        "the address out by its checks gets no request"
    );

    // The name moves to 127.0.0.3: checked as soon as nginx has it, and 127.0.0.2 is gone.
    let _three = Backend::start_at("tomcat01", "127.0.0.3", port);
    dns.set(&[("127.0.0.1", "a.test"), ("127.0.0.3", "a.test")]);
    let moved = vec![(at("127.0.0.1"), "up".to_owned()), (at("127.0.0.3"), "up".to_owned())];
    assert!(eventually(15, || checks(&nginx) == moved), "{:?}", checks(&nginx));
    drop(one);
    nginx.assert_no_crash();
}
