#![no_main]
//! The parser must refuse, never panic, on any input; what it accepts must
//! build an ACL that answers without panicking.

use keybridge_policy::{Acl, Capability, Request, parse_policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(policy) = parse_policy("fuzz", &text) {
        let acl = Acl::new(&[policy]);
        for path in ["secret/data/a", "a/b/c", "", "*", "+/x"] {
            let _ = acl.decide(&Request {
                path,
                capability: Capability::Read,
                parameters: &[keybridge_policy::Param::text("k", "v")],
                check_parameters: true,
            });
        }
    }
});
