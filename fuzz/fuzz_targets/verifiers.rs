//! Nexus's ECDSA (P-256, P-384) and Ed25519 verifiers against `ring` on arbitrary inputs: any
//! input is decoded into a key, a message and a signature (see `nexus_auth::differential`), and
//! the two verdicts must be equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_auth::differential::{case, verdicts};

fuzz_target!(|data: &[u8]| {
    let case = case(data);
    let v = verdicts(&case);
    assert_eq!(v.nexus, v.ring, "verdicts differ: {v:?} on {case:?}");
});
