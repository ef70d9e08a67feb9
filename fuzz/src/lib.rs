//! What several fuzz targets share: one signing key per process, made once (key
//! generation is far slower than one fuzz iteration). Its name, `k`, is one that fuzzed
//! narinfo signatures are likely to carry after a few mutations.

use std::sync::OnceLock;

use bento::nix::{PublicKey, SecretKey};

/// The fuzz targets' signing key and its public half.
pub fn key() -> &'static (SecretKey, PublicKey) {
    static KEY: OnceLock<(SecretKey, PublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let sk = SecretKey::generate("k").expect("valid name");
        let pk = sk.public();
        (sk, pk)
    })
}
