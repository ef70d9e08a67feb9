//! The files manifest says which files (secrets) a host installs outside the store: the
//! agent fetches it over SFTP. Any bytes must parse to a manifest or to a typed error,
//! never a panic, and verification must answer for any of them. What parses keeps its
//! fields through the file format, names only plain file names (no `/`, no `..`, nothing
//! hidden) and has a canonical encoding of one line per field and per file, so no name can
//! smuggle a line into what is signed; signed by the fleet key, it verifies for its own
//! host and generation only.
#![no_main]

use bento::files::{self, Manifest};
use bento_fuzz::key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (sk, pk) = key();
    let _ = files::verify(data, pk, "web1", 1);
    let Ok(m) = Manifest::parse_untrusted(data) else {
        return;
    };
    let again = Manifest::parse_untrusted(&m.to_bytes()).expect("own file format parses");
    assert_eq!(again, m);
    for e in &m.files {
        assert!(
            !e.name.contains('/') && e.name != ".." && !e.name.starts_with('.'),
            "{:?}",
            e.name
        );
        assert!(files::check_name(&e.name).is_ok());
    }
    let lines = m.signed_bytes().iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, 4 + m.files.len(), "{m:?}");

    let ours = Manifest::sign(&m.host, m.generation, m.files.clone(), sk)
        .expect("what parses can be signed");
    let bytes = ours.to_bytes();
    assert_eq!(
        files::verify(&bytes, pk, &m.host, m.generation).expect("verifies"),
        ours
    );
    assert!(files::verify(&bytes, pk, &m.host, m.generation.wrapping_add(1)).is_err());
    if m.host != "web1" {
        assert!(files::verify(&bytes, pk, "web1", m.generation).is_err());
    }
});
