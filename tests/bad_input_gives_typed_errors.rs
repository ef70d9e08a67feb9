//! Bad input to the Nix layer (keys, hashes, narinfo records, store paths, store queries)
//! must give a typed error whose message names what is wrong and on what — never a panic,
//! and never the secret half of a key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use base64::Engine as _;
use bento::nix::keys::KeyError;
use bento::nix::narinfo::{self, NarInfoError};
use bento::nix::pathinfo::PathInfoError;
use bento::nix::store::{self, StoreError};
use bento::nix::{HashError, PublicKey, SecretKey, Sha256Hash};
use harness::nix::Nix;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const GOOD_NARINFO: &str = "StorePath: /nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep
URL: nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar
Compression: none
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
";

#[test]
fn truncated_and_wrong_length_keys_are_typed_errors_that_keep_the_secret() {
    let sk = SecretKey::generate("fleet-1").unwrap();
    let secret = sk.to_secret_string();
    let material = secret.split_once(':').unwrap().1;

    // Four base64 characters fewer: a well-formed 63-byte key.
    let truncated = &secret[..secret.len() - 4];
    let err = SecretKey::parse(truncated).unwrap_err();
    assert!(
        matches!(
            &err,
            KeyError::WrongLength { what: "secret key", name, got: 63, expected: 64 } if name == "fleet-1"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "secret key \"fleet-1\" has 63 bytes, expected 64"
    );

    // Cut mid-group: not base64 at all.
    let cut = &secret[..secret.len() - 3];
    let err = SecretKey::parse(cut).unwrap_err();
    assert!(matches!(err, KeyError::BadBase64 { .. }), "{err:?}");
    assert!(err.to_string().contains("fleet-1"), "{err}");

    // A public key where a secret one is expected, and the other way round.
    let public = sk.public().to_string();
    let err = SecretKey::parse(&public).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::WrongLength {
                got: 32,
                expected: 64,
                ..
            }
        ),
        "{err:?}"
    );
    let err = PublicKey::parse(&secret).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::WrongLength {
                got: 64,
                expected: 32,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "public key \"fleet-1\" has 64 bytes, expected 32"
    );

    // A secret whose public half belongs to another key.
    let mut bytes = B64.decode(material).unwrap();
    let other = SecretKey::generate("fleet-1").unwrap().public().to_string();
    bytes[32..].copy_from_slice(&B64.decode(other.split_once(':').unwrap().1).unwrap());
    let err = SecretKey::parse(&format!("fleet-1:{}", B64.encode(&bytes))).unwrap_err();
    assert!(matches!(err, KeyError::Inconsistent { .. }), "{err:?}");

    for (input, want) in [
        ("", "no key name"),
        ("no-colon-here", "no key name"),
        (":AAAA", "no key name"),
        ("bad name:AAAA", "is not allowed"),
    ] {
        let err = SecretKey::parse(input).unwrap_err();
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }

    // No error, and no Debug output, shows the secret.
    for input in [truncated, cut, secret.as_str()] {
        if let Err(e) = SecretKey::parse(input) {
            assert!(!e.to_string().contains(&material[..20]), "{e}");
            assert!(!format!("{e:?}").contains(&material[..20]), "{e:?}");
        }
    }
    assert!(!format!("{sk:?}").contains(&material[..20]));
}

