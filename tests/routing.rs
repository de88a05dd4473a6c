//! Routing by session id through a real nginx with the module: stickiness, spreading of new
//! sessions, where the session id is read, prefix mode, and sessionless requests.

mod common;

use common::*;

const JVM_ROUTE: &str = "        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n";

fn three_tomcats() -> Vec<Backend> {
    backends(&["tomcat01", "tomcat02", "tomcat03"])
}

fn start(backends: &[Backend], params: &[&str], extra: &str) -> Nginx {
    Nginx::start(1, &http_block(&upstream("tomcats", backends, params, extra), ""))
}

#[test]
fn one_session_always_reaches_its_server() {
    let tomcats = three_tomcats();
    let nginx = Nginx::start(1, &example_config("tomcat.conf", &tomcats));

    let mut client = Client::default();
    let first = client.get(nginx.port, "/");
    assert_eq!(first.status, 200);
    let owner = first.backend().to_owned();
    let session = client.session.clone().expect("the backend created a session");
    assert!(session.ends_with(&format!(".{owner}")), "{session} is not {owner}'s");
    let hex = session.split('.').next().unwrap();
    assert_eq!(hex.len(), 32);

    for _ in 0..100 {
        let r = client.get(nginx.port, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), owner);
        assert_eq!(r.new_session(), None, "the session was lost");
    }
    nginx.assert_no_crash();
}

#[test]
fn every_route_is_followed() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], JVM_ROUTE);
    for round in 0..5 {
        for t in &tomcats {
            let cookie = format!("JSESSIONID=5C3A9F{round}E1F2.{}", t.route);
            let r = nginx.get_with("/", &[("Cookie", &cookie)]);
            assert_eq!(r.backend(), t.route);
        }
    }
}

#[test]
fn new_sessions_spread_by_weight() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &["weight=1", "weight=2", "weight=1"], JVM_ROUTE);
    let responses: Vec<Response> = (0..400).map(|_| nginx.get("/")).collect();
    let counts = tally(&responses);
    // nginx's smooth weighted round robin is exact over whole cycles of 4.
    assert_eq!(counts.get("tomcat01"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("tomcat02"), Some(&200), "{counts:?}");
    assert_eq!(counts.get("tomcat03"), Some(&100), "{counts:?}");
    assert!(responses.iter().all(|r| r.new_session().is_some()));
}

#[test]
fn session_in_path_parameter_and_query() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], JVM_ROUTE);
    for _ in 0..10 {
        let r = nginx.get("/shop/cart.jsp;jsessionid=5C3AE1F2.tomcat02?item=3");
        assert_eq!(r.backend(), "tomcat02");
        assert!(
            r.body.contains("/shop/cart.jsp;jsessionid=5C3AE1F2.tomcat02?item=3"),
            "{}",
            r.body
        );
        assert_eq!(nginx.get("/a;JSESSIONID=X.tomcat03").backend(), "tomcat03");
        assert_eq!(nginx.get("/a;foo=1;jsessionid=X.tomcat03/b").backend(), "tomcat03");
        assert_eq!(nginx.get("/a?x=1&jsessionid=X.tomcat01&y=2").backend(), "tomcat01");
        assert_eq!(nginx.get("/a?jsessionid=X.tomcat02").backend(), "tomcat02");
    }
}

#[test]
fn cookie_wins_over_url_and_path_over_query() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], JVM_ROUTE);
    for _ in 0..6 {
        let r = nginx.get_with(
            "/a;jsessionid=X.tomcat02?jsessionid=Y.tomcat03",
            &[("Cookie", "JSESSIONID=Z.tomcat01")],
        );
        assert_eq!(r.backend(), "tomcat01");
        assert_eq!(
            nginx.get("/a;jsessionid=X.tomcat02?jsessionid=Y.tomcat03").backend(),
            "tomcat02"
        );
        // A cookie with an unknown route does not hide a good URL session.
        let r = nginx.get_with("/a;jsessionid=X.tomcat03", &[("Cookie", "JSESSIONID=Z.gone")]);
        assert_eq!(r.backend(), "tomcat03");
    }
}

