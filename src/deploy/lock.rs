//! `deploy.lock` in the state directory: an exclusive `flock` held for a whole deploy, so
//! two deploys (or a deploy and a rollback) never interleave their generations. The kernel
//! releases it when the process dies, so a crashed deploy never leaves a stale lock.

use std::io::Write as _;
use std::path::PathBuf;

use rustix::fs::{FlockOperation, flock};

use super::DeployError;
use crate::config::StateDir;

/// Held while it lives.
#[derive(Debug)]
pub struct DeployLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DeployLock {
    /// Takes the lock, or fails at once naming the process holding it.
    pub fn acquire(state: &StateDir) -> Result<DeployLock, DeployError> {
        let path = state.deploy_lock();
        let io = |source| DeployError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state.root()).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let holder = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                return Err(DeployError::Locked { path, holder });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DeployLock { _file: file, path })
    }

    /// Takes the lock, waiting up to `patience` for a holder to let go (a `bento serve`
    /// publishing a wave holds it for moments).
    pub fn acquire_waiting(
        state: &StateDir,
        patience: std::time::Duration,
    ) -> Result<DeployLock, DeployError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match DeployLock::acquire(state) {
                Err(DeployError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_deploy_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let first = DeployLock::acquire(&state).unwrap();
        let msg = DeployLock::acquire(&state).unwrap_err().to_string();
        assert!(
            msg.contains("deploy.lock") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        assert!(DeployLock::acquire(&state).is_ok());
    }
}
