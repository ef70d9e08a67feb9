//! Effects on the host's own system, each through the one process runner: which system
//! runs now, copying a closure from the cache with only the fleet key trusted, setting the
//! profile, running `switch-to-configuration`, health checks, and the single-agent lock.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::config::{ActivationAction, Agent};
use crate::nix::cmd::{self, CmdError, Command};
use crate::nix::store;

#[derive(Debug, Error)]
pub enum SystemError {
    #[error("copying {path} from {cache} failed: {source}")]
    Copy {
        path: String,
        cache: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error(
        "the closure of {path} from {cache} was refused by Nix (bad signature or tampered NAR): {source}"
    )]
    CopyRefused {
        path: String,
        cache: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error("setting profile {profile} to {path} failed: {source}")]
    Profile {
        profile: PathBuf,
        path: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error("activating {path} failed: {source}")]
    Activate {
        path: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error("health check `{argv}` failed: {source}")]
    Health {
        argv: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error("another bento agent is running (lock {path} is held); it will handle this host")]
    Busy { path: PathBuf },
    #[error("cannot take the agent lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The store path of the running system, from the `current_system` link; `None` when the
/// link is missing or points outside the store.
pub fn running_system(current_system: &Path) -> Option<String> {
    let target = std::fs::read_link(current_system).ok()?;
    let target = target.to_str()?;
    store::parse_prefix(target).ok().map(|p| store::render(&p))
}

/// Whether a `nix copy` failure is Nix refusing what it got (signature, hash) rather than
/// failing to get it.
pub fn is_refusal(stderr: &str) -> bool {
    const SIGNS: [&str; 4] = [
        "hash mismatch",
        "lacks a valid signature",
        "is not signed",
        "NAR hash",
    ];
    SIGNS.iter().any(|s| stderr.contains(s))
}

/// `nix copy --from <cache>` of `path`'s closure, signatures required, only the fleet key
/// trusted, no other substituter consulted.
pub fn copy_command(agent: &Agent, path: &str) -> Command {
    let mut c = cmd::nix().args([
        "copy",
        "--from",
        agent.cache_url.as_str(),
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        &agent.fleet_key.to_string(),
        "--option",
        "substituters",
        "",
        // Nix remembers narinfos per cache URL for a month; after a fleet key rotation a
        // remembered one would carry a signature no longer trusted. Ours are cheap to ask.
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
    ]);
    if let Some(netrc) = &agent.cache_netrc {
        c = c.arg("--option").arg("netrc-file").arg(netrc);
    }
    c.arg(path)
}

pub async fn copy_closure(agent: &Agent, path: &str, log: &mut String) -> Result<(), SystemError> {
    let result = copy_command(agent, path)
        .run_async_with(|line| {
            log.push_str(line);
            log.push('\n');
        })
        .await;
    result.map(|_| ()).map_err(|source| {
        let (path, cache) = (path.to_owned(), agent.cache_url.to_string());
        if is_refusal(source.stderr_tail()) {
            SystemError::CopyRefused {
                path,
                cache,
                source: Box::new(source),
            }
        } else {
            SystemError::Copy {
                path,
                cache,
                source: Box::new(source),
            }
        }
    })
}

/// Points the system profile at `path` (a new profile generation).
pub async fn set_profile(profile: &Path, path: &str, log: &mut String) -> Result<(), SystemError> {
    let result = Command::new("nix-env")
        .arg("--profile")
        .arg(profile)
        .args(["--set", path])
        .run_async_with(|l| push_line(log, l))
        .await;
    result.map(|_| ()).map_err(|source| SystemError::Profile {
        profile: profile.to_owned(),
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Runs `<path>/bin/switch-to-configuration <action>`.
pub async fn switch(
    path: &str,
    action: ActivationAction,
    log: &mut String,
) -> Result<(), SystemError> {
    let result = Command::new(format!("{path}/bin/switch-to-configuration"))
        .arg(action.as_str())
        .with_stdout_lines()
        .run_async_with(|l| push_line(log, l))
        .await;
    result.map(|_| ()).map_err(|source| SystemError::Activate {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Makes `path` the system: the profile first, then its own `switch-to-configuration`.
pub async fn activate(
    profile: &Path,
    path: &str,
    action: ActivationAction,
    log: &mut String,
) -> Result<(), SystemError> {
    set_profile(profile, path, log).await?;
    switch(path, action, log).await
}

/// Runs every health check; the first failure is returned.
pub async fn health_checks(
    checks: &[Vec<String>],
    timeout: Duration,
    log: &mut String,
) -> Result<(), SystemError> {
    for argv in checks {
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let c = Command::new(program)
            .args(args)
            .timeout(timeout)
            .with_stdout_lines();
        let result = c.run_async_with(|l| push_line(log, l)).await;
        result.map_err(|source| SystemError::Health {
            argv: c.argv(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

fn push_line(log: &mut String, line: &str) {
    log.push_str(line);
    log.push('\n');
}

/// An exclusive lock on the agent's state directory, held for the life of the value.
#[derive(Debug)]
pub struct Lock {
    _fd: OwnedFd,
    pub path: PathBuf,
}

/// Takes the lock without waiting: a second agent learns at once that another one runs.
pub fn lock(state_dir: &Path) -> Result<Lock, SystemError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let path = state_dir.join("lock");
    let err = |source: std::io::Error| SystemError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let fd = rustix::fs::open(
        &path,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| err(e.into()))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Lock { _fd: fd, path }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SystemError::Busy { path }),
        Err(e) => Err(err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(SystemError::Busy { .. })));
        drop(first);
        assert!(lock(dir.path()).is_ok());
    }

    #[test]
    fn running_system_reads_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current-system");
        assert_eq!(running_system(&link), None);
        let p = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top";
        std::os::unix::fs::symlink(p, &link).unwrap();
        assert_eq!(running_system(&link).as_deref(), Some(p));
        let other = dir.path().join("other");
        std::os::unix::fs::symlink("/etc", &other).unwrap();
        assert_eq!(running_system(&other), None);
    }

    #[test]
    fn refusals_are_told_from_transport_failures() {
        assert!(is_refusal(
            "error: hash mismatch importing path '/nix/store/x'"
        ));
        assert!(is_refusal(
            "error: cannot add path '/nix/store/x' because it lacks a valid signature"
        ));
        assert!(!is_refusal(
            "error: unable to download 'http://x/nix-cache-info': Couldn't connect to server"
        ));
    }
}
