//! Whether a state-changing request comes from another site, as a browser tells it: a page of
//! another origin can make the operator's browser POST to the control location (with its
//! cookies and cached credentials), and such a request must change nothing. Pure, no nginx
//! types.
//!
//! The rule, in order: `Sec-Fetch-Site` (sent by current browsers) must be `same-origin` or
//! `none` (typed in, a bookmark); else `Origin`, if present, must name this scheme, host and
//! port (`null`, sent from sandboxed or privacy-sensitive contexts, is another site); else
//! `Referer`, if present, must. A request with none of them (curl, scripts) is not a browser's
//! cross-site request.
//!
//! A page on a name the attacker rebinds to the load balancer's address (DNS rebinding) is
//! "same-origin" to the browser, and its `Origin` names the attacker's host, equal to the
//! `Host` it sends: [`host_allowed`] decides whether such a name may be answered at all.

/// The headers the rule reads, as sent (None when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
    /// The request's scheme (`http` or `https`).
    pub scheme: &'a [u8],
    /// `Host`.
    pub host: Option<&'a [u8]>,
    /// `Sec-Fetch-Site`.
    pub fetch_site: Option<&'a [u8]>,
    /// `Origin`.
    pub origin: Option<&'a [u8]>,
    /// `Referer`.
    pub referer: Option<&'a [u8]>,
}

/// Whether the request must be refused as cross-site (see the module documentation).
pub fn is_cross_site(h: &Headers) -> bool {
    if let Some(site) = h.fetch_site {
        let site = site.trim_ascii();
        return !(site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none"));
    }
    let Some(url) = h.origin.or(h.referer) else { return false };
    match (authority(url), h.host) {
        (Some((scheme, host, port)), Some(request_host)) => {
            !scheme.eq_ignore_ascii_case(h.scheme)
                || !same_authority((host, port), request_host.trim_ascii(), h.scheme)
        }
        _ => true,
    }
}

/// Whether a request whose `Host` names `host` (without its port, as nginx keeps it in
/// `r->headers_in.server`) may be answered where a browser could be made to send it: an IP
/// literal, `localhost`, or one of `names`, the server block's exact names (wildcard and regex
/// names are left out by the caller). No host at all (HTTP/1.0) is an address, not a name.
pub fn host_allowed<N: AsRef<[u8]>>(host: &[u8], names: &[N]) -> bool {
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.eq_ignore_ascii_case(b"localhost") {
        return true;
    }
    if is_ip_literal(host) {
        return true;
    }
    names.iter().map(AsRef::as_ref).any(|n| !n.is_empty() && n.eq_ignore_ascii_case(host))
}

/// An IPv4 address in dotted decimal, or an IPv6 address in brackets.
fn is_ip_literal(host: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(host) else { return false };
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    text.parse::<std::net::Ipv4Addr>().is_ok()
}

/// A URL's scheme, host and port (none when it is the scheme's default).
type Authority<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

/// The scheme and `host[:port]` of an absolute URL, with the scheme's default port dropped.
fn authority(url: &[u8]) -> Option<Authority<'_>> {
    let url = url.trim_ascii();
    let sep = url.windows(3).position(|w| w == b"://")?;
    let scheme = &url[..sep];
    let rest = &url[sep + 3..];
    let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let hostport = &rest[..end];
    // Credentials in a URL (`user@host`) are not part of the authority compared.
    let hostport = match hostport.iter().rposition(|&b| b == b'@') {
        Some(at) => &hostport[at + 1..],
        None => hostport,
    };
    let (host, port) = split_port(hostport);
    Some((scheme, host, port.filter(|p| *p != default_port(scheme))))
}

/// `host` and `port` of `host[:port]` (an IPv6 literal keeps its brackets).
fn split_port(hostport: &[u8]) -> (&[u8], Option<&[u8]>) {
    let after_literal = if hostport.starts_with(b"[") {
        hostport.iter().position(|&b| b == b']').map_or(hostport.len(), |i| i + 1)
    } else {
        0
    };
    match hostport[after_literal..].iter().rposition(|&b| b == b':') {
        Some(colon) => {
            let colon = after_literal + colon;
            (&hostport[..colon], Some(&hostport[colon + 1..]))
        }
        None => (hostport, None),
    }
}

/// The default port of a scheme.
fn default_port(scheme: &[u8]) -> &'static [u8] {
    if scheme.eq_ignore_ascii_case(b"https") {
        b"443"
    } else {
        b"80"
    }
}

