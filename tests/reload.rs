//! Reloads with old workers still running: the new cycle's counters, marks and traffic must be
//! right whatever the old workers do until they exit, when the reload adds an upstream with
//! `jvm_route` (every record of the shared zone moves) or removes one.

mod common;

use std::thread;

use common::*;
use serde_json::Value;

const SESSION: &str = "JSESSIONID=0123456789ABCDEF0123456789ABCDEF.";

fn conf(tomcats: &str, other: Option<&str>) -> String {
    let other = other.map_or(String::new(), |o| {
        format!(
            "    upstream other {{\n        zone other 64k;\n        server {o} srun_id=x1;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n"
        )
    });
    format!(
        "http {{\n    access_log off;\n{other}    upstream tomcats {{\n        zone tomcats 64k;\n{tomcats}        jvm_route $cookie_JSESSIONID reverse;\n    }}\n    server {{\n        listen 127.0.0.1:{{port}};\n        location / {{\n            proxy_pass http://tomcats;\n            proxy_next_upstream error timeout;\n            proxy_read_timeout 3s;\n        }}\n        location = /status {{\n            jvm_route_status;\n        }}\n    }}\n}}\n"
    )
}

fn status(nginx: &Nginx) -> Value {
    let r = nginx.get("/status?format=json");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).expect("status JSON")
}

fn upstream<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["upstreams"].as_array().unwrap().iter().find(|u| u["name"] == name).unwrap()
}

fn server<'a>(status: &'a Value, upstream_name: &str, srun_id: &str) -> &'a Value {
    upstream(status, upstream_name)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["srun_id"] == srun_id)
        .unwrap_or_else(|| panic!("no {srun_id} in {status}"))
}

/// Three requests of tomcat02's sessions wait on the hung tomcat02 across the reload to
/// `after`; when they time out, the old worker fails them over to tomcat01 and counts. Then
/// tomcat02 comes back as a real backend on the same port, and the new cycle is checked.
fn reload_under_hung_requests(before: &str, after: &str, other_after: bool) {
    let good = Backend::start("tomcat01");
    let hung = Hanging::start();
    let port = hung.port;
    let other = Backend::start("x1");
    let tomcats = format!(
        "        server {} srun_id=tomcat01;\n        server {} srun_id=tomcat02;\n",
        good.addr(),
        hung.addr()
    );
    let conf_of =
        |which: &str| conf(&tomcats, (which == "with other").then(|| other.addr()).as_deref());
    let nginx = Nginx::start(1, &conf_of(before));

    for _ in 0..5 {
        let r = nginx.get_with("/", &[("Cookie", &format!("{SESSION}tomcat01"))]);
        assert_eq!(r.backend(), "tomcat01");
    }
    let hits_before = server(&status(&nginx), "tomcats", "tomcat01")["hits"].as_u64().unwrap();
    assert_eq!(hits_before, 5);

    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let port = nginx.port;
            thread::spawn(move || request(port, "/", &[("Cookie", &format!("{SESSION}tomcat02"))]))
        })
        .collect();
    // The three requests are in flight on the (old) worker before the reload: its hung
    // server has them open.
    assert!(
        eventually(10, || server(&status(&nginx), "tomcats", "tomcat02")["active"] == 3),
        "{}",
        status(&nginx)
    );
    let old = nginx.workers();
    nginx.reload_with(&conf_of(after), 1);
    // The new cycle answers.
    assert!(eventually(10, || {
        let s = status(&nginx);
        s["upstreams"].as_array().unwrap().iter().any(|u| u["name"] == "other") == other_after
    }));
    for w in waiting {
        let r = w.join().unwrap();
        assert_eq!((r.status, r.backend()), (200, "tomcat01"), "{r:?}");
    }
    // The old worker has finished its requests (and counted them in its own zone) and exits.
    assert!(eventually(15, || nginx.workers().iter().all(|p| !old.contains(p))));
    drop(hung);
    let _tomcat02 = Backend::start_at("tomcat02", "127.0.0.1", port);

    let s1 = status(&nginx);
    for id in ["tomcat01", "tomcat02"] {
        assert_eq!(server(&s1, "tomcats", id)["state"], "up", "{s1}");
    }
    // Counters of unchanged servers are kept across the reload.
    assert!(server(&s1, "tomcats", "tomcat01")["hits"].as_u64().unwrap() >= hits_before, "{s1}");
    if other_after {
        assert_eq!(server(&s1, "other", "x1")["state"], "up", "{s1}");
    }

    let responses: Vec<Response> = (0..20).map(|_| nginx.get("/")).collect();
    assert!(responses.iter().all(|r| r.status == 200), "{responses:?}");
    let counts = tally(&responses);
    assert_eq!(
        counts.get("tomcat01").copied().unwrap_or(0) + counts.get("tomcat02").copied().unwrap_or(0),
        20
    );
    assert!(counts.get("tomcat02").copied().unwrap_or(0) >= 5, "{counts:?}");

    let s2 = status(&nginx);
    let total = |s: &Value, counter: &str| -> u64 {
        ["tomcat01", "tomcat02"]
            .iter()
            .map(|id| server(s, "tomcats", id)[counter].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(&s2, "requests") - total(&s1, "requests"), 20, "{s1}\n{s2}");
    assert_eq!(total(&s2, "failures"), total(&s1, "failures"), "{s1}\n{s2}");
    let without = |s: &Value| upstream(s, "tomcats")["requests_without_session"].as_u64().unwrap();
    assert_eq!(without(&s2) - without(&s1), 20);
    for id in ["tomcat01", "tomcat02"] {
        assert_eq!(server(&s2, "tomcats", id)["state"], "up", "{s2}");
    }
    nginx.assert_no_crash();
}

#[test]
fn a_reload_that_adds_an_upstream_keeps_the_new_cycle_right() {
    reload_under_hung_requests("without other", "with other", true);
}

#[test]
fn a_reload_that_removes_an_upstream_keeps_the_new_cycle_right() {
    reload_under_hung_requests("with other", "without other", false);
}
