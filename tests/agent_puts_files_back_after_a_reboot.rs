//! Delivered files survive reboots and are never put where they would replace someone
//! else's: `/run/bento/files` emptied (a reboot) is filled again from the agent's verified
//! copy, by `bento agent restore-files` and by the agent's next start, with the files'
//! modes and without activating anything; `check-config` refuses `files_dir = "/etc"` and
//! a directory that exists without Bento's marker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use harness::fake::Behaviour;
use harness::scene::{OneHost, agent_once};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

const FILES: [(&str, &str, u32); 2] = [
    ("db-password", "s3cret\n", 0o400),
    ("tls.pem", "-----BEGIN CERTIFICATE-----\n", 0o444),
];

fn assert_files_in_place(dir: &Path) {
    for (name, content, m) in FILES {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            content,
            "{name}"
        );
        assert_eq!(mode(&dir.join(name)), m, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_removed_by_a_reboot_are_put_back_without_activation() {
    let Some(t) = OneHost::start("reboot", &[Behaviour::Good], "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    // A release of the system the host runs, with files: delivered without activation.
    server.dir.publish_files("web1", 2, &FILES);
    server.publish_release("web1", 2, &t.systems[0]).await;
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    let files = host.root.join("run/bento/files");
    assert_files_in_place(&files);
    assert!(files.join(".bento-files").is_file());
    assert!(host.activations().is_empty());

    // A reboot empties /run; bento-files.service runs `bento agent restore-files`.
    std::fs::remove_dir_all(host.root.join("run/bento")).unwrap();
    let restore = |what: &str| {
        let out = host
            .command(
                Path::new(env!("CARGO_BIN_EXE_bento")),
                &[
                    "agent",
                    "restore-files",
                    "--config",
                    &config.to_string_lossy(),
                ],
            )
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {said}");
        said
    };
    let said = restore("after a reboot");
    assert!(said.contains("put back db-password, tls.pem"), "{said}");
    assert_files_in_place(&files);
    // Nothing to do the second time.
    let said = restore("again");
    assert!(said.contains("every delivered file is in place"), "{said}");

    // The agent's own start does it too (here with nothing else to do), and a file changed
    // by hand is put right.
    std::fs::remove_dir_all(host.root.join("run/bento")).unwrap();
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("delivered files put back"), "{log}");
    assert_files_in_place(&files);
    std::fs::set_permissions(
        files.join("db-password"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 3, "{log}");
    assert_files_in_place(&files);
    assert!(host.activations().is_empty(), "nothing was activated");
    assert_eq!(
        server.final_reports("web1").len(),
        1,
        "nothing new to report"
    );
}

#[test]
fn check_config_refuses_a_files_dir_bento_does_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"host = "web1"
server = "10.77.0.1:2222"
server_host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO9ASb4F2D1xKP2Xmvh66LRWTxkAa/c3FHXOlUcY+n"
ssh_key = "/etc/bento/id_ed25519"
cache_url = "http://10.77.0.1:8080"
fleet_public_key = "test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw="
"#;
    let check = |files_dir: &Path| {
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            format!("{base}files_dir = \"{}\"\n", files_dir.display()),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bento"))
            .args(["agent", "check-config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(Path::new("/etc"));
    assert!(
        !ok && err.contains("files_dir") && err.contains("system directory"),
        "{err}"
    );
    let foreign = dir.path().join("www");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("index.html"), "hello").unwrap();
    let (ok, err) = check(&foreign);
    assert!(!ok && err.contains(".bento-files"), "{err}");
    // Positive controls: a directory not there yet, and the same one once marked.
    let (ok, err) = check(&dir.path().join("files"));
    assert!(ok, "{err}");
    std::fs::write(foreign.join(".bento-files"), "").unwrap();
    let (ok, err) = check(&foreign);
    assert!(ok, "{err}");
}
