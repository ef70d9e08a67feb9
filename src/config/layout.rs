//! The server's state directory (`[fleet] state_dir`): where every file of Bento's server
//! side lives. Pure path arithmetic, so that build, deploy, the cache and the SFTP server
//! agree on one layout (documented in `docs/architecture.md`).
//!
//! Host names passed in are validated ones (`release::check_host_name`): they cannot
//! contain `/` or start with `.`, so joining them never leaves the directory.

use std::path::{Path, PathBuf};

/// The state directory and the names of everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `keys/`: the fleet signing key unless `[fleet] signing_key` says otherwise.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `keys/fleet.secret`: the default fleet signing key.
    pub fn default_signing_key(&self) -> PathBuf {
        self.keys_dir().join("fleet.secret")
    }

    /// `ssh/host_ed25519_key`: the SFTP server's host key.
    pub fn ssh_host_key(&self) -> PathBuf {
        self.root.join("ssh").join("host_ed25519_key")
    }

    /// `builds/`: one record per host of its last successful build.
    pub fn builds_dir(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// `builds/<host>.json`.
    pub fn build_record(&self, host: &str) -> PathBuf {
        self.builds_dir().join(format!("{host}.json"))
    }

    /// `gcroots/<host>/`: garbage-collector roots of the host's systems.
    pub fn gcroots_dir(&self, host: &str) -> PathBuf {
        self.root.join("gcroots").join(host)
    }

    /// `gcroots/<host>/build`: root of the host's last build.
    pub fn build_root(&self, host: &str) -> PathBuf {
        self.gcroots_dir(host).join("build")
    }

    /// `gcroots/<host>/generation-<N>`: root of the system published as generation N.
    pub fn release_root(&self, host: &str, generation: u64) -> PathBuf {
        self.gcroots_dir(host)
            .join(format!("generation-{generation}"))
    }

    /// `publish/`: the tree served over SFTP, one directory per host.
    pub fn publish_root(&self) -> PathBuf {
        self.root.join("publish")
    }

    /// `publish/<host>/`: the SFTP root of one host.
    pub fn publish_dir(&self, host: &str) -> PathBuf {
        self.publish_root().join(host)
    }

    /// `publish/<host>/release`: the signed release.
    pub fn release(&self, host: &str) -> PathBuf {
        self.publish_dir(host).join("release")
    }

    /// `publish/<host>/files/`: per-host files delivered outside the Nix store.
    pub fn files_dir(&self, host: &str) -> PathBuf {
        self.publish_dir(host).join("files")
    }

    /// `publish/<host>/reports/`: reports uploaded by the host's agent.
    pub fn reports_dir(&self, host: &str) -> PathBuf {
        self.publish_dir(host).join("reports")
    }

    /// `history/<host>.jsonl`: every release published for the host.
    pub fn history(&self, host: &str) -> PathBuf {
        self.root.join("history").join(format!("{host}.jsonl"))
    }

    /// `seen/<host>`: when the SFTP server last authenticated the host (Unix seconds),
    /// kept outside the host's SFTP tree and written at most once a minute.
    pub fn last_seen(&self, host: &str) -> PathBuf {
        self.root.join("seen").join(host)
    }

    /// `cache/`: compressed NARs of published closures.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `serve/wake.sock`: where the running `bento serve` takes deploys' wakes (a
    /// datagram makes its cache read the publish tree now).
    pub fn wake_socket(&self) -> PathBuf {
        self.root.join("serve").join("wake.sock")
    }

    /// `deploy.lock`: held by a running `bento deploy`.
    pub fn deploy_lock(&self) -> PathBuf {
        self.root.join("deploy.lock")
    }

    /// `rollout/`: the current rollout and the ones it replaced.
    pub fn rollout_dir(&self) -> PathBuf {
        self.root.join("rollout")
    }

    /// `rollout/current.json`: the newest rollout, finished or not.
    pub fn rollout(&self) -> PathBuf {
        self.rollout_dir().join("current.json")
    }

    /// `rollout/<id>.json`: a rollout a newer one replaced.
    pub fn rollout_archive(&self, id: u64) -> PathBuf {
        self.rollout_dir().join(format!("{id}.json"))
    }

    /// `gcroots/<host>/rollout`: root of the system a rollout will publish to the host in a
    /// later wave.
    pub fn rollout_root(&self, host: &str) -> PathBuf {
        self.gcroots_dir(host).join("rollout")
    }

    /// `git/`: what `bento serve --follow` keeps of the followed repository.
    pub fn git_dir(&self) -> PathBuf {
        self.root.join("git")
    }

    /// `git/mirror`: a bare repository the followed branch is fetched into.
    pub fn git_mirror(&self) -> PathBuf {
        self.git_dir().join("mirror")
    }

    /// `git/checkouts/`: one checkout per commit deployed (the newest few kept).
    pub fn git_checkouts(&self) -> PathBuf {
        self.git_dir().join("checkouts")
    }

    /// `git/follow.json`: what the follower did last.
    pub fn follow_record(&self) -> PathBuf {
        self.git_dir().join("follow.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_architecture_notes() {
        let s = StateDir::new("/var/lib/bento");
        let cases: Vec<(PathBuf, &str)> = vec![
            (s.default_signing_key(), "/var/lib/bento/keys/fleet.secret"),
            (s.ssh_host_key(), "/var/lib/bento/ssh/host_ed25519_key"),
            (s.build_record("web1"), "/var/lib/bento/builds/web1.json"),
            (s.build_root("web1"), "/var/lib/bento/gcroots/web1/build"),
            (
                s.release_root("web1", 7),
                "/var/lib/bento/gcroots/web1/generation-7",
            ),
            (s.release("web1"), "/var/lib/bento/publish/web1/release"),
            (s.files_dir("web1"), "/var/lib/bento/publish/web1/files"),
            (s.reports_dir("web1"), "/var/lib/bento/publish/web1/reports"),
            (s.history("web1"), "/var/lib/bento/history/web1.jsonl"),
            (s.cache_dir(), "/var/lib/bento/cache"),
            (s.last_seen("web1"), "/var/lib/bento/seen/web1"),
            (s.deploy_lock(), "/var/lib/bento/deploy.lock"),
            (s.rollout(), "/var/lib/bento/rollout/current.json"),
            (s.rollout_archive(7), "/var/lib/bento/rollout/7.json"),
            (
                s.rollout_root("web1"),
                "/var/lib/bento/gcroots/web1/rollout",
            ),
            (s.git_mirror(), "/var/lib/bento/git/mirror"),
            (s.git_checkouts(), "/var/lib/bento/git/checkouts"),
            (s.follow_record(), "/var/lib/bento/git/follow.json"),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
    }
}
