//! The configuration's marks and the runtime marks are separate facts (the rule is in the
//! README, "Operations"): a reload applies configuration changes at once and keeps an
//! operator's marks on lines it leaves alone; a control action is never acknowledged and then
//! lost across a reload; a runtime weight can always be taken back; every row of the status
//! page says the same state.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

#[test]
fn drain_removed_from_the_configuration_ends_at_the_reload() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let zone = "        zone tomcats 64k;\n";
    let nginx = Nginx::start(2, &control_conf(&tomcats, &["drain"], zone));
    assert_eq!(server_row(&nginx, "tomcat01")["state"], "draining");
    assert_eq!(spread_of_two(&nginx, 10), (0, 10));

    nginx.reload_and_wait(&control_conf(&tomcats, &[], zone), 2);
    let s = server_row(&nginx, "tomcat01");
    assert_eq!(s["state"], "up", "{s}");
    let (a, b) = spread_of_two(&nginx, 20);
    assert!(a >= 8 && b >= 8, "new sessions go to both again: {a}:{b}");

    // And `drain` added by a reload is in force at once.
    nginx.reload_and_wait(&control_conf(&tomcats, &["", "drain"], zone), 2);
    assert_eq!(server_row(&nginx, "tomcat02")["state"], "draining");
    assert_eq!(spread_of_two(&nginx, 10), (10, 0));
    nginx.assert_no_crash();
}

#[test]
fn an_operators_undrain_outlives_a_reload_that_leaves_the_line_alone() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(2, &control_conf(&tomcats, &["drain"], ""));
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=undrain");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(server_row(&nginx, "tomcat01")["state"], "up");

    // A reload that changes another line keeps the operator's undrain.
    nginx.reload_and_wait(&control_conf(&tomcats, &["drain", "weight=1 max_fails=3"], ""), 2);
    assert_eq!(server_row(&nginx, "tomcat01")["state"], "up");
    let (a, b) = spread_of_two(&nginx, 20);
    assert!(a >= 8 && b >= 8, "{a}:{b}");

    // A runtime drain of a line the configuration does not drain survives a reload too, and
    // `undrain` takes it back.
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=drain").status, 200);
    nginx.reload_and_wait(&control_conf(&tomcats, &["drain", "weight=1 max_fails=3"], ""), 2);
    assert_eq!(server_row(&nginx, "tomcat02")["state"], "draining");
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=undrain").status,
        200
    );
    assert_eq!(server_row(&nginx, "tomcat02")["state"], "up");
    nginx.assert_no_crash();
}

#[test]
fn up_is_refused_for_a_server_down_in_the_configuration() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(1, &control_conf(&tomcats, &["down"], ""));
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=up");
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("\"down\" in the configuration"), "{}", r.body);
    assert_eq!(server_row(&nginx, "tomcat01")["state"], "down");
    assert_eq!(spread_of_two(&nginx, 6), (0, 6));
    drop(nginx);

    // Two lines share the srun_id, the second `down` in the configuration: a refused `up`
    // changes neither (the first keeps its runtime `down`).
    let tomcats = backends(&["tomcat01", "tomcat01", "tomcat02"]);
    let nginx = Nginx::start(1, &control_conf(&tomcats, &["", "down"], ""));
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=down").status, 200);
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=up");
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(server_row(&nginx, "tomcat01")["state"], "down", "the first line changed");
    nginx.assert_no_crash();
}

#[test]
fn every_row_of_a_draining_server_says_draining() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(1, &control_conf(&tomcats, &["drain"], ""));
    let s = server_row(&nginx, "tomcat01");
    assert_eq!(s["state"], "draining");
    let peers = s["peers"].as_array().expect("peers");
    assert!(!peers.is_empty());
    assert!(peers.iter().all(|p| p["state"] == "draining"), "{s}");
    assert_eq!(control_post(&nginx, "upstream=tomcats&srun_id=tomcat02&action=down").status, 200);
    let s = server_row(&nginx, "tomcat02");
    assert!(s["peers"].as_array().unwrap().iter().all(|p| p["state"] == "down"), "{s}");
}

