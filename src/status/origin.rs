//! Whether a state-changing request comes from another site, as a browser tells it: a page of
//! another origin can make the operator's browser POST to the control location (with its
//! cookies and cached credentials), and such a request must change nothing. Pure, no nginx
//! types.
//!
//! The rule, in order: `Sec-Fetch-Site` (sent by current browsers) must be `same-origin` or
//! `none` (typed in, a bookmark); else `Origin`, if present, must name this host (`null`, sent
//! from sandboxed or privacy-sensitive contexts, is another site); else `Referer`, if present,
//! must. A request with none of them (curl, scripts) is not a browser's cross-site request.

/// The headers the rule reads, as sent (None when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
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
        (Some(from), Some(host)) => !same_authority(from, host.trim_ascii()),
        _ => true,
    }
}

/// The `host[:port]` of an absolute URL, with the scheme's default port dropped.
fn authority(url: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
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
    let default = if scheme.eq_ignore_ascii_case(b"https") { &b"443"[..] } else { &b"80"[..] };
    let (host, port) = split_port(hostport);
    Some((host, port.filter(|p| *p != default)))
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

/// Whether a URL's authority is the request's `Host` (a `Host` without a port, or with the
/// default one, matches an authority without one).
fn same_authority((host, port): (&[u8], Option<&[u8]>), request_host: &[u8]) -> bool {
    let (rhost, rport) = split_port(request_host);
    let rport = rport.filter(|p| *p != b"80" && *p != b"443");
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
        assert!(!is_cross_site(&h("LB", None, Some("https://lb"), None)));
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
    }
}
