//! Micro-benchmarks of the per-request work of the module that does not touch nginx: finding
//! the session id (Cookie header, `;jsessionid=` path parameter, query) and looking its route
//! up in the route table. `cargo bench --bench session`; `scripts/bench` measures the whole
//! module inside nginx.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ngx_http_upstream_jvm_route_module::rules::route::{
    choose_route, PeerList, RouteMode, RouteTable, SessionRoute,
};
use ngx_http_upstream_jvm_route_module::rules::session::{
    cookie_values, path_parameter, query_parameter,
};

const SESSION_HEX: &str = "5C3A9F0B7D21E4C68A0F3B5D7E9C1A2F";

/// srun_ids `s0001`..`sNNNN`, as `scripts/bench` configures them.
fn srun_ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("s{i:04}")).collect()
}

fn table(mode: RouteMode, ids: &[String]) -> RouteTable {
    RouteTable::build(
        mode,
        ids.iter().enumerate().map(|(i, id)| (id.as_bytes(), PeerList::Primary, i as u32)),
    )
}

/// A Cookie header of `count` cookies with `JSESSIONID=<id>` in the middle; the other
/// values are `filler` bytes long (analytics, consent, preferences...).
fn cookie_header(count: usize, filler: usize, session: &str) -> String {
    let mut cookies: Vec<String> = (0..count - 1)
        .map(|i| {
            let value: String =
                (0..filler).map(|k| char::from(b'a' + ((i * 7 + k) % 26) as u8)).collect();
            format!("_cookie{i:02}={value}")
        })
        .collect();
    cookies.insert(count / 2, format!("JSESSIONID={session}"));
    cookies.join("; ")
}

/// The module's cookie path: every `JSESSIONID` of the header line, reduced to a route.
fn route_of_cookie<'a>(t: &RouteTable, header: &'a [u8]) -> SessionRoute<'a> {
    choose_route(t, cookie_values(header, b"JSESSIONID"))
}

fn bench_cookies(c: &mut Criterion) {
    let ids = srun_ids(64);
    let t = table(RouteMode::AfterFirstDot, &ids);
    let session = format!("{SESSION_HEX}.s0032");
    let typical = cookie_header(10, 20, &session);
    let long = cookie_header(60, 60, &session);
    assert!(long.len() >= 4000, "long header is {} bytes", long.len());

    let mut group = c.benchmark_group("cookie");
    for (name, header) in [("typical_10_cookies", &typical), ("long_60_cookies_4k", &long)] {
        let header = header.as_bytes();
        assert!(matches!(route_of_cookie(&t, header), SessionRoute::Known(..)));
        group.throughput(Throughput::Bytes(header.len() as u64));
        group.bench_with_input(BenchmarkId::new("cookie_values", name), header, |b, h| {
            b.iter(|| cookie_values(black_box(h), b"JSESSIONID").count())
        });
        group.bench_with_input(BenchmarkId::new("to_route", name), header, |b, h| {
            b.iter(|| route_of_cookie(&t, black_box(h)))
        });
    }
    // No JSESSIONID at all: the whole header is scanned for nothing (the common case of
    // static assets and first visits).
    let without = cookie_header(10, 20, "x").replace("JSESSIONID=x", "_other=x");
    group.throughput(Throughput::Bytes(without.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("to_route", "typical_10_cookies_no_session"),
        without.as_bytes(),
        |b, h| b.iter(|| route_of_cookie(&t, black_box(h))),
    );
    group.finish();
}

fn bench_url(c: &mut Criterion) {
    let uri = format!("/shop/cart.jsp;jsessionid={SESSION_HEX}.s0032?item=3&lang=en&ref=home");
    let args = format!("item=3&lang=en&jsessionid={SESSION_HEX}.s0032&ref=home");
    let plain_uri = "/shop/cart.jsp?item=3&lang=en&ref=home";
    let plain_args = "item=3&lang=en&ref=home";
    assert!(path_parameter(uri.as_bytes(), b"jsessionid").is_some());
    assert!(query_parameter(args.as_bytes(), b"jsessionid").is_some());

    let mut group = c.benchmark_group("url");
    group.bench_function("path_parameter/present", |b| {
        b.iter(|| path_parameter(black_box(uri.as_bytes()), b"jsessionid"))
    });
    group.bench_function("path_parameter/absent", |b| {
        b.iter(|| path_parameter(black_box(plain_uri.as_bytes()), b"jsessionid"))
    });
    group.bench_function("query_parameter/present", |b| {
        b.iter(|| query_parameter(black_box(args.as_bytes()), b"jsessionid"))
    });
    group.bench_function("query_parameter/absent", |b| {
        b.iter(|| query_parameter(black_box(plain_args.as_bytes()), b"jsessionid"))
    });
    group.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for n in [2usize, 1024] {
        let ids = srun_ids(n);
        let middle = &ids[(n / 2).max(1) - 1];
        for (mode_name, mode) in
            [("reverse", RouteMode::AfterFirstDot), ("prefix", RouteMode::Prefix)]
        {
            let t = table(mode, &ids);
            let (hit, miss) = match mode {
                // A miss of the same length as the srun_ids, so that the hash table is probed
                // (a longer route is rejected before).
                RouteMode::AfterFirstDot => {
                    (format!("{SESSION_HEX}.{middle}"), format!("{SESSION_HEX}.z0000"))
                }
                // Resin: the srun_id is the prefix of the session id.
                RouteMode::Prefix => (format!("{middle}{SESSION_HEX}"), format!("x{SESSION_HEX}")),
            };
            assert!(t.lookup(hit.as_bytes()).is_some(), "{mode_name} {n}: {hit}");
            assert!(t.lookup(miss.as_bytes()).is_none(), "{mode_name} {n}: {miss}");
            group.bench_with_input(
                BenchmarkId::new(format!("{mode_name}/hit"), n),
                hit.as_bytes(),
                |b, s| b.iter(|| t.lookup(black_box(s))),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{mode_name}/miss"), n),
                miss.as_bytes(),
                |b, s| b.iter(|| t.lookup(black_box(s))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_cookies, bench_url, bench_lookup);
criterion_main!(benches);
