//! A release is what an agent fetches from the server and the only thing it trusts: any
//! bytes must parse to a release or to a typed error, never a panic, and the agent's
//! verification must answer for any of them. What parses keeps its fields through the file
//! format, has a canonical encoding of exactly six lines (no field can smuggle another
//! line into what is signed), and, once signed by the fleet key, verifies for its own host
//! only and only as newer than the generation before it.
#![no_main]

use bento::release::{self, Expectation, Release, ReleaseError};
use bento_fuzz::key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (sk, pk) = key();
    let _ = release::verify(
        data,
        Expectation {
            key: pk,
            host: "web1",
            last_applied: Some(1),
        },
    );
    let Ok(r) = Release::parse_untrusted(data) else {
        return;
    };
    let again = Release::parse_untrusted(&r.to_bytes()).expect("own file format parses");
    assert_eq!(again, r);
    let signed = r.signed_bytes();
    assert_eq!(signed.iter().filter(|b| **b == b'\n').count(), 6, "{r:?}");

    let ours = Release::sign(&r.host, r.generation, &r.store_path, r.created, sk)
        .expect("what parses can be signed");
    let bytes = ours.to_bytes();
    let expect = |host: &'static str, last: Option<u64>| Expectation {
        key: pk,
        host,
        last_applied: last,
    };
    let own = Expectation {
        key: pk,
        host: &r.host,
        last_applied: Some(r.generation - 1),
    };
    assert_eq!(release::verify(&bytes, own).expect("verifies"), ours);
    let replay = Expectation {
        last_applied: Some(r.generation),
        ..own
    };
    assert!(matches!(
        release::verify(&bytes, replay),
        Err(ReleaseError::NotNewer { .. })
    ));
    if r.host != "web1" {
        assert!(matches!(
            release::verify(&bytes, expect("web1", None)),
            Err(ReleaseError::WrongHost { .. })
        ));
    }
});
