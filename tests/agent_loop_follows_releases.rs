//! The agent as a service: with instant updates it applies a new release at once although
//! its poll interval is long; without them, a person at the machine can ask it to check now
//! with `bento agent trigger` and follow the attempt, and without a trigger it waits for its
//! poll (checked for twice as long as a triggered attempt takes to act).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::fake::{self, Behaviour};
use harness::net::Host;
use harness::ran::wait_for;
use harness::scene::{OneHost, agent_command};

/// The agent loop (`bento agent`) inside `host`, killed when dropped.
fn agent_loop(host: &Host, config: &Path) -> tokio::process::Child {
    agent_command(host, &["agent", "--config", &config.to_string_lossy()])
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_updates_apply_a_release_without_waiting_for_the_poll() {
    let systems = [Behaviour::Good, Behaviour::Good, Behaviour::Good];
    let extra = "poll_interval_secs = 600\ninstant_updates = true";
    let Some(t) = OneHost::start("instant", &systems, extra).await else {
        return;
    };
    let (host, server) = (&t.host, &t.server);
    let (g2, g3) = (&t.systems[1], &t.systems[2]);
    server.publish_release("web1", 2, g2).await;
    let mut agent = agent_loop(host, &t.config);
    assert!(wait_for(30, || host.running().as_deref() == Some(g2.as_str())).await);
    // The agent now waits on the server; a new release reaches it at once.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let published = Instant::now();
    server.publish_release("web1", 3, g3).await;
    let applied = wait_for(30, || host.running().as_deref() == Some(g3.as_str())).await;
    let took = published.elapsed();
    let _ = agent.kill().await;
    assert!(
        applied,
        "generation 3 was not applied within 30 s (poll interval is 600 s)"
    );
    eprintln!("release published → applied on the host (instant update): {took:?}");
    assert_eq!(host.activations().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_checks_now_and_streams_progress() {
    let systems = [Behaviour::Good, Behaviour::Good, Behaviour::Good];
    let extra = "poll_interval_secs = 600\ninstant_updates = false";
    let Some(t) = OneHost::start("trigger", &systems, extra).await else {
        return;
    };
    let (host, server) = (&t.host, &t.server);
    let (g2, g3) = (&t.systems[1], &t.systems[2]);
    let mut agent = agent_loop(host, &t.config);
    // The first attempt finds no release (its session stays open); then the agent sleeps
    // for ten minutes.
    let socket = host.root.join("run/bento-agent/trigger.sock");
    assert!(wait_for(30, || socket.exists()).await);
    assert!(wait_for(30, || server.sftp().state.sessions_of("web1") > 0).await);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only root may trigger");
    let trigger = || agent_command(host, &["agent", "trigger"]).output();
    // A first trigger answers once every attempt begun so far has ended, all of them before
    // any release existed: from here on the agent only sleeps (a loaded machine may still
    // be in the first attempt when the session shows up).
    let first = trigger().await.unwrap();
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("no release for web1"), "{text}");

    // A trigger applies a new release at once, streaming the attempt; how long that took is
    // how long the agent needs to show it acted on a release.
    server.publish_release("web1", 2, g2).await;
    let triggered = Instant::now();
    let out = trigger().await.unwrap();
    let acted_within = triggered.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("copying"), "{text}");
    assert!(text.contains("confirmed"), "{text}");
    assert!(text.trim_end().ends_with("result: applied"), "{text}");
    assert_eq!(host.running().as_deref(), Some(g2.as_str()));
    assert_eq!(host.activations(), fake::switched(&[g2]));

    // Without a trigger the sleeping agent leaves the next release alone: for twice the
    // time the triggered attempt took, nothing is activated.
    server.publish_release("web1", 3, g3).await;
    let window = (acted_within * 2).max(Duration::from_secs(2));
    tokio::time::sleep(window).await;
    assert_eq!(
        host.activations(),
        fake::switched(&[g2]),
        "without a trigger the agent still sleeps ({window:?} after publishing)"
    );

    let out = trigger().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = agent.kill().await;
    assert!(text.trim_end().ends_with("result: applied"), "{text}");
    assert_eq!(host.running().as_deref(), Some(g3.as_str()));
}
