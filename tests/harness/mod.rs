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

#[allow(unused_imports)] // each test binary uses some of them
pub use support::{NIX_CONFIG, Ran, nix_system, public_key_line, publish_config, ssh_keygen};

#[path = "../support/mod.rs"]
mod support;

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

/// Pids of the processes (of any namespace: hosts' and boxes' included) whose command line
/// contains `needle`; zombies and this process left out.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Zombies wait for their reaper; they run nothing.
            if stat.rsplit_once(") ")?.1.starts_with('Z') {
                return None;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(needle) && pid != std::process::id()).then_some(pid)
        })
        .collect()
}

/// Whether this process may create namespaces; tests that need them say loudly why they
/// skip when it may not (CI runs as root and must run them).
pub fn can_use_namespaces() -> bool {
    support::root_or_skip(&support::current_test(), "network and mount namespaces")
}

/// `nix-build` of an expression file; returns the output paths.
pub fn nix_build(file: &Path) -> Vec<String> {
    run(cmd("nix-build").arg(file).arg("--no-out-link"))
        .lines()
        .map(str::to_owned)
        .collect()
}
