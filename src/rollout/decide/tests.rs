//! The wave decision, the operators' commands and new deploys, table-driven.

use super::*;
use crate::rollout::record::{FORMAT, Target};

use Progress::{Failed as F, NotStarted as N, Succeeded as S, Unchanged as U, Waiting as W};

const T0: u64 = 10_000;
const TIMEOUT: u64 = 600;

/// A wave named `name` whose hosts have `progress` (host names h1, h2, ...).
fn wave(name: &str, threshold: u8, soak: u64, progress: &[Progress]) -> Wave {
    Wave {
        name: name.into(),
        threshold,
        soak_secs: soak,
        targets: progress
            .iter()
            .enumerate()
            .map(|(i, p)| Target {
                host: format!("{name}-h{}", i + 1),
                store_path: format!("/nix/store/{name}-{i}"),
                generation: Some(2),
                previous: Some(1),
                progress: *p,
                detail: (*p == F).then(|| "activation-failed: exit 1".to_owned()),
            })
            .collect(),
        started: None,
        met: None,
        passed: None,
    }
}

fn rollout(state: RolloutState, current: usize, waves: Vec<Wave>) -> Rollout {
    Rollout {
        format: FORMAT,
        id: 1,
        created: T0,
        commit: None,
        source: "/srv/bento.toml".into(),
        force: false,
        timeout_secs: TIMEOUT,
        state,
        reason: None,
        wave: current,
        waves,
        events: vec![],
    }
}

/// A wave started at T0, its threshold met at `met`.
fn started(mut w: Wave, met: Option<u64>) -> Wave {
    w.started = Some(T0);
    w.met = met;
    w
}

#[test]
fn the_next_step_follows_threshold_soak_failures_and_timeouts() {
    use RolloutState::*;
    let later = || wave("rest", 100, 0, &[N, N]);
    // (what, rollout, seconds after T0, the step; for Halt, a text the reason contains)
    type Case = (&'static str, Rollout, u64, Result<Step, &'static str>);
    let cases: Vec<Case> = vec![
        (
            "a paused rollout does nothing",
            rollout(
                Paused,
                0,
                vec![started(wave("c", 100, 0, &[S]), None), later()],
            ),
            1,
            Ok(Step::Wait),
        ),
        (
            "a halted rollout does nothing",
            rollout(Halted, 0, vec![started(wave("c", 100, 0, &[F]), None)]),
            1,
            Ok(Step::Wait),
        ),
        (
            "a wave not started is published",
            rollout(Running, 0, vec![wave("c", 100, 0, &[N]), later()]),
            0,
            Ok(Step::Publish(0)),
        ),
        (
            "hosts still reporting: wait",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 60, &[S, W, W]), None), later()],
            ),
            30,
            Ok(Step::Wait),
        ),
        (
            "threshold met: the soak starts",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 60, &[S, S, S]), None), later()],
            ),
            30,
            Ok(Step::StartSoak),
        ),
        (
            "soaking",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 60, &[S, S]), Some(T0 + 30)), later()],
            ),
            89,
            Ok(Step::Wait),
        ),
        (
            "soak over: the next wave",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 60, &[S, S]), Some(T0 + 30)), later()],
            ),
            90,
            Ok(Step::Publish(1)),
        ),
        (
            "no soak: the next wave at once",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 0, &[S, S]), None), later()],
            ),
            5,
            Ok(Step::Publish(1)),
        ),
        (
            "the last wave passed: complete",
            rollout(
                Running,
                1,
                vec![
                    started(wave("c", 100, 0, &[S]), None),
                    started(wave("rest", 100, 0, &[S, S]), None),
                ],
            ),
            5,
            Ok(Step::Complete),
        ),
        (
            "only unchanged hosts: nothing to count, nothing to soak",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 600, &[U, U]), None), later()],
            ),
            0,
            Ok(Step::Publish(1)),
        ),
        (
            "unchanged hosts are not counted",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 0, &[U, S]), None), later()],
            ),
            1,
            Ok(Step::Publish(1)),
        ),
        (
            "one failure at 100%: halt, naming the host and why",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 0, &[S, F, W]), None), later()],
            ),
            5,
            Err("c-h2 (activation-failed: exit 1)"),
        ),
        (
            "one failure of four at 75% is tolerated",
            rollout(
                Running,
                0,
                vec![started(wave("c", 75, 10, &[S, F, S, S]), None), later()],
            ),
            5,
            Ok(Step::StartSoak),
        ),
        (
            "two failures of four at 75% halt",
            rollout(
                Running,
                0,
                vec![started(wave("c", 75, 10, &[S, F, F, W]), None), later()],
            ),
            5,
            Err("failed on 2 of 4 hosts, more than its threshold of 75% allows (3 needed"),
        ),
        (
            "a failure during the soak halts",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 60, &[S, F]), Some(T0 + 1)), later()],
            ),
            30,
            Err("c-h2"),
        ),
        (
            "a silent host halts at the timeout",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 0, &[S, W]), None), later()],
            ),
            TIMEOUT,
            Err("c-h2 (no success within 600 s)"),
        ),
        (
            "but not before",
            rollout(
                Running,
                0,
                vec![started(wave("c", 100, 0, &[S, W]), None), later()],
            ),
            TIMEOUT - 1,
            Ok(Step::Wait),
        ),
        (
            "silent hosts within what 50% tolerates: the wave passes at the timeout",
            rollout(
                Running,
                0,
                vec![started(wave("c", 50, 0, &[S, S, W, W]), None), later()],
            ),
            TIMEOUT,
            Ok(Step::Publish(1)),
        ),
        (
            "a rollout past its last wave is complete",
            rollout(Running, 1, vec![started(wave("c", 100, 0, &[S]), None)]),
            0,
            Ok(Step::Complete),
        ),
    ];
    for (what, r, after, want) in cases {
        let got = step(&r, T0 + after);
        match (want, &got) {
            (Ok(want), got) => assert_eq!(got, &want, "{what}"),
            (Err(text), Step::Halt(reason)) => {
                assert!(reason.contains(text), "{what}: {reason}")
            }
            (Err(_), got) => panic!("{what}: wanted a halt, got {got:?}"),
        }
    }
}