#[test]
fn a_runtime_weight_can_always_be_taken_back() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let zone = "        zone tomcats 64k;\n";
    let nginx = Nginx::start(2, &control_conf(&tomcats, &[], zone));
    let r = control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=4");
    assert_eq!(r.status, 200, "{r:?}");
    let r =
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=configured");
    assert_eq!((r.status, r.body.as_str()), (200, "tomcat01 in tomcats: configured weight\n"));
    assert_eq!(server_row(&nginx, "tomcat01")["weight"], 1);
    let (a, b) = spread_of_two(&nginx, 20);
    assert!((8..=12).contains(&a) && a + b == 20, "{a}:{b}");

    // A reload to a method that reads weights only when its peers change, or without zone,
    // drops the runtime weight: the configured one is in force and shown.
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=4").status,
        200
    );
    nginx.reload_and_wait(&control_conf(&tomcats, &[], &format!("{zone}        random;\n")), 2);
    assert_eq!(server_row(&nginx, "tomcat01")["weight"], 1);
    let r =
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=configured");
    assert_eq!(r.status, 200, "clearing is always allowed: {r:?}");
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=4").status,
        409
    );

    nginx.reload_and_wait(&control_conf(&tomcats, &[], zone), 2);
    assert_eq!(
        control_post(&nginx, "upstream=tomcats&srun_id=tomcat01&action=weight&value=4").status,
        200
    );
    nginx.reload_and_wait(&control_conf(&tomcats, &[], ""), 2);
    assert_eq!(server_row(&nginx, "tomcat01")["weight"], 1);
    let (a, b) = spread_of_two(&nginx, 20);
    assert!((8..=12).contains(&a) && a + b == 20, "{a}:{b}");
    nginx.assert_no_crash();
}

#[test]
fn an_action_taken_by_an_old_worker_during_a_reload_is_never_acknowledged_and_lost() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let nginx = Nginx::start(1, &control_conf(&tomcats, &[], ""));
    assert!(eventually(10, || nginx.workers().len() == 1), "one worker");
    let old = nginx.workers();

    // The headers of a control POST reach the old worker; its body comes after the reload.
    let body = "upstream=tomcats&srun_id=tomcat01&action=drain";
    let head = format!(
        "POST /control HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = send_head(nginx.port, &head);
    // nginx says "100 Continue" when it starts reading the body: the (only, old) worker holds
    // the request.
    let interim = read_head(&mut stream);
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");

    nginx.reload_with(&control_conf(&tomcats, &[], ""), 1);
    assert!(
        eventually(10, || nginx.workers().iter().any(|p| !old.contains(p))),
        "the new worker runs"
    );
    stream.write_all(body.as_bytes()).unwrap();
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    let reply = String::from_utf8_lossy(&data).into_owned();
    let status = reply.split_whitespace().nth(1).unwrap_or("");

    // Either the change is in the running configuration, or it was refused with a status that
    // says to try again; never a 200 for a change that is gone.
    let state = || server_row(&nginx, "tomcat01")["state"].as_str().unwrap_or("").to_owned();
    match status {
        "200" => assert_eq!(state(), "draining", "acknowledged, so applied: {reply}"),
        "503" => {
            assert!(reply.contains("Retry-After: 1"), "{reply}");
            assert!(reply.contains("send the request again"), "{reply}");
            assert_eq!(state(), "up");
            // A retry after `Retry-After` reaches a new worker (the old one stops listening as
            // soon as it is told to quit).
            let mut r = control_post(&nginx, body);
            for _ in 0..10 {
                if r.status != 503 {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
                r = control_post(&nginx, body);
            }
            assert_eq!(r.status, 200, "{r:?}");
            // The status page as the new configuration has it: an old worker that has not yet
            // been told to quit may still take a request, and shows its own zone.
            assert!(
                eventually(10, || nginx.workers().iter().all(|p| !old.contains(p))),
                "the old worker exits"
            );
            assert_eq!(state(), "draining");
        }
        other => panic!("unexpected status {other}: {reply}"),
    }
    // On this path the reload completed before the body came: the old worker must refuse.
    assert_eq!(status, "503", "the old worker answered: {reply}");
    nginx.assert_no_crash();
}
