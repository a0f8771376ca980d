//! Fuzzes the DNS message parser: whatever bytes the wire brings, it must not panic, and a
//! parsed question must be consistent with the message it came from.
//!
//! Run: `cargo +nightly fuzz run dns` from nettools/ (needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nettools::collect::dns;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse(data) {
        assert!(data.len() >= 12);
        assert_eq!(m.id, u16::from_be_bytes([data[0], data[1]]));
        if let Some(name) = &m.qname {
            assert!(name.len() <= 255 * 4 + 1);
        }
    }
    let _ = dns::question(data);
});
