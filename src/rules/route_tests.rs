//! Tests of the route table and route choice.
use super::*;

fn table(mode: RouteMode, ids: &[&str]) -> RouteTable {
    RouteTable::build(
        mode,
        ids.iter().enumerate().map(|(i, id)| (id.as_bytes(), PeerList::Primary, i as u32)),
    )
}

fn name(t: &RouteTable, session: &str) -> Option<String> {
    t.lookup(session.as_bytes())
        .and_then(|id| t.route(id))
        .map(|r| String::from_utf8_lossy(&r.srun_id).into_owned())
}

#[test]
fn reverse_mode_matches_the_text_after_the_first_dot_exactly() {
    let t = table(RouteMode::AfterFirstDot, &["tomcat01", "tomcat02", "1"]);
    assert_eq!(name(&t, "5C3AE1F2.tomcat01").as_deref(), Some("tomcat01"));
    assert_eq!(name(&t, "5C3AE1F2.tomcat02").as_deref(), Some("tomcat02"));
    // The original module's suffix compare matched "X.tomcat1" to srun_id "1".
    assert_eq!(name(&t, "X.tomcat1"), None);
    assert_eq!(name(&t, "X.1").as_deref(), Some("1"));
    assert_eq!(name(&t, "5C3AE1F2"), None);
    assert_eq!(name(&t, "5C3AE1F2."), None);
    assert_eq!(name(&t, "A.tomcat01.extra"), None);
    assert_eq!(name(&t, ".tomcat01").as_deref(), Some("tomcat01"));
}

#[test]
fn reverse_route_is_the_text_after_the_first_dot() {
    assert_eq!(reverse_route(b"5C3A.tomcat01"), Some(&b"tomcat01"[..]));
    assert_eq!(reverse_route(b"ID.node.a"), Some(&b"node.a"[..]));
    assert_eq!(reverse_route(b"ID."), Some(&b""[..]));
    assert_eq!(reverse_route(b"NODOT"), None);
}

#[test]
fn reverse_mode_route_may_contain_dots() {
    let t = table(RouteMode::AfterFirstDot, &["node.a"]);
    assert_eq!(name(&t, "ID.node.a").as_deref(), Some("node.a"));
}

#[test]
fn long_srun_ids_that_differ_only_in_the_middle_are_told_apart() {
    let a = "node-aaaaaaaa-x-bbbbbbbb";
    let b = "node-aaaaaaaa-y-bbbbbbbb";
    let t = table(RouteMode::AfterFirstDot, &[a, b]);
    assert_eq!(name(&t, &format!("S.{a}")).as_deref(), Some(a));
    assert_eq!(name(&t, &format!("S.{b}")).as_deref(), Some(b));
    assert_eq!(name(&t, "S.node-aaaaaaaa-z-bbbbbbbb"), None);
    // Short ids are held whole: one byte apart in the middle is told apart too.
    let t = table(RouteMode::AfterFirstDot, &["abcdXefgh", "abcdYefgh"]);
    assert_eq!(name(&t, "S.abcdXefgh").as_deref(), Some("abcdXefgh"));
    assert_eq!(name(&t, "S.abcdZefgh"), None);
}

#[test]
fn prefix_mode_takes_the_longest_matching_srun_id() {
    let t = table(RouteMode::Prefix, &["a", "ab", "b"]);
    assert_eq!(name(&t, "abc123").as_deref(), Some("ab"));
    assert_eq!(name(&t, "ac123").as_deref(), Some("a"));
    assert_eq!(name(&t, "b").as_deref(), Some("b"));
    assert_eq!(name(&t, "c123"), None);
    assert_eq!(name(&t, ""), None);
}

#[test]
fn peers_sharing_a_srun_id_share_a_route() {
    let t = RouteTable::build(
        RouteMode::AfterFirstDot,
        [
            (&b"a"[..], PeerList::Primary, 0),
            (b"b", PeerList::Primary, 1),
            (b"a", PeerList::Primary, 2),
            (b"a", PeerList::Backup, 0),
        ],
    );
    assert_eq!(t.len(), 2);
    let route = t.route(t.lookup(b"X.a").unwrap()).unwrap();
    assert_eq!(route.primary, [0, 2]);
    assert_eq!(route.backup, [0]);
}

#[test]
fn choose_route_prefers_the_first_known_route() {
    let t = table(RouteMode::AfterFirstDot, &["a", "b"]);
    fn pick<'a>(t: &RouteTable, ids: &[&'a str]) -> SessionRoute<'a> {
        choose_route(t, ids.iter().map(|s| s.as_bytes()))
    }
    let pick = |ids: &[&'static str]| pick(&t, ids);
    assert_eq!(pick(&[]), SessionRoute::NoSession);
    assert_eq!(pick(&["X.zz", "W.yy"]), SessionRoute::Unknown(b"X.zz"));
    assert_eq!(
        pick(&["X.zz", "Y.b", "Z.a"]),
        SessionRoute::Known(t.lookup(b"Y.b").unwrap(), b"Y.b")
    );
}

