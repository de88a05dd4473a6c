//! Route mismatch detection against stand-in backends (nginx answering like a Tomcat with a
//! `jvmRoute`): the session cookies a server issues are read as the server sent them, whatever
//! nginx does to the response afterwards (`proxy_hide_header`, `add_header`). The real-Tomcat
//! cases (a typo, no `jvmRoute`, two nodes with one) are in `route_mismatch.rs`.

mod common;

use common::*;

#[test]
fn the_cookies_are_read_as_the_server_sent_them() {
    // The first backend issues session ids ending in ".tomcat1"; nginx has srun_id=tomcat01.
    let a = Backend::start("tomcat1");
    let b = Backend::start("tomcat02");
    let upstream = format!(
        "    upstream tomcats {{\n        zone tomcats 64k;\n        server {} srun_id=tomcat01;\n        server {} srun_id=tomcat02;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n",
        a.addr(),
        b.addr()
    );
    // The client never sees the servers' cookies, only one nginx adds, which names tomcat01:
    // a filter reading the response's header lines would find nothing wrong.
    let location = "            proxy_hide_header Set-Cookie;\n            add_header Set-Cookie \"JSESSIONID=0000.tomcat01; Path=/\";\n        }\n        location = /status {\n            jvm_route_status;";
    let nginx = Nginx::start(1, &http_block(&upstream, location));
    let mut from_a = 0;
    for _ in 0..20 {
        let r = nginx.get("/");
        assert_eq!(r.status, 200, "{r:?}");
        let cookies: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["JSESSIONID=0000.tomcat01; Path=/"], "{r:?}");
        if r.body.starts_with("tomcat1 ") {
            from_a += 1;
        }
    }
    assert!(from_a > 0 && from_a < 20, "round robin over both: {from_a} of 20 from the first");
    let count = |srun_id: &str, field: &str| {
        status_server(&nginx, "/status", srun_id)[field].as_u64().unwrap_or(u64::MAX)
    };
    assert_eq!(count("tomcat01", "route_mismatch"), from_a);
    assert_eq!(count("tomcat01", "route_missing"), 0);
    assert_eq!(count("tomcat02", "route_mismatch"), 0);
    let log = nginx.error_log();
    let warned: Vec<&str> =
        log.lines().filter(|l| l.contains("[warn]") && l.contains("issues session ids")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("(srun_id=tomcat01)") && warned[0].contains("\"tomcat1\""), "{log}");
    nginx.assert_no_crash();
}