#[test]
fn several_cookies_of_the_name_and_quotes() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], JVM_ROUTE);
    for _ in 0..6 {
        // Browsers send one JSESSIONID per matching Path; the first that names a route wins.
        let r = nginx.get_with("/", &[("Cookie", "JSESSIONID=OLD.gone; JSESSIONID=NEW.tomcat03")]);
        assert_eq!(r.backend(), "tomcat03");
        // Over several Cookie header lines too (HTTP/2 sends one line per cookie).
        let r = nginx.get_with("/", &[("Cookie", "a=1"), ("Cookie", "JSESSIONID=X.tomcat02")]);
        assert_eq!(r.backend(), "tomcat02");
        let r = nginx.get_with("/", &[("Cookie", "JSESSIONID=\"X.tomcat01\"")]);
        assert_eq!(r.backend(), "tomcat01");
        let r = nginx.get_with("/", &[("Cookie", "jsessionid=X.tomcat02")]);
        assert_eq!(r.backend(), "tomcat02");
    }
}

#[test]
fn unknown_or_empty_routes_fall_back_to_round_robin() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], JVM_ROUTE);
    for cookie in [
        "JSESSIONID=X.tomcat99",
        "JSESSIONID=NODOT",
        "JSESSIONID=X.",
        "JSESSIONID=",
        "JSESSIONID=X.tomcat0",
    ] {
        let responses: Vec<Response> =
            (0..30).map(|_| nginx.get_with("/", &[("Cookie", cookie)])).collect();
        assert!(responses.iter().all(|r| r.status == 200));
        let counts = tally(&responses);
        assert_eq!(counts.len(), 3, "{cookie}: {counts:?}");
        assert!(counts.values().all(|&n| n == 10), "{cookie}: {counts:?}");
    }
    // The original module matched suffixes without a delimiter: "X.tomcat1" went to srun_id "1".
    nginx.assert_no_crash();
    assert!(!nginx.error_log().contains("[warn]"), "sessionless requests must not warn");
}

#[test]
fn prefix_mode_for_resin() {
    let servers = backends(&["a", "b"]);
    let nginx = Nginx::start(1, &example_config("resin.conf", &servers));
    for _ in 0..10 {
        assert_eq!(nginx.get_with("/", &[("Cookie", "JSESSIONID=aXYZ123")]).backend(), "a");
        assert_eq!(nginx.get_with("/", &[("Cookie", "JSESSIONID=bXYZ123")]).backend(), "b");
    }
    // Without a matching prefix: round robin.
    let counts = tally(
        &(0..20).map(|_| nginx.get_with("/", &[("Cookie", "JSESSIONID=cXYZ")])).collect::<Vec<_>>(),
    );
    assert_eq!(counts.get("a"), Some(&10));
    assert_eq!(counts.get("b"), Some(&10));
}

#[test]
fn prefix_mode_takes_the_longest_srun_id() {
    let servers = backends(&["a", "ab"]);
    let nginx = start(&servers, &[], "        jvm_route $cookie_JSESSIONID;\n");
    for _ in 0..10 {
        assert_eq!(nginx.get_with("/", &[("Cookie", "JSESSIONID=abZZ")]).backend(), "ab");
        assert_eq!(nginx.get_with("/", &[("Cookie", "JSESSIONID=azZZ")]).backend(), "a");
    }
}

#[test]
fn any_variable_as_the_source() {
    let tomcats = three_tomcats();
    let nginx = start(&tomcats, &[], "        jvm_route $http_x_session|sid reverse;\n");
    for _ in 0..6 {
        assert_eq!(nginx.get_with("/", &[("X-Session", "X.tomcat03")]).backend(), "tomcat03");
        assert_eq!(nginx.get("/a;sid=X.tomcat02").backend(), "tomcat02");
        assert_eq!(nginx.get("/a?sid=X.tomcat01").backend(), "tomcat01");
        // The cookie is not the source here.
        let counts = tally(
            &(0..3)
                .map(|_| nginx.get_with("/", &[("Cookie", "JSESSIONID=X.tomcat01")]))
                .collect::<Vec<_>>(),
        );
        assert_eq!(counts.len(), 3);
    }
}

