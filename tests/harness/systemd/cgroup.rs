//! A control group of its own for each box, removed on drop.
//!
//! Run with `--keep-unit` on a machine whose PID 1 is not systemd, systemd-nspawn puts the
//! container in `<its own cgroup>/payload`. Two boxes started from the same cgroup would
//! share that subtree, and each one's systemd would create and remove the other's unit
//! cgroups (seen here: "Failed to attach to cgroup /system.slice/…: No such file or
//! directory"). So the box's nspawn is first moved to `bento-boxes/<name>` in each
//! hierarchy systemd uses: the cgroup2 root on a unified machine, or `systemd`
//! (name=systemd) and `unified` on a hybrid one like this.
//!
//! Imports only std.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "bento-boxes";

/// The box's cgroup directories, one per hierarchy.
pub struct BoxCgroups {
    pub dirs: Vec<PathBuf>,
}

impl BoxCgroups {
    /// Makes `bento-boxes/<name>` in every hierarchy systemd uses.
    pub fn new(name: &str) -> BoxCgroups {
        let cgroups = BoxCgroups {
            dirs: hierarchies()
                .into_iter()
                .map(|h| h.join(PARENT).join(name))
                .collect(),
        };
        assert!(
            !cgroups.dirs.is_empty(),
            "no cgroup hierarchy for systemd under {ROOT}"
        );
        for dir in &cgroups.dirs {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
        }
        cgroups
    }
}

impl Drop for BoxCgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_tree(dir);
        }
    }
}

/// The hierarchies systemd keeps its cgroups in.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_owned()];
    }
    ["systemd", "unified"]
        .into_iter()
        .map(|h| root.join(h))
        .filter(|h| h.join("cgroup.procs").exists())
        .collect()
}

/// Removes a cgroup and the ones under it (children first; a cgroup is removed with
/// `rmdir`, its files go with it). One that still holds a process stays.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills every process of the boxes `stale` names (their test process is gone; nspawn
/// and the container are all in the box's cgroups) and removes their cgroups.
pub fn reap_stale(stale: impl Fn(&str) -> bool) {
    let mut left = Vec::new();
    for h in hierarchies() {
        let Ok(entries) = std::fs::read_dir(h.join(PARENT)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && stale(&entry.file_name().to_string_lossy())
            {
                kill_tree(&entry.path());
                left.push(entry.path());
            }
        }
    }
    // The killed processes take a moment to go; a cgroup is removable only then.
    for _ in 0..50 {
        left.retain(|dir| {
            remove_tree(dir);
            dir.exists()
        });
        if left.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// SIGKILL to every process in a cgroup and the ones under it.
fn kill_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_tree(&entry.path());
            }
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .output();
    }
}
