//! `route::first_usable`: the first usable candidate, starting at `start` and wrapping around,
//! for any `start` (the balancer passes a per-route cursor that grows by one per request,
//! wrapping at `usize::MAX`).
#![no_main]

use arbitrary::Arbitrary;
use jvm_route_pure::route::first_usable;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    candidates: Vec<u32>,
    start: usize,
    /// Candidate values that are usable: `usable[c % len]` (all unusable when empty).
    usable: Vec<bool>,
}

fuzz_target!(|input: Input| {
    let Input { candidates, start, usable } = input;
    let is_usable = |c: u32| !usable.is_empty() && usable[c as usize % usable.len()];

    let mut asked = Vec::new();
    let got = first_usable(&candidates, start, |c| {
        asked.push(c);
        is_usable(c)
    });

    // Reference: positions start, start+1, ... modulo n, computed without overflow.
    let n = candidates.len();
    let order: Vec<u32> =
        (0..n).map(|k| candidates[((start as u128 + k as u128) % n as u128) as usize]).collect();
    let expected = order.iter().copied().find(|&c| is_usable(c));
    assert_eq!(got, expected, "start {start}, {n} candidates");
    // It asks about candidates in that order and stops at the first usable one.
    let asked_expected = match order.iter().position(|&c| is_usable(c)) {
        Some(p) => &order[..=p],
        None => &order[..],
    };
    assert_eq!(asked, asked_expected, "start {start}: candidates asked in the wrong order");
});