#[test]
fn a_server_without_srun_id_is_only_balanced_to() {
    let tomcats = three_tomcats();
    let plain = Backend::start("plain");
    let upstreams = format!(
        "    upstream tomcats {{\n        server {} srun_id=tomcat01;\n        server {};\n{JVM_ROUTE}    }}\n",
        tomcats[0].addr(),
        plain.addr()
    );
    let nginx = Nginx::start(1, &http_block(&upstreams, ""));
    // The original module gave such a server the route "a".
    for cookie in ["JSESSIONID=X.a", "JSESSIONID=X.plain"] {
        let counts =
            tally(&(0..10).map(|_| nginx.get_with("/", &[("Cookie", cookie)])).collect::<Vec<_>>());
        assert_eq!(counts.get("tomcat01"), Some(&5), "{cookie}: {counts:?}");
        assert_eq!(counts.get("plain"), Some(&5), "{cookie}: {counts:?}");
    }
    for _ in 0..5 {
        assert_eq!(
            nginx.get_with("/", &[("Cookie", "JSESSIONID=X.tomcat01")]).backend(),
            "tomcat01"
        );
    }
}

#[test]
fn peers_sharing_a_srun_id_share_its_sessions() {
    let a1 = Backend::start("pairA1");
    let a2 = Backend::start("pairA2");
    let b = Backend::start("single");
    let upstreams = format!(
        "    upstream tomcats {{\n        server {} srun_id=pair;\n        server {} srun_id=pair;\n        server {} srun_id=single;\n{JVM_ROUTE}    }}\n",
        a1.addr(),
        a2.addr(),
        b.addr()
    );
    let nginx = Nginx::start(1, &http_block(&upstreams, ""));
    let responses: Vec<Response> =
        (0..20).map(|_| nginx.get_with("/", &[("Cookie", "JSESSIONID=X.pair")])).collect();
    let counts = tally(&responses);
    assert_eq!(counts.get("single"), None, "{counts:?}");
    assert!(counts.contains_key("pairA1") && counts.contains_key("pairA2"), "{counts:?}");
}

#[test]
fn hostile_requests_are_sessionless_not_errors() {
    let tomcats = three_tomcats();
    let nginx = Nginx::start(2, &http_block(&upstream("tomcats", &tomcats, &[], JVM_ROUTE), ""));
    let huge = format!("JSESSIONID={}.tomcat01", "A".repeat(7000));
    let many: String =
        (0..300).map(|i| format!("c{i}=v{i}; ")).collect::<String>() + "JSESSIONID=X.tomcat02";
    let long_route = format!("JSESSIONID=X.{}", "t".repeat(5000));
    let cases: Vec<Vec<u8>> = vec![
        format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {huge}\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {many}\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {long_route}\r\nConnection: close\r\n\r\n").into_bytes(),
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=\xff\xfe\x01.tomcat01\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=X.tom\x7fcat01; ;;; =; JSESSIONID\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: \"\"\"\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a;jsessionid=;jsessionid;=;;/?jsessionid&jsessionid=&&& HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a%3Bjsessionid=X.tomcat01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /?jsessionid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /{}?jsessionid={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a/".repeat(1500), "B".repeat(2000)).into_bytes(),
    ];
    for (i, raw) in cases.iter().enumerate() {
        let r = raw_request(nginx.port, raw);
        assert!(r.status == 200 || (400..500).contains(&r.status), "case {i}: status {}", r.status);
    }
    // The 300-cookie header still finds its session at the end.
    let r = nginx.get_with("/", &[("Cookie", &many)]);
    assert_eq!(r.backend(), "tomcat02");
    nginx.assert_no_crash();
}
