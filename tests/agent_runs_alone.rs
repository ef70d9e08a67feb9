//! Two agents started at once on one host: one holds the lock and applies, the other exits
//! at once with code 7; the system is activated exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::net::Net;
use harness::server::{Server, spawn_agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_never_activates_alongside_the_first() {
    if !harness::can_use_namespaces() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let old = fake::build(tmp.path(), "web1", 1, &Behaviour::Good, "lock");
    let new = fake::build(tmp.path(), "web1", 2, &Behaviour::Sleep(3), "lock");
    let net = Net::new();
    let host = net.host("web1", 1, &tmp.path().join("web1"));
    host.install(&old);
    let server = Server::start(tmp.path(), &net, &["web1"]).await;
    let config = server.agent_config(&host, "");
    server.publish_release("web1", 2, &new).await;

    let first = spawn_agent_once(&host, &config);
    let second = spawn_agent_once(&host, &config);
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
