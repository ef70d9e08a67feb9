//! Making a system the running one: the profile, then its own `switch-to-configuration`,
//! each within `activation_timeout_secs`.
//!
//! On a host with systemd (`/run/systemd/system` exists) the switch runs outside the
//! agent's unit, as `nixos-rebuild` does it: a transient unit `bento-switch-<generation>`
//! started with `systemd-run --wait`, so that a new system which stops, changes or removes
//! `bento-agent.service` cannot cut its own switch in half. Its output goes to a file in
//! the agent's state directory (a pipe would break when the agent is stopped), read into
//! the attempt's log afterwards, also by the next agent when this one was stopped. The
//! unit's stop signal is SIGUSR1: a unit stopped from outside then ends `systemd-run` with
//! a failure, where SIGTERM would count as a clean exit. On a timeout the unit is stopped.
//! Without systemd (the fleet in a box) the switch runs directly, in a process group of its
//! own that a timeout kills whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::children;
use super::config::{ActivationAction, Agent};
use super::system::{SystemError, push_line, running_system};
use crate::nix::cmd::{CmdError, Command, tail};

/// How long systemd gives a stopped switch unit before SIGKILL.
const UNIT_STOP_SECS: u64 = 30;
/// How much of a switch's output file an error message quotes.
const TAIL_BYTES: usize = 2000;

/// How `switch-to-configuration` is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// As a child of the agent (no systemd).
    Direct,
    /// In the transient unit `unit` (without `.service`), its output appended to `log`.
    Systemd { unit: String, log: PathBuf },
}

/// Whether this host runs systemd as its init (what `systemd-run` needs).
pub fn has_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// What a switch is for: the new system of a generation, or the rollback from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Apply,
    RollBack,
}

/// The transient unit (without `.service`) of the switch of `generation` for `purpose`.
pub fn unit_name(generation: u64, purpose: Purpose) -> String {
    match purpose {
        Purpose::Apply => format!("bento-switch-{generation}"),
        Purpose::RollBack => format!("bento-switch-{generation}-rollback"),
    }
}

/// How the switch for `generation` runs on this host.
pub fn runner(agent: &Agent, generation: u64, purpose: Purpose) -> Runner {
    if has_systemd() {
        let unit = unit_name(generation, purpose);
        Runner::Systemd {
            log: agent.state_dir.join(format!("{unit}.log")),
            unit,
        }
    } else {
        Runner::Direct
    }
}

/// The command that runs `<system>/bin/switch-to-configuration <action>`.
pub fn switch_command(system: &str, action: ActivationAction, runner: &Runner) -> Command {
    let program = format!("{system}/bin/switch-to-configuration");
    match runner {
        Runner::Direct => Command::new(program)
            .arg(action.as_str())
            .with_stdout_lines(),
        Runner::Systemd { unit, log } => Command::new("systemd-run")
            .arg(format!("--unit={unit}"))
            .args([
                "--wait",
                "--collect",
                "--quiet",
                "--no-ask-password",
                "--service-type=exec",
                "-p",
                "KillSignal=SIGUSR1",
                "-p",
            ])
            .arg(format!("TimeoutStopSec={UNIT_STOP_SECS}"))
            .arg("-p")
            .arg(format!("StandardOutput=append:{}", log.display()))
            .args(["-p", "StandardError=inherit", "--"])
            .arg(program)
            .arg(action.as_str()),
    }
}

