//! Staged rollouts in the fleet in a box: the real `bento deploy`, `bento serve` and agents.
//! `bento deploy` publishes only the first wave; `bento serve` publishes each next wave once
//! the current one succeeded and soaked, continues after being SIGKILLed, and halts when a
//! wave fails, leaving later waves on their previous release until an operator resumes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::rollout::record::{self, Progress, Rollout, RolloutState};
use harness::fake::Behaviour;
use harness::fleet::Fleet;
use harness::ran::wait_for;
use harness::repo::Spec;

const CONVERGE_SECS: u64 = 180;

/// Canary first (soaking a few seconds), then the web hosts, then everyone else.
const ROLLOUT: &str = "[rollout]\ntimeout_secs = 120\n\n\
     [[rollout.waves]]\nname = \"canary\"\nhosts = [\"@canary\"]\nsoak_secs = 6\n\n\
     [[rollout.waves]]\nname = \"web\"\nhosts = [\"@web\"]\n\n\
     [[rollout.waves]]\nname = \"rest\"\nhosts = [\"*\"]\n";

const HOSTS: [&str; 6] = ["c1", "w1", "w2", "r1", "r2", "r3"];

fn tags(host: &str) -> &'static [&'static str] {
    match host.as_bytes()[0] {
        b'c' => &["canary"],
        b'w' => &["web"],
        _ => &[],
    }
}

fn rollout(fleet: &Fleet) -> Rollout {
    record::load(&fleet.state_dir())
        .unwrap()
        .expect("a rollout is recorded")
}

/// Six hosts converged on version 1 (deployed all at once), with [rollout] then added.
async fn six_hosts(salt: &str) -> Option<Fleet> {
    let mut fleet = Fleet::new(salt, &HOSTS)?;
    for h in HOSTS {
        fleet.configure(h, Spec::good(1).tagged(tags(h)));
    }
    fleet.start_serve(&[]).await;
    fleet.start_agents("");
    fleet.deploy(&[]);
    let all: Vec<(&str, &str)> = HOSTS.iter().map(|h| (*h, "up-to-date")).collect();
    fleet.wait_for_states(CONVERGE_SECS, &all).await;
    assert!(
        record::load(&fleet.state_dir()).unwrap().is_none(),
        "no rollout without [rollout]"
    );
    fleet.add_section(ROLLOUT);
    Some(fleet)
}

async fn wait_for_rollout(fleet: &Fleet, what: &str, test: impl Fn(&Rollout) -> bool) {
    let seen = wait_for(CONVERGE_SECS, || {
        record::load(&fleet.state_dir())
            .ok()
            .flatten()
            .is_some_and(|r| test(&r))
    })
    .await;
    assert!(
        seen,
        "the rollout never {what}: {:#?}\n{}",
        record::load(&fleet.state_dir()),
        fleet.diagnostics()
    );
}

