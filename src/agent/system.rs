//! Effects on the host's own system, each through the one process runner (in a process
//! group of its own, recorded by `children`, with a deadline): which system runs now,
//! copying a closure from the cache with only the fleet key trusted, health checks, and
//! the single-agent lock. Activation is in `activate`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::children;
use super::config::Agent;
use super::nar_check::{self, Finding};
use crate::nix::cmd::{self, CmdError, Command};
use crate::nix::messages::{self, Meaning};
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
    #[error(
        "the closure of {path} from {cache} was refused: what the cache serves does not match what the fleet key signed: {why}"
    )]
    CopyTampered {
        path: String,
        cache: String,
        why: String,
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
    #[error(
        "switch-to-configuration of {path} reported success, but {} points at {}, not at it",
        .link.display(), .running.as_deref().unwrap_or("nothing")
    )]
    NotRunning {
        path: String,
        link: PathBuf,
        running: Option<String>,
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

/// The options every Nix call on the cache gets: only the fleet key trusted, no other
/// substituter, this host's netrc, and no remembered narinfos (Nix keeps them per cache URL
/// for a month; after a fleet key rotation a remembered one would carry a signature no
/// longer trusted, and ours are cheap to ask).
pub fn cache_options(agent: &Agent) -> Vec<String> {
    let mut o: Vec<String> = [
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        &agent.fleet_key.to_string(),
        "--option",
        "substituters",
        "",
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Some(netrc) = &agent.cache_netrc {
        o.extend(["--option".into(), "netrc-file".into()]);
        o.push(netrc.to_string_lossy().into_owned());
    }
    o
}

/// `nix copy --from <cache>` of `path`'s closure, signatures required, only the fleet key
/// trusted, no other substituter consulted, within `copy_timeout_secs`.
pub fn copy_command(agent: &Agent, path: &str) -> Command {
    cmd::nix()
        .args(["copy", "--from", agent.cache_url.as_str()])
        .args(cache_options(agent))
        .arg(path)
        .timeout(agent.copy_timeout)
}

/// Copies `path`'s closure from the cache. A failure Nix explains as a refusal is
/// `CopyRefused`; one it does not explain (or explains as a missing path) is checked
/// against the signed narinfos by `nar_check`, so a tampered closure is refused whatever
/// the Nix version says; anything else is a failed copy, tried again later.
pub async fn copy_closure(agent: &Agent, path: &str, log: &mut String) -> Result<(), SystemError> {
    let before = log.len();
    let result = children::run(&agent.state_dir, copy_command(agent, path), |l| {
        push_line(log, l)
    })
    .await;
    let Err(source) = result else {
        return Ok(());
    };
    let (path, cache) = (path.to_owned(), agent.cache_url.to_string());
    // Everything Nix printed during this copy (the error's tail may have lost the start).
    let said = log[before..].to_owned();
    let meaning = if source.is_timeout() {
        Some(Meaning::Transient)
    } else {
        messages::classify(&said)
    };
    match meaning {
        Some(Meaning::Refused) => {
            return Err(SystemError::CopyRefused {
                path,
                cache,
                source: Box::new(source),
            });
        }
        Some(Meaning::Transient) => {}
        Some(Meaning::Missing) | None => {
            push_line(
                log,
                "checking the cache's NARs against their signed narinfos (Nix did not say it refused them)",
            );
            let finding = nar_check::check(agent, &path, &said, log).await;
            push_line(log, &finding.to_string());
            if let Finding::Tampered(why) = finding {
                return Err(SystemError::CopyTampered { path, cache, why });
            }
        }
    }
    Err(SystemError::Copy {
        path,
        cache,
        source: Box::new(source),
    })
}

/// Runs every health check (each within `timeout`); the first failure is returned.
pub async fn health_checks(
    agent: &Agent,
    timeout: Duration,
    log: &mut String,
) -> Result<(), SystemError> {
    for argv in &agent.health_checks {
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let c = Command::new(program)
            .args(args)
            .timeout(timeout)
            .with_stdout_lines();
        let shown = c.argv();
        let result = children::run(&agent.state_dir, c, |l| push_line(log, l)).await;
        result.map_err(|source| SystemError::Health {
            argv: shown,
            source: Box::new(source),
        })?;
    }
    Ok(())
}

pub fn push_line(log: &mut String, line: &str) {
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
}
