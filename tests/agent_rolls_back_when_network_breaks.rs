//! Magic rollback in pull mode: the new configuration takes the host's network down, so the
//! agent cannot reach the server with a fresh session; within the confirm timeout it
//! re-activates the previous system (which brings the network back), then reports
//! `rolled-back`, and exits 6.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::scene::{OneHost, agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cuts_the_network_is_rolled_back() {
    let systems = [Behaviour::Good, Behaviour::BreakNetwork];
    let Some(t) = OneHost::start("netbreak", &systems, "confirm_timeout_secs = 5").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, bad) = (t.systems[0].clone(), t.systems[1].clone());
    server.publish_release("web1", 2, &bad).await;

    let started = std::time::Instant::now();
    let (code, log) = agent_once(host, config).await;
    let took = started.elapsed();
    assert_eq!(code, 6, "{log}");
    assert_eq!(host.running().as_deref(), Some(old.as_str()));
    assert_eq!(host.activations(), fake::switched(&[&bad, &old]));
    let reports = server.final_reports("web1");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.outcome.as_str(), "rolled-back");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or_default()
            .contains("server unreachable"),
        "{r:?}"
    );
    let confirm_ms = r.timings.confirm_ms.unwrap_or_default();
    eprintln!(
        "network cut → previous system restored and reported: {took:?} in all, confirmation gave up after {confirm_ms} ms (timeout 5 s)"
    );
    assert!(
        confirm_ms >= 5000,
        "gave up before the confirm timeout: {confirm_ms} ms"
    );
    // The network is back: the host reaches the server again.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3, "the rolled-back generation is not tried again");
}
