//! The server goes down right after activation while the host's network is fine: the
//! agent cannot confirm, rolls back, and still cannot reach the server, so the fault was
//! not the new configuration. It does not condemn the generation: it keeps the report
//! until the server is back, and tries the generation again once its backoff has passed.
//!
//! The test decides every moment instead of racing the agent: the new system's activation
//! is held until the server is down, and the server comes back only after the backoff the
//! agent recorded has passed, so the agent has exactly one thing to do then. (That a
//! generation is not retried before its backoff is `decide::action`'s table test.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, SystemTime};

use harness::fake::{self, Behaviour};
use harness::scene::{OneHost, agent_once, spawn_agent_once, wait_running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_is_not_blamed_on_the_new_generation() {
    let systems = [Behaviour::Good, Behaviour::Hold];
    let extra = "confirm_timeout_secs = 3\nretry_base_secs = 2";
    let Some(mut t) = OneHost::start("srvdown", &systems, extra).await else {
        return;
    };
    let (old, new) = (t.systems[0].clone(), t.systems[1].clone());
    let (host, server, config) = (&t.host, &mut t.server, &t.config);
    server.publish_release("web1", 2, &new).await;

    let agent = wait_running(host, &new, spawn_agent_once(host, config)).await;
    // The activation waits for the test: the server goes down before the agent can try to
    // confirm.
    server.stop_sftp().await;
    host.release_hold();
    let out = agent.wait_with_output().await.unwrap();
    let failed_at = SystemTime::now();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{log}");
    assert_eq!(host.running().as_deref(), Some(old.as_str()), "rolled back");
    assert_eq!(host.activations(), fake::switched(&[&new, &old]));
    assert!(
        server.final_reports("web1").is_empty(),
        "nothing could be delivered while the server was down"
    );

    // The server stays down until the backoff (2 s from the failure) has surely passed.
    let backoff_over = failed_at + Duration::from_secs(3);
    while SystemTime::now() < backoff_over {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.restart_sftp().await;

    // The queued report arrives first, then the generation is tried again and applied (its
    // activation let through at once this time).
    host.release_hold();
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    let reports = server.final_reports("web1");
    let outcomes: Vec<&str> = reports.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry-later", "applied"], "{log}");
    assert!(
        reports[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("not blaming generation 2"),
        "{:?}",
        reports[0].reason
    );
    assert_eq!(reports[1].generation, 2);
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    assert_eq!(host.activations(), fake::switched(&[&new, &old, &new]));
}
