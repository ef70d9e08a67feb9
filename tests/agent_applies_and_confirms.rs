//! The agent's happy path against the real servers: a host in its own namespaces fetches
//! its release over SFTP, copies the closure from the cache with only the fleet key
//! trusted, activates it once, confirms it and reports `applied`; a second run does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::scene::OneHost;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_is_applied_confirmed_and_reported() {
    let Some(t) = OneHost::start("apply", &[Behaviour::Good, Behaviour::Good], "").await else {
        return;
    };
    let (host, server) = (&t.host, &t.server);
    let new = t.publish(2).await;

    let (code, log) = t.agent_once().await;
    assert_eq!(code, 0, "agent log:\n{log}");
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    assert_eq!(host.activations(), fake::switched(&[&new]));
    let reports = server.final_reports("web1");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.outcome.as_str(), "applied");
    assert_eq!(r.generation, 2);
    assert_eq!(r.running.as_deref(), Some(new.as_str()));
    assert!(r.log.contains("confirmed"), "{}", r.log);
    // The interim reports came first.
    let all: Vec<_> = server
        .reports("web1")
        .iter()
        .map(|r| r.outcome.as_str())
        .collect();
    assert_eq!(all, vec!["deploying", "unconfirmed", "applied"]);

    // Nothing to do the second time: no activation, no report, exit 3.
    let (code, log) = t.agent_once().await;
    assert_eq!(code, 3, "{log}");
    assert_eq!(host.activations().len(), 1);
    assert_eq!(server.reports("web1").len(), 3);
}
