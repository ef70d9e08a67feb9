//! A second agent started while the first is in the middle of an activation exits at once
//! with code 7 and touches nothing; the first finishes, and the system is activated exactly
//! once. The first agent's activation is held until the second has exited, so the second
//! always meets the lock (no race on who starts first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::scene::{OneHost, agent_once, spawn_agent_once, wait_running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_never_activates_alongside_the_first() {
    let systems = [Behaviour::Good, Behaviour::Hold];
    let Some(t) = OneHost::start("lock", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let new = t.systems[1].clone();
    server.publish_release("web1", 2, &new).await;

    let first = wait_running(host, &new, spawn_agent_once(host, config)).await;
    // The first agent is inside the activation, holding the lock.
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 7, "{log}");
    assert!(log.contains("another bento agent is running"), "{log}");
    assert_eq!(host.activations(), fake::switched(&[&new]));

    host.release_hold();
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.activations(), fake::switched(&[&new]));
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
}
