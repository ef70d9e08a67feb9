//! The cache's `Range` header decision (`cache::range::decide`) reads bytes a client sent:
//! any header, for any resource length, must give a decision and never a panic, and a
//! partial answer must lie inside the resource (what the server then seeks to and sends).
//!
//! Input: 8 bytes of resource length (little-endian), then the header value.
#![no_main]

use bento::cache::range::{self, RangeDecision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (len, header) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len), rest),
        None => (u64::from(data.len() as u8), data),
    };
    // Small lengths too, where the edges are.
    for len in [len, len % 4096, 0, 1] {
        let decision = range::decide(Some(header), len);
        let (start, count) = decision.span(len);
        match decision {
            RangeDecision::Full => assert_eq!((start, count), (0, len)),
            RangeDecision::Partial { start: s, end } => {
                assert!(s <= end && end < len, "{s}-{end} of {len} for {header:?}");
                assert_eq!((start, count), (s, end - s + 1));
            }
            RangeDecision::Unsatisfiable => assert_eq!(count, 0),
        }
        assert!(start.checked_add(count).is_some_and(|e| e <= len));
    }
    assert_eq!(range::decide(None, len), RangeDecision::Full);
});
