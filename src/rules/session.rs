//! Finding the session id of a request: in `Cookie` header lines, in a `;name=value` path
//! parameter, or in the query string. Pure functions over bytes; nothing here knows nginx.

/// Characters that end a session id found in a URL.
const URL_VALUE_END: &[u8] = b";?&/#";

/// The values of every cookie called `name` in one `Cookie` header line, in order.
///
/// Names compare case-insensitively, as nginx's `$cookie_NAME` does. Values are trimmed of
/// spaces and tabs, and one pair of surrounding double quotes is removed (RFC 6265 allows a
/// quoted cookie value; the original module never matched one). Empty values are skipped.
pub fn cookie_values<'a>(header: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    named_cookie_values(if can_name_cookies(name) { header } else { &[] }, name)
}

/// Whether `name` can name a cookie: no ';' or '=' in it, no space or tab at its ends.
pub fn can_name_cookies(name: &[u8]) -> bool {
    !name.iter().any(|&b| b == b';' || b == b'=')
        && name.first().is_none_or(|&b| !is_space(b))
        && name.last().is_none_or(|&b| !is_space(b))
}

/// [`cookie_values`] for a name checked once with [`can_name_cookies`] (the configuration's),
/// without checking it again for every header line.
pub fn named_cookie_values<'a>(header: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = header;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let pair = rest;
            let value_at = named_value_start(pair, name);
            let from = value_at.unwrap_or(0);
            let end = find_byte(b';', &pair[from..]).map_or(pair.len(), |i| from + i);
            rest = pair.get(end + 1..).unwrap_or_default();
            if let Some(at) = value_at {
                let value = unquote(trim(&pair[at..end]));
                if !value.is_empty() {
                    return Some(value);
                }
            }
        }
        None
    })
}

/// Where the value starts if `pair` (a header line from the start of a cookie pair on) begins
/// with `name=`, spaces and tabs allowed around the name.
#[inline(always)]
fn named_value_start(pair: &[u8], name: &[u8]) -> Option<usize> {
    let start = pair.iter().position(|&b| !is_space(b))?;
    let candidate = pair.get(start..start + name.len())?;
    // The usual case first: the name as configured; then the same name in another case.
    if !same_bytes(candidate, name) && !candidate.eq_ignore_ascii_case(name) {
        return None;
    }
    let after = start + name.len();
    let eq = after + pair[after..].iter().position(|&b| !is_space(b))?;
    (pair[eq] == b'=').then_some(eq + 1)
}

/// `a == b`, without a call to `memcmp` for the lengths of cookie names (8 to 16 bytes: two
/// overlapping eight-byte words each).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if !(8..=16).contains(&n) {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_ne_bytes)
    };
    word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8)
}

/// The index of the first `needle` in `haystack`. On x86-64, sixteen bytes at a time with
/// SSE2 (always there), with no run-time choice of method and no aligning of loads: on
/// haystacks as short as cookie pairs, session ids and URLs those cost more than they save.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let len = haystack.len();
    if len < 16 {
        return find_byte_by_words(needle, haystack);
    }
    // The first `needle` in the sixteen bytes at `at`.
    let first = |at: usize| {
        debug_assert!(at + 16 <= len);
        // SAFETY: SSE2 is part of x86-64; callers pass `at + 16 <= len`, so the unaligned
        // load reads inside `haystack`.
        let mask = unsafe {
            let chunk = _mm_loadu_si128(haystack.as_ptr().add(at).cast::<__m128i>());
            _mm_movemask_epi8(_mm_cmpeq_epi8(chunk, _mm_set1_epi8(needle as i8)))
        };
        (mask != 0).then(|| at + mask.trailing_zeros() as usize)
    };
    let mut at = 0;
    while at + 16 <= len {
        if let Some(found) = first(at) {
            return Some(found);
        }
        at += 16;
    }
    // The last sixteen bytes: nothing matched in the part already searched.
    if at < len {
        first(len - 16)
    } else {
        None
    }
}

/// The index of the first `needle` in `haystack`, eight bytes at a time.
#[cfg(not(target_arch = "x86_64"))]
pub fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    find_byte_by_words(needle, haystack)
}

