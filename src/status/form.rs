//! The arguments of a control request, as a browser's form or curl sends them: pairs
//! `name=value` joined by `&`, in an `application/x-www-form-urlencoded` body or else the
//! query string (one source, never both), percent-decoded (and `+` for a space). A name given
//! twice, or a bad encoding, refuses the request. Pure, no nginx types.

/// Why the arguments of a control request are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormError {
    /// A name or value that is not valid percent-encoding.
    BadEncoding(Vec<u8>),
    /// A name given more than once.
    Repeated(Vec<u8>),
}

/// Decoded `(name, value)` pairs, each name once.
pub type Args = Vec<(Vec<u8>, Vec<u8>)>;

/// The decoded arguments of one source (the form body, or else the query string), each name
/// once. Empty pairs (`a=1&&b=2`) are skipped.
pub fn parse(source: &[u8]) -> Result<Args, FormError> {
    let mut out: Args = Vec::new();
    for pair in source.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let key = decode(key).ok_or_else(|| FormError::BadEncoding(key.to_vec()))?;
        let value = decode(value).ok_or_else(|| FormError::BadEncoding(key.clone()))?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(FormError::Repeated(key));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The value of `name` among parsed arguments.
pub fn get<'a>(args: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    args.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// Percent-decodes `text` (`+` is a space); None for a `%` not followed by two hex digits.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let hi = hex(*text.get(i + 1)?)?;
                let lo = hex(*text.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded() {
        let args = parse(b"upstream=tom%63ats&action=drain&srun_id=tomcat%3C01%3E+x").unwrap();
        assert_eq!(get(&args, b"upstream"), Some(&b"tomcats"[..]));
        assert_eq!(get(&args, b"action"), Some(&b"drain"[..]));
        assert_eq!(get(&args, b"srun_id"), Some(&b"tomcat<01> x"[..]));
        assert_eq!(get(&args, b"weight"), None);
        assert_eq!(get(&parse(b"a%3Dx=1").unwrap(), b"a=x"), Some(&b"1"[..]));
        assert_eq!(parse(b"&&a=1&").unwrap().len(), 1);
    }

    #[test]
    fn a_name_twice_or_a_bad_encoding_is_refused() {
        assert_eq!(
            parse(b"srun_id=%G1&srun_id=b"),
            Err(FormError::BadEncoding(b"srun_id".to_vec()))
        );
        assert_eq!(parse(b"srun_id=a&srun_id=b"), Err(FormError::Repeated(b"srun_id".to_vec())));
        assert_eq!(parse(b"srun%5Fid=a&srun_id=b"), Err(FormError::Repeated(b"srun_id".to_vec())));
        assert_eq!(parse(b"a%zz=1"), Err(FormError::BadEncoding(b"a%zz".to_vec())));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn encode(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("%{b:02X}")).collect()
        }

        proptest! {
            #[test]
            fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&input);
                let _ = decode(&input);
            }

            #[test]
            fn encoded_pairs_come_back_as_they_were(
                pairs in proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 1..12),
                    proptest::collection::vec(any::<u8>(), 0..24),
                    0..6,
                ),
            ) {
                let text: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
                let args = parse(text.join("&").as_bytes()).unwrap();
                prop_assert_eq!(args.len(), pairs.len());
                for (k, v) in &pairs {
                    prop_assert_eq!(get(&args, k), Some(v.as_slice()));
                }
            }
        }
    }

    #[test]
    fn bad_encoding_is_no_value() {
        assert_eq!(decode(b"%"), None);
        assert_eq!(decode(b"%4"), None);
        assert_eq!(decode(b"%zz"), None);
        assert_eq!(decode(b"%e2%82%ac").as_deref(), Some("€".as_bytes()));
    }
}
