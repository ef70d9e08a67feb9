//! The processes the agent starts, and what an earlier agent left running.
//!
//! Every command the agent runs leads a process group of its own
//! ([`Command::own_process_group`]) and has a deadline; the group is killed whole when the
//! deadline passes or the agent stops the run. Its id (and its leader's start time and the
//! boot it belongs to) is written to `<state_dir>/children.json` as soon as the process
//! runs and removed when it ends, so that when an agent is killed alone (SIGKILL, the OOM
//! killer) the next one finds its leftovers, a `nix copy` holding store locks or a
//! `switch-to-configuration`, and kills them before doing anything ([`kill_leftovers`]),
//! instead of racing them.
//!
//! A group is only killed when it is provably the one recorded: same boot, and its leader
//! either gone (its members keep the id: no other group can take it) or still the process
//! started at the recorded time. The window between the start of a process and its
//! record is the time to write one small file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::durable::write_atomic;
use crate::nix::cmd::{CmdError, Command, Output};

const FILE: &str = "children.json";
const FORMAT: u32 = 1;

/// One process group the agent started and has not seen end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group's id, its leader's pid.
    pub pgid: u32,
    /// The leader's start time (clock ticks after boot, `/proc/<pid>/stat` field 22).
    pub started: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot: String,
    /// What it runs, for the log of whoever kills it.
    pub argv: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    groups: Vec<Group>,
}

/// Serialises this process's updates of the record.
static WRITING: Mutex<()> = Mutex::new(());

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn load(state_dir: &Path) -> Record {
    std::fs::read(path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(state_dir: &Path, record: &Record) {
    let result = if record.groups.is_empty() {
        match std::fs::remove_file(path(state_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    } else {
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&path(state_dir), &bytes, 0o600).map_err(|e| e.to_string())
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot update the record of the agent's children");
    }
}

fn update(state_dir: &Path, change: impl FnOnce(&mut Vec<Group>)) {
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let mut record = load(state_dir);
    record.format = FORMAT;
    change(&mut record.groups);
    save(state_dir, &record);
}

/// What `/proc` says about a live process (not a zombie): its group and start time.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest: Vec<&str> = text.rsplit_once(") ")?.1.split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return None;
    }
    let pgrp = rest.get(2)?.parse().ok()?;
    let started = rest.get(19)?.parse().ok()?;
    Some((pgrp, started))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A child's record for the time it runs: made when it starts, removed when the run ends
/// (also when the run is dropped: its group is killed then).
struct Tracked<'a> {
    state_dir: &'a Path,
    argv: String,
    pgid: Option<u32>,
}

impl<'a> Tracked<'a> {
    fn new(state_dir: &'a Path, cmd: &Command) -> Self {
        Tracked {
            state_dir,
            argv: cmd.argv(),
            pgid: None,
        }
    }

    fn started(&mut self, pid: u32) {
        self.pgid = Some(pid);
        record(self.state_dir, pid, &self.argv);
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pgid {
            forget(self.state_dir, pid);
        }
    }
}

/// Runs `cmd` in a process group of its own, recorded under `state_dir` while it runs,
/// handing its lines to `on_line`.
pub async fn run(
    state_dir: &Path,
    cmd: Command,
    on_line: impl FnMut(&str) + Send,
) -> Result<Output, CmdError> {
    let cmd = cmd.own_process_group();
    let mut tracked = Tracked::new(state_dir, &cmd);
    cmd.run_async_started(|pid| tracked.started(pid), on_line)
        .await
}

/// [`run`], with stdout handed to `on_stdout` in chunks instead of kept.
pub async fn run_streaming(
    state_dir: &Path,
    cmd: Command,
    on_stdout: impl FnMut(&[u8]) + Send,
) -> Result<Output, CmdError> {
    let cmd = cmd.own_process_group();
    let mut tracked = Tracked::new(state_dir, &cmd);
    cmd.run_async_streaming(|pid| tracked.started(pid), on_stdout)
        .await
}

fn record(state_dir: &Path, pid: u32, argv: &str) {
    let Some((_, started)) = stat(pid) else {
        // Already gone: nothing can be left of it but its own children, which the runner
        // kills with the group.
        return;
    };
    let group = Group {
        pgid: pid,
        started,
        boot: boot_id(),
        argv: argv.to_owned(),
    };
    update(state_dir, |groups| groups.push(group));
}

fn forget(state_dir: &Path, pid: u32) {
    update(state_dir, |groups| groups.retain(|g| g.pgid != pid));
}

/// Whether `group` may be killed: it belongs to this boot, and its id still names it.
fn still_ours(group: &Group, boot: &str) -> bool {
    if group.boot != boot {
        return false;
    }
    match stat(group.pgid) {
        // The leader runs: it must be the process recorded, not a new one with its pid.
        Some((pgrp, started)) => pgrp == group.pgid && started == group.started,
        // The leader is gone; members that remain keep the id, which no new group can
        // take while they live.
        None => true,
    }
}

/// Pids of the processes in group `pgid`.
fn members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(pgrp, _)| pgrp == pgid))
        .collect()
}

