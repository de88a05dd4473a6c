//! The arguments of a control request, as a browser's form or curl sends them: pairs
//! `name=value` joined by `&`, in the query string or an `application/x-www-form-urlencoded`
//! body, percent-decoded (and `+` for a space). Pure, no nginx types.

/// The decoded value of the first `name` among `sources` (query first, then body). A value
/// that is not valid percent-encoding is no value.
pub fn value(sources: &[&[u8]], name: &[u8]) -> Option<Vec<u8>> {
    sources.iter().flat_map(|s| s.split(|&b| b == b'&')).find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        (decode(key)? == name).then(|| decode(value)).flatten()
    })
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
    fn values_are_decoded_and_the_query_comes_first() {
        let query: &[u8] = b"upstream=tom%63ats&action=drain";
        let body: &[u8] = b"action=down&srun_id=tomcat%3C01%3E+x";
        assert_eq!(value(&[query, body], b"upstream").as_deref(), Some(&b"tomcats"[..]));
        assert_eq!(value(&[query, body], b"action").as_deref(), Some(&b"drain"[..]));
        assert_eq!(value(&[query, body], b"srun_id").as_deref(), Some(&b"tomcat<01> x"[..]));
        assert_eq!(value(&[query, body], b"weight"), None);
        assert_eq!(value(&[b"a%3Dx=1"], b"a=x").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn bad_encoding_is_no_value() {
        assert_eq!(decode(b"%"), None);
        assert_eq!(decode(b"%4"), None);
        assert_eq!(decode(b"%zz"), None);
        assert_eq!(value(&[b"srun_id=%G1"], b"srun_id"), None);
        assert_eq!(decode(b"%e2%82%ac").as_deref(), Some("€".as_bytes()));
    }
}
