//! Keys, signatures, hashes and store paths arrive as text from files, config and the
//! network: any input must give a value or a typed error, never a panic, and what parses
//! must survive a round trip through its own rendering.
#![no_main]

use bento::nix::{PublicKey, SecretKey, Sha256Hash, store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(sk) = SecretKey::parse(text) {
        let again = SecretKey::parse(&sk.to_secret_string()).expect("own secret key format");
        assert_eq!(again.public(), sk.public());
        assert_eq!(again.to_secret_string(), sk.to_secret_string());
        let sig = sk.sign(data).to_nix_string();
        sk.public()
            .verify(data, &sig)
            .expect("own signature verifies");
    }

    if let Ok(pk) = PublicKey::parse(text) {
        let rendered = pk.to_string();
        let again = PublicKey::parse(&rendered).expect("own public key format");
        assert_eq!(again, pk);
        assert_eq!(again.to_string(), rendered);
        // Any text as a signature over any message: an answer, never a panic.
        let _ = pk.verify(data, text);
    }

    if let Ok(hash) = Sha256Hash::parse(text) {
        for spelling in [hash.to_nix32(), hash.to_base16(), hash.to_sri()] {
            assert_eq!(Sha256Hash::parse(&spelling), Ok(hash), "{spelling}");
        }
    }

    if let Ok(path) = store::parse(text) {
        let rendered = store::render(&path);
        assert_eq!(store::parse(&rendered).as_ref(), Ok(&path));
        assert!(store::parse_hash_part(&store::hash_part(&path)).is_ok());
    }
    let _ = store::parse_prefix(text);
    let _ = store::parse_hash_part(text);
});
