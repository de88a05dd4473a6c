//! `session::cookie_values` on arbitrary bytes: a `Cookie` header line and a cookie name.
//!
//! Input layout: byte 0 chooses the name: if its top bit is set the name is `JSESSIONID` (the
//! usual case, so planted cookies are common), otherwise its low 4 bits are the length of a name
//! taken from the bytes that follow. The rest is the header line.
#![no_main]

use jvm_route_pure::session::cookie_values;
use jvm_route_pure::{name_and_rest, offset_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, header)) = name_and_rest(data, b"JSESSIONID") else { return };

    let found: Vec<&[u8]> = cookie_values(header, name).collect();

    // Every value is non-empty, has no ';', lies inside the header, and they come in order
    // without overlapping.
    let mut previous_end = 0;
    for value in &found {
        assert!(!value.is_empty(), "empty value");
        assert!(!value.contains(&b';'), "value with ';': {value:?}");
        let at = offset_in(header, value).expect("value is not a subslice of the header");
        assert!(at >= previous_end, "values out of order or overlapping");
        previous_end = at + value.len();
    }

    // Exactly what the reference finds, at the same places.
    let got: Vec<(usize, usize)> =
        found.iter().map(|v| (offset_in(header, v).unwrap(), v.len())).collect();
    assert_eq!(got, reference(header, name), "header {header:?} name {name:?}");

    // Names compare case-insensitively: the same values, whatever the case of the name.
    for other in [name.to_ascii_uppercase(), name.to_ascii_lowercase()] {
        assert!(cookie_values(header, &other).eq(found.iter().copied()), "case changes result");
    }

    // A cookie appended as `;NAME=VALUE` is found, last. Only for names that can be written
    // as a cookie name: no ';' or '=' in it, no spaces or tabs at its ends.
    let writable = !name.iter().any(|&b| b == b';' || b == b'=')
        && name.first().is_none_or(|b| !matches!(b, b' ' | b'\t'))
        && name.last().is_none_or(|b| !matches!(b, b' ' | b'\t'));
    if writable {
        let planted = b"5C3A.tomcat01";
        let mut line = header.to_vec();
        line.push(b';');
        line.extend_from_slice(name);
        line.push(b'=');
        line.extend_from_slice(planted);
        let all: Vec<&[u8]> = cookie_values(&line, name).collect();
        assert_eq!(all.len(), found.len() + 1, "planted cookie not found once more");
        assert_eq!(all.last().copied(), Some(&planted[..]));
        assert!(all[..found.len()].iter().eq(found.iter()), "planting changed earlier values");
    }
});

/// A plain reimplementation with indices: split at every ';', trim spaces and tabs, split at the
/// first '=', compare the trimmed key with the name ignoring ASCII case, trim the value, remove
/// one pair of surrounding double quotes, skip empty values. Returns (offset, length) pairs.
fn reference(header: &[u8], name: &[u8]) -> Vec<(usize, usize)> {
    let space = |b: u8| b == b' ' || b == b'\t';
    let lower = |b: u8| if b.is_ascii_uppercase() { b + 32 } else { b };
    let mut out = Vec::new();
    let mut start = 0;
    while start <= header.len() {
        let mut end = start;
        while end < header.len() && header[end] != b';' {
            end += 1;
        }
        // The pair is header[start..end].
        if let Some(eq) = (start..end).find(|&i| header[i] == b'=') {
            let (mut ks, mut ke) = (start, eq);
            while ks < ke && space(header[ks]) {
                ks += 1;
            }
            while ke > ks && space(header[ke - 1]) {
                ke -= 1;
            }
            let key_matches = ke - ks == name.len()
                && (0..name.len()).all(|i| lower(header[ks + i]) == lower(name[i]));
            if key_matches {
                let (mut vs, mut ve) = (eq + 1, end);
                while vs < ve && space(header[vs]) {
                    vs += 1;
                }
                while ve > vs && space(header[ve - 1]) {
                    ve -= 1;
                }
                if ve - vs >= 2 && header[vs] == b'"' && header[ve - 1] == b'"' {
                    vs += 1;
                    ve -= 1;
                }
                if ve > vs {
                    out.push((vs, ve - vs));
                }
            }
        }
        start = end + 1;
    }
    out
}
