//! Two agents started at once on one host: one holds the lock and applies, the other exits
//! at once with code 7; the system is activated exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::Behaviour;
use harness::server::{OneHost, spawn_agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_never_activates_alongside_the_first() {
    let systems = [Behaviour::Good, Behaviour::Sleep(3)];
    let Some(t) = OneHost::start("lock", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let new = t.systems[1].clone();
    server.publish_release("web1", 2, &new).await;

    let first = spawn_agent_once(host, config);
    let second = spawn_agent_once(host, config);
    let (a, b) = (
        first.wait_with_output().await.unwrap(),
        second.wait_with_output().await.unwrap(),
    );
    let mut codes = vec![a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        vec![Some(0), Some(7)],
        "{}\n---\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let busy = if a.status.code() == Some(7) { &a } else { &b };
    let text = String::from_utf8_lossy(&busy.stderr);
    assert!(text.contains("another bento agent is running"), "{text}");
    assert_eq!(host.activations().len(), 1);
}