#[test]
fn thresholds_round_up() {
    for (counted, threshold, want) in [
        (0, 100, 0),
        (3, 100, 3),
        (3, 50, 2),
        (4, 75, 3),
        (10, 1, 1),
        (1, 1, 1),
    ] {
        assert_eq!(
            required(counted, threshold),
            want,
            "{counted} at {threshold}%"
        );
    }
}

#[test]
fn pause_resume_and_abort_follow_the_state() {
    use RolloutState::*;
    let cases: Vec<(RolloutState, Command, Result<RolloutState, &str>)> = vec![
        (Running, Command::Pause, Ok(Paused)),
        (Paused, Command::Resume, Ok(Running)),
        (Halted, Command::Resume, Ok(Running)),
        (Running, Command::Abort, Ok(Aborted)),
        (Paused, Command::Abort, Ok(Aborted)),
        (Halted, Command::Abort, Ok(Aborted)),
        (Paused, Command::Pause, Err("only a running rollout")),
        (Halted, Command::Pause, Err("only a running rollout")),
        (
            Running,
            Command::Resume,
            Err("only a paused or halted rollout"),
        ),
        (Completed, Command::Resume, Err("is completed")),
        (Completed, Command::Abort, Err("it has ended")),
        (Aborted, Command::Abort, Err("it has ended")),
        (Superseded, Command::Pause, Err("is superseded")),
    ];
    for (state, cmd, want) in cases {
        let mut r = rollout(
            state,
            0,
            vec![started(wave("c", 100, 60, &[S, F]), Some(T0 + 5))],
        );
        r.reason = Some("before".into());
        let before = r.clone();
        match (command(&mut r, cmd, T0 + 100), want) {
            (Ok(()), Ok(next)) => {
                assert_eq!(r.state, next, "{state:?} {cmd:?}");
                assert_eq!(r.events.len(), 1);
            }
            (Err(e), Err(text)) => {
                assert!(e.contains(text), "{state:?} {cmd:?}: {e}");
                assert_eq!(r, before, "a refused command changes nothing");
            }
            (got, want) => panic!("{state:?} {cmd:?}: {got:?}, wanted {want:?}"),
        }
    }
    // Resuming restarts the wave's count: a fresh timeout, the soak again, the reason gone.
    let mut r = rollout(
        Halted,
        0,
        vec![started(wave("c", 100, 60, &[S]), Some(T0 + 5))],
    );
    command(&mut r, Command::Resume, T0 + 900).unwrap();
    let w = &r.waves[0];
    assert_eq!(
        (w.started, w.met, r.reason.as_deref()),
        (Some(T0 + 900), None, None)
    );
    assert_eq!(step(&r, T0 + 900), Step::StartSoak);
}

#[test]
fn a_new_deploy_starts_replaces_amends_or_waits() {
    use RolloutState::*;
    let with = |state| rollout(state, 0, vec![started(wave("c", 100, 0, &[W]), None)]);
    let cases: Vec<(Option<RolloutState>, Supersede, bool, &str)> = vec![
        (None, Supersede::Wait, false, "start"),
        (Some(Completed), Supersede::Wait, false, "start"),
        (Some(Aborted), Supersede::Wait, false, "start"),
        (Some(Superseded), Supersede::Wait, false, "start"),
        (Some(Halted), Supersede::Wait, false, "amend"),
        (Some(Halted), Supersede::Restart, true, "amend"),
        (Some(Running), Supersede::Wait, false, "refuse"),
        (Some(Paused), Supersede::Wait, false, "refuse"),
        (Some(Running), Supersede::Wait, true, "replace"),
        (Some(Running), Supersede::Restart, false, "replace"),
        (Some(Paused), Supersede::Restart, false, "replace"),
    ];
    for (state, policy, forced, want) in cases {
        let current = state.map(with);
        let got = new_deploy(current.as_ref(), policy, forced);
        let name = match &got {
            NewDeploy::Start => "start",
            NewDeploy::Replace => "replace",
            NewDeploy::Amend => "amend",
            NewDeploy::Refuse(why) => {
                assert!(
                    why.contains("--supersede") && why.contains("rollout 1"),
                    "{why}"
                );
                "refuse"
            }
        };
        assert_eq!(name, want, "{state:?} {policy:?} forced={forced}");
    }
}
