//! Table-driven refusals of release verification: each tampering has its own error.

use super::*;

const PATH_A: &str = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top";
const PATH_B: &str = "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep";

fn key() -> SecretKey {
    SecretKey::generate("bento-fleet-1").unwrap()
}

#[test]
fn a_signed_release_verifies_and_round_trips() {
    let k = key();
    let r = Release::sign("web1", 3, PATH_A, 1_790_000_000, &k).unwrap();
    let bytes = r.to_bytes();
    let pk = k.public();
    let ok = verify(
        &bytes,
        Expectation {
            key: &pk,
            host: "web1",
            last_applied: Some(2),
        },
    )
    .unwrap();
    assert_eq!(ok, r);
    // First release on a fresh host.
    assert!(
        verify(
            &bytes,
            Expectation {
                key: &pk,
                host: "web1",
                last_applied: None
            }
        )
        .is_ok()
    );
}

#[test]
fn refusals_each_have_their_own_error() {
    let k = key();
    let pk = k.public();
    let good = Release::sign("web1", 5, PATH_A, 1_790_000_000, &k).unwrap();
    let same_name_other_bytes = SecretKey::generate("bento-fleet-1").unwrap();
    let other_name = SecretKey::generate("other-fleet").unwrap();
    let json = |r: &Release| r.to_bytes();
    let altered = |f: &dyn Fn(&mut Release)| {
        let mut r = good.clone();
        f(&mut r);
        json(&r)
    };
    let full = json(&good);
    type Check = fn(&ReleaseError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Option<u64>, Check)> = vec![
        (
            "signed by another key name",
            json(&Release::sign("web1", 5, PATH_A, 1_790_000_000, &other_name).unwrap()),
            None,
            |e| matches!(e, ReleaseError::UnknownSigner { .. }),
        ),
        (
            "signed by a key of the same name, other bytes",
            json(&Release::sign("web1", 5, PATH_A, 1_790_000_000, &same_name_other_bytes).unwrap()),
            None,
            |e| matches!(e, ReleaseError::BadSignature { .. }),
        ),
        (
            "another host's release",
            json(&Release::sign("web2", 5, PATH_A, 1_790_000_000, &k).unwrap()),
            None,
            |e| matches!(e, ReleaseError::WrongHost { .. }),
        ),
        (
            "host altered",
            altered(&|r| r.host = "web2".into()),
            None,
            |e| matches!(e, ReleaseError::BadSignature { .. }),
        ),
        (
            "generation altered",
            altered(&|r| r.generation = 6),
            None,
            |e| matches!(e, ReleaseError::BadSignature { .. }),
        ),
        (
            "store path altered",
            altered(&|r| r.store_path = PATH_B.into()),
            None,
            |e| matches!(e, ReleaseError::BadSignature { .. }),
        ),
        ("created altered", altered(&|r| r.created += 1), None, |e| {
            matches!(e, ReleaseError::BadSignature { .. })
        }),
        (
            "signature removed",
            altered(&|r| r.signature.clear()),
            None,
            |e| matches!(e, ReleaseError::MalformedSignature(_)),
        ),
        ("truncated", full[..full.len() / 2].to_vec(), None, |e| {
            matches!(e, ReleaseError::Truncated)
        }),
        ("empty file", Vec::new(), None, |e| {
            matches!(e, ReleaseError::Truncated)
        }),
        ("equal generation", full.clone(), Some(5), |e| {
            matches!(
                e,
                ReleaseError::NotNewer {
                    got: 5,
                    last_applied: 5
                }
            )
        }),
        ("older generation", full.clone(), Some(9), |e| {
            matches!(e, ReleaseError::NotNewer { .. })
        }),
        ("newer format", altered(&|r| r.format = 2), None, |e| {
            matches!(e, ReleaseError::UnsupportedFormat { got: 2 })
        }),
        (
            "unknown field",
            String::from_utf8(full.clone())
                .unwrap()
                .replacen('{', "{\"extra\": 1,", 1)
                .into_bytes(),
            None,
            |e| matches!(e, ReleaseError::Malformed(_)),
        ),
        (
            "path outside the store",
            altered(&|r| r.store_path = "/etc/passwd".into()),
            None,
            |e| matches!(e, ReleaseError::BadStorePath { .. }),
        ),
        ("huge file", vec![b' '; MAX_RELEASE_BYTES + 1], None, |e| {
            matches!(e, ReleaseError::TooLarge { .. })
        }),
    ];
    for (what, bytes, last_applied, check) in cases {
        let got = verify(
            &bytes,
            Expectation {
                key: &pk,
                host: "web1",
                last_applied,
            },
        );
        match got {
            Err(e) => assert!(check(&e), "{what}: wrong error {e:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

#[test]
fn signing_refuses_bad_input() {
    let k = key();
    assert!(matches!(
        Release::sign("web 1", 1, PATH_A, 0, &k),
        Err(ReleaseError::BadHost(_))
    ));
    assert!(matches!(
        Release::sign("web1\ngeneration 9", 1, PATH_A, 0, &k),
        Err(ReleaseError::BadHost(_))
    ));
    assert!(matches!(
        Release::sign("web1", 0, PATH_A, 0, &k),
        Err(ReleaseError::ZeroGeneration)
    ));
    assert!(matches!(
        Release::sign("web1", 1, "/tmp/x", 0, &k),
        Err(ReleaseError::BadStorePath { .. })
    ));
}

#[test]
fn host_names() {
    for ok in ["web1", "db-2", "a.b_c", "X", "R_1", "db-2.eu"] {
        assert!(check_host_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "-x",
        "_x",
        "a/b",
        "a b",
        "é",
        &"x".repeat(64),
    ] {
        assert!(check_host_name(bad).is_err(), "{bad}");
    }
}
