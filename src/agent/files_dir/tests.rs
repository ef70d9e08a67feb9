use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// [`restore`] of plain (not age) files: no SSH key is ever read.
fn restore_plain(
    state: &Path,
    key: &PublicKey,
    host: &str,
    out: &Path,
) -> Result<Vec<String>, FilesDirError> {
    restore(state, key, host, Path::new("/no-ssh-key"), out)
}
use crate::files::ManifestEntry;
use crate::nix::keys::SecretKey;

fn set(key: &SecretKey, generation: u64, files: &[(&str, &str, u32)]) -> (Manifest, Vec<Vec<u8>>) {
    let entries = files
        .iter()
        .map(|(n, c, m)| ManifestEntry::of(n, c.as_bytes(), *m).unwrap())
        .collect();
    let m = Manifest::sign("web1", generation, entries, key).unwrap();
    let contents = m
        .files
        .iter()
        .map(|e| {
            files
                .iter()
                .find(|(n, _, _)| *n == e.name)
                .unwrap()
                .1
                .as_bytes()
                .to_vec()
        })
        .collect();
    (m, contents)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_directory_that_is_not_bentos_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("www");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("index.html"), "hello").unwrap();
    let key = SecretKey::generate("fleet-1").unwrap();
    let (m, c) = set(&key, 1, &[("index.html", "replaced", 0o400)]);
    let err = install(&m, &c, &foreign, &[], false).unwrap_err();
    assert!(matches!(err, FilesDirError::NotOurs(_)), "{err}");
    assert!(err.to_string().contains(MARKER), "{err}");
    assert!(check(&foreign).is_err());
    assert_eq!(
        std::fs::read_to_string(foreign.join("index.html")).unwrap(),
        "hello"
    );
    // Positive control: the same set goes into a directory of Bento's own.
    let ours = dir.path().join("ours");
    assert!(check(&ours).is_ok(), "absent is fine");
    install(&m, &c, &ours, &[], false).unwrap();
    assert!(ours.join(MARKER).is_file());
    assert_eq!(
        std::fs::read_to_string(ours.join("index.html")).unwrap(),
        "replaced"
    );
    assert_eq!(mode(&ours), 0o751);
    // An empty directory is taken over.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    claim(&empty).unwrap();
    assert!(empty.join(MARKER).is_file());
}

#[test]
fn only_names_bento_installed_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("files");
    let key = SecretKey::generate("fleet-1").unwrap();
    let (m1, c1) = set(&key, 1, &[("a", "1", 0o400), ("b", "2", 0o400)]);
    install(&m1, &c1, &out, &[], false).unwrap();
    std::fs::write(out.join("someone-elses"), "keep me").unwrap();
    let (m2, c2) = set(&key, 2, &[("a", "1b", 0o440)]);
    let previous: Vec<String> = vec!["a".into(), "b".into()];
    let got = install(&m2, &c2, &out, &previous, false).unwrap();
    assert_eq!(got.removed, ["b"]);
    assert!(!out.join("b").exists());
    assert!(out.join("someone-elses").exists());
    assert_eq!(mode(&out.join("a")), 0o440);
}

#[test]
fn the_kept_set_restores_missing_and_altered_files_with_their_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("files"));
    let key = SecretKey::generate("fleet-1").unwrap();
    let (m, c) = set(
        &key,
        4,
        &[
            ("db-password", "s3cret\n", 0o400),
            ("ca.pem", "ca\n", 0o444),
        ],
    );
    assert_eq!(
        restore_plain(&state, &key.public(), "web1", &out).unwrap(),
        Vec::<String>::new()
    );
    install(&m, &c, &out, &[], false).unwrap();
    keep(&state, &m.to_bytes(), &m, &c).unwrap();
    assert!(!needs_restore(&state, &out));

    // A reboot: the directory is gone.
    std::fs::remove_dir_all(&out).unwrap();
    assert!(needs_restore(&state, &out));
    let restored = restore_plain(&state, &key.public(), "web1", &out).unwrap();
    assert_eq!(restored, ["ca.pem", "db-password"]);
    assert_eq!(
        std::fs::read_to_string(out.join("db-password")).unwrap(),
        "s3cret\n"
    );
    assert_eq!(mode(&out.join("db-password")), 0o400);
    assert_eq!(mode(&out.join("ca.pem")), 0o444);
    assert!(out.join(MARKER).is_file());

    // One file's mode changed, the other's content (same size): both put right; a file
    // already right is left alone.
    std::fs::set_permissions(out.join("ca.pem"), std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(needs_restore(&state, &out));
    let restored = restore_plain(&state, &key.public(), "web1", &out).unwrap();
    assert_eq!(restored, ["ca.pem"]);
    std::fs::set_permissions(
        out.join("db-password"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(out.join("db-password"), "hunter\n").unwrap();
    std::fs::set_permissions(
        out.join("db-password"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    assert!(!needs_restore(&state, &out), "the cheap look does not hash");
    assert_eq!(
        restore_plain(&state, &key.public(), "web1", &out).unwrap(),
        ["db-password"]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("db-password")).unwrap(),
        "s3cret\n"
    );
}

#[test]
fn a_kept_set_that_does_not_verify_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("files"));
    let key = SecretKey::generate("fleet-1").unwrap();
    let (m, c) = set(&key, 4, &[("db-password", "s3cret\n", 0o400)]);
    keep(&state, &m.to_bytes(), &m, &c).unwrap();
    // A blob altered on the host's disk.
    let blob = state.join(KEPT).join("blobs").join(&m.files[0].sha256);
    std::fs::write(&blob, "s3creT\n").unwrap();
    let err = restore_plain(&state, &key.public(), "web1", &out).unwrap_err();
    assert!(err.to_string().contains("db-password"), "{err}");
    assert!(!out.join("db-password").exists());
    // Another fleet's key, and another host.
    std::fs::write(&blob, "s3cret\n").unwrap();
    let other = SecretKey::generate("fleet-1").unwrap();
    assert!(restore_plain(&state, &other.public(), "web1", &out).is_err());
    assert!(restore_plain(&state, &key.public(), "web2", &out).is_err());
    assert!(!out.join("db-password").exists());
    // Positive control: with the right key and host it is restored.
    assert_eq!(
        restore_plain(&state, &key.public(), "web1", &out).unwrap(),
        ["db-password"]
    );
}
