//! nginx >= 1.29.6 has native `server ... route=` and `drain`. There, `route=` names the route
//! for `jvm_route` too (on older nginx it is nginx's own `invalid parameter` error). `drain` is
//! the module's own on every version: a draining server keeps its sessions, takes no new ones.

mod common;

use std::process::Command;

use common::*;

const JVM_ROUTE: &str = "        jvm_route $cookie_JSESSIONID reverse;\n";

/// The version of the nginx under test, as (major, minor, patch).
fn nginx_version() -> (u32, u32, u32) {
    let out = Command::new(nginx_binary()).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split("nginx/").nth(1).expect("version in nginx -v").trim();
    let mut parts = version.split(['.', ' ']).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn has_native_route() -> bool {
    nginx_version() >= (1, 29, 6)
}

fn servers_with(backends: &[Backend], params: &[&str]) -> String {
    let mut s = String::from("    upstream tomcats {\n");
    for (b, p) in backends.iter().zip(params) {
        s.push_str(&format!("        server {} {p};\n", b.addr()));
    }
    s.push_str(JVM_ROUTE);
    s.push_str("    }\n");
    s
}

#[test]
fn native_route_parameter_is_refused_before_1_29_6() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let conf = http_block(&servers_with(&tomcats, &["route=tomcat01", "route=tomcat02"]), "");
    if has_native_route() {
        skip("this nginx has `route=` (1.29.6 and later)");
        return;
    }
    {
        let (out, path, _dir) = nginx_test_config(&conf);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = line_of(&conf, "route=tomcat01");
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!(
                "invalid parameter \"route=tomcat01\" in {}:{line}",
                path.display()
            )),
            "{stderr}"
        );
    }
}

#[test]
fn native_route_parameter_names_the_route() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let conf = http_block(&servers_with(&tomcats, &["route=tomcat01", "route=tomcat02"]), "");
    if !has_native_route() {
        skip("nginx before 1.29.6 has no `route=`");
        return;
    }
    let nginx = Nginx::start(1, &conf);
    for t in &tomcats {
        let c = format!("JSESSIONID=ABCDEF.{}", t.route);
        for _ in 0..5 {
            assert_eq!(nginx.get_with("/", &[("Cookie", &c)]).backend(), t.route);
        }
    }
}

#[test]
fn native_drain_keeps_sessions_and_takes_no_new_ones() {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03"]);
    let params = ["srun_id=tomcat01 drain", "srun_id=tomcat02", "srun_id=tomcat03"];
    let conf = http_block(&servers_with(&tomcats, &params), "");
    // The module takes `drain` itself on every nginx version, not only where nginx has it.
    let nginx = Nginx::start(1, &conf);
    let c = "JSESSIONID=ABCDEF.tomcat01";
    for _ in 0..10 {
        assert_eq!(nginx.get_with("/", &[("Cookie", c)]).backend(), "tomcat01");
    }
    let counts = tally(&(0..20).map(|_| nginx.get("/")).collect::<Vec<_>>());
    assert_eq!(counts.get("tomcat01"), None, "{counts:?}");
    assert_eq!(counts.get("tomcat02"), Some(&10), "{counts:?}");
}