/// Kills the process groups an earlier agent recorded and did not see end, waits (a few
/// seconds at most) until they are gone, and forgets them. Returns one line per group
/// killed, for the log. The caller holds the agent lock: no live agent's children are
/// recorded.
pub fn kill_leftovers(state_dir: &Path) -> Vec<String> {
    use rustix::process::{Pid, Signal, kill_process_group};
    let record = load(state_dir);
    if record.groups.is_empty() {
        return Vec::new();
    }
    let boot = boot_id();
    let mut killed = Vec::new();
    for group in &record.groups {
        if !still_ours(group, &boot) {
            continue;
        }
        let found = members(group.pgid);
        if found.is_empty() {
            continue;
        }
        let Some(pid) = i32::try_from(group.pgid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        if kill_process_group(pid, Signal::KILL).is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !members(group.pgid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        killed.push(format!(
            "killed process group {} ({} process{}) left by an earlier agent: {}",
            group.pgid,
            found.len(),
            if found.len() == 1 { "" } else { "es" },
            group.argv
        ));
    }
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    save(state_dir, &Record::default());
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_running_child_is_recorded_and_forgotten_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_owned();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let during = seen.clone();
        let state_in = state.clone();
        let out = run(
            &state,
            Command::new("sh").args(["-c", "echo hi >&2; sleep 0.3"]),
            move |_| {
                during.lock().unwrap().push(load(&state_in).groups);
            },
        )
        .await;
        assert!(out.is_ok(), "{out:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].len(), 1, "recorded while it ran");
        assert!(seen[0][0].argv.contains("echo hi"));
        assert!(!path(&state).exists(), "forgotten once it ended");
    }

    #[test]
    fn leftovers_are_killed_only_when_they_are_still_the_ones_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        // A group of ours, left behind: a shell leading its own group, with a child.
        let mut left = std::process::Command::new("sh");
        std::os::unix::process::CommandExt::process_group(&mut left, 0);
        let mut left = left.args(["-c", "sleep 300 & wait"]).spawn().unwrap();
        let pgid = left.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while members(pgid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(members(pgid).len(), 2, "the leader and its sleep");
        let (_, started) = stat(pgid).unwrap();
        let ours = Group {
            pgid,
            started,
            boot: boot_id(),
            argv: "sh -c 'sleep 300 & wait'".into(),
        };
        // Another process took a recorded pid (other start time), and a group of another
        // boot: neither may be touched.
        let mut bystander = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let reused = Group {
            pgid: bystander.id(),
            started: 1,
            boot: boot_id(),
            argv: "reused".into(),
        };
        let old_boot = Group {
            boot: "another-boot".into(),
            ..ours.clone()
        };
        for g in [reused, old_boot] {
            save(
                state,
                &Record {
                    format: FORMAT,
                    groups: vec![g],
                },
            );
            assert!(kill_leftovers(state).is_empty());
        }
        assert!(
            !members(pgid).is_empty(),
            "a group of another boot was killed"
        );
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a process that reused a recorded pid was killed"
        );
        save(
            state,
            &Record {
                format: FORMAT,
                groups: vec![ours],
            },
        );
        let killed = kill_leftovers(state);
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert!(killed[0].contains("2 processes"), "{killed:?}");
        let _ = left.wait();
        assert!(members(pgid).is_empty(), "the leftover group still runs");
        assert!(!path(state).exists());
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
