//! `form::parse` and `form::decode` on arbitrary bytes: no panic; every name comes back once;
//! a value with no `%` and no `+` comes back unchanged; and decoding is the inverse of
//! percent-encoding every byte.
#![no_main]

use jvm_route_pure::form::{decode, get, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(args) = parse(data) {
        for (i, (name, value)) in args.iter().enumerate() {
            assert!(args[..i].iter().all(|(n, _)| n != name), "a name twice");
            assert_eq!(get(&args, name), Some(value.as_slice()));
        }
    }
    if !data.contains(&b'%') && !data.contains(&b'+') {
        assert_eq!(decode(data).as_deref(), Some(data));
    }
    let encoded: Vec<u8> = data.iter().flat_map(|b| format!("%{b:02x}").into_bytes()).collect();
    assert_eq!(decode(&encoded).as_deref(), Some(data));
});
