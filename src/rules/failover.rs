//! Consistent failover: where an orphaned session (its server unusable or unknown) goes.
//!
//! Weighted rendezvous hashing (highest random weight): every usable server gets a score from
//! the session id and the server's own name, scaled by its weight, and the highest score wins.
//! So every request of one orphaned session picks the same server while the set of usable
//! servers stays the same; sessions spread in proportion to the weights; and when one more
//! server fails, only the sessions that had picked it move. Pure Rust, no nginx types.

/// How a request whose session's server cannot take it is balanced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failover {
    /// The upstream's own balancing method decides (round robin unless configured otherwise).
    #[default]
    Balance,
    /// The session id decides, by weighted rendezvous hashing over the usable primary servers.
    Consistent,
    /// Forced stickiness: the request is refused with 503 rather than sent to another server.
    Off,
}

/// The 64-bit FNV-1a hash of `parts`, each followed by a separator byte, finished with the
/// SplitMix64 mixer so that nearby inputs give unrelated outputs. Stable across builds and
/// processes: every worker, and nginx after a reload, agrees.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The rendezvous score of `server` (its unique name) for `session`: `-weight / ln(u)` with
/// `u` uniform in (0, 1) from the hash, which makes each server win with probability
/// proportional to its weight.
pub fn score(session: &[u8], server: &[u8], weight: u64) -> f64 {
    // 53 random bits, shifted into (0, 1): never 0, so the logarithm is finite and negative.
    let u = ((hash64(&[session, server]) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / u.ln()
}

/// The index of the candidate with the highest score, from `(index, name, weight)` triples of
/// the usable servers; ties go to the earlier candidate.
pub fn pick<'a>(
    session: &[u8],
    candidates: impl IntoIterator<Item = (usize, &'a [u8], u64)>,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (index, name, weight) in candidates {
        let s = score(session, name, weight);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((index, s));
        }
    }
    best.map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(weights: &[u64]) -> Vec<(String, u64)> {
        weights.iter().enumerate().map(|(i, &w)| (format!("10.0.0.{i}:8080"), w)).collect()
    }

    fn choose(session: &str, servers: &[(String, u64)], down: &[usize]) -> Option<usize> {
        pick(
            session.as_bytes(),
            servers
                .iter()
                .enumerate()
                .filter(|(i, _)| !down.contains(i))
                .map(|(i, (name, w))| (i, name.as_bytes(), *w)),
        )
    }

    fn sessions(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{:032X}.tomcat{:02}", hash64(&[&i.to_le_bytes()]), i % 3)).collect()
    }

    #[test]
    fn the_same_session_always_picks_the_same_server() {
        let s = servers(&[1, 1, 1, 1]);
        for id in sessions(100) {
            let first = choose(&id, &s, &[]);
            assert!(first.is_some());
            for _ in 0..5 {
                assert_eq!(choose(&id, &s, &[]), first);
            }
        }
    }

    #[test]
    fn sessions_spread_in_proportion_to_weights() {
        let s = servers(&[1, 2, 1]);
        let mut counts = [0usize; 3];
        let n = 20_000;
        for id in sessions(n) {
            counts[choose(&id, &s, &[]).unwrap()] += 1;
        }
        let expected = [n / 4, n / 2, n / 4];
        for (c, e) in counts.iter().zip(expected) {
            let off = (*c as f64 - e as f64).abs() / e as f64;
            assert!(off < 0.03, "{counts:?} vs {expected:?}");
        }
    }

    #[test]
    fn when_one_more_server_fails_only_its_sessions_move() {
        let s = servers(&[1, 1, 2, 1, 1]);
        for id in sessions(5_000) {
            let before = choose(&id, &s, &[0]).unwrap();
            let after = choose(&id, &s, &[0, 3]).unwrap();
            if before != 3 {
                assert_eq!(before, after, "{id} moved from a server that did not fail");
            } else {
                assert_ne!(after, 3);
            }
        }
    }

    #[test]
    fn no_candidates_no_pick() {
        assert_eq!(pick(b"x", std::iter::empty()), None);
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: a change here changes where orphaned sessions go after an upgrade.
        assert_eq!(hash64(&[]), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(hash64(&[b"ab", b"c"]), hash64(&[b"a", b"bc"]));
        assert_eq!(hash64(&[b"5C3A.tomcat01", b"10.0.0.1:8080"]), 0xc66c_6338_8eac_88bc);
    }
}
