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
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        while let Some(current) = rest {
            let (pair, next) = match memchr::memchr(b';', current) {
                Some(semi) => (&current[..semi], Some(&current[semi + 1..])),
                None => (current, None),
            };
            rest = next;
            if let Some(value) = cookie_value(pair, name) {
                return Some(value);
            }
        }
        None
    })
}

/// The value of one `name=value` pair of a Cookie header, if it has the wanted name.
fn cookie_value<'a>(pair: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let eq = memchr::memchr(b'=', pair)?;
    if !trim(&pair[..eq]).eq_ignore_ascii_case(name) {
        return None;
    }
    let value = unquote(trim(&pair[eq + 1..]));
    (!value.is_empty()).then_some(value)
}

/// The value of the path parameter `;name=value` in the path part of a raw request URI.
///
/// Only the path is searched (up to the first `?` or `#`); the name compares
/// case-insensitively; the value ends at `;`, `?`, `&`, `/`, `#` or the end. The first
/// non-empty value wins.
pub fn path_parameter<'a>(uri: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let path_end = memchr::memchr2(b'?', b'#', uri).unwrap_or(uri.len());
    let path = &uri[..path_end];
    // Every parameter starts after a ';'; the first piece is the plain path.
    let first = memchr::memchr(b';', path)?;
    path[first + 1..].split(|&b| b == b';').find_map(|param| parameter_value(param, name))
}

/// The value of `name=value` in a query string (the part after `?`, without it).
///
/// Parameters are separated by `&`; the name compares case-insensitively; the value ends at
/// `;`, `?`, `&`, `/`, `#` or the end. The first non-empty value wins.
pub fn query_parameter<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let args_end = memchr::memchr(b'#', args).unwrap_or(args.len());
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

fn trim(s: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_space(b)).map_or(start, |i| i + 1);
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
