//! `serve/wake.sock` in the state directory (`StateDir::wake_socket`): a datagram socket
//! the running `bento serve` binds, on which each release published (`deploy::wake_server`,
//! called by the deploy path after a release is in place) asks it to look at the publish
//! tree now instead of at its next poll. A datagram only wakes the cache's watcher
//! ([`Cache::wake_now`]); the watcher then reads the tree and refreshes as on any poll, so
//! a wake can make a release visible no earlier than its closure is servable, and a wake
//! from anyone else costs one look at the tree's fingerprint.
//!
//! Both sides are best effort: with no server, a stale socket or a full queue, the deploy's
//! datagram is lost and the server's poll picks the release up a poll interval later.
//!
//! May import: `cache`, `config`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::StateDir;

fn socket_path(state_dir: &Path) -> PathBuf {
    StateDir::new(state_dir).wake_socket()
}

/// Binds the wake socket of `state_dir`, replacing one a dead server left. Call it only
/// while holding the running mark (`shown::claim`), so a live server's socket is never
/// taken over. Group-writable, like the publish tree: whoever may deploy may wake.
pub fn bind(state_dir: &Path) -> std::io::Result<UnixDatagram> {
    let path = socket_path(state_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = UnixDatagram::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(socket)
}

/// Wakes `cache`'s watcher for each datagram received, until `shutdown`.
pub async fn follow(socket: UnixDatagram, cache: Arc<Cache>, shutdown: CancellationToken) {
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = socket.recv(&mut buf) => match got {
                Ok(_) => cache.wake_now(),
                Err(e) => {
                    tracing::warn!(error = %e, "the wake socket failed; deploys are seen at the cache's next poll");
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `deploy::wake_server` does (the deploy module is not ours to import).
    fn wake(state_dir: &Path) -> bool {
        let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.send_to(b"refresh", socket_path(state_dir)).is_ok()
    }

    #[tokio::test]
    async fn a_wake_reaches_the_bound_socket_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!wake(dir.path()), "nobody listens: nothing is taken");
        let socket = bind(dir.path()).unwrap();
        assert!(wake(dir.path()));
        let mut buf = [0u8; 64];
        assert_eq!(socket.recv(&mut buf).await.unwrap(), b"refresh".len());
        // A dead server's socket file is replaced by the next server's.
        drop(socket);
        assert!(!wake(dir.path()), "a stale socket takes nothing");
        let again = bind(dir.path()).unwrap();
        assert!(wake(dir.path()));
        assert_eq!(again.recv(&mut buf).await.unwrap(), b"refresh".len());
    }
}
