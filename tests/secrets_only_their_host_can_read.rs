//! Secrets the server cannot read, in the fleet in a box with real agents: a file sealed
//! with `bento secret encrypt` (age, to web1's SSH key and an operator's) reaches web1
//! decrypted with its mode, and its plaintext is nowhere else: not in any Nix store, not in
//! the server's state directory, not on web2, not in web1's own state directory. A file
//! sealed for another host is refused by `bento deploy`; a sealed file altered after
//! sealing is refused by the agent, which keeps what it had; `bento secret edit`
//! round-trips with the operator's key and not with a host's; after a reboot the agent
//! decrypts the file again from the ciphertext it keeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::{Path, PathBuf};

use harness::fleet::Fleet;
use harness::keys::{public_key_line, ssh_keygen};
use harness::nix::nonce;
use harness::ran::wait_for;

const CONVERGE_SECS: u64 = 120;

/// The files under `dir` that contain `marker` (grep -rlF; an absent dir has none).
fn holding(dir: &Path, marker: &str) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    let out = std::process::Command::new("grep")
        .args(["-rlF", "--no-messages", marker])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_file_reaches_only_its_host_and_nothing_else_holds_its_plaintext() {
    let hosts = ["web1", "web2"];
    let Some(mut fleet) = Fleet::new("secrets", &hosts) else {
        return;
    };
    let operator = ssh_keygen(&fleet.dir().join("operator"), "operator");
    fleet.add_fleet_option(&format!(
        "secret_recipients = [\"{}\"]",
        public_key_line(&operator)
    ));
    let marker = format!("marker-{}", nonce());

    // Sealed from standard input; the plaintext exists only in this process.
    let mut encrypt = fleet.command(&["secret", "encrypt", "web1", "api-token"]);
    encrypt
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = encrypt.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{marker}-one\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let sealed = fleet.repo().join("secrets/web1/api-token.age");
    assert!(
        said.contains("api-token.age") && said.contains("[hosts.web1.files]"),
        "{said}"
    );
    assert!(holding(&fleet.repo(), &marker).is_empty());

    // A file sealed for web1 given to web2 is refused before anything is published.
    fleet.give_source("web2", "api-token", &sealed, 0o440);
    let refused = fleet.bento(&["deploy"]);
    assert!(!refused.success());
    assert!(
        refused
            .both()
            .contains("is not encrypted to web2's ssh_key"),
        "{}",
        refused.both()
    );
    assert!(fleet.release("web2").is_none());
    assert!(!fleet.state().join("publish/web2/files").exists());
    fleet.remove_file("web2", "api-token");

    fleet.give_source("web1", "api-token", &sealed, 0o440);
    fleet.start_serve(&[]).await;
    fleet.start_agents("");
    let deployed = fleet.deploy(&[]);
    assert!(deployed.success(), "{}", deployed.both());
    fleet
        .wait_for_states(
            CONVERGE_SECS,
            &[("web1", "up-to-date"), ("web2", "up-to-date")],
        )
        .await;

    let installed = fleet.host("web1").root.join("run/bento/files/api-token");
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        format!("{marker}-one\n")
    );
    assert_eq!(mode_of(&installed), 0o440);
    // The plaintext is in web1's files_dir and nowhere else this test can see: the whole
    // test directory (server state, repository, both hosts, their agents' state) and the
    // machine's Nix store, which the server and the hosts' closures live in.
    assert_eq!(holding(fleet.dir(), &marker), vec![installed.clone()]);
    assert!(holding(Path::new("/nix/store"), &marker).is_empty());
    assert!(holding(&fleet.host("web2").root, &marker).is_empty());
    // Positive control: the search does find the marker where it is.
    assert_eq!(
        holding(&fleet.host("web1").root.join("run"), &marker),
        vec![installed.clone()]
    );

    // `bento secret edit`: the operator's key opens it, the editor changes it, it is sealed
    // again; web1 gets the new content without a new activation.
    let activations = fleet.host("web1").activations();
    let editor = fleet.dir().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/-one$/-two/' \"$1\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let editor_env = editor.to_string_lossy().into_owned();
    let edited = fleet.bento_env(
        &[
            "secret",
            "edit",
            "web1",
            "api-token",
            "--identity",
            &operator.to_string_lossy(),
        ],
        &[("EDITOR", &editor_env), ("VISUAL", "")],
    );
    assert!(edited.success(), "{}", edited.both());
    assert!(holding(&fleet.repo(), &marker).is_empty());
    // A host's key is not an operator's: web2's key cannot open web1's file.
    let web2_key = fleet.ssh_key("web2").to_string_lossy().into_owned();
    let denied = fleet.bento_env(
        &[
            "secret",
            "edit",
            "web1",
            "api-token",
            "--identity",
            &web2_key,
        ],
        &[("EDITOR", &editor_env), ("VISUAL", "")],
    );
    assert!(
        !denied.success() && denied.both().contains("cannot open"),
        "{}",
        denied.both()
    );
    let deployed = fleet.deploy(&[]);
    assert!(
        deployed.stdout.contains("files changed"),
        "{}",
        deployed.both()
    );
    let changed = wait_for(CONVERGE_SECS, || {
        std::fs::read_to_string(&installed).ok() == Some(format!("{marker}-two\n"))
    })
    .await;
    assert!(changed, "{}", fleet.diagnostics());
    assert_eq!(fleet.host("web1").activations(), activations);

    // After a reboot (files_dir emptied), the agent puts the file back from the ciphertext
    // it keeps, decrypting it again.
    std::fs::remove_file(&installed).unwrap();
    let put_back = wait_for(CONVERGE_SECS, || {
        std::fs::read_to_string(&installed).ok() == Some(format!("{marker}-two\n"))
    })
    .await;
    assert!(put_back, "{}", fleet.diagnostics());
    assert_eq!(mode_of(&installed), 0o440);
    assert_eq!(holding(fleet.dir(), &marker), vec![installed.clone()]);

    // A sealed file altered after sealing (its header intact, one byte of its payload
    // flipped) is published, and refused by the agent, which keeps the file it had.
    let mut bytes = std::fs::read(&sealed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&sealed, &bytes).unwrap();
    let forced = fleet.bento(&["deploy", "--force", "web1"]);
    assert!(forced.success(), "{}", forced.both());
    fleet
        .wait_for_states(CONVERGE_SECS, &[("web1", "refused")])
        .await;
    let reason = fleet
        .final_reports("web1")
        .pop()
        .unwrap()
        .reason
        .unwrap_or_default();
    assert!(
        reason.contains("api-token") && reason.contains("cannot decrypt"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        format!("{marker}-two\n")
    );
}
