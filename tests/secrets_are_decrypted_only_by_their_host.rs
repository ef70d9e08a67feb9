//! Secrets the server cannot read, in the fleet in a box: `bento secret encrypt` writes an
//! age file encrypted to a host's SSH key, the server publishes only that ciphertext, and
//! only that host's agent decrypts it into its files_dir, with its mode. A marker string of
//! the plaintext is found nowhere else: not in any Nix store, not in the server's state
//! directory, not at the other host. A file encrypted to another host's key is refused;
//! `bento secret edit` round-trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use harness::fleet::Fleet;
use harness::keys::{public_key_line, ssh_keygen};
use harness::ran::{Ran, wait_for};

const CONVERGE_SECS: u64 = 180;

/// Paths under `roots` whose files contain `marker`.
fn grep(marker: &str, roots: &[PathBuf]) -> Vec<String> {
    let out = std::process::Command::new("grep")
        .args(["-rlF", "--no-messages", marker])
        .args(roots)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn secret(fleet: &Fleet, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut all = vec!["secret"];
    all.extend_from_slice(args);
    let ran = fleet.bento_env(&all, env);
    assert_eq!(ran.code, 0, "bento secret {args:?}: {}", ran.both());
    ran
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_file_reaches_only_its_host_in_plaintext() {
    let hosts = ["s1", "s2"];
    let Some(mut fleet) = Fleet::new("secrets", &hosts) else {
        return;
    };
    let marker = format!(
        "bento-secret-marker-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    // An operator's key, so that the secret can be edited later.
    let operator = ssh_keygen(&fleet.dir().join("operator"), "operator");
    let operator_pub = public_key_line(&operator);
    let plain = fleet.dir().join("plain");
    std::fs::write(&plain, format!("token={marker}\n")).unwrap();
    secret(
        &fleet,
        &[
            "encrypt",
            "s1",
            "token",
            "--input",
            &plain.to_string_lossy(),
            "--recipient",
            &operator_pub,
        ],
        &[],
    );
    std::fs::remove_file(&plain).unwrap();
    let age_file = fleet.repo().join("secrets/s1/token.age");
    let ciphertext = std::fs::read_to_string(&age_file).unwrap();
    assert!(
        ciphertext.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
            && !ciphertext.contains(&marker),
        "{ciphertext}"
    );
    fleet.give_file_from("s1", "token", &age_file, 0o400);
    fleet.start_serve(&[]).await;
    fleet.start_agents("");
    fleet.deploy(&[]);
    let up: Vec<(&str, &str)> = hosts.iter().map(|h| (*h, "up-to-date")).collect();
    fleet.wait_for_states(CONVERGE_SECS, &up).await;

    // Decrypted on s1, with its mode.
    let dir = fleet.host("s1").root.join("run/bento/files");
    assert_eq!(
        std::fs::read_to_string(dir.join("token")).unwrap(),
        format!("token={marker}\n")
    );
    assert_eq!(mode(&dir.join("token")), 0o400);
    // The positive control of the greps: the marker is found where it is.
    assert_eq!(
        grep(&marker, std::slice::from_ref(&dir)),
        vec![dir.join("token").to_string_lossy().into_owned()]
    );
    // Nowhere else: the server's state directory (published blob included), its Nix store,
    // s1's store and state, and anything of s2.
    let s1 = &fleet.host("s1").root;
    let elsewhere = [
        fleet.state(),
        PathBuf::from("/nix/store"),
        s1.join("nix"),
        s1.join("var"),
        fleet.host("s2").root.clone(),
        fleet.repo(),
    ];
    let found = grep(&marker, &elsewhere);
    assert!(found.is_empty(), "the plaintext leaked to {found:?}");
    let blobs = fleet.state().join("publish/s1/files/blobs");
    let published: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(published, vec![ciphertext.clone()], "published as it is");

    // `bento secret edit` round-trips: the operator decrypts, edits, encrypts again; the
    // host gets the edited plaintext.
    let editor = fleet.dir().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\necho edited=yes >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    secret(
        &fleet,
        &[
            "edit",
            "s1",
            "token",
            "--identity",
            &operator.to_string_lossy(),
        ],
        &[("EDITOR", &editor.to_string_lossy()), ("VISUAL", "")],
    );
    let edited = std::fs::read_to_string(&age_file).unwrap();
    assert_ne!(edited, ciphertext);
    assert!(!edited.contains("edited=yes"));
    fleet.deploy(&[]);
    let want = format!("token={marker}\nedited=yes\n");
    let arrived = wait_for(CONVERGE_SECS, || {
        std::fs::read_to_string(dir.join("token")).ok().as_deref() == Some(want.as_str())
    })
    .await;
    assert!(arrived, "{}", fleet.diagnostics());
    fleet.wait_for_states(CONVERGE_SECS, &up).await;

    // A file encrypted to s2's key, delivered to s1, is refused; s1 keeps its files.
    let other = fleet.dir().join("other");
    std::fs::write(&other, "for s2 only\n").unwrap();
    secret(
        &fleet,
        &[
            "encrypt",
            "s2",
            "other",
            "--input",
            &other.to_string_lossy(),
        ],
        &[],
    );
    let s2_file = fleet.repo().join("secrets/s2/other.age");
    fleet.give_file_from("s1", "other", &s2_file, 0o400);
    fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &[("s1", "refused")])
        .await;
    let refused = fleet.final_reports("s1").pop().unwrap();
    let reason = refused.reason.unwrap_or_default();
    assert!(
        reason.contains("other") && reason.contains("does not decrypt"),
        "{reason}"
    );
    assert!(!dir.join("other").exists());
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), want);

    // A source named .age that is not an age file is refused at deploy: a plaintext
    // mistaken for ciphertext is never published.
    fleet.take_file("s1", "other");
    let fake = fleet.dir().join("fake.age");
    std::fs::write(&fake, format!("{marker}\n")).unwrap();
    fleet.give_file_from("s1", "fake", &fake, 0o400);
    let deployed = fleet.bento(&["deploy"]);
    assert_ne!(deployed.code, 0, "{}", deployed.both());
    assert!(
        deployed.both().contains("not an age file"),
        "{}",
        deployed.both()
    );
    assert!(grep(&marker, &[fleet.state()]).is_empty());
}
