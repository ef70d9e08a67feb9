//! Narinfo records on `nix-narinfo`: build one from a store path's info, sign it with a
//! fleet key, parse, render byte-identically to Nix, and verify against a trusted key.
//!
//! Compression is always set explicitly (the crate's builder defaults to bzip2).

use nix_derivation::CAHash;
use thiserror::Error;

pub use nix_narinfo::{Compression, NarInfo, NixSignature};

use super::hash::Sha256Hash;
use super::keys::{KeyError, PublicKey, SecretKey};
use super::pathinfo::PathInfo;
use super::store::{self, StorePath};

#[derive(Debug, Error)]
pub enum NarInfoError {
    #[error("malformed narinfo: {0}")]
    Parse(#[from] nix_narinfo::ParseError),
    #[error(
        "malformed narinfo: line {line} contains a carriage return; Nix ends lines with \\n only"
    )]
    CarriageReturn { line: usize },
    #[error("cannot build narinfo for {path}: {reason}")]
    Build { path: String, reason: String },
    #[error("narinfo for {path} has no signature by {key}")]
    Unsigned { path: String, key: String },
    #[error("narinfo for {path}: {source}")]
    Signature {
        path: String,
        #[source]
        source: KeyError,
    },
}

/// The compressed file a narinfo points to, when it is not the plain NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub hash: Sha256Hash,
    pub size: u64,
}

/// The fingerprint Nix signs: `1;<path>;<narhash nix32>;<narsize>;<refs, comma-separated>`.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &std::collections::BTreeSet<StorePath>,
) -> String {
    let refs = references
        .iter()
        .map(store::render)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "1;{};{};{};{}",
        store::render(path),
        nar_hash.to_nix32(),
        nar_size,
        refs
    )
}

/// Signs the fingerprint of a store path's info, as `nix store sign` does.
pub fn sign_path_info(info: &PathInfo, key: &SecretKey) -> NixSignature {
    key.sign(fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references).as_bytes())
}

/// Builds the narinfo of `info` served at `url`, signed by `key` when given. Signatures
/// that `info` already carries are not copied: a cache vouches with its own key.
pub fn build(
    info: &PathInfo,
    url: &str,
    compression: Compression,
    file: Option<FileInfo>,
    key: Option<&SecretKey>,
) -> Result<NarInfo, NarInfoError> {
    let bad = |reason: String| NarInfoError::Build {
        path: store::render(&info.path),
        reason,
    };
    let ca = info
        .ca
        .as_deref()
        .map(CAHash::parse)
        .transpose()
        .map_err(|e| bad(format!("content address: {e}")))?;
    let mut builder = NarInfo::builder(
        info.path.clone(),
        url,
        info.nar_hash.to_nix_hash(),
        info.nar_size,
    )
    .compression(compression)
    .references(info.references.iter().cloned())
    .deriver(info.deriver.clone())
    .content_address(ca)
    .file_hash(file.map(|f| f.hash.to_nix_hash()))
    .file_size(file.map(|f| f.size));
    if let Some(key) = key {
        builder = builder.signature(sign_path_info(info, key));
    }
    builder.build().map_err(|e| bad(e.to_string()))
}

/// Parses a narinfo in the `/nix/store` store directory.
///
/// A carriage return anywhere is refused: Nix never writes one, and the parser below
/// would take `\r\n` as a line end while [`render`] writes `\n`, so a value ending in
/// `\r` would not survive a round trip (found by `fuzz/` target `narinfo_parse`).
pub fn parse(bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
    if let Some(at) = bytes.iter().position(|b| *b == b'\r') {
        let line = 1 + bytes[..at].iter().filter(|b| **b == b'\n').count();
        return Err(NarInfoError::CarriageReturn { line });
    }
    Ok(NarInfo::parse_in(&store::store_dir(), bytes)?)
}

/// Renders a narinfo in Nix's field order.
pub fn render(info: &NarInfo) -> Vec<u8> {
    info.to_canonical_bytes()
}

