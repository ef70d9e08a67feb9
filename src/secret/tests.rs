use super::*;

/// A fresh OpenSSH ed25519 key pair made by ssh-keygen: (private key path, public line).
fn keypair(dir: &Path, name: &str, passphrase: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

#[test]
fn only_the_key_it_was_encrypted_to_decrypts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (web1, web1_pub) = keypair(dir.path(), "web1", "");
    let (web2, web2_pub) = keypair(dir.path(), "web2", "");
    let (admin, admin_pub) = keypair(dir.path(), "admin", "");
    let secret = b"db password: hunter2\n";
    let sealed = encrypt(secret, &[web1_pub.clone(), admin_pub.clone()]).unwrap();
    assert!(sealed.starts_with(AGE_MAGIC));
    assert!(!sealed.windows(7).any(|w| w == b"hunter2"));

    assert_eq!(decrypt(&sealed, &web1).unwrap(), secret);
    assert_eq!(decrypt(&sealed, &admin).unwrap(), secret);
    let err = decrypt(&sealed, &web2).unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");

    assert!(is_encrypted_to(&sealed, &web1_pub).unwrap());
    assert!(is_encrypted_to(&sealed, &admin_pub).unwrap());
    assert!(!is_encrypted_to(&sealed, &web2_pub).unwrap());
}

#[test]
fn a_tampered_file_or_a_file_that_is_not_age_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (web1, web1_pub) = keypair(dir.path(), "web1", "");
    let sealed = encrypt(b"token\n", std::slice::from_ref(&web1_pub)).unwrap();
    // Every byte of the payload (after the header) is covered: flip the last one.
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let err = decrypt(&tampered, &web1).unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");
    // Positive control: the untouched file decrypts.
    assert_eq!(decrypt(&sealed, &web1).unwrap(), b"token\n");

    for plain in [&b"token\n"[..], b"", b"age-encryption.org/v2\n"] {
        assert!(matches!(decrypt(plain, &web1), Err(SecretError::NotAge)));
        assert!(matches!(
            is_encrypted_to(plain, &web1_pub),
            Err(SecretError::NotAge)
        ));
    }
}

#[test]
fn keys_that_cannot_be_used_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (locked, locked_pub) = keypair(dir.path(), "locked", "a passphrase");
    let sealed = encrypt(b"x", &[locked_pub]).unwrap();
    let err = decrypt(&sealed, &locked).unwrap_err().to_string();
    assert!(
        err.contains("passphrase") && err.contains("locked"),
        "{err}"
    );
    let err = decrypt(&sealed, &dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent"), "{err}");

    let err = encrypt(b"x", &["ssh-ed25519 AAAA-not-base64".into()]).unwrap_err();
    assert!(matches!(err, SecretError::BadRecipient { .. }), "{err}");
    assert!(matches!(encrypt(b"x", &[]), Err(SecretError::NoRecipients)));
    // RSA is refused everywhere in Bento, as a recipient and as an identity.
    let rsa = dir.path().join("rsa");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&rsa)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rsa_pub = std::fs::read_to_string(rsa.with_extension("pub")).unwrap();
    let err = encrypt(b"x", &[rsa_pub]).unwrap_err().to_string();
    assert!(err.contains("RSA"), "{err}");
    let err = decrypt(&sealed, &rsa).unwrap_err().to_string();
    assert!(err.contains("RSA"), "{err}");
}

#[test]
fn age_files_are_known_by_their_extension() {
    assert!(is_age_path(Path::new("secrets/web1/db.age")));
    assert!(!is_age_path(Path::new("secrets/web1/db")));
    assert!(!is_age_path(Path::new("secrets/web1/age")));
}

/// The reference `age` tool (whose format agenix writes) and Bento read each other's files.
#[test]
fn files_of_the_reference_age_tool_open_and_ours_open_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (web1, web1_pub) = keypair(dir.path(), "web1", "");
    let recipients = dir.path().join("recipients");
    std::fs::write(&recipients, format!("{web1_pub}\n")).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"from the age tool\n").unwrap();
    let sealed = dir.path().join("sealed.age");
    let out = std::process::Command::new("age")
        .arg("-R")
        .arg(&recipients)
        .arg("-o")
        .arg(&sealed)
        .arg(&plain)
        .output()
        .expect("the age tool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    let theirs = std::fs::read(&sealed).unwrap();
    assert!(is_encrypted_to(&theirs, &web1_pub).unwrap());
    assert_eq!(decrypt(&theirs, &web1).unwrap(), b"from the age tool\n");

    let ours = dir.path().join("ours.age");
    std::fs::write(&ours, encrypt(b"from bento\n", &[web1_pub]).unwrap()).unwrap();
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&web1)
        .arg(&ours)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"from bento\n");
}