/// Whether a URL's authority is the request's `Host` (a `Host` without a port, or with the
/// request scheme's default one, matches an authority without one).
fn same_authority(
    (host, port): (&[u8], Option<&[u8]>),
    request_host: &[u8],
    scheme: &[u8],
) -> bool {
    let (rhost, rport) = split_port(request_host);
    let rport = rport.filter(|p| *p != default_port(scheme));
    host.eq_ignore_ascii_case(rhost) && port == rport
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(
        host: &'a str,
        fetch_site: Option<&'a str>,
        origin: Option<&'a str>,
        referer: Option<&'a str>,
    ) -> Headers<'a> {
        Headers {
            scheme: b"http",
            host: Some(host.as_bytes()),
            fetch_site: fetch_site.map(str::as_bytes),
            origin: origin.map(str::as_bytes),
            referer: referer.map(str::as_bytes),
        }
    }

    #[test]
    fn curl_and_same_origin_pages_pass() {
        assert!(!is_cross_site(&h("lb", None, None, None)));
        assert!(!is_cross_site(&h("lb:8080", None, Some("http://lb:8080"), None)));
        let https = Headers { scheme: b"https", ..h("LB", None, Some("https://lb"), None) };
        assert!(!is_cross_site(&https));
        assert!(!is_cross_site(&h("lb", None, Some("http://lb:80"), None)));
        assert!(!is_cross_site(&h("lb:8080", None, None, Some("http://lb:8080/status?x"))));
        assert!(!is_cross_site(&h("lb", Some("same-origin"), Some("http://lb"), None)));
        assert!(!is_cross_site(&h("lb", Some("none"), None, None)));
        assert!(!is_cross_site(&h("[::1]:8080", None, Some("http://[::1]:8080"), None)));
    }

    #[test]
    fn other_sites_are_refused() {
        assert!(is_cross_site(&h("lb", None, Some("http://evil.example"), None)));
        assert!(is_cross_site(&h("lb", None, Some("null"), None)));
        assert!(is_cross_site(&h("lb:8080", None, Some("http://lb:8081"), None)));
        assert!(is_cross_site(&h("lb", Some("cross-site"), None, None)));
        assert!(is_cross_site(&h("lb", Some("same-site"), Some("http://lb"), None)));
        assert!(is_cross_site(&h("lb", None, None, Some("http://evil.example/lb"))));
        assert!(is_cross_site(&h("lb", None, Some("http://lb.evil.example"), None)));
        assert!(is_cross_site(&h("lb", None, Some("http://evil.example@lb.x"), None)));
        // An origin but no Host to compare it with.
        let no_host = Headers { origin: Some(b"http://lb"), ..Headers::default() };
        assert!(is_cross_site(&no_host));
        // The scheme counts: an http page may not act on the https location, nor the reverse.
        assert!(is_cross_site(&h("lb", None, Some("https://lb"), None)));
        let https = Headers { scheme: b"https", ..h("lb", None, Some("http://lb"), None) };
        assert!(is_cross_site(&https));
        assert!(is_cross_site(&h("lb", None, None, Some("https://lb/status"))));
    }

    #[test]
    fn only_addresses_localhost_and_exact_server_names_are_answered() {
        let names: &[&[u8]] = &[b"lb.example.com", b"status.internal"];
        for ok in ["127.0.0.1", "10.1.2.3", "[::1]", "[2001:db8::1]", "localhost", "LOCALHOST", ""]
        {
            assert!(host_allowed(ok.as_bytes(), names), "{ok}");
        }
        assert!(host_allowed(b"lb.example.com", names));
        assert!(host_allowed(b"LB.Example.COM.", names));
        for bad in [
            "rebind.attacker.example",
            "lb.example.com.evil",
            "127.0.0.1.nip.io",
            "::1",
            "[::1",
            "1.2.3",
            "localhost.evil",
        ] {
            assert!(!host_allowed(bad.as_bytes(), names), "{bad}");
        }
        assert!(!host_allowed(b"x", &[b""]));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(
                scheme in proptest::collection::vec(any::<u8>(), 0..8),
                host in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                site in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                origin in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
                referer in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
            ) {
                let h = Headers {
                    scheme: &scheme,
                    host: host.as_deref(),
                    fetch_site: site.as_deref(),
                    origin: origin.as_deref(),
                    referer: referer.as_deref(),
                };
                let _ = is_cross_site(&h);
                let _ = host_allowed(host.as_deref().unwrap_or_default(), &[b"a.example"]);
            }

            #[test]
            fn a_page_is_same_site_only_with_its_own_scheme_host_and_port(
                host in "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
                port in proptest::option::of(1u16..65535),
                other in "[a-z]{1,8}",
                https in any::<bool>(),
            ) {
                let scheme: &[u8] = if https { b"https" } else { b"http" };
                let authority = match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host.clone(),
                };
                let origin = format!("{}://{authority}", if https { "https" } else { "http" });
                let own = Headers {
                    scheme,
                    host: Some(authority.as_bytes()),
                    origin: Some(origin.as_bytes()),
                    ..Headers::default()
                };
                prop_assert!(!is_cross_site(&own));
                let elsewhere = format!("{}://{other}.{authority}", if https { "https" } else { "http" });
                let foreign = Headers { origin: Some(elsewhere.as_bytes()), ..own };
                prop_assert!(is_cross_site(&foreign));
                let flipped = Headers { scheme: if https { b"http" } else { b"https" }, ..own };
                prop_assert!(is_cross_site(&flipped));
            }

            #[test]
            fn a_host_that_is_a_name_needs_to_be_listed(name in "[a-z]{2,10}\\.[a-z]{2,5}") {
                prop_assert!(!host_allowed::<&[u8]>(name.as_bytes(), &[]));
                prop_assert!(host_allowed(name.as_bytes(), &[name.as_bytes()]));
            }
        }
    }
}