/// The index of the first `needle` in `haystack`, eight bytes at a time.
pub fn find_byte_by_words(needle: u8, haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let pattern = ONES * u64::from(needle);
    // The lowest byte of the word equal to `needle`, exactly (the borrow of the subtraction can
    // only mark bytes above a true match).
    let first = |chunk: &[u8]| {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) ^ pattern;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        (found != 0).then(|| (found.trailing_zeros() / 8) as usize)
    };
    let len = haystack.len();
    if len < 8 {
        return haystack.iter().position(|&b| b == needle);
    }
    let mut chunks = haystack.chunks_exact(8);
    for (k, chunk) in (&mut chunks).enumerate() {
        if let Some(i) = first(chunk) {
            return Some(k * 8 + i);
        }
    }
    if chunks.remainder().is_empty() {
        return None;
    }
    // The last eight bytes: nothing matched in the part already searched.
    first(&haystack[len - 8..]).map(|i| len - 8 + i)
}

/// The value of the path parameter `;name=value` in the path part of a raw request URI.
///
/// Only the path is searched (up to the first `?` or `#`); the name compares
/// case-insensitively; the value ends at `;`, `?`, `&`, `/`, `#` or the end. The first
/// non-empty value wins.
pub fn path_parameter<'a>(uri: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let path_end = find_byte(b'?', uri).unwrap_or(uri.len());
    let path_end = find_byte(b'#', &uri[..path_end]).unwrap_or(path_end);
    let path = &uri[..path_end];
    // Every parameter starts after a ';'; the first piece is the plain path.
    let first = find_byte(b';', path)?;
    path[first + 1..].split(|&b| b == b';').find_map(|param| parameter_value(param, name))
}

/// The value of `name=value` in a query string (the part after `?`, without it).
///
/// Parameters are separated by `&`; the name compares case-insensitively; the value ends at
/// `;`, `?`, `&`, `/`, `#` or the end. The first non-empty value wins.
pub fn query_parameter<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let args_end = find_byte(b'#', args).unwrap_or(args.len());
    args[..args_end].split(|&b| b == b'&').find_map(|param| parameter_value(param, name))
}

/// `name=value...` at the start of `param`: the value up to the first URL delimiter.
fn parameter_value<'a>(param: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = strip_prefix_ignore_case(param, name)?;
    let value = rest.strip_prefix(b"=")?;
    let end = value.iter().position(|b| URL_VALUE_END.contains(b)).unwrap_or(value.len());
    let value = &value[..end];
    (!value.is_empty()).then_some(value)
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without the spaces and tabs around it. The usual value has none: two comparisons.
#[inline(always)]
fn trim(s: &[u8]) -> &[u8] {
    match s {
        [first, .., last] if !is_space(*first) && !is_space(*last) => s,
        _ => trim_slow(s),
    }
}

