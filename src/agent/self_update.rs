//! The agent adopting its own new configuration.
//!
//! Activation never restarts the agent (`restartIfChanged = false`: it must survive the
//! switch it performs), so a new system that brings a new agent configuration (server,
//! pinned key, fleet key, health checks) or a new Bento would otherwise wait for a reboot.
//! The NixOS module puts `/etc/bento/agent-unit.json` in the system:
//! `{"format":1,"config":"<store path of the agent's TOML>","binary":"<the bento it runs>"}`.
//! The agent reads `<current_system>/etc/bento/agent-unit.json` when it starts and again
//! after each attempt (after a confirmed switch or a rollback it names the system that now
//! runs); when it differs (or appeared, or went), the agent finishes its report and exits
//! with code 9 so that systemd starts the agent the running system names. A host without
//! the file at both times (the fleet in a box, a non-NixOS host) never restarts this way.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the file is inside a system.
pub const UNIT_FILE: &str = "etc/bento/agent-unit.json";

/// What one read of the running system's `agent-unit.json` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFile {
    Absent,
    /// The file's bytes (compared whole: the module writes it deterministically).
    Present(Vec<u8>),
}

/// The fields, for messages.
#[derive(Debug, Deserialize)]
struct AgentUnit {
    config: String,
    binary: String,
}

/// Reads the file of the system `current_system` points at.
pub fn read(current_system: &Path) -> UnitFile {
    match std::fs::read(path(current_system)) {
        Ok(bytes) => UnitFile::Present(bytes),
        Err(_) => UnitFile::Absent,
    }
}

fn path(current_system: &Path) -> PathBuf {
    current_system.join(UNIT_FILE)
}

fn describe(file: &UnitFile) -> String {
    match file {
        UnitFile::Absent => "no agent-unit.json".to_owned(),
        UnitFile::Present(bytes) => match serde_json::from_slice::<AgentUnit>(bytes) {
            Ok(u) => format!("config {} and binary {}", u.config, u.binary),
            Err(_) => "an agent-unit.json this agent cannot read".to_owned(),
        },
    }
}

/// Why the agent must restart: `None` when the running system names the agent that runs.
pub fn restart_reason(started_with: &UnitFile, now: &UnitFile) -> Option<String> {
    (started_with != now).then(|| {
        format!(
            "the running system names another agent ({}; this one started with {}): exiting so that systemd starts it",
            describe(now),
            describe(started_with)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(config: &str) -> UnitFile {
        UnitFile::Present(
            format!(
                r#"{{"format":1,"config":"{config}","binary":"/nix/store/b-bento/libexec/bento"}}"#
            )
            .into_bytes(),
        )
    }

    #[test]
    fn a_change_appearance_or_disappearance_asks_for_a_restart() {
        let a = unit("/nix/store/a-bento-agent.toml");
        let b = unit("/nix/store/b-bento-agent.toml");
        assert_eq!(restart_reason(&a, &a), None);
        assert_eq!(restart_reason(&UnitFile::Absent, &UnitFile::Absent), None);
        let why = restart_reason(&a, &b).unwrap();
        assert!(why.contains("/nix/store/b-bento-agent.toml"), "{why}");
        assert!(restart_reason(&UnitFile::Absent, &a).is_some());
        assert!(restart_reason(&a, &UnitFile::Absent).is_some());
    }

    #[test]
    fn the_file_is_read_through_the_current_system_link() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system");
        std::fs::create_dir_all(system.join("etc/bento")).unwrap();
        let link = dir.path().join("current-system");
        std::os::unix::fs::symlink(&system, &link).unwrap();
        assert_eq!(read(&link), UnitFile::Absent);
        std::fs::write(system.join(UNIT_FILE), b"{}").unwrap();
        assert_eq!(read(&link), UnitFile::Present(b"{}".to_vec()));
    }
}
