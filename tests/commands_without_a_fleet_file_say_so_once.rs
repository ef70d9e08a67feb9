//! A new user's first command, in a directory without `bento.toml`: every command that
//! reads the fleet file says once that there is none and how to make one (`bento init`),
//! instead of an OS error printed twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn every_fleet_command_says_there_is_no_fleet_file_and_suggests_init() {
    let empty = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 6] = [
        &["build"],
        &["deploy"],
        &["status"],
        &["diff", "web1"],
        &["serve"],
        &["deploy", "--rollback", "web1"],
    ];
    for args in commands {
        let out = Command::new(env!("CARGO_BIN_EXE_bento"))
            .args(args)
            .current_dir(empty.path())
            .env_remove("BENTO_CONFIG")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let expected = format!(
            "error: no fleet file at {}: run `bento init`",
            empty.path().join("bento.toml").display()
        );
        assert!(stderr.starts_with(&expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("bento init").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("os error"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    // BENTO_CONFIG names the file the message speaks of.
    let named = empty.path().join("fleet/other.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_bento"))
        .arg("status")
        .env("BENTO_CONFIG", &named)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("no fleet file at {}", named.display())),
        "{stderr}"
    );
}
