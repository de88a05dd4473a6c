//! A short run through what every deployment does, meant for the module built with debug
//! assertions (`cargo build`, the dev profile): Rust's checks of unsafe preconditions (a null
//! pointer given to `slice::from_raw_parts`, for one) abort the process there, where a release
//! build goes on silently. `scripts/test` runs it with the debug build of the module and of the
//! bundled nginx; it runs in every other run too.
//!
//! `nginx -t`, start, sticky requests, a chunked control POST (its last buffer is empty), marks
//! that change the peers' `down` (the debug build checks the lists' `tries` each time), a
//! status page in every format, a reload under `zone`, and the configuration check again
//! while nginx runs; active health checks all along (passing ones on kept connections, a
//! refused one, one that times out).

mod common;

use common::*;

fn conf(tomcats: &[Backend], hung: &Hanging) -> String {
    let checked = format!(
        "    upstream checked {{\n        server 127.0.0.1:1 srun_id=refused;\n        server {} srun_id=hung;\n        jvm_route $cookie_JSESSIONID reverse;\n        check interval=200 rise=1 fall=1 timeout=100 type=http;\n    }}\n",
        hung.addr()
    );
    format!(
        "http {{\n    access_log off;\n    jvm_route_state logs/jvm-route.state;\n{}\n{checked}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n        }}\n        location /jvm-route/ {{\n            jvm_route_status control;\n        }}\n    }}\n}}\n",
        upstream(
            "tomcats",
            tomcats,
            &["", "drain"],
            "        zone tomcats 64k;\n        keepalive 4;\n        jvm_route $cookie_ROUTE|jsessionid reverse;\n        jvm_route_cookie ROUTE;\n        check interval=100 rise=1 fall=1 timeout=100 type=http default_down=false;\n        check_http_send \"GET / HTTP/1.1\\r\\n\\r\\n\";\n        check_keepalive_requests 5;\n"
        )
    )
}

#[test]
fn a_deployment_runs_through_without_a_failed_check() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let hung = Hanging::start();
    let http = conf(&tomcats, &hung);
    let (output, _path, _dir) = nginx_test_config(&http);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let nginx = Nginx::start(2, &http);
    let first = nginx.get("/");
    assert_eq!((first.status, first.backend()), (200, "tomcat01"), "{first:?}");
    for _ in 0..10 {
        let r = nginx.get_with("/", &[("Cookie", "ROUTE=.tomcat02")]);
        assert_eq!((r.status, r.backend()), (200, "tomcat02"), "a drained server's session");
    }

    let body = "upstream=tomcats&srun_id=tomcat02&action=undrain";
    let chunked = format!(
        "POST /jvm-route/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = raw_request(nginx.port, chunked.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    // Marks change the peers' `down`: the lists' `tries` must follow (the debug build checks
    // it every time marks are applied, and logs an [alert] if not).
    for action in ["down", "drain", "up", "undrain"] {
        let post = format!(
            "POST /jvm-route/?upstream=tomcats&srun_id=tomcat01&action={action} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw_request(nginx.port, post.as_bytes()).status, 200, "{action}");
        for _ in 0..4 {
            assert_eq!(nginx.get_with("/", &[("Cookie", "ROUTE=.tomcat02")]).status, 200);
        }
    }
    for format in ["text", "json", "prometheus", "html"] {
        let r = nginx.get(&format!("/jvm-route/?format={format}"));
        assert_eq!(r.status, 200, "{format}: {r:?}");
    }

    // The checks: the backends pass, the closed port is refused, the hung server times out.
    let checks_done = || {
        let body = nginx.get("/jvm-route/?format=json").body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let of = |u: usize, s: usize| v["upstreams"][u]["servers"][s]["peers"][0]["check"].clone();
        let errors: Vec<String> =
            (0..2).map(|s| of(1, s)["last_error"].as_str().unwrap_or("").to_owned()).collect();
        of(0, 0)["state"] == "up"
            && of(0, 1)["state"] == "up"
            && errors == ["connection refused", "timed out"]
    };
    assert!(eventually(10, checks_done), "{}", nginx.get("/jvm-route/?format=json").body);

    // The runtime marks were written to the state file (all cleared again by the last action).
    let state =
        std::fs::read_to_string(nginx.dir().join("logs/jvm-route.state")).unwrap_or_default();
    assert!(state.contains("jvm_route_state 1\n"), "{state}");

    nginx.reload_and_wait(&http, 2);
    let status = nginx.get("/jvm-route/?format=json").body;
    assert!(status.contains("\"state\":\"up\""), "{status}");
    let (output, _path, _dir) = nginx_test_config(&http);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    nginx.assert_no_crash();
}
