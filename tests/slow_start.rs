//! `slow_start=` on a server line: after the server is back in service (here: an operator's
//! `down`, then `up`) its weight grows from near zero to its full weight over that time, in
//! every worker at once; its sessions are not throttled; it does not apply at nginx's start; a
//! reload does not restart it; the methods that read weights only when their peers change
//! refuse it. The test writes the measured curve to `target/slow-start.tsv` and plots it in
//! `target/slow-start.svg` (the picture in `docs/`).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn conf(tomcats: &[Backend], slow_start: &str) -> String {
    let upstream = format!(
        "    upstream tomcats {{\n        zone tomcats 64k;\n        server {} srun_id=tomcat01;\n        server {} srun_id=tomcat02 {slow_start};\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n",
        tomcats[0].addr(),
        tomcats[1].addr()
    );
    format!(
        "http {{\n    access_log off;\n{upstream}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n        location = /control {{\n            jvm_route_status tomcats control;\n        }}\n    }}\n}}\n"
    )
}

/// The share of new sessions tomcat02 took per second since `start`, from requests sent
/// every 20 ms for `seconds`.
fn curve(nginx: &Nginx, seconds: u64) -> Vec<(u64, f64, usize)> {
    let start = Instant::now();
    let mut buckets: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        let second = start.elapsed().as_secs();
        let r = nginx.get("/");
        assert_eq!(r.status, 200, "{r:?}");
        let b = buckets.entry(second).or_default();
        b.1 += 1;
        if r.backend() == "tomcat02" {
            b.0 += 1;
        }
        // Its sessions are not throttled while it starts.
        let pinned = nginx.get_with("/", &[("Cookie", "JSESSIONID=AB.tomcat02")]);
        assert_eq!(pinned.backend(), "tomcat02", "a session of the starting server stays on it");
        thread::sleep(Duration::from_millis(20));
    }
    buckets.into_iter().map(|(s, (b, n))| (s, b as f64 / n as f64, n)).collect()
}

fn svg(points: &[(u64, f64, usize)], seconds: u64) -> String {
    let (w, h, pad) = (480.0, 240.0, 40.0);
    let x = |s: f64| pad + s / seconds as f64 * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / 0.5 * (h - 2.0 * pad);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n"
    );
    let _ = writeln!(out, "<text x=\"{pad}\" y=\"16\">tomcat02's share of new sessions after `up`, slow_start=10s (two servers, weight 1)</text>");
    for v in [0.0, 0.25, 0.5] {
        let _ = writeln!(
            out,
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y1}\" y2=\"{y1}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{}\">{:.0}%</text>",
            w - pad,
            y(v) + 4.0,
            v * 100.0,
            y1 = y(v),
        );
    }
    for s in (0..=seconds).step_by(2) {
        let _ =
            writeln!(out, "<text x=\"{}\" y=\"{}\">{s}s</text>", x(s as f64) - 6.0, h - pad + 16.0);
    }
    // The expected share: weight grows linearly, share = f / (1 + f).
    let expected: Vec<String> = (0..=100)
        .map(|i| {
            let t = i as f64 / 100.0 * seconds as f64;
            let f = (t / 10.0).clamp(0.01, 1.0);
            format!("{:.1},{:.1}", x(t), y(f / (1.0 + f)))
        })
        .collect();
    let _ = writeln!(
        out,
        "<polyline fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\" points=\"{}\"/>",
        expected.join(" ")
    );
    let measured: Vec<String> =
        points.iter().map(|(s, v, _)| format!("{:.1},{:.1}", x(*s as f64 + 0.5), y(*v))).collect();
    let _ = writeln!(
        out,
        "<polyline fill=\"none\" stroke=\"#1d4ed8\" stroke-width=\"2\" points=\"{}\"/>",
        measured.join(" ")
    );
    for (s, v, _) in points {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1d4ed8\"/>",
            x(*s as f64 + 0.5),
            y(*v)
        );
    }
    let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" fill=\"#1d4ed8\">measured (per second)</text><text x=\"{}\" y=\"{}\" fill=\"#777\">expected</text>", w - 170.0, pad, w - 170.0, pad + 14.0);
    out.push_str("</svg>\n");
    out
}

#[test]
fn a_server_back_in_service_takes_a_growing_share_of_new_sessions() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(2, &conf(&tomcats, "slow_start=10s"));

    // Not at nginx's start: both take their full share at once.
    let (a, b) = spread_of_two(&nginx, 40);
    assert!(a.abs_diff(b) <= 4, "at start: {a} and {b}");

    // Out and back in (an operator's down, then up): the slow start begins.
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=down").status, 200);
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=up").status, 200);
    let s = status_server(&nginx, "/status", "tomcat02");
    assert!(s["slow_start"]["left"].as_f64().is_some_and(|l| l > 9.0), "{s}");
    let points = curve(&nginx, 12);
    let mut tsv = String::from("second\tshare\trequests\n");
    for (s, v, n) in &points {
        let _ = writeln!(tsv, "{s}\t{v:.3}\t{n}");
    }
    eprintln!("tomcat02's share of new sessions per second after `up` (slow_start=10s):\n{tsv}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::write(target.join("slow-start.tsv"), &tsv);
    let _ = std::fs::write(target.join("slow-start.svg"), svg(&points, 12));

    // Roughly linear in weight: share = f / (1 + f) with f growing from 0 to 1 over 10 s.
    let share = |s: u64| points.iter().find(|p| p.0 == s).map_or(0.0, |p| p.1);
    assert!(share(0) < 0.15, "first second: {}", share(0));
    assert!((0.2..=0.45).contains(&share(5)), "sixth second: {}", share(5));
    assert!(share(11) > 0.4, "after the slow start: {}", share(11));
    for s in 0..9 {
        assert!(share(s + 2) + 0.12 >= share(s), "the share grows: {points:?}");
    }
    assert!(status_server(&nginx, "/status", "tomcat02")["slow_start"].is_null());
    nginx.assert_no_crash();
}

