//! Instant updates: one `tokio::sync::watch` per watched host carrying the generation of
//! its release, so that a waiting agent learns of a new release the moment it is published.
//!
//! A host's channel exists while someone waits on it. Its value changes when
//! [`super::Sessions::notify_release_changed`] is called (the deploy path does so after
//! writing a release) or when the periodic poll sees `publish/<host>/release` change
//! (inode, size, mtime or ctime), which covers releases written by another process. Both
//! re-read the release through the confined open and extract its generation with the
//! release module's parser; a missing or unreadable release counts as generation 0.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use tokio::sync::watch;

use super::confine;

/// Largest release file read to find its generation.
const MAX_RELEASE_BYTES: u64 = 1 << 20;

/// What identifies one version of a release file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

struct Watched {
    tx: watch::Sender<u64>,
    stamp: Option<FileStamp>,
}

/// The per-host channels.
#[derive(Default)]
pub(crate) struct ReleaseWatch {
    hosts: Mutex<HashMap<String, Watched>>,
}

type Parse = fn(&[u8]) -> Option<u64>;

impl ReleaseWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of `host`'s release generation, reading it from disk if nobody watched yet.
    pub(crate) fn subscribe(
        &self,
        publish: BorrowedFd<'_>,
        host: &str,
        parse: Parse,
    ) -> watch::Receiver<u64> {
        let mut hosts = self.lock();
        if let Some(w) = hosts.get(host) {
            return w.tx.subscribe();
        }
        let (stamp, generation) = read_generation(publish, host, parse);
        let (tx, rx) = watch::channel(generation);
        hosts.insert(host.to_owned(), Watched { tx, stamp });
        rx
    }

    /// A receiver of `host`'s release generation, starting at `generation` if nobody
    /// watched yet (the release is not read from disk: see `Sessions::show_releases`).
    pub(crate) fn subscribe_at(&self, host: &str, generation: u64) -> watch::Receiver<u64> {
        let mut hosts = self.lock();
        let w = hosts.entry(host.to_owned()).or_insert_with(|| Watched {
            tx: watch::channel(generation).0,
            stamp: None,
        });
        w.tx.subscribe()
    }

    /// Sets every watched host's generation to `generation_of` it, waking those whose
    /// generation changed; forgets hosts nobody waits on.
    pub(crate) fn set_each(&self, generation_of: impl Fn(&str) -> u64) {
        let mut hosts = self.lock();
        hosts.retain(|_, w| w.tx.receiver_count() > 0);
        for (host, w) in hosts.iter() {
            let generation = generation_of(host);
            w.tx.send_if_modified(|g| {
                let changed = *g != generation;
                if changed {
                    tracing::debug!(host, generation, "release generation changed");
                    *g = generation;
                }
                changed
            });
        }
    }

    /// Re-reads `host`'s release if anyone watches it; wakes the waiters when its generation
    /// changed. `only_if_stamp_changed` skips the read when the file looks untouched.
    pub(crate) fn refresh(
        &self,
        publish: BorrowedFd<'_>,
        host: &str,
        parse: Parse,
        only_if_stamp_changed: bool,
    ) {
        let mut hosts = self.lock();
        let Some(w) = hosts.get_mut(host) else {
            return;
        };
        if only_if_stamp_changed && stamp_of(publish, host) == w.stamp {
            return;
        }
        let (stamp, generation) = read_generation(publish, host, parse);
        w.stamp = stamp;
        w.tx.send_if_modified(|g| {
            if *g == generation {
                false
            } else {
                tracing::debug!(host, generation, "release generation changed");
                *g = generation;
                true
            }
        });
    }

    /// Checks every watched host's release for changes; forgets hosts nobody waits on.
    pub(crate) fn poll(&self, publish: BorrowedFd<'_>, parse: Parse) {
        let hosts: Vec<String> = {
            let mut hosts = self.lock();
            hosts.retain(|_, w| w.tx.receiver_count() > 0);
            hosts.keys().cloned().collect()
        };
        for host in hosts {
            self.refresh(publish, &host, parse, true);
        }
    }

    /// Drops `host`'s channel (the host left the fleet); its waiters see the channel close.
    pub(crate) fn forget(&self, host: &str) {
        self.lock().remove(host);
    }

    /// Hosts with a channel (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.lock().len()
    }
}