/// Checks that a signature by `key` (by name) is present and verifies.
pub fn verify(info: &NarInfo, key: &PublicKey) -> Result<(), NarInfoError> {
    let path = store::render(info.store_path());
    let fp = info.fingerprint(&store::store_dir());
    let mut last_err = None;
    for sig in info
        .signatures()
        .iter()
        .filter(|s| s.key_name == key.name())
    {
        match key.verify(fp.as_bytes(), &sig.to_nix_string()) {
            Ok(()) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(source) => Err(NarInfoError::Signature { path, source }),
        None => Err(NarInfoError::Unsigned {
            path,
            key: key.name().to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PathInfo {
        let infos = super::super::pathinfo::parse_json(
            br#"[{"path":"/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top","narHash":"sha256-8yWyV5QBCQy1VvwMSlX6kzrEYq46x5popSQYBox8O/g=","narSize":328,"references":["/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep"],"deriver":"/nix/store/scvdsmqlvcmik3p9q9pcjpxj8lbffvn9-top.drv"}]"#,
        )
        .unwrap();
        infos.into_iter().next().unwrap()
    }

    #[test]
    fn built_narinfo_round_trips_and_verifies() {
        let key = SecretKey::generate("fleet").unwrap();
        let info = sample();
        let ni = build(&info, "nar/x.nar", Compression::None, None, Some(&key)).unwrap();
        let text = render(&ni);
        let again = parse(&text).unwrap();
        assert_eq!(render(&again), text);
        assert!(verify(&again, &key.public()).is_ok());
        assert_eq!(
            again.fingerprint(&store::store_dir()),
            fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references)
        );
        let s = String::from_utf8(text).unwrap();
        assert!(s.contains("Compression: none\n"), "{s}");
        assert!(
            s.contains("Deriver: scvdsmqlvcmik3p9q9pcjpxj8lbffvn9-top.drv\n"),
            "{s}"
        );
    }

    #[test]
    fn verification_refusals() {
        let key = SecretKey::generate("fleet").unwrap();
        let info = sample();
        let ni = build(&info, "nar/x.nar", Compression::Zstd, None, Some(&key)).unwrap();
        let other = SecretKey::generate("fleet").unwrap().public();
        assert!(matches!(
            verify(&ni, &other),
            Err(NarInfoError::Signature { .. })
        ));
        let stranger = SecretKey::generate("stranger").unwrap().public();
        assert!(matches!(
            verify(&ni, &stranger),
            Err(NarInfoError::Unsigned { .. })
        ));
        // Dropping a reference changes the fingerprint.
        let text = String::from_utf8(render(&ni)).unwrap().replace(
            "References: 62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
            "References: ",
        );
        let altered = parse(text.as_bytes()).unwrap();
        assert!(verify(&altered, &key.public()).is_err());
        let unsigned = build(&info, "nar/x.nar", Compression::None, None, None).unwrap();
        assert!(matches!(
            verify(&unsigned, &key.public()),
            Err(NarInfoError::Unsigned { .. })
        ));
    }

    #[test]
    fn carriage_returns_are_refused_so_parse_and_render_round_trip() {
        // Found by the fuzzer: `\r\r\n` parsed as a value ending in `\r`, which render
        // wrote back as `\r\n`, which parsed without it.
        let good = render(&build(&sample(), "nar/x.nar", Compression::None, None, None).unwrap());
        assert!(parse(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        for (bad, line) in [
            (text.replace("URL: nar/x.nar\n", "URL: nar/x.nar\r\r\n"), 2),
            (text.replace('\n', "\r\n"), 1),
            (format!("{text}X-Extra: \0\r\r\n"), 8),
            (format!("{text}X-Extra: a\rb\n"), 8),
            // The fuzzer's minimized input.
            (
                "StorePath:/nix/store/d81kyln7m3fg1cpqmb3j3fzf3cyam7cf-sh\nURL:6\n\
                 NarHash: sha256:1l4wp0alirq78ys38nv2pdpqjr65mhxcmr2ykznfcr5bfv2rq622\n\
                 NarSize:76\nR:\0\r\r\nR/: "
                    .to_owned(),
                5,
            ),
        ] {
            match parse(bad.as_bytes()) {
                Err(e @ NarInfoError::CarriageReturn { .. }) => {
                    assert!(e.to_string().contains(&format!("line {line} ")), "{e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_lines_are_parse_errors() {
        for bad in [
            &b"garbage without colon\n"[..],
            b"StorePath: /nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top\n",
            b"StorePath: /tmp/x\nURL: a\nNarHash: sha256:00\nNarSize: 1\n",
        ] {
            assert!(matches!(parse(bad), Err(NarInfoError::Parse(_))), "{bad:?}");
        }
    }
}