#[test]
fn a_reload_does_not_restart_a_slow_start() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let http = conf(&tomcats, "slow_start=20s");
    let nginx = Nginx::start(1, &http);
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=drain").status, 200);
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=undrain").status,
        200
    );
    thread::sleep(Duration::from_secs(2));
    nginx.reload_and_wait(
        &http.replace("access_log off;", "access_log off;\n    server_tokens off;"),
        1,
    );
    let left = status_server(&nginx, "/status", "tomcat02")["slow_start"]["left"].as_f64();
    assert!(left.is_some_and(|l| l < 18.5 && l > 10.0), "the slow start goes on: {left:?}");
    let text = nginx.get("/status?format=text").body;
    assert!(text.contains("slow_start"), "{text}");
    let prom = nginx.get("/status?format=prometheus").body;
    assert!(
        prom.contains(
            "jvm_route_server_slow_start_share{upstream=\"tomcats\",srun_id=\"tomcat01\""
        ),
        "{prom}"
    );
}

#[test]
fn methods_that_read_weights_once_refuse_slow_start() {
    for method in ["ip_hash", "hash $remote_addr", "random"] {
        let http = format!(
            "http {{\n    upstream tomcats {{\n        {method};\n        server 127.0.0.1:1 srun_id=a slow_start=30s;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{ proxy_pass http://tomcats; }}\n    }}\n}}\n"
        );
        let (out, path, _dir) = nginx_test_config(&http);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = method.split(' ').next().unwrap_or(method);
        let at = format!("{}:{}", path.display(), line_of(&http, "upstream tomcats"));
        assert!(
            !out.status.success()
                && stderr
                    .contains(&format!("\"slow_start\" cannot be used with the {name} method"))
                && stderr.contains(&at),
            "{method}: {stderr}"
        );
    }
    for bad in ["slow_start=0", "slow_start=2h", "slow_start=x"] {
        let http = format!(
            "http {{\n    upstream tomcats {{\n        server 127.0.0.1:1 srun_id=a {bad};\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{ proxy_pass http://tomcats; }}\n    }}\n}}\n"
        );
        let (out, _path, _dir) = nginx_test_config(&http);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid slow_start"), "{bad}: {stderr}");
    }
}

/// A slow start begins when active checks bring a server back, and when an attempt succeeds
/// after `max_fails` took it out for `fail_timeout`.
#[test]
fn checks_and_fail_timeout_start_it_too() {
    let mut tomcats = backends(&["tomcat01", "tomcat02"]);
    // Active checks.
    let checked = conf(&tomcats, "slow_start=30s")
        .replace("        jvm_route $cookie_JSESSIONID reverse;\n", "        jvm_route $cookie_JSESSIONID reverse;\n        check interval=200 rise=1 fall=1 timeout=150 type=tcp default_down=false;\n");
    let nginx = Nginx::start(1, &checked);
    let ramp = |nginx: &Nginx| status_server(nginx, "/status", "tomcat02")["slow_start"].clone();
    let check = |nginx: &Nginx| {
        status_server(nginx, "/status", "tomcat02")["peers"][0]["check"]["state"].clone()
    };
    assert!(eventually(5, || check(&nginx) == "up"));
    assert!(ramp(&nginx).is_null(), "not at start");
    tomcats[1].kill();
    assert!(eventually(5, || check(&nginx) == "down"));
    tomcats[1].restart();
    assert!(eventually(5, || check(&nginx) == "up"));
    assert!(ramp(&nginx)["left"].as_f64().is_some_and(|l| l > 25.0), "{}", ramp(&nginx));
    drop(nginx);

    // Passive: max_fails=1 fail_timeout=1s.
    let passive = conf(&tomcats, "slow_start=30s max_fails=1 fail_timeout=1s");
    let nginx = Nginx::start(1, &passive);
    tomcats[1].kill();
    // The session's request fails on tomcat02 (max_fails=1 takes it out) and is answered by
    // tomcat01 (proxy_next_upstream error, the default).
    let r = nginx.get_with("/", &[("Cookie", "JSESSIONID=AB.tomcat02")]);
    assert_eq!((r.status, r.backend()), (200, "tomcat01"), "{r:?}");
    tomcats[1].restart();
    assert!(ramp(&nginx).is_null(), "not before it is back");
    thread::sleep(Duration::from_millis(2100));
    let r = nginx.get_with("/", &[("Cookie", "JSESSIONID=AB.tomcat02")]);
    assert_eq!(r.backend(), "tomcat02", "{r:?}");
    assert!(ramp(&nginx)["left"].as_f64().is_some_and(|l| l > 25.0), "{}", ramp(&nginx));
    nginx.assert_no_crash();
}
