//! A machine's first `bento build` meets a `/nix` nobody has opened yet: parallel Nix
//! processes then race to create the store database and its state links (Nix 2.8 fails
//! with "SQLite database ... is busy" or "creating symlink ... gcroots/profiles ... File
//! exists", about one run in two for 4 hosts). Bento opens the store once before starting
//! parallel work and retries those transient errors, so eight hosts built on an empty
//! `/nix` (a mount namespace with a fresh directory on `/nix`) succeed ten times in a row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::process::Command;

use harness::ran::Ran;
use harness::repo::{Repo, row};

const HOSTS: [&str; 8] = ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"];

/// `command` run in a private mount namespace whose `/nix` is the empty directory `nix`.
fn on_empty_nix(command: &Command, nix: &std::path::Path) -> Ran {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /nix && exec "$@""#)
        .arg(nix)
        .arg(command.get_program())
        .args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    Ran::from(wrapped.output().expect("run unshare"))
}

#[test]
fn eight_hosts_build_on_a_fresh_store_ten_times_in_a_row() {
    if !harness::needs_root("mount namespaces") {
        return;
    }
    let fleet = Repo::new("firstbuild", &HOSTS);
    let scratch = tempfile::tempdir().unwrap();
    for round in 1..=10 {
        let nix = scratch.path().join(format!("nix-{round}"));
        std::fs::create_dir(&nix).unwrap();
        let run = on_empty_nix(&fleet.command(&["build", "--jobs", "8"]), &nix);
        assert!(run.success(), "round {round}: {}", run.both());
        // Every host was built into that fresh store, not found in the machine's own.
        for host in HOSTS {
            let line = row(&run.stdout, host);
            assert!(
                line.contains(" built "),
                "round {round}, {host}: {}",
                run.both()
            );
        }
        let built = std::fs::read_dir(nix.join("store"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("-nixos-system-") && !name.ends_with(".drv"))
            .count();
        assert_eq!(built, HOSTS.len(), "round {round}: {}", run.both());
        assert!(
            nix.join("var/nix/db/db.sqlite").exists(),
            "round {round}: the store was made in the fresh /nix"
        );
    }
}