fn generation(fleet: &Fleet, host: &str) -> u64 {
    fleet.released(host).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_waves_go_in_order_and_a_killed_server_continues() {
    let Some(mut fleet) = six_hosts("waves").await else {
        return;
    };
    for h in HOSTS {
        fleet.configure(h, Spec::good(2).tagged(tags(h)));
    }
    let deployed = fleet.deploy(&[]);
    assert!(deployed.stdout.contains("rollout"), "{}", deployed.both());
    // Only the canary is published by the deploy itself.
    let gens: Vec<u64> = HOSTS.iter().map(|h| generation(&fleet, h)).collect();
    assert_eq!(gens, vec![2, 1, 1, 1, 1, 1], "{}", deployed.both());
    let r = rollout(&fleet);
    assert_eq!(
        (r.state, r.wave, r.waves.len()),
        (RolloutState::Running, 0, 3)
    );

    // Kill the server while the canary soaks: nothing is published meanwhile, and a new
    // server continues the rollout.
    wait_for_rollout(&fleet, "started the canary's soak", |r| {
        r.waves[0].met.is_some()
    })
    .await;
    fleet.kill_serve();
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let r = rollout(&fleet);
    assert_eq!(
        (r.state, r.wave),
        (RolloutState::Running, 0),
        "nothing advances without a server"
    );
    assert_eq!(generation(&fleet, "w1"), 1);
    fleet.start_serve(&[]).await;

    wait_for_rollout(&fleet, "completed", |r| r.state == RolloutState::Completed).await;
    let all: Vec<(&str, &str)> = HOSTS.iter().map(|h| (*h, "up-to-date")).collect();
    fleet.wait_for_states(CONVERGE_SECS, &all).await;
    let r = rollout(&fleet);
    for w in &r.waves {
        assert!(
            w.targets.iter().all(|t| t.progress == Progress::Succeeded),
            "{w:#?}"
        );
    }
    // In order: each wave started only once the one before had passed (and the canary had
    // soaked), and its hosts' releases were created then.
    let (canary, web, rest) = (&r.waves[0], &r.waves[1], &r.waves[2]);
    assert_eq!(
        [&canary.name, &web.name, &rest.name],
        ["canary", "web", "rest"]
    );
    assert!(web.started.unwrap() >= canary.met.unwrap() + canary.soak_secs);
    assert!(rest.started.unwrap() >= web.met.unwrap_or(web.started.unwrap()));
    assert!(web.passed.unwrap() <= rest.started.unwrap());
    for (wave, hosts) in [(web, &["w1", "w2"][..]), (rest, &["r1", "r2", "r3"][..])] {
        for h in hosts {
            let last = fleet.history(h).pop().unwrap();
            assert_eq!(last.generation, 2, "{h}");
            assert!(last.created >= wave.started.unwrap(), "{h}: {last:?}");
        }
    }
    // The canary's success was seen by the second server, which published the later waves.
    let second = fleet.log_tail("logs/serve-2.log");
    assert!(second.contains("completed"), "{second}");
    let status = fleet.bento(&["rollout", "status"]);
    assert_eq!(status.code, 0, "{}", status.both());
    assert!(status.stdout.contains("completed"), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_the_rollout_until_a_fix_is_resumed() {
    let Some(mut fleet) = six_hosts("halt").await else {
        return;
    };
    fleet.configure(
        "c1",
        Spec::good(2)
            .tagged(tags("c1"))
            .behaving(Behaviour::FailActivation),
    );
    for h in &HOSTS[1..] {
        fleet.configure(h, Spec::good(2).tagged(tags(h)));
    }
    fleet.deploy(&[]);
    wait_for_rollout(&fleet, "halted", |r| r.state == RolloutState::Halted).await;
    let status = fleet.bento(&["rollout", "status"]);
    assert_eq!(status.code, 3, "a halted rollout: {}", status.both());
    for said in ["halted", "wave canary failed", "c1", "activation-failed"] {
        assert!(status.stdout.contains(said), "{said}: {}", status.stdout);
    }
    // Waves 2 and 3 are untouched: their agents kept polling (the positive control: they
    // would have seen a new release) and still have generation 1.
    let attempts: Vec<usize> = HOSTS[1..].iter().map(|h| fleet.attempts(h)).collect();
    let polled = wait_for(60, || {
        HOSTS[1..]
            .iter()
            .zip(&attempts)
            .all(|(h, n)| fleet.attempts(h) >= n + 2)
    })
    .await;
    assert!(polled, "{}", fleet.diagnostics());
    assert_eq!(generation(&fleet, "c1"), 2);
    for h in &HOSTS[1..] {
        assert_eq!(generation(&fleet, h), 1, "{h} keeps its release");
        assert_eq!(fleet.host(h).activations().len(), 1, "{h} activated once");
    }
    let r = rollout(&fleet);
    assert_eq!(r.wave, 0);
    assert!(r.waves[1..].iter().all(|w| w.started.is_none()), "{r:#?}");

    // The fix: a deploy while halted amends the rollout (the canary gets the fix, the rest
    // waits for an operator), and resume completes it.
    fleet.configure("c1", Spec::good(3).tagged(tags("c1")));
    let amended = fleet.deploy(&[]);
    let r = rollout(&fleet);
    assert_eq!(r.state, RolloutState::Halted, "{}", amended.both());
    assert_eq!(generation(&fleet, "c1"), 3);
    assert_eq!(generation(&fleet, "w1"), 1);
    let resumed = fleet.bento(&["rollout", "resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.both());
    wait_for_rollout(&fleet, "completed", |r| r.state == RolloutState::Completed).await;
    let all: Vec<(&str, &str)> = HOSTS.iter().map(|h| (*h, "up-to-date")).collect();
    fleet.wait_for_states(CONVERGE_SECS, &all).await;
    for h in &HOSTS[1..] {
        assert_eq!(generation(&fleet, h), 2, "{h}");
    }
}
