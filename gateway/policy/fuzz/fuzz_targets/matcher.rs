#![no_main]
//! Pattern parsing and matching must never panic, and priority between two
//! distinct patterns must be antisymmetric.

use keybridge_policy::Pattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str)| {
    let (a, b, path) = input;
    if let (Ok(p), Ok(q)) = (Pattern::parse(a), Pattern::parse(b)) {
        let _ = p.matches(path);
        if p != q {
            assert_ne!(p.outranks(&q), q.outranks(&p));
        }
    }
});