/// Points the system profile at `path` (a new profile generation).
pub async fn set_profile(agent: &Agent, path: &str, log: &mut String) -> Result<(), SystemError> {
    let cmd = Command::new("nix-env")
        .arg("--profile")
        .arg(&agent.profile)
        .args(["--set", path])
        .timeout(agent.activation_timeout);
    let result = children::run(&agent.state_dir, cmd, |l| push_line(log, l)).await;
    result.map(|_| ()).map_err(|source| SystemError::Profile {
        profile: agent.profile.clone(),
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Runs `<path>/bin/switch-to-configuration <action>` with `runner`, within the deadline.
pub async fn switch(
    agent: &Agent,
    path: &str,
    runner: &Runner,
    log: &mut String,
) -> Result<(), SystemError> {
    let cmd = switch_command(path, agent.action, runner).timeout(agent.activation_timeout);
    let argv = cmd.argv();
    if let Runner::Systemd { log: file, .. } = runner {
        // A file of an earlier run of the same unit would be read as this one's.
        let _ = std::fs::remove_file(file);
    }
    let result = children::run(&agent.state_dir, cmd, |l| push_line(log, l)).await;
    let result = match runner {
        Runner::Direct => result,
        Runner::Systemd { unit, log: file } => {
            if result.as_ref().is_err_and(CmdError::is_timeout) {
                stop_unit(agent, unit, log).await;
            }
            let output = take_output(file, log);
            result.map_err(|e| with_output(e, &argv, &output))
        }
    };
    result.map(|_| ()).map_err(|source| SystemError::Activate {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    // `switch` and `test` point /run/current-system at the new system; a switch that says
    // it succeeded without doing so did not make it the running system.
    if agent.action != ActivationAction::Boot {
        let running = running_system(&agent.current_system);
        if running.as_deref() != Some(path) {
            return Err(SystemError::NotRunning {
                path: path.to_owned(),
                link: agent.current_system.clone(),
                running,
            });
        }
    }
    Ok(())
}

/// Makes `path` the system: the profile first, then its own `switch-to-configuration`.
pub async fn activate(
    agent: &Agent,
    path: &str,
    runner: &Runner,
    log: &mut String,
) -> Result<(), SystemError> {
    set_profile(agent, path, log).await?;
    switch(agent, path, runner, log).await
}

/// The error of a switch run in a unit, with the tail of what the unit printed (which
/// went to its file, not to `systemd-run`).
fn with_output(e: CmdError, argv: &str, output: &str) -> CmdError {
    let unit_tail = tail(output.as_bytes(), TAIL_BYTES);
    let join = |own: String| {
        if own.trim().is_empty() {
            unit_tail.clone()
        } else {
            format!("{unit_tail}{own}")
        }
    };
    match e {
        CmdError::Failed {
            status,
            code,
            stderr_tail,
            ..
        } => CmdError::Failed {
            argv: argv.to_owned(),
            status: if code == Some(255) {
                "was stopped from outside (systemd-run exited 255)".to_owned()
            } else {
                status
            },
            code,
            stderr_tail: join(stderr_tail),
        },
        CmdError::Timeout {
            timeout,
            stderr_tail,
            stdout_tail,
            ..
        } => CmdError::Timeout {
            argv: argv.to_owned(),
            timeout,
            stderr_tail: join(stderr_tail),
            stdout_tail,
        },
        other => other,
    }
}

/// Reads (and removes) a unit's output file, adding its lines to `log`.
fn take_output(file: &Path, log: &mut String) -> String {
    let text = std::fs::read(file)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let _ = std::fs::remove_file(file);
    for line in text.lines() {
        push_line(log, line);
    }
    text
}

/// Stops a switch unit that outlived its deadline (SIGUSR1, SIGKILL after 30 s).
async fn stop_unit(agent: &Agent, unit: &str, log: &mut String) {
    push_line(
        log,
        &format!("stopping {unit}.service: it did not finish in time"),
    );
    let cmd = Command::new("systemctl")
        .args(["stop", &format!("{unit}.service")])
        .timeout(Duration::from_secs(UNIT_STOP_SECS + 30));
    if let Err(e) = children::run(&agent.state_dir, cmd, |l| push_line(log, l)).await {
        push_line(log, &format!("cannot stop {unit}.service: {e}"));
    }
}

/// A switch unit's `ActiveState`, `inactive` when unknown.
async fn unit_state(agent: &Agent, unit: &str) -> String {
    let cmd = Command::new("systemctl")
        .args([
            "show",
            "-p",
            "ActiveState",
            "--value",
            &format!("{unit}.service"),
        ])
        .timeout(Duration::from_secs(30));
    children::run(&agent.state_dir, cmd, |_| {})
        .await
        .map(|o| o.stdout_text())
        .unwrap_or_else(|_| "inactive".to_owned())
}

/// At recovery: a switch of `generation` may still run in its unit (the agent was stopped
/// while it ran; on NixOS the switch may be what stopped it). Waits until it ends, or
/// stops it at `deadline` (Unix seconds); the output it left goes into `log`.
pub async fn await_switch_units(agent: &Agent, generation: u64, deadline: u64, log: &mut String) {
    if !has_systemd() {
        return;
    }
    for purpose in [Purpose::Apply, Purpose::RollBack] {
        let unit = unit_name(generation, purpose);
        let mut told = false;
        loop {
            let state = unit_state(agent, &unit).await;
            if !matches!(
                state.as_str(),
                "active" | "activating" | "deactivating" | "reloading"
            ) {
                break;
            }
            if crate::clock::unix_now() >= deadline {
                stop_unit(agent, &unit, log).await;
                break;
            }
            if !told {
                push_line(
                    log,
                    &format!("{unit}.service still runs; waiting for it to finish"),
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let file = agent.state_dir.join(format!("{unit}.log"));
        if file.exists() {
            push_line(log, &format!("output of {unit}.service:"));
            take_output(&file, log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-nixos-system-web1";

    #[test]
    fn without_systemd_the_switch_runs_directly() {
        let c = switch_command(SYS, ActivationAction::Switch, &Runner::Direct);
        assert_eq!(
            c.argv(),
            format!("{SYS}/bin/switch-to-configuration switch")
        );
    }

    #[test]
    fn with_systemd_the_switch_runs_in_a_transient_unit() {
        let runner = Runner::Systemd {
            unit: unit_name(7, Purpose::Apply),
            log: PathBuf::from("/var/lib/bento-agent/bento-switch-7.log"),
        };
        let c = switch_command(SYS, ActivationAction::Test, &runner);
        assert_eq!(
            c.argv(),
            format!(
                "systemd-run --unit=bento-switch-7 --wait --collect --quiet --no-ask-password \
                 --service-type=exec -p KillSignal=SIGUSR1 -p TimeoutStopSec=30 \
                 -p StandardOutput=append:/var/lib/bento-agent/bento-switch-7.log \
                 -p StandardError=inherit -- {SYS}/bin/switch-to-configuration test"
            )
        );
        assert_eq!(unit_name(7, Purpose::RollBack), "bento-switch-7-rollback");
    }

    #[test]
    fn a_units_output_file_names_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("u.log");
        std::fs::write(&file, "starting units\nfailed: nginx.service\n").unwrap();
        let mut log = String::new();
        let output = take_output(&file, &mut log);
        assert_eq!(log, "starting units\nfailed: nginx.service\n");
        assert!(!file.exists());
        let stopped = CmdError::Failed {
            argv: "systemd-run".into(),
            status: "exited with status 255".into(),
            code: Some(255),
            stderr_tail: String::new(),
        };
        let msg = with_output(stopped, "systemd-run --unit=x", &output).to_string();
        assert!(msg.contains("stopped from outside"), "{msg}");
        assert!(msg.contains("failed: nginx.service"), "{msg}");
    }
}
