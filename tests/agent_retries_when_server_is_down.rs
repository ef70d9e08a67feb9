//! The server goes down right after activation while the host's network is fine: the
//! agent cannot confirm, rolls back, and still cannot reach the server, so the fault was
//! not the new configuration. It does not condemn the generation: it keeps the report
//! until the server is back, and tries the generation again later, with backoff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::server::{OneHost, agent_once, spawn_agent_once, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_is_not_blamed_on_the_new_generation() {
    // Activation takes 5 s after switching: time for the test to stop the server, even on a
    // loaded machine.
    let systems = [Behaviour::Good, Behaviour::Sleep(5)];
    let extra = "confirm_timeout_secs = 3";
    let Some(mut t) = OneHost::start("srvdown", &systems, extra).await else {
        return;
    };
    let (old, new) = (t.systems[0].clone(), t.systems[1].clone());
    let (host, server, config) = (&t.host, &mut t.server, &t.config);
    server.publish_release("web1", 2, &new).await;

    let agent = spawn_agent_once(host, config);
    assert!(wait_for(30, || host.running().as_deref() == Some(new.as_str())).await);
    server.stop_sftp();
    let out = agent.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{log}");
    assert_eq!(host.running().as_deref(), Some(old.as_str()), "rolled back");
    assert!(
        server.final_reports("web1").is_empty(),
        "nothing could be delivered while the server was down"
    );

    // The server is back: the queued report arrives first; the generation is not retried
    // before its backoff (2 s) has passed.
    server.restart_sftp().await;
    let (code, log) = agent_once(host, config).await;
    let reports = server.final_reports("web1");
    assert_eq!(reports.len(), 1, "{log}");
    assert_eq!(reports[0].outcome.as_str(), "retry-later");
    assert!(
        reports[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("not blaming generation 2"),
        "{:?}",
        reports[0].reason
    );
    if code == 3 {
        assert_eq!(host.activations().len(), 2, "waiting out the backoff");
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let (code, log) = agent_once(host, config).await;
        assert_eq!(code, 0, "{log}");
    } else {
        assert_eq!(code, 0, "{log}");
    }
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    assert_eq!(host.activations(), fake::switched(&[&new, &old, &new]));
    let last = server.final_reports("web1").pop().unwrap();
    assert_eq!(last.outcome.as_str(), "applied");
}
