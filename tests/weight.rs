//! Runtime weight: `action=weight&value=N` on the control location applies to every worker at
//! once (with `zone`), shows on the status page, is kept across reloads while the configured
//! weight is unchanged, and is refused where it could not apply.

mod common;

use common::*;

#[test]
fn a_runtime_weight_applies_to_all_workers_and_survives_a_reload() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let zone = "        zone tomcats 64k;\n";
    let nginx = Nginx::start(2, &control_conf(&tomcats, &[], zone));
    let (a, b) = spread_of_two(&nginx, 40);
    assert!((18..=22).contains(&a) && a + b == 40, "{a}:{b}");

    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=3");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat01 in tomcats: weight 3\n"), "{r:?}");
    let s = server_row(&nginx, "tomcat01");
    assert_eq!((s["weight"].as_u64(), s["configured_weight"].as_u64()), (Some(3), Some(1)));
    let (a, b) = spread_of_two(&nginx, 40);
    assert!((28..=32).contains(&a) && a + b == 40, "{a}:{b}");
    let prometheus = nginx.get("/status?format=prometheus").body;
    assert!(
        prometheus.lines().any(|l| l
            .starts_with("jvm_route_server_weight{upstream=\"tomcats\",srun_id=\"tomcat01\"")
            && l.ends_with(" 3")),
        "{prometheus}"
    );

    // Bad values change nothing.
    for value in ["0", "1001", "x", "", "-1", "2.5"] {
        let r = control_post(
            &nginx,
            &format!("upstream=tomcats&srun_id=tomcat01&action=weight&value={value}"),
        );
        assert_eq!(r.status, 400, "{value}: {r:?}");
    }
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight").status, 400);
    assert_eq!(server_row(&nginx, "tomcat01")["weight"], 3);

    // A reload with the same servers keeps it; one that changes the configured weight drops it.
    nginx.reload_and_wait(&control_conf(&tomcats, &[], zone), 2);
    assert_eq!(server_row(&nginx, "tomcat01")["weight"], 3);
    nginx.reload_and_wait(&control_conf(&tomcats, &["weight=2"], zone), 2);
    assert_eq!(server_row(&nginx, "tomcat01")["configured_weight"], 2);
    assert_eq!(
        server_row(&nginx, "tomcat01")["weight"],
        2,
        "{}",
        nginx.get("/status?format=json").body
    );
    let (a, b) = spread_of_two(&nginx, 30);
    assert!((18..=22).contains(&a) && a + b == 30, "{a}:{b}");
    nginx.assert_no_crash();
}

#[test]
fn a_runtime_weight_is_refused_where_it_could_not_apply() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let query = "upstream=tomcats&srun_id=tomcat01&action=weight&value=5";
    // Without zone every worker has its own peers.
    let nginx = Nginx::start(1, &control_conf(&tomcats, &[], ""));
    let r = control_post(&nginx, query);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("zone"), "{}", r.body);
    drop(nginx);
    // Methods that read the weights only when the peers change.
    for method in ["random;", "hash $request_uri consistent;"] {
        let nginx = Nginx::start(
            1,
            &control_conf(&tomcats, &[], &format!("        zone tomcats 64k;\n        {method}\n")),
        );
        let r = control_post(&nginx, query);
        assert_eq!(r.status, 409, "{method}: {r:?}");
        assert_eq!(server_row(&nginx, "tomcat01")["weight"], 1);
    }
    // Methods that read them on every request take it: their traffic follows the new weight.
    for method in ["least_conn;", "hash $request_uri;", "ip_hash;"] {
        let nginx = Nginx::start(
            2,
            &control_conf(&tomcats, &[], &format!("        zone tomcats 64k;\n        {method}\n")),
        );
        let before = method_spread(&nginx, method, 120);
        assert_eq!(control_post(&nginx, query).status, 200, "{method}");
        assert_eq!(server_row(&nginx, "tomcat01")["weight"], 5);
        let after = method_spread(&nginx, method, 120);
        // 1:1, then 5:1 (100 of 120 expected; hashes are not exact, hence the margins).
        assert!((40..=80).contains(&before.0), "{method} before: {before:?}");
        assert!((85..=112).contains(&after.0), "{method} after weight 5: {after:?}");
        nginx.assert_no_crash();
    }
}

/// `n` sessionless requests as each method spreads them: one after another (least_conn then
/// goes by weight among idle servers), each with its own URI (hash), each from its own client
/// network (ip_hash hashes the first three bytes of the address: 127.k.j.1).
fn method_spread(nginx: &Nginx, method: &str, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for i in 0..n {
        let r = if method.starts_with("ip_hash") {
            let from = format!("127.{}.{}.1", 1 + i / 200, 1 + i % 200);
            let out = std::process::Command::new("curl")
                .args(["-s", "--interface", &from])
                .arg(format!("http://127.0.0.1:{}/", nginx.port))
                .output()
                .expect("curl (Debian package curl) sends from other loopback addresses");
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            nginx.get(&format!("/key-{i}")).body
        };
        match r.split_whitespace().next() {
            Some("tomcat01") => counts.0 += 1,
            Some("tomcat02") => counts.1 += 1,
            other => panic!("{method}: unexpected answer {other:?}"),
        }
    }
    counts
}
