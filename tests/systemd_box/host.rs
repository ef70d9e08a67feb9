//! What a box needs from this machine: the check that fails (or, with
//! `BENTO_ALLOW_SKIP=1`, skips) a test that cannot boot one, the cached root filesystem,
//! and running commands here. Imports only std.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a command run inside the box ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything printed, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<std::process::Output> for Outcome {
    fn from(out: std::process::Output) -> Outcome {
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a command of the host, panicking with its output when it fails; returns stdout.
pub(super) fn must(c: &mut Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    let outcome = Outcome::from(out);
    assert!(outcome.success(), "{c:?} failed: {}", outcome.both());
    outcome.stdout
}

/// Polls `probe` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether this test can boot a box. When it cannot (not root, a tool missing) the test
/// fails with the reason, unless `BENTO_ALLOW_SKIP=1`: then it says loudly that it skips.
pub fn can_boot() -> bool {
    let missing = if !is_root() {
        Some("needs root (namespaces, mounts, systemd-nspawn)".to_owned())
    } else {
        ["systemd-nspawn", "nsenter", "unshare", "ip"]
            .into_iter()
            .find(|tool| !on_path(tool))
            .map(|tool| format!("`{tool}` is missing; run scripts/setup.sh"))
    };
    let Some(reason) = missing else {
        return true;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var("BENTO_ALLOW_SKIP").as_deref() == Ok("1") {
        // Straight to the stderr handle: libtest captures `eprintln!`, not this.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED {test}: {reason} (BENTO_ALLOW_SKIP=1) !!!!!!!!\n"
        );
        return false;
    }
    panic!("{test} cannot run: {reason}. Set BENTO_ALLOW_SKIP=1 to skip it instead.");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin";
    path.split(':').any(|d| Path::new(d).join(tool).is_file())
}

/// The cached root filesystem, made by `scripts/systemd-rootfs.sh` if needed (its progress
/// goes to this process's stderr).
pub fn cached_rootfs() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-rootfs.sh");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed ({})", out.status);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        Path::new(&path).join("usr/lib/systemd/systemd").exists(),
        "{script} printed {path:?}, which holds no systemd"
    );
    PathBuf::from(path)
}