#[test]
fn first_usable_wraps_around_from_the_start() {
    assert_eq!(first_usable(&[4, 5, 6], 1, |_| true), Some(5));
    assert_eq!(first_usable(&[4, 5, 6], 2, |c| c != 6), Some(4));
    assert_eq!(first_usable(&[4, 5, 6], 7, |c| c == 4), Some(4));
    assert_eq!(first_usable(&[4, 5, 6], 0, |_| false), None);
    assert_eq!(first_usable(&[], 0, |_| true), None);
    assert_eq!(first_usable(&[4, 5, 6], usize::MAX, |_| true), Some(4));
    assert_eq!(first_usable(&[4, 5, 6], usize::MAX - 1, |c| c != 6), Some(4));
}

#[test]
fn srun_ids_are_validated() {
    assert_eq!(validate_srun_id(b"tomcat01"), Ok(()));
    assert_eq!(validate_srun_id(b"a-b_c.d"), Ok(()));
    assert_eq!(validate_srun_id(b""), Err(SrunIdError::Empty));
    assert_eq!(validate_srun_id(&[b'a'; 65]), Err(SrunIdError::TooLong));
    assert_eq!(validate_srun_id(&[b'a'; 64]), Ok(()));
    for bad in [&b"a;b"[..], b"a,b", b"a=b", b"a b", b"a\x01", b"caf\xc3\xa9"] {
        assert_eq!(validate_srun_id(bad), Err(SrunIdError::BadCharacter), "{bad:?}");
    }
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn lookup_never_panics(
            ids in proptest::collection::vec("[a-z0-9.]{1,8}", 0..8),
            session in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            for mode in [RouteMode::AfterFirstDot, RouteMode::Prefix] {
                let t = RouteTable::build(
                    mode,
                    ids.iter().enumerate().map(|(i, s)| (s.as_bytes(), PeerList::Primary, i as u32)),
                );
                let _ = t.lookup(&session);
            }
        }

        #[test]
        fn reverse_lookup_finds_exactly_the_planted_route(
            ids in proptest::collection::hash_set("[a-z0-9]{1,12}", 1..20),
            pick in any::<proptest::sample::Index>(),
            prefix in "[A-F0-9]{0,32}",
        ) {
            let ids: Vec<String> = ids.into_iter().collect();
            let t = RouteTable::build(
                RouteMode::AfterFirstDot,
                ids.iter().enumerate().map(|(i, s)| (s.as_bytes(), PeerList::Primary, i as u32)),
            );
            let wanted = pick.get(&ids);
            let session = format!("{prefix}.{wanted}");
            let id = t.lookup(session.as_bytes());
            let found = id.and_then(|id| t.route(id));
            prop_assert_eq!(found.map(|r| &*r.srun_id), Some(wanted.as_bytes()));
            let text = id.and_then(|id| t.route_text(id, session.as_bytes()));
            prop_assert_eq!(text, Some(wanted.as_bytes()));
        }

        #[test]
        fn reverse_lookup_agrees_with_a_plain_set(
            ids in proptest::collection::hash_set("[ab]{1,40}", 1..24),
            routes in proptest::collection::vec("[ab]{0,40}", 1..16),
        ) {
            // A two-letter alphabet: many srun_ids share their first and last eight bytes
            // and differ only in the middle, or only in their length.
            let ids: Vec<String> = ids.into_iter().collect();
            let t = RouteTable::build(
                RouteMode::AfterFirstDot,
                ids.iter().enumerate().map(|(i, s)| (s.as_bytes(), PeerList::Primary, i as u32)),
            );
            for route in ids.iter().chain(&routes) {
                let session = format!("5C3A.{route}");
                let found = t.lookup(session.as_bytes()).and_then(|id| t.route(id));
                let expected = ids.contains(route).then_some(route.as_bytes());
                prop_assert_eq!(found.map(|r| &*r.srun_id), expected);
            }
        }

        #[test]
        fn prefix_lookup_returns_the_longest_prefix(
            ids in proptest::collection::hash_set("[ab]{1,4}", 1..10),
            session in "[ab]{0,8}",
        ) {
            let ids: Vec<String> = ids.into_iter().collect();
            let t = RouteTable::build(
                RouteMode::Prefix,
                ids.iter().enumerate().map(|(i, s)| (s.as_bytes(), PeerList::Primary, i as u32)),
            );
            let expected = ids.iter().filter(|id| session.starts_with(id.as_str())).max_by_key(|id| id.len());
            let id = t.lookup(session.as_bytes());
            let found = id.and_then(|id| t.route(id));
            prop_assert_eq!(found.map(|r| &*r.srun_id), expected.map(|s| s.as_bytes()));
            let text = id.and_then(|id| t.route_text(id, session.as_bytes()));
            prop_assert_eq!(text, expected.map(|s| s.as_bytes()));
        }
    }
}

#[test]
fn a_route_without_peers_is_known_and_has_no_candidates() {
    let t = RouteTable::build_with_routes(
        RouteMode::AfterFirstDot,
        [&b"gone"[..], &b"a"[..]],
        [(&b"a"[..], PeerList::Primary, 0)],
    );
    let gone = t.lookup(b"X.gone").expect("a configured route is known");
    assert!(t.route(gone).is_some_and(|r| r.primary.is_empty() && r.backup.is_empty()));
    let a = t.lookup(b"X.a").unwrap();
    assert_eq!(t.route(a).unwrap().primary, vec![0]);
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup(b"X.other"), None);
}
