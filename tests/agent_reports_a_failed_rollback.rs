//! A rollback that fails is never called a rollback: when the new system's activation
//! fails and the previous system's own activation fails too (or no previous system is
//! known), the agent reports `rollback-failed`, exits 8, `bento status` says so, and the
//! generation is not tried again by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::config::StateDir;
use bento::status::{self, HostState};
use harness::fake::{self, Behaviour};
use harness::scene::{OneHost, agent_once};

fn state_of(t: &OneHost) -> HostState {
    let state = StateDir::new(&t.server.dir.state);
    status::collect_host(&state, "web1", bento::clock::unix_now(), 300)
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_system_that_fails_to_activate_is_rollback_failed() {
    // The running system was installed, never activated by the agent; its own switch fails.
    let systems = [Behaviour::FailActivation, Behaviour::FailActivation];
    let Some(t) = OneHost::start("rbfail", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, bad) = (&t.systems[0], &t.systems[1]);
    server.publish_release("web1", 2, bad).await;

    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 8, "{log}");
    // Both switches ran, in that order: the rollback was attempted.
    assert_eq!(host.activations(), fake::switched(&[bad, old]));
    let r = server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "rollback-failed");
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("rolling back failed"), "{reason}");
    assert!(reason.contains(old.as_str()), "{reason}");
    assert_eq!(state_of(&t), HostState::RollbackFailed);

    // Not tried again by itself; a newer generation is.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3);
    assert_eq!(host.activations().len(), 2);
    let fixed = fake::build("web1", 3, &Behaviour::Good, "rbfail");
    server.publish_release("web1", 3, &fixed).await;
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.running().as_deref(), Some(fixed.as_str()));
    assert_eq!(state_of(&t), HostState::UpToDate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_known_previous_system_is_rollback_failed() {
    let systems = [Behaviour::Good, Behaviour::FailActivation];
    let Some(t) = OneHost::start("rbnone", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    // A host whose running system is unknown (no /run/current-system).
    std::fs::remove_file(host.root.join("run/current-system")).unwrap();
    server.publish_release("web1", 2, &t.systems[1]).await;

    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 8, "{log}");
    assert_eq!(host.activations(), fake::switched(&[&t.systems[1]]));
    let r = server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "rollback-failed");
    assert!(
        r.reason
            .unwrap_or_default()
            .contains("no previous system is known"),
        "{}",
        r.log
    );
}
