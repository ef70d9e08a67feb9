//! The pure decisions of a rollout, over the record alone (the hosts' progress already
//! observed into it) and the time: what to do next, what an operator's command changes, and
//! what a new deploy does to the current rollout. No files, no clocks: tested table-driven.
//!
//! A wave of `n` counted hosts (unchanged ones are not counted) with threshold `t`% needs
//! `required = ceil(n * t / 100)` successes and so tolerates `n - required` failures. Hosts
//! that have not succeeded when the wave's timeout has passed count as failed. The wave
//! halts the rollout as soon as its failures exceed what it tolerates; it passes once
//! `required` hosts succeeded and its soak time has passed since then.

use crate::config::Supersede;

use super::record::{Progress, Rollout, RolloutState, Wave};

/// What the rollout does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until more reports arrive or time passes.
    Wait,
    /// Publish the releases of wave `i` (the first one, or the next).
    Publish(usize),
    /// The current wave met its threshold: its soak starts now.
    StartSoak,
    /// Every wave passed.
    Complete,
    /// Too many hosts of the current wave failed.
    Halt(String),
}

/// A wave's hosts, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub counted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub waiting: usize,
}

/// Counts a wave's hosts; with `expired`, hosts still waiting count as failed.
pub fn tally(wave: &Wave, expired: bool) -> Tally {
    let mut t = Tally::default();
    for target in &wave.targets {
        match target.progress {
            Progress::Unchanged => continue,
            Progress::Succeeded => t.succeeded += 1,
            Progress::Failed => t.failed += 1,
            Progress::Waiting | Progress::NotStarted if expired => t.failed += 1,
            Progress::Waiting | Progress::NotStarted => t.waiting += 1,
        }
        t.counted += 1;
    }
    t
}

/// Successes a wave of `counted` hosts needs at `threshold` percent.
pub fn required(counted: usize, threshold: u8) -> usize {
    (counted * usize::from(threshold)).div_ceil(100)
}

/// Whether the current wave's timeout has passed at `now`.
pub fn expired(rollout: &Rollout, wave: &Wave, now: u64) -> bool {
    wave.started
        .is_some_and(|s| now >= s.saturating_add(rollout.timeout_secs))
}

/// What to do next at `now`.
pub fn step(rollout: &Rollout, now: u64) -> Step {
    if rollout.state != RolloutState::Running {
        return Step::Wait;
    }
    let Some(wave) = rollout.current() else {
        return Step::Complete;
    };
    if wave.started.is_none() {
        return Step::Publish(rollout.wave);
    }
    let expired = expired(rollout, wave, now);
    let t = tally(wave, expired);
    let required = required(t.counted, wave.threshold);
    if t.failed > t.counted - required {
        return Step::Halt(halt_reason(
            wave,
            t,
            required,
            expired,
            rollout.timeout_secs,
        ));
    }
    if t.succeeded < required {
        return Step::Wait;
    }
    let next = || {
        if rollout.wave + 1 < rollout.waves.len() {
            Step::Publish(rollout.wave + 1)
        } else {
            Step::Complete
        }
    };
    match wave.met {
        // Nothing changed in the wave: nothing to soak.
        _ if t.counted == 0 => next(),
        None if wave.soak_secs == 0 => next(),
        None => Step::StartSoak,
        Some(met) if now >= met.saturating_add(wave.soak_secs) => next(),
        Some(_) => Step::Wait,
    }
}

fn halt_reason(wave: &Wave, t: Tally, required: usize, expired: bool, timeout: u64) -> String {
    let failed: Vec<String> = wave
        .targets
        .iter()
        .filter(|x| {
            x.progress == Progress::Failed
                || (expired && matches!(x.progress, Progress::Waiting | Progress::NotStarted))
        })
        .map(|x| match (&x.detail, x.progress) {
            (_, Progress::Waiting | Progress::NotStarted) => {
                format!("{} (no success within {timeout} s)", x.host)
            }
            (Some(d), _) => format!("{} ({d})", x.host),
            (None, _) => x.host.clone(),
        })
        .collect();
    format!(
        "wave {} failed on {} of {} hosts, more than its threshold of {}% allows ({} needed to succeed): {}",
        wave.name,
        t.failed,
        t.counted,
        wave.threshold,
        required,
        failed.join("; ")
    )
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
        }
    }
}

/// Applies `command` at `now`, or says why it does not apply. Resuming restarts the count
/// of the current wave: a fresh timeout, the soak again.
pub fn command(rollout: &mut Rollout, command: Command, now: u64) -> Result<(), String> {
    use RolloutState::*;
    let next = match (command, rollout.state) {
        (Command::Pause, Running) => Paused,
        (Command::Resume, Paused | Halted) => Running,
        (Command::Abort, Running | Paused | Halted) => Aborted,
        (_, state) => {
            return Err(format!(
                "rollout {} is {}: it cannot be {}",
                rollout.id,
                state.as_str(),
                match command {
                    Command::Pause => "paused (only a running rollout can)",
                    Command::Resume => "resumed (only a paused or halted rollout can)",
                    Command::Abort => "aborted (it has ended)",
                }
            ));
        }
    };
    if command == Command::Resume
        && let Some(wave) = rollout.waves.get_mut(rollout.wave)
        && wave.started.is_some()
    {
        wave.started = Some(now);
        wave.met = None;
    }
    rollout.state = next;
    rollout.reason = match command {
        Command::Abort => Some("aborted by an operator".into()),
        Command::Pause => Some("paused by an operator".into()),
        Command::Resume => None,
    };
    let text = format!("{} by an operator", past(command));
    rollout.event(now, text);
    Ok(())
}

fn past(command: Command) -> &'static str {
    match command {
        Command::Pause => "paused",
        Command::Resume => "resumed",
        Command::Abort => "aborted",
    }
}

/// What a new deploy does to the current rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewDeploy {
    /// No unfinished rollout: start one.
    Start,
    /// Replace the unfinished rollout with a new one from the first wave.
    Replace,
    /// Replace the halted rollout with a new one that publishes its first wave and then
    /// stays halted until `bento rollout resume`: the fix reaches the hosts that failed,
    /// an operator decides when the rollout goes on.
    Amend,
    /// Leave the rollout alone: the new deploy must wait (the text says why).
    Refuse(String),
}

/// Decides what a new deploy does, by the current rollout's state and the policy;
/// `forced` (`bento deploy --supersede`) replaces a running or paused rollout regardless.
pub fn new_deploy(current: Option<&Rollout>, supersede: Supersede, forced: bool) -> NewDeploy {
    let Some(r) = current.filter(|r| !r.state.is_finished()) else {
        return NewDeploy::Start;
    };
    match r.state {
        RolloutState::Halted => NewDeploy::Amend,
        _ if forced || supersede == Supersede::Restart => NewDeploy::Replace,
        _ => NewDeploy::Refuse(format!(
            "{} is still going, and [rollout] supersede = \"wait\": wait for it to end, replace it with `bento deploy --supersede`, or end it with `bento rollout abort`",
            r.headline()
        )),
    }
}

#[cfg(test)]
mod tests;
