//! Magic rollback in pull mode: the new configuration takes the host's network down, so the
//! agent cannot reach the server with a fresh session; within the confirm timeout it
//! re-activates the previous system (which brings the network back), then reports
//! `rolled-back`, and exits 6.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::Behaviour;
use harness::scene::OneHost;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cuts_the_network_is_rolled_back() {
    let systems = [Behaviour::Good, Behaviour::BreakNetwork];
    let Some(t) = OneHost::start("netbreak", &systems, "confirm_timeout_secs = 5").await else {
        return;
    };
    let (r, took) = t
        .expect_rolled_back(6, "rolled-back", "server unreachable")
        .await;
    let confirm_ms = r.timings.confirm_ms.unwrap_or_default();
    eprintln!(
        "network cut → previous system restored and reported: {took:?} in all, confirmation gave up after {confirm_ms} ms (timeout 5 s)"
    );
    assert!(
        confirm_ms >= 5000,
        "gave up before the confirm timeout: {confirm_ms} ms"
    );
    // The network is back: the host reaches the server again.
    let (code, _) = t.agent_once().await;
    assert_eq!(code, 3, "the rolled-back generation is not tried again");
}
