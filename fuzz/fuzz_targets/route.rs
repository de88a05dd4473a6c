//! `route::RouteTable` (build, lookup, route), `route::choose_route`,
//! `route::validate_srun_id` and `failover::pick`, each against a brute-force reference.
#![no_main]

use arbitrary::Arbitrary;
use jvm_route_pure::failover::{pick, score};
use jvm_route_pure::route::{
    choose_route, validate_srun_id, PeerList, RouteMode, RouteTable, SessionRoute, SrunIdError,
    MAX_SRUN_ID_LEN,
};
use libfuzzer_sys::fuzz_target;

/// A srun_id as generated: raw bytes, or bytes mapped onto a small alphabet so that ids that
/// are prefixes of one another, or contain dots, are common.
#[derive(Arbitrary, Debug)]
enum SrunSpec {
    Raw(Vec<u8>),
    Small(Vec<u8>),
}

impl SrunSpec {
    fn bytes(&self) -> Vec<u8> {
        match self {
            SrunSpec::Raw(b) => b.clone(),
            SrunSpec::Small(b) => b.iter().map(|&x| b"ab.-"[usize::from(x % 4)]).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Peer {
    srun_id: SrunSpec,
    backup: bool,
    index: u32,
}

/// A session id: raw bytes, or one made to name (or nearly name) a configured srun_id.
#[derive(Arbitrary, Debug)]
enum SessionSpec {
    Raw(Vec<u8>),
    /// Reverse mode's form: `HEAD.SRUN_IDtail`.
    Dotted {
        head: Vec<u8>,
        peer: u8,
        tail: Vec<u8>,
    },
    /// Prefix mode's form: `SRUN_IDtail`.
    Prefixed {
        peer: u8,
        tail: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Candidate {
    index: usize,
    name: Vec<u8>,
    weight: u64,
}

#[derive(Arbitrary, Debug)]
struct Input {
    reverse: bool,
    peers: Vec<Peer>,
    sessions: Vec<SessionSpec>,
    failover_session: Vec<u8>,
    candidates: Vec<Candidate>,
    remove: usize,
    insert_at: usize,
    extra: Candidate,
}

fuzz_target!(|input: Input| {
    let mode = if input.reverse { RouteMode::AfterFirstDot } else { RouteMode::Prefix };

    // validate_srun_id against its definition; keep the valid ones.
    let mut peers: Vec<(Vec<u8>, PeerList, u32)> = Vec::new();
    for peer in &input.peers {
        let id = peer.srun_id.bytes();
        let expected = if id.is_empty() {
            Err(SrunIdError::Empty)
        } else if id.len() > MAX_SRUN_ID_LEN {
            Err(SrunIdError::TooLong)
        } else if id.iter().any(|&b| !(0x21..=0x7e).contains(&b) || b";,=".contains(&b)) {
            Err(SrunIdError::BadCharacter)
        } else {
            Ok(())
        };
        assert_eq!(validate_srun_id(&id), expected, "{id:?}");
        if expected.is_ok() {
            let list = if peer.backup { PeerList::Backup } else { PeerList::Primary };
            peers.push((id, list, peer.index));
        }
    }

    let table = RouteTable::build(mode, peers.iter().map(|(id, l, i)| (&id[..], *l, *i)));

    // Distinct srun_ids in order of first appearance: route ids are their positions, and each
    // route holds exactly its peers, in order.
    let mut distinct: Vec<&[u8]> = Vec::new();
    for (id, _, _) in &peers {
        if !distinct.contains(&&id[..]) {
            distinct.push(id);
        }
    }
    assert_eq!(table.len(), distinct.len());
    assert_eq!(table.is_empty(), distinct.is_empty());
    for (n, id) in distinct.iter().enumerate() {
        let route = table.route(n as u32).expect("route id in range");
        assert_eq!(&*route.srun_id, *id);
        let of = |list: PeerList| -> Vec<u32> {
            peers.iter().filter(|(i, l, _)| i == id && *l == list).map(|p| p.2).collect()
        };
        assert_eq!(route.primary, of(PeerList::Primary));
        assert_eq!(route.backup, of(PeerList::Backup));
    }
    assert!(table.route(distinct.len() as u32).is_none());
    assert!(table.route(u32::MAX).is_none());

    // The brute-force lookup, as a srun_id.
    let reference = |session: &[u8]| -> Option<&[u8]> {
        match mode {
            RouteMode::AfterFirstDot => {
                let dot = session.iter().position(|&b| b == b'.')?;
                distinct.iter().copied().find(|id| *id == &session[dot + 1..])
            }
            RouteMode::Prefix => distinct
                .iter()
                .copied()
                .filter(|id| session.starts_with(id))
                .max_by_key(|id| id.len()),
        }
    };
    let looked_up = |session: &[u8]| -> Option<&[u8]> {
        table.lookup(session).map(|r| &*table.route(r).expect("lookup gave a bad id").srun_id)
    };

    let sessions: Vec<Vec<u8>> = input
        .sessions
        .iter()
        .map(|spec| match spec {
            SessionSpec::Raw(b) => b.clone(),
            SessionSpec::Dotted { head, peer, tail } => {
                let mut s = head.clone();
                s.push(b'.');
                if !distinct.is_empty() {
                    s.extend_from_slice(distinct[usize::from(*peer) % distinct.len()]);
                }
                s.extend_from_slice(tail);
                s
            }
            SessionSpec::Prefixed { peer, tail } => {
                let mut s = Vec::new();
                if !distinct.is_empty() {
                    s.extend_from_slice(distinct[usize::from(*peer) % distinct.len()]);
                }
                s.extend_from_slice(tail);
                s
            }
        })
        .collect();

    for session in &sessions {
        assert_eq!(looked_up(session), reference(session), "lookup({session:?}) in {mode:?}");
    }
    // Every configured srun_id is found in its own canonical session ids.
    for id in &distinct {
        let mut dotted = b"5C3A.".to_vec();
        dotted.extend_from_slice(id);
        let mut prefixed = id.to_vec();
        prefixed.extend_from_slice(b"5C3A");
        match mode {
            RouteMode::AfterFirstDot => assert_eq!(looked_up(&dotted), Some(*id)),
            RouteMode::Prefix => {
                assert_eq!(looked_up(id), Some(*id));
                let got = looked_up(&prefixed).expect("a srun_id prefix is not found");
                assert!(got.len() >= id.len() && prefixed.starts_with(got));
            }
        }
    }

    // choose_route: the first session id that names a route, else the first one, else none.
    let chosen = choose_route(&table, sessions.iter().map(|s| &s[..]));
    let expected = match sessions.iter().find(|s| table.lookup(s).is_some()) {
        Some(s) => SessionRoute::Known(table.lookup(s).unwrap(), &s[..]),
        None => match sessions.first() {
            Some(s) => SessionRoute::Unknown(&s[..]),
            None => SessionRoute::NoSession,
        },
    };
    assert_eq!(chosen, expected);
    // The very slice given, not an equal one.
    match (chosen, expected) {
        (SessionRoute::Known(_, a), SessionRoute::Known(_, b))
        | (SessionRoute::Unknown(a), SessionRoute::Unknown(b)) => {
            assert_eq!(a.as_ptr(), b.as_ptr());
        }
        _ => {}
    }

    // failover::pick: the highest score, ties to the earlier candidate.
    let session = &input.failover_session[..];
    let cands: Vec<(usize, &[u8], u64)> =
        input.candidates.iter().map(|c| (c.index, &c.name[..], c.weight)).collect();
    let scores: Vec<f64> = cands.iter().map(|&(_, n, w)| score(session, n, w)).collect();
    for s in &scores {
        assert!(s.is_finite() && *s > 0.0, "score {s}");
    }
    let best = argmax(&scores);
    let picked = pick(session, cands.iter().copied());
    assert_eq!(picked, best.map(|p| cands[p].0), "pick differs from the highest score");
    // Deterministic.
    assert_eq!(pick(session, cands.iter().copied()), picked);
    // Weight 0 counts as 1.
    let unzeroed = cands.iter().map(|&(i, n, w)| (i, n, w.max(1)));
    assert_eq!(pick(session, unzeroed), picked);

    if let Some(best) = best {
        // Removing a candidate that was not chosen does not change the choice; removing the
        // chosen one gives the best of the rest.
        let r = input.remove % cands.len();
        let without = || cands.iter().enumerate().filter(move |(k, _)| *k != r).map(|(_, c)| *c);
        let after = pick(session, without());
        if r != best {
            assert_eq!(after, picked, "removing candidate {r} moved the choice");
        } else {
            let rest: Vec<f64> =
                scores.iter().enumerate().filter(|(k, _)| *k != r).map(|(_, s)| *s).collect();
            let expected = argmax(&rest).map(|p| if p >= r { p + 1 } else { p });
            assert_eq!(after, expected.map(|p| cands[p].0));
        }

        // Adding a candidate: the choice stays, or moves to the new one.
        let extra = (input.extra.index, &input.extra.name[..], input.extra.weight);
        let at = input.insert_at % (cands.len() + 1);
        let mut more = cands.clone();
        more.insert(at, extra);
        let added = pick(session, more.iter().copied());
        let extra_score = score(session, extra.1, extra.2);
        let old = scores[best];
        let moves = extra_score > old || (extra_score == old && at <= best);
        assert_eq!(added, Some(if moves { extra.0 } else { cands[best].0 }));

        // More weight for the chosen one keeps it chosen; less for another does not move it.
        let heavier = cands
            .iter()
            .enumerate()
            .map(|(k, &(i, n, w))| (i, n, if k == best { w.saturating_mul(2) } else { w }));
        assert_eq!(pick(session, heavier), picked);
        let lighter = cands
            .iter()
            .enumerate()
            .map(|(k, &(i, n, w))| (i, n, if k == best { w } else { w / 2 }));
        assert_eq!(pick(session, lighter), picked);
    }
});

/// The position of the first highest value.
fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (k, &v) in values.iter().enumerate() {
        if best.is_none_or(|b| v > values[b]) {
            best = Some(k);
        }
    }
    best
}
