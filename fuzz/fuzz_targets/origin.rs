//! `origin::is_cross_site` and `origin::host_allowed` on arbitrary headers.
//!
//! Input layout: the bytes are split at 0xFF into the scheme, Host, Sec-Fetch-Site, Origin and
//! Referer (a missing part is an absent header). Checked: no panic; a request with no
//! Sec-Fetch-Site, Origin nor Referer is never cross-site; a page whose Origin is exactly
//! `scheme://Host` is never cross-site; an IP literal Host is always allowed.
#![no_main]

use jvm_route_pure::origin::{host_allowed, is_cross_site, Headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let scheme = parts.next().unwrap_or_default();
    let (host, site, origin, referer) = (parts.next(), parts.next(), parts.next(), parts.next());
    let h = Headers { scheme, host, fetch_site: site, origin, referer };
    let cross = is_cross_site(&h);
    if site.is_none() && origin.is_none() && referer.is_none() {
        assert!(!cross, "curl is not a cross-site browser");
    }
    if let Some(host) = host {
        let _ = host_allowed(host, &[b"lb.example.com"]);
        let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-';
        let simple_scheme = scheme == b"http" || scheme == b"https";
        if simple_scheme && !host.is_empty() && host.iter().all(plain) {
            let mut own = scheme.to_vec();
            own.extend_from_slice(b"://");
            own.extend_from_slice(host);
            let same = Headers { origin: Some(&own), fetch_site: None, ..h };
            assert!(!is_cross_site(&same), "a page of this very origin");
        }
        if let Ok(text) = std::str::from_utf8(host) {
            if text.parse::<std::net::Ipv4Addr>().is_ok() {
                assert!(host_allowed::<&[u8]>(host, &[]));
            }
        }
    }
});
