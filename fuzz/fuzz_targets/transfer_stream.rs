//! The whole-closure transfer's parsers (`transfer::wire`) read what a cache sent the
//! agent: any bytes must give values or an error, never a panic. The NAR stream decoder
//! must give the same result however its input is split, and never hand out more file
//! bytes than an entry announced.
//!
//! Input: one byte choosing where to split, then the bytes (read as a NAR stream, a
//! closure answer, a request body, a delivery request, a delivery answer's first line and a
//! narinfo URL).
#![no_main]

use bento::transfer::deliver;
use bento::transfer::wire::{self, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((split, bytes)) = data.split_first() else {
        return;
    };
    let max_file = 1 << 20;
    let whole = wire::decode_all([bytes], max_file);
    let at = usize::from(*split).min(bytes.len());
    let (a, b) = bytes.split_at(at);
    assert_eq!(wire::decode_all([a, b], max_file), whole);
    let ones: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(wire::decode_all(ones, max_file), whole);
    if let Ok(events) = whole {
        let mut announced = 0u64;
        for e in events {
            match e {
                Event::Entry { file_len, .. } => {
                    assert!(file_len <= max_file);
                    announced = file_len;
                }
                Event::Data(d) => {
                    assert!(d.len() as u64 <= announced);
                    announced -= d.len() as u64;
                }
                Event::EntryEnd => assert_eq!(announced, 0),
                Event::End { .. } => {}
            }
        }
    }
    if let Ok(entries) = wire::parse_closure(bytes) {
        assert_eq!(wire::parse_closure(&wire::encode_closure(&entries)), Ok(entries));
    }
    if let Ok(paths) = wire::parse_paths(bytes, 1000) {
        assert_eq!(wire::parse_paths(&wire::encode_paths(&paths), 1000), Ok(paths));
    }
    if let Ok(r) = deliver::parse_request(bytes) {
        assert!(r.shard < r.shards && r.shards <= deliver::MAX_SHARDS);
        assert!(r.have.len() <= deliver::MAX_HINTS);
    }
    if let Ok(Some((head, len))) = deliver::parse_head(bytes) {
        assert!(len <= bytes.len() && head.shard_entries <= head.entries);
        let again = deliver::encode_head(&head);
        assert_eq!(deliver::parse_head(&again), Ok(Some((head, again.len()))));
    }
    if let Ok(url) = std::str::from_utf8(bytes)
        && let Some(name) = wire::nar_file_name(url)
    {
        assert!(!name.contains('/') && !name.contains(".."));
    }
});
