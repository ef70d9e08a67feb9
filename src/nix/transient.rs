//! Nix's transient local-store errors, and a bounded retry around commands that hit them.
//!
//! Several Nix processes that open one store at the same time can fail for reasons that
//! have nothing to do with what they were asked: the SQLite database is busy, or two of
//! them race to initialise a fresh `/nix` (`creating symlink ... gcroots/profiles ... File
//! exists`, a `schema` file read half-written). Nix 2.8 gives such a process exit status 1
//! like any other failure, so the only way to tell is its stderr, read by the one table of
//! Nix's wording ([`messages::store_contention`]). [`run_retrying`] runs a command again
//! after a short, growing pause when the failure is one of these, at most
//! [`Backoff::attempts`] times, and logs each retry. [`ensure_store_initialised`] opens the
//! store once, alone, before parallel work starts, so a first run on an empty `/nix` does
//! not race at all.

use std::time::Duration;

use super::cmd::{self, CmdError, Command, Output};
use super::messages;

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Runs in all, the first included (at least 1).
    pub attempts: u32,
    /// Pause before the second run; each later pause doubles, up to `max_pause`.
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Backoff {
    /// For store contention: 5 runs, pauses 0.2, 0.4, 0.8, 1.6 s (3 s in all at most).
    pub const STORE: Backoff = Backoff {
        attempts: 5,
        first_pause: Duration::from_millis(200),
        max_pause: Duration::from_secs(2),
    };

    /// The pause after failed run number `run` (1-based), or `None` when no run is left.
    pub fn pause_after(&self, run: u32) -> Option<Duration> {
        if run >= self.attempts.max(1) {
            return None;
        }
        let doubled = self.first_pause.saturating_mul(1u32 << (run - 1).min(16));
        Some(doubled.min(self.max_pause))
    }
}

/// Runs `command`, again after a pause when it fails for store contention, until it
/// succeeds, fails for another reason, or `backoff` runs out; the last result is returned.
/// Lines reach `on_line` from every run.
pub async fn run_retrying(
    command: &Command,
    backoff: Backoff,
    mut on_line: impl FnMut(&str) + Send,
) -> Result<Output, CmdError> {
    let mut run = 1;
    loop {
        let result = command.run_async_with(&mut on_line).await;
        let Err(err) = &result else { return result };
        let contention = messages::store_contention(err.stderr_tail());
        let (true, Some(pause)) = (contention, backoff.pause_after(run)) else {
            return result;
        };
        tracing::warn!(
            argv = %command.argv(),
            reason = "another Nix process held the store (busy database or a fresh store being set up)",
            attempt = run,
            of = backoff.attempts,
            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "transient Nix store error, running it again"
        );
        tokio::time::sleep(pause).await;
        run += 1;
    }
}

/// Opens the local store once (`nix store ping`), creating its database and state
/// directories on a fresh machine, so that Nix processes started in parallel afterwards
/// find it ready. Retried like any store call.
pub async fn ensure_store_initialised() -> Result<(), CmdError> {
    let ping = cmd::nix().args(["store", "ping"]);
    run_retrying(&ping, Backoff::STORE, |_| {})
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_error_of_contention_is_retried() {
        let cases: &[(&str, bool)] = &[
            // Nix 2.8, seen on a fresh /nix with 8 parallel evaluations.
            (
                "error: SQLite database '/nix/var/nix/db/db.sqlite' is busy",
                true,
            ),
            (
                "error: creating symlink from '/nix/var/nix/gcroots/profiles' to '/nix/var/nix/profiles': File exists",
                true,
            ),
            ("error: '/nix/var/nix/db/schema' is corrupt", true),
            // Waiting is only a warning: the run went on and failed for another reason.
            (
                "warning: error: SQLite database '/nix/var/nix/db/db.sqlite' is busy\nerror: attribute 'web9' missing",
                false,
            ),
            // The evaluation cache being busy is ignored by Nix itself.
            (
                "error (ignored): error: SQLite database '/root/.cache/nix/eval-cache-v2/x.sqlite' is busy",
                false,
            ),
            (
                "error: builder for '/nix/store/x.drv' failed with exit code 1",
                false,
            ),
            // Transient for a copy, but not another process holding the store.
            (
                "error: unable to download 'http://x/y.narinfo': HTTP error 500",
                false,
            ),
            ("", false),
        ];
        for (stderr, want) in cases {
            assert_eq!(messages::store_contention(stderr), *want, "{stderr:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_ends() {
        let b = Backoff {
            attempts: 5,
            first_pause: Duration::from_millis(300),
            max_pause: Duration::from_secs(1),
        };
        let pauses: Vec<_> = (1..=5).map(|run| b.pause_after(run)).collect();
        assert_eq!(
            pauses,
            [
                Some(Duration::from_millis(300)),
                Some(Duration::from_millis(600)),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(1)),
                None
            ]
        );
        let once = Backoff { attempts: 1, ..b };
        assert_eq!(once.pause_after(1), None);
        let zero = Backoff { attempts: 0, ..b };
        assert_eq!(zero.pause_after(1), None);
    }

    #[tokio::test]
    async fn a_transient_failure_is_run_again_and_a_real_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran-once");
        // Fails as a busy store the first time, succeeds the second.
        let script = format!(
            "if [ -e {m} ]; then echo done; else touch {m}; echo \"error: SQLite database '/nix/var/nix/db/db.sqlite' is busy\" >&2; exit 1; fi",
            m = marker.display()
        );
        let quick = Backoff {
            attempts: 3,
            first_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(1),
        };
        let mut lines = Vec::new();
        let out = run_retrying(
            &Command::new("/bin/sh")
                .args(["-c", &script])
                .with_stdout_lines(),
            quick,
            |l| lines.push(l.to_owned()),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout_text(), "done");
        assert!(lines.iter().any(|l| l.contains("is busy")), "{lines:?}");

        let count = dir.path().join("count");
        let failing = format!(
            "echo x >> {}; echo 'error: real' >&2; exit 1",
            count.display()
        );
        let err = run_retrying(
            &Command::new("/bin/sh").args(["-c", &failing]),
            quick,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(err.stderr_tail().contains("real"));
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);

        let busy_always = format!(
            "echo x >> {}.b; echo \"error: SQLite database 'x' is busy\" >&2; exit 1",
            count.display()
        );
        run_retrying(
            &Command::new("/bin/sh").args(["-c", &busy_always]),
            quick,
            |_| {},
        )
        .await
        .unwrap_err();
        let runs = std::fs::read_to_string(format!("{}.b", count.display())).unwrap();
        assert_eq!(runs.lines().count(), 3, "bounded by attempts");
    }
}
