//! `failover=consistent`: when a session's server dies, every request of that session goes to
//! one server chosen from the session id (weighted rendezvous hashing), even when a browser
//! sends several at once; without it, round robin scatters them and each creates a session.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::thread;

use common::*;

/// Weights of tomcat01..04. tomcat01 dies first: its sessions become orphans and spread over
/// the others 2:1:1.
const WEIGHTS: [u32; 4] = [2, 2, 1, 1];
const SESSIONS: usize = 300;

fn start(failover: &str) -> (Vec<Backend>, Nginx) {
    let tomcats = backends(&["tomcat01", "tomcat02", "tomcat03", "tomcat04"]);
    let params: Vec<String> =
        WEIGHTS.iter().map(|w| format!("weight={w} max_fails=1 fail_timeout=60s")).collect();
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let extra = format!(
        "        zone tomcats 64k;\n        jvm_route $cookie_JSESSIONID reverse {failover};\n"
    );
    let nginx = Nginx::start(
        2,
        &http_block(
            &upstream("tomcats", &tomcats, &params, &extra),
            "            proxy_next_upstream error timeout;",
        ),
    );
    (tomcats, nginx)
}

/// 300 new sessions, balanced by weight; returns the session ids of tomcat01's.
fn sessions_of_tomcat01(nginx: &Nginx) -> Vec<String> {
    let mut orphans = Vec::new();
    for _ in 0..SESSIONS {
        let r = nginx.get("/");
        assert_eq!(r.status, 200);
        let id = r.new_session().expect("a new session");
        if r.backend() == "tomcat01" {
            orphans.push(id);
        }
    }
    orphans
}

/// A browser with session `id` sends 20 requests, 5 at a time, adopting the session a backend
/// creates; returns the backends that answered. Every request must succeed.
fn browse(port: u16, id: &str) -> BTreeSet<String> {
    let mut cookie = format!("JSESSIONID={id}");
    let mut served = BTreeSet::new();
    for _ in 0..4 {
        let batch: Vec<Response> = thread::scope(|s| {
            let handles: Vec<_> = (0..5)
                .map(|_| s.spawn(|| request(port, "/", &[("Cookie", cookie.as_str())])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &batch {
            assert_eq!(r.status, 200, "{r:?}");
            served.insert(r.backend().to_owned());
        }
        if let Some(new) = batch.iter().find_map(Response::new_session) {
            cookie = format!("JSESSIONID={new}");
        }
    }
    served
}

#[test]
fn orphaned_sessions_stay_together_and_spread_by_weight() {
    let (mut tomcats, nginx) = start("failover=consistent");
    let orphans = sessions_of_tomcat01(&nginx);
    // Round robin by weight gives tomcat01 2/6 of the sessions.
    assert_eq!(orphans.len(), SESSIONS / 3);
    tomcats[0].kill();

    let mut landed: HashMap<String, String> = HashMap::new();
    for id in &orphans {
        let served = browse(nginx.port, id);
        assert_eq!(served.len(), 1, "orphan {id} was served by {served:?}");
        landed.insert(id.clone(), served.into_iter().next().unwrap());
    }
    let mut spread: HashMap<&str, usize> = HashMap::new();
    for server in landed.values() {
        *spread.entry(server.as_str()).or_default() += 1;
    }
    println!("orphans of tomcat01 per server (weights 2:1:1): {spread:?}");
    // Expected 50 : 25 : 25 of 100. Tolerance: each share within 0.15 of its weight's share
    // (3 standard deviations of a binomial with n = 100).
    let n = orphans.len() as f64;
    for (server, weight_share) in [("tomcat02", 0.5), ("tomcat03", 0.25), ("tomcat04", 0.25)] {
        let share = *spread.get(server).unwrap_or(&0) as f64 / n;
        assert!((share - weight_share).abs() <= 0.15, "{server}: {share:.2} {spread:?}");
    }

    // One more server fails: only the orphans that had landed on it move.
    tomcats[3].kill();
    for (id, before) in &landed {
        let r = nginx.get_with("/", &[("Cookie", &format!("JSESSIONID={id}"))]);
        assert_eq!(r.status, 200);
        if before != "tomcat04" {
            assert_eq!(r.backend(), before, "orphan {id} moved although {before} is up");
        } else {
            assert_ne!(r.backend(), "tomcat04");
        }
    }
    // Requests without a session still follow the balancing method (round robin 2:1 now).
    let counts = tally(&(0..30).map(|_| nginx.get("/")).collect::<Vec<_>>());
    assert_eq!(counts.get("tomcat02"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("tomcat03"), Some(&10), "{counts:?}");
    nginx.assert_no_crash();
}

#[test]
fn without_it_orphans_are_scattered() {
    let (mut tomcats, nginx) = start("");
    let orphans = sessions_of_tomcat01(&nginx);
    tomcats[0].kill();
    let touched: Vec<usize> = orphans.iter().map(|id| browse(nginx.port, id).len()).collect();
    let mut histogram: HashMap<usize, usize> = HashMap::new();
    for t in &touched {
        *histogram.entry(*t).or_default() += 1;
    }
    let mean = touched.iter().sum::<usize>() as f64 / touched.len() as f64;
    println!(
        "failover=balance: servers touched by each of {} orphans: {histogram:?} (mean {mean:.2})",
        touched.len()
    );
    assert!(touched.iter().all(|&t| t >= 1));
    assert!(mean > 1.5, "round robin should scatter parallel requests: {histogram:?}");
}
