//! Running processes and reading how they went: commands that must succeed, the outcome of
//! one that may fail ([`Ran`]), the real `bento` binary, a guard that kills a child when
//! the test ends, and waiting for a condition.

use std::time::Duration;

use bento::nix::cmd::{CmdError, Command, Output};

use super::nix::NIX_CONFIG;

/// Runs `c`, which must succeed; panics with its argv, status and stderr otherwise.
/// Returns its stdout, trimmed.
pub fn run(c: Command) -> String {
    match c.run() {
        Ok(out) => out.stdout_text().trim().to_owned(),
        Err(e) => panic!("{e}"),
    }
}

/// The text of a command's failure (for assertions); panics if it succeeded.
pub fn failure_text(result: Result<Output, CmdError>, what: &str) -> String {
    match result {
        Ok(out) => panic!(
            "{what} should have failed; stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => e.to_string(),
    }
}

/// The real `bento` binary with the test Nix settings and `RUST_LOG=warn`.
pub fn bento() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bento"));
    c.env("NIX_CONFIG", NIX_CONFIG).env("RUST_LOG", "warn");
    c
}

/// How a process that ran to its end (or was killed) went.
#[derive(Debug)]
pub struct Ran {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Runs `c` to its end, whatever its outcome.
    pub fn of(c: &mut std::process::Command) -> Ran {
        Ran::from(
            c.output()
                .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}")),
        )
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Everything printed, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr)
    }
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Ran {
        use std::os::unix::process::ExitStatusExt as _;
        Ran {
            code: out.status.code().unwrap_or(-1),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A child process killed (and reaped) when this guard drops.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `attempt` until it succeeds, at most 50 times, 100 ms apart (for what comes back by
/// itself a moment later: a port a stopped server held, a connection slot); panics with the
/// last error, naming `what`.
pub async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(t) => return t,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Polls `probe` every 100 ms until it gives a value; panics naming `what` after
/// `timeout`. Blocking, for tests without a runtime (see [`wait_for`]).
pub fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `secs` for `cond`, checking every 50 ms; false if it never held.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
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