#[inline(never)]
fn trim_slow(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_space(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        let words: [&[u8]; 9] = [
            b"",
            b"JSESSIONI",
            b"JSESSIONID",
            b"JSESSIONIE",
            b"jsessionid",
            b"KSESSIONID",
            b"0123456789abcdef",
            b"0123456789abcdeF",
            b"0123456789abcdef0",
        ];
        for a in words {
            for b in words {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn trim_takes_spaces_and_tabs_from_both_ends_only() {
        for (input, want) in [
            (&b""[..], &b""[..]),
            (b" ", b""),
            (b"a", b"a"),
            (b" a", b"a"),
            (b"a\t", b"a"),
            (b" \ta b\t ", b"a b"),
            (b"ab", b"ab"),
        ] {
            assert_eq!(trim(input), want, "{input:?}");
        }
    }

    fn cookies<'a>(header: &'a str, name: &'a str) -> Vec<&'a [u8]> {
        cookie_values(header.as_bytes(), name.as_bytes()).collect()
    }

    #[test]
    fn finds_every_cookie_of_the_name_in_order() {
        let header = "a=1; JSESSIONID=ONE.t1; b=2;JSESSIONID=TWO.t2";
        assert_eq!(cookies(header, "JSESSIONID"), [&b"ONE.t1"[..], b"TWO.t2"]);
    }

    #[test]
    fn cookie_names_compare_case_insensitively_and_exactly() {
        assert_eq!(cookies("jsessionid=X.a", "JSESSIONID"), [b"X.a"]);
        assert!(cookies("JSESSIONIDX=X.a; XJSESSIONID=Y.b", "JSESSIONID").is_empty());
    }

    #[test]
    fn cookie_values_are_trimmed_and_unquoted() {
        assert_eq!(cookies(" JSESSIONID = \"ABC.a\" ", "JSESSIONID"), [b"ABC.a"]);
        assert_eq!(cookies("JSESSIONID=\"", "JSESSIONID"), [b"\""]);
        assert_eq!(cookies("JSESSIONID=\"\"", "JSESSIONID"), Vec::<&[u8]>::new());
    }

    #[test]
    fn empty_and_malformed_cookies_are_skipped() {
        assert!(cookies("JSESSIONID=", "JSESSIONID").is_empty());
        assert!(cookies("JSESSIONID", "JSESSIONID").is_empty());
        assert!(cookies(";;;=;", "JSESSIONID").is_empty());
        assert!(cookies("", "JSESSIONID").is_empty());
        assert_eq!(cookies("JSESSIONID=a=b.c", "JSESSIONID"), [b"a=b.c"]);
    }

    #[test]
    fn find_byte_finds_the_first_one_at_every_position() {
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'x'; len];
                hay[at] = b';';
                if at + 3 < len {
                    hay[at + 3] = b';';
                }
                assert_eq!(find_byte(b';', &hay), Some(at), "len {len} at {at}");
                assert_eq!(find_byte_by_words(b';', &hay), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_byte(b';', &vec![b'x'; len]), None);
        }
        // Bytes just above and below the needle, and 0x80 (the borrow trick's edge).
        assert_eq!(find_byte(b';', b"\x80\xbb:<\x00\xff\x3b"), Some(6));
        assert_eq!(find_byte(0, b"abcdefgh\x00"), Some(8));
        assert_eq!(find_byte(0x80, b"\x7f\x81\x00\x80"), Some(3));
    }

    #[test]
    fn path_parameter_is_found_before_the_query() {
        let uri = b"/shop/cart.jsp;jsessionid=5C3A.tomcat01?item=3";
        assert_eq!(path_parameter(uri, b"jsessionid"), Some(&b"5C3A.tomcat01"[..]));
        assert_eq!(path_parameter(b"/a;JSESSIONID=X.a", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(
            path_parameter(b"/a;foo=1;jsessionid=X.a;bar=2", b"jsessionid"),
            Some(&b"X.a"[..])
        );
        assert_eq!(path_parameter(b"/a;jsessionid=X.a/b/c", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(path_parameter(b"/a;jsessionid=X.a#frag", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(path_parameter(b"/a;jsessionid=X.a&x=1", b"jsessionid"), Some(&b"X.a"[..]));
    }

    #[test]
    fn path_parameter_ignores_the_query_and_near_names() {
        assert_eq!(path_parameter(b"/a?x=1;jsessionid=X.a", b"jsessionid"), None);
        assert_eq!(path_parameter(b"/a#;jsessionid=X.a", b"jsessionid"), None);
        assert_eq!(path_parameter(b"/a;jsessionidx=X.a", b"jsessionid"), None);
        assert_eq!(path_parameter(b"/a;xjsessionid=X.a", b"jsessionid"), None);
        assert_eq!(path_parameter(b"/jsessionid=X.a", b"jsessionid"), None);
        assert_eq!(path_parameter(b"/a;jsessionid=", b"jsessionid"), None);
        assert_eq!(
            path_parameter(b"/a;jsessionid=;jsessionid=Y.b", b"jsessionid"),
            Some(&b"Y.b"[..])
        );
        // Percent-encoded delimiters are data, not delimiters.
        assert_eq!(path_parameter(b"/a%3Bjsessionid=X.a", b"jsessionid"), None);
    }

    #[test]
    fn query_parameter_at_start_or_after_ampersand() {
        assert_eq!(query_parameter(b"jsessionid=X.a", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(query_parameter(b"a=1&JSessionId=X.a&b=2", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(query_parameter(b"a=1&jsessionid=X.a;x", b"jsessionid"), Some(&b"X.a"[..]));
        assert_eq!(query_parameter(b"xjsessionid=X.a", b"jsessionid"), None);
        assert_eq!(query_parameter(b"jsessionid", b"jsessionid"), None);
        assert_eq!(query_parameter(b"jsessionid=", b"jsessionid"), None);
        assert_eq!(query_parameter(b"", b"jsessionid"), None);
        assert_eq!(query_parameter(b"a=b#jsessionid=X.a", b"jsessionid"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(
                data in proptest::collection::vec(any::<u8>(), 0..512),
                name in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let _ = cookie_values(&data, &name).count();
                let _ = path_parameter(&data, &name);
                let _ = query_parameter(&data, &name);
            }

            #[test]
            fn cookie_values_agree_with_the_plain_definition(
                header in proptest::collection::vec(
                    prop_oneof![Just(b';'), Just(b'='), Just(b' '), Just(b'\t'), Just(b'"'),
                                Just(b'j'), Just(b'J'), Just(b'x'), any::<u8>()],
                    0..120,
                ),
                name in prop_oneof![Just(b"j".to_vec()), Just(b"jJ".to_vec()), Just(Vec::new()),
                                    proptest::collection::vec(any::<u8>(), 0..4)],
            ) {
                // Split at every ';', cut each pair at its first '=', trim, compare.
                let plain: Vec<&[u8]> = header
                    .split(|&b| b == b';')
                    .filter_map(|pair| {
                        let eq = pair.iter().position(|&b| b == b'=')?;
                        trim(&pair[..eq]).eq_ignore_ascii_case(&name).then_some(&pair[eq + 1..])
                    })
                    .map(|v| unquote(trim(v)))
                    .filter(|v| !v.is_empty())
                    .collect();
                let found: Vec<&[u8]> = cookie_values(&header, &name).collect();
                prop_assert_eq!(found, plain);
            }

            #[test]
            fn find_byte_agrees_with_a_plain_search(
                hay in proptest::collection::vec(any::<u8>(), 0..100),
                needle in any::<u8>(),
            ) {
                let plain = hay.iter().position(|&b| b == needle);
                prop_assert_eq!(find_byte(needle, &hay), plain);
                prop_assert_eq!(find_byte_by_words(needle, &hay), plain);
            }

            #[test]
            fn values_found_are_inside_the_input_and_delimiter_free(
                data in "[a-zA-Z0-9;=&?/#. \"]{0,200}",
            ) {
                for value in cookie_values(data.as_bytes(), b"jsessionid") {
                    prop_assert!(!value.is_empty());
                    prop_assert!(!value.contains(&b';'));
                }
                for value in path_parameter(data.as_bytes(), b"jsessionid")
                    .into_iter()
                    .chain(query_parameter(data.as_bytes(), b"jsessionid"))
                {
                    prop_assert!(!value.is_empty());
                    prop_assert!(!value.iter().any(|b| URL_VALUE_END.contains(b)));
                }
            }

            #[test]
            fn a_planted_cookie_is_always_found(
                before in "[a-z]{1,8}=[A-Z0-9]{0,8}",
                id in "[A-F0-9]{1,32}\\.[a-z0-9]{1,12}",
            ) {
                let header = format!("{before}; JSESSIONID={id}");
                let found: Vec<&[u8]> = cookie_values(header.as_bytes(), b"JSESSIONID").collect();
                prop_assert_eq!(found.last().copied(), Some(id.as_bytes()));
            }

            #[test]
            fn a_planted_path_parameter_is_always_found(
                path in "(/[a-z0-9.]{0,8}){1,4}",
                id in "[A-F0-9]{1,32}\\.[a-z0-9-]{1,12}",
                query in "(\\?[a-z0-9=&;]{0,20})?",
            ) {
                let uri = format!("{path};jsessionid={id}{query}");
                prop_assert_eq!(path_parameter(uri.as_bytes(), b"jsessionid"), Some(id.as_bytes()));
            }
        }
    }
}