fn stamp_of(publish: BorrowedFd<'_>, host: &str) -> Option<FileStamp> {
    let root = confine::open_host_dir(publish, host).ok()?;
    let st = confine::stat(root.as_fd(), "release").ok()?;
    Some(FileStamp {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    })
}

fn read_generation(publish: BorrowedFd<'_>, host: &str, parse: Parse) -> (Option<FileStamp>, u64) {
    let Ok(root) = confine::open_host_dir(publish, host) else {
        return (None, 0);
    };
    let Ok((fd, st)) = confine::open_file(root.as_fd(), "release") else {
        return (None, 0);
    };
    let stamp = FileStamp {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::fs::File::from(fd)
        .take(MAX_RELEASE_BYTES)
        .read_to_end(&mut bytes)
    {
        tracing::warn!(host, error = %e, "cannot read release to find its generation");
        return (Some(stamp), 0);
    }
    match parse(&bytes) {
        Some(g) => (Some(stamp), g),
        None => {
            tracing::warn!(host, "release has no generation the SFTP server can read");
            (Some(stamp), 0)
        }
    }
}

/// The generation of a release file, read with the release module's own (untrusting)
/// parser: only a hint for waking agents, who verify the release themselves.
pub fn release_generation(bytes: &[u8]) -> Option<u64> {
    crate::release::Release::parse_untrusted(bytes)
        .ok()
        .map(|r| r.generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    #[test]
    fn the_generation_hint_comes_from_a_real_release_only() {
        let key = crate::nix::keys::SecretKey::generate("fleet").unwrap();
        let path = "/nix/store/00000000000000000000000000000000-nixos-system-web1";
        let release = crate::release::Release::sign("web1", 42, path, 1, &key).unwrap();
        assert_eq!(release_generation(&release.to_bytes()), Some(42));
        for junk in [&br#"{"generation":7}"#[..], b"generation = 9\n", b"", b"{"] {
            assert_eq!(release_generation(junk), None, "{junk:?}");
        }
    }

    /// The watch mechanics, independent of the release format.
    fn json_generation(bytes: &[u8]) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()?
            .get("generation")?
            .as_u64()
    }

    #[tokio::test]
    async fn waiters_see_a_new_generation_and_idle_hosts_are_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("web1")).unwrap();
        let release = tmp.path().join("web1/release");
        std::fs::write(&release, r#"{"generation":1}"#).unwrap();
        let publish = rustix::fs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let w = ReleaseWatch::default();
        let parse = json_generation;
        let mut rx = w.subscribe(publish.as_fd(), "web1", parse);
        assert_eq!(*rx.borrow(), 1);

        // Unchanged file: the poll does not wake anyone.
        w.poll(publish.as_fd(), parse);
        assert!(!rx.has_changed().unwrap());

        // A new release written by rename (as the deploy path does) is seen by the poll.
        std::fs::write(tmp.path().join("web1/.tmp"), r#"{"generation":2}"#).unwrap();
        std::fs::rename(tmp.path().join("web1/.tmp"), &release).unwrap();
        w.poll(publish.as_fd(), parse);
        assert_eq!(*rx.borrow_and_update(), 2);

        // An explicit refresh re-reads even when the stamp looks the same.
        w.refresh(publish.as_fd(), "web1", parse, false);
        assert!(!rx.has_changed().unwrap());

        drop(rx);
        w.poll(publish.as_fd(), parse);
        assert_eq!(w.watched(), 0);
    }
}