#[test]
fn unknown_and_unsupported_hash_types_are_typed_errors() {
    let sha512_hex = format!("sha512:{}", "ab".repeat(64));
    for (input, algorithm) in [
        ("blake9:abcdef", "blake9"),
        ("whirlpool:0000", "whirlpool"),
        (sha512_hex.as_str(), "sha512"),
        ("md5:00000000000000000000000000000000", "md5"),
    ] {
        match Sha256Hash::parse(input) {
            Err(HashError::UnsupportedAlgorithm { algorithm: got, .. }) => {
                assert_eq!(got, algorithm, "{input}")
            }
            other => panic!("{input}: {other:?}"),
        }
        let msg = Sha256Hash::parse(input).unwrap_err().to_string();
        assert!(
            msg.contains(algorithm) && msg.contains("only sha256"),
            "{msg}"
        );
    }
    for input in ["sha256:tooshort", "sha256-!!!", "", "sha256", "sha256:"] {
        let err = Sha256Hash::parse(input).unwrap_err();
        assert!(
            matches!(err, HashError::Unparseable { .. }),
            "{input}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
    }

    // In a narinfo, the field is named.
    let bad = GOOD_NARINFO.replace("NarHash: sha256:", "NarHash: blake9:");
    let err = narinfo::parse(bad.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("NarHash") && err.contains("line 4"), "{err}");
}

#[test]
fn malformed_narinfo_lines_are_typed_errors_that_name_the_line() {
    assert!(narinfo::parse(GOOD_NARINFO.as_bytes()).is_ok());
    let with_line = |line: &str| {
        let mut lines: Vec<&str> = GOOD_NARINFO.lines().collect();
        lines.insert(2, line);
        lines.join("\n") + "\n"
    };
    let err = narinfo::parse(with_line("this line has no colon").as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            NarInfoError::Parse(nix_narinfo::ParseError::MalformedLine { line: 3 })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "malformed narinfo: invalid narinfo line 3: expected NAME: VALUE"
    );

    type Check = (&'static str, &'static str);
    let cases: Vec<(String, Check)> = vec![
        (with_line("NarSize: 7"), ("duplicate", "NarSize")),
        (
            GOOD_NARINFO.replace("NarSize: 120", "NarSize: many"),
            ("NarSize", "line 5"),
        ),
        (
            GOOD_NARINFO.replace("NarSize: 120", "NarSize: 0"),
            ("NarSize", "greater than zero"),
        ),
        (
            GOOD_NARINFO.replace("URL: nar/", "Nope: nar/"),
            ("missing", "URL"),
        ),
        (
            GOOD_NARINFO.replace("References: ", "References: not-a-store-path"),
            ("References", "line 6"),
        ),
        (
            GOOD_NARINFO.replace(
                "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
                "/tmp/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
            ),
            ("StorePath", "line 1"),
        ),
        (
            format!("{GOOD_NARINFO}CA: fixed:nonsense\n"),
            ("CA", "line 7"),
        ),
    ];
    for (text, (a, b)) in cases {
        match narinfo::parse(text.as_bytes()) {
            Err(e @ NarInfoError::Parse(_)) => {
                let msg = e.to_string();
                assert!(msg.contains(a) && msg.contains(b), "{text}\n=> {msg}");
            }
            other => panic!("{text}\n=> {other:?}"),
        }
    }
    let err = narinfo::parse(b"StorePath: \xff\xfe\n").unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn paths_outside_the_store_are_typed_errors_that_name_the_path() {
    for input in [
        "/tmp/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
        "nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
        "/nix/storefront/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
        "/nix/store",
        "",
    ] {
        let err = store::parse(input).unwrap_err();
        assert_eq!(
            err,
            StoreError::OutsideStore {
                path: input.to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            format!("{input:?} is not inside the Nix store /nix/store")
        );
        assert!(matches!(
            store::parse_prefix(input),
            Err(StoreError::OutsideStore { .. })
        ));
    }
    for input in [
        "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx",
        "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-",
        "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-e",
        "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-a b",
        "/nix/store/../etc/passwd",
    ] {
        let err = store::parse(input).unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid { .. }),
            "{input}: {err:?}"
        );
        assert!(err.to_string().contains(input), "{err}");
    }
    let err = store::parse_hash_part("../../etc/passwd").unwrap_err();
    assert!(matches!(err, StoreError::BadHashPart { .. }), "{err:?}");
}

#[test]
fn a_store_path_that_does_not_exist_is_not_valid_and_named() {
    let nix = Nix::chroot();
    let missing = format!("/nix/store/{}-bento-missing", "0".repeat(32));
    let path = store::parse(&missing).unwrap();
    let err = nix
        .pathinfo()
        .query(std::slice::from_ref(&path))
        .unwrap_err();
    match &err {
        PathInfoError::NotValid(p) => assert_eq!(p, &missing),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("store path {missing} is not valid (not in the store); build or copy it first")
    );
    // The same when it is asked about among valid paths, and for closures.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bento-valid.txt");
    std::fs::write(&file, "a valid path\n").unwrap();
    let valid = nix
        .run(nix.nix().args(["store", "add-file"]).arg(&file))
        .stdout_text();
    let valid = store::parse(&valid).unwrap();
    for result in [
        nix.pathinfo().query(&[valid.clone(), path.clone()]),
        nix.pathinfo().closure(&[path.clone(), valid.clone()]),
    ] {
        assert!(
            matches!(&result, Err(PathInfoError::NotValid(p)) if p == &missing),
            "{result:?}"
        );
    }
}

#[test]
fn a_store_nix_cannot_open_is_a_typed_error_with_nix_own_words() {
    let nix = Nix::chroot();
    let store = nix.pathinfo_at("bogus-scheme://nowhere");
    let path = store::parse("/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep").unwrap();
    let err = store.query(&[path]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PathInfoError::Nix(_)), "{err:?}");
    assert!(
        msg.contains("path-info") && msg.contains("bogus-scheme://nowhere"),
        "{msg}"
    );
    assert!(msg.contains("exited with status"), "{msg}");
    assert!(msg.contains("don't know how to open Nix store"), "{msg}");
}
