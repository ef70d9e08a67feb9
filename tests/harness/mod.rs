//! The fleet-in-a-box harness: simulated hosts on one machine, each a network namespace
//! (its own `eth0` on a bridge of the test's own) plus a mount namespace in which its own
//! directory is bound on `/nix` and `/run`, so it has its own Nix store, profiles and
//! `/run/current-system`, and runs the real `bento agent`.
//!
//! Everything made here is removed when the guards drop, also when a test panics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake;
pub mod fleet;
pub mod net;
pub mod server;

use std::path::Path;
use std::process::Command;

/// Nix settings for tests: flakes on, no sandbox, no substituters (offline machine).
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsandbox = false\nbuild-users-group =\nsubstituters =\nwarn-dirty = false";

/// A `Command` with the test Nix settings.
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONFIG", NIX_CONFIG);
    c
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn run(c: &mut Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether this process may create namespaces; tests that need them say loudly why they
/// skip when it may not (CI runs as root and must run them).
pub fn can_use_namespaces() -> bool {
    let root = rustix_uid_is_root();
    if !root {
        eprintln!("SKIPPED: this test needs root for network and mount namespaces");
    }
    root
}

fn rustix_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `nix-build` of an expression file; returns the output paths.
pub fn nix_build(file: &Path) -> Vec<String> {
    run(cmd("nix-build").arg(file).arg("--no-out-link"))
        .lines()
        .map(str::to_owned)
        .collect()
}
