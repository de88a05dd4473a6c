//! `session::path_parameter` and `session::query_parameter` on arbitrary bytes.
//!
//! Input layout: byte 0 chooses the name: if its top bit is set the name is `jsessionid`,
//! otherwise its low 4 bits are the length of a name taken from the bytes that follow. The rest
//! is a raw request URI; it is also searched as a query string, as is its part after the first
//! '?' (what nginx gives as `$args`).
#![no_main]

use jvm_route_pure::session::{path_parameter, query_parameter};
use jvm_route_pure::{name_and_rest, offset_in};
use libfuzzer_sys::fuzz_target;

const DELIMITERS: &[u8] = b";?&/#";

fuzz_target!(|data: &[u8]| {
    let Some((name, uri)) = name_and_rest(data, b"jsessionid") else { return };

    // The path parameter.
    let path_end = uri.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(uri.len());
    let from_path = path_parameter(uri, name);
    if let Some(value) = from_path {
        let at = check_value(uri, value);
        assert!(at + value.len() <= path_end, "path parameter after the first '?' or '#'");
        // Preceded by ";NAME=".
        assert!(at >= name.len() + 2, "no room for ';NAME=' before the value");
        assert_eq!(uri[at - 1], b'=');
        assert!(uri[at - 1 - name.len()..at - 1].eq_ignore_ascii_case(name));
        assert_eq!(uri[at - 2 - name.len()], b';');
    }
    assert_eq!(
        from_path.map(|v| (offset_in(uri, v).unwrap(), v.len())),
        reference_path(uri, name),
        "path_parameter({uri:?}, {name:?})"
    );
    // Nothing after the path matters.
    assert_eq!(path_parameter(&uri[..path_end], name), from_path);
    // Case of the name does not matter.
    assert_eq!(path_parameter(uri, &name.to_ascii_uppercase()), from_path);
    assert_eq!(path_parameter(uri, &name.to_ascii_lowercase()), from_path);

    // The query parameter, in the whole input and in the part after the first '?'.
    let args_whole = uri;
    let args_after = match uri.iter().position(|&b| b == b'?') {
        Some(q) => &uri[q + 1..],
        None => &uri[uri.len()..],
    };
    for args in [args_whole, args_after] {
        let from_query = query_parameter(args, name);
        if let Some(value) = from_query {
            let at = check_value(args, value);
            let args_end = args.iter().position(|&b| b == b'#').unwrap_or(args.len());
            assert!(at + value.len() <= args_end, "query parameter after the first '#'");
            // Preceded by "NAME=", at the start or after '&'.
            assert!(at > name.len(), "no room for 'NAME=' before the value");
            assert_eq!(args[at - 1], b'=');
            assert!(args[at - 1 - name.len()..at - 1].eq_ignore_ascii_case(name));
            let param_start = at - 1 - name.len();
            assert!(param_start == 0 || args[param_start - 1] == b'&', "not a parameter start");
        }
        assert_eq!(
            from_query.map(|v| (offset_in(args, v).unwrap(), v.len())),
            reference_query(args, name),
            "query_parameter({args:?}, {name:?})"
        );
        assert_eq!(query_parameter(args, &name.to_ascii_uppercase()), from_query);
    }

    // A planted parameter is found when nothing before it would be.
    if !name.iter().any(|b| DELIMITERS.contains(b) || *b == b'=') {
        let planted = b"5C3A.tomcat01";
        if from_path.is_none() {
            let mut u = uri[..path_end].to_vec();
            u.push(b';');
            u.extend_from_slice(name);
            u.push(b'=');
            u.extend_from_slice(planted);
            u.extend_from_slice(&uri[path_end..]);
            assert_eq!(path_parameter(&u, name), Some(&planted[..]), "planted in {u:?}");
        }
        let args_end = args_after.iter().position(|&b| b == b'#').unwrap_or(args_after.len());
        if query_parameter(args_after, name).is_none() {
            let mut a = args_after[..args_end].to_vec();
            a.push(b'&');
            a.extend_from_slice(name);
            a.push(b'=');
            a.extend_from_slice(planted);
            assert_eq!(query_parameter(&a, name), Some(&planted[..]), "planted in {a:?}");
        }
    }
});

/// Common checks of a found value; returns where it lies in `input`.
fn check_value(input: &[u8], value: &[u8]) -> usize {
    assert!(!value.is_empty(), "empty value");
    assert!(!value.iter().any(|b| DELIMITERS.contains(b)), "delimiter in {value:?}");
    let at = offset_in(input, value).expect("value is not a subslice of the input");
    // The value runs to a delimiter or the end: it is never cut short.
    let end = at + value.len();
    assert!(end == input.len() || DELIMITERS.contains(&input[end]), "value cut short");
    at
}

fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b + 32
    } else {
        b
    }
}

/// `NAME=` at `i` in `s`, ignoring case, within `s[..limit]`; then the value up to a
/// delimiter or `limit`, if not empty: (offset, length).
fn value_at(s: &[u8], i: usize, limit: usize, name: &[u8]) -> Option<(usize, usize)> {
    if i + name.len() + 1 > limit {
        return None;
    }
    if !(0..name.len()).all(|k| lower(s[i + k]) == lower(name[k])) || s[i + name.len()] != b'=' {
        return None;
    }
    let start = i + name.len() + 1;
    let mut end = start;
    while end < limit && !DELIMITERS.contains(&s[end]) {
        end += 1;
    }
    (end > start).then_some((start, end - start))
}

/// The first non-empty `;NAME=value` before the first '?' or '#'. A parameter ends at the
/// next ';' (the name may not contain one to match across it).
fn reference_path(uri: &[u8], name: &[u8]) -> Option<(usize, usize)> {
    let mut limit = 0;
    while limit < uri.len() && uri[limit] != b'?' && uri[limit] != b'#' {
        limit += 1;
    }
    for i in 0..limit {
        if uri[i] != b';' {
            continue;
        }
        let mut param_end = i + 1;
        while param_end < limit && uri[param_end] != b';' {
            param_end += 1;
        }
        if let Some(found) = value_at(uri, i + 1, param_end, name) {
            return Some(found);
        }
    }
    None
}

/// The first non-empty `NAME=value` at the start or after an '&', before the first '#'.
fn reference_query(args: &[u8], name: &[u8]) -> Option<(usize, usize)> {
    let mut limit = 0;
    while limit < args.len() && args[limit] != b'#' {
        limit += 1;
    }
    for i in 0..=limit {
        if i != 0 && args[i - 1] != b'&' {
            continue;
        }
        let mut param_end = i;
        while param_end < limit && args[param_end] != b'&' {
            param_end += 1;
        }
        if let Some(found) = value_at(args, i, param_end, name) {
            return Some(found);
        }
    }
    None
}
