//! What a server's own session cookies say about the configuration: whether the route in the
//! session ids it issues is the srun_id nginx has for it.
//!
//! The most common way stickiness fails silently is a Tomcat whose `jvmRoute` differs from its
//! `srun_id` (`tomcat1` and `tomcat01`, two nodes with one `jvmRoute`, or none set): every
//! request of its sessions is then an unknown route, balanced anywhere. The header filter reads
//! the `Set-Cookie` lines of a response for the cookie the `jvm_route` source reads, and this
//! module says what the id in it names.

use super::route::{reverse_route, RouteMode};

/// What a session id issued by a server names, against that server's srun_id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issued<'a> {
    /// The server's own srun_id.
    Matches,
    /// Another route: with `reverse`, the text after the first `.`; without it (the route is a
    /// prefix), `None`: the id does not begin with the srun_id.
    Mismatch(Option<&'a [u8]>),
    /// No route at all (`reverse`: no `.`, or nothing after it).
    Missing,
}

/// What `session_id`, issued by the server with `srun_id`, names.
pub fn issued<'a>(mode: RouteMode, session_id: &'a [u8], srun_id: &[u8]) -> Issued<'a> {
    match mode {
        RouteMode::AfterFirstDot => match reverse_route(session_id) {
            None | Some([]) => Issued::Missing,
            Some(route) if route == srun_id => Issued::Matches,
            Some(route) => Issued::Mismatch(Some(route)),
        },
        RouteMode::Prefix if session_id.starts_with(srun_id) => Issued::Matches,
        RouteMode::Prefix => Issued::Mismatch(None),
    }
}

/// The value that a `Set-Cookie` header line gives the cookie `name`, if it sets that cookie
/// (names compare exactly, as browsers compare them) to a value that is not empty: a cookie
/// being deleted (`JSESSIONID=; Max-Age=0`) issues nothing. Surrounding quotes are dropped.
pub fn set_cookie_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let pair = line.split(|&b| b == b';').next()?;
    let eq = pair.iter().position(|&b| b == b'=')?;
    if pair[..eq].trim_ascii() != name {
        return None;
    }
    let mut value = pair[eq + 1..].trim_ascii();
    if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
        value = &value[1..value.len() - 1];
    }
    (!value.is_empty()).then_some(value)
}

/// The most of a route that a log line shows.
pub const SHOWN_ROUTE: usize = 64;

/// A route as a log line shows it: at most [`SHOWN_ROUTE`] bytes, printable ASCII as is, `"`
/// and `\` and every other byte escaped as `\xNN`, and `...` if it was cut.
pub fn shown(route: &[u8]) -> String {
    let mut out = String::with_capacity(route.len().min(SHOWN_ROUTE) + 3);
    for &b in route.iter().take(SHOWN_ROUTE) {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if route.len() > SHOWN_ROUTE {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tomcat_ids_against_their_srun_id() {
        let reverse = RouteMode::AfterFirstDot;
        assert_eq!(issued(reverse, b"5C3AE1F2.tomcat01", b"tomcat01"), Issued::Matches);
        assert_eq!(
            issued(reverse, b"5C3AE1F2.tomcat1", b"tomcat01"),
            Issued::Mismatch(Some(&b"tomcat1"[..]))
        );
        assert_eq!(issued(reverse, b"5C3AE1F2", b"tomcat01"), Issued::Missing);
        assert_eq!(issued(reverse, b"5C3AE1F2.", b"tomcat01"), Issued::Missing);
        // Jetty: <workerName><random>.<workerName>.
        assert_eq!(issued(reverse, b"jetty01x9k2.jetty01", b"jetty01"), Issued::Matches);
        // The route is everything after the first dot, as the balancer reads it.
        assert_eq!(
            issued(reverse, b"A.tomcat01.x", b"tomcat01"),
            Issued::Mismatch(Some(&b"tomcat01.x"[..]))
        );
    }

    #[test]
    fn resin_ids_begin_with_their_srun_id() {
        assert_eq!(issued(RouteMode::Prefix, b"aXyZ", b"a"), Issued::Matches);
        assert_eq!(issued(RouteMode::Prefix, b"bXyZ", b"a"), Issued::Mismatch(None));
    }

    #[test]
    fn set_cookie_lines() {
        let name = b"JSESSIONID";
        assert_eq!(
            set_cookie_value(b"JSESSIONID=AB.t1; Path=/; HttpOnly", name),
            Some(&b"AB.t1"[..])
        );
        assert_eq!(set_cookie_value(b" JSESSIONID = \"AB.t1\" ;Path=/", name), Some(&b"AB.t1"[..]));
        assert_eq!(set_cookie_value(b"JSESSIONID=; Max-Age=0", name), None);
        assert_eq!(set_cookie_value(b"jsessionid=AB.t1", name), None);
        assert_eq!(set_cookie_value(b"OTHER=AB.t1; JSESSIONID=x", name), None);
        assert_eq!(set_cookie_value(b"JSESSIONIDX=AB.t1", name), None);
        assert_eq!(set_cookie_value(b"JSESSIONID", name), None);
        assert_eq!(set_cookie_value(b"", name), None);
    }

    #[test]
    fn routes_in_log_lines_are_escaped_and_short() {
        assert_eq!(shown(b"tomcat1"), "tomcat1");
        assert_eq!(shown(b"a\"b\\c\r\n "), "a\\x22b\\x5cc\\x0d\\x0a\\x20");
        let long = vec![b'x'; 100];
        assert_eq!(shown(&long), format!("{}...", "x".repeat(SHOWN_ROUTE)));
    }

    proptest! {
        /// A server whose ids end in `.<srun_id>` always matches, and an id never matches
        /// another srun_id that is not the text after its first dot.
        #[test]
        fn an_id_matches_exactly_its_route(
            id in "[A-F0-9]{1,32}",
            srun_id in "[a-z0-9_-]{1,16}",
            other in "[a-z0-9_-]{1,16}",
        ) {
            let session = format!("{id}.{srun_id}");
            prop_assert_eq!(
                issued(RouteMode::AfterFirstDot, session.as_bytes(), srun_id.as_bytes()),
                Issued::Matches
            );
            if other != srun_id {
                prop_assert_eq!(
                    issued(RouteMode::AfterFirstDot, session.as_bytes(), other.as_bytes()),
                    Issued::Mismatch(Some(srun_id.as_bytes()))
                );
            }
        }

        /// Any bytes: no panic, and what is shown is printable ASCII of bounded length.
        #[test]
        fn any_input_is_safe(
            line in proptest::collection::vec(any::<u8>(), 0..200),
            srun_id in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let value = set_cookie_value(&line, b"JSESSIONID");
            for mode in [RouteMode::AfterFirstDot, RouteMode::Prefix] {
                let _ = issued(mode, &line, &srun_id);
            }
            if let Some(v) = value {
                prop_assert!(!v.is_empty());
            }
            let s = shown(&line);
            prop_assert!(s.len() <= SHOWN_ROUTE * 4 + 3);
            prop_assert!(s.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
