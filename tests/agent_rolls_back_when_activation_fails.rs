//! Activation exits non-zero: the agent re-activates the exact previous system, reports
//! `activation-failed` and exits 5; the failed generation is not tried again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::scene::{OneHost, agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_activation_is_rolled_back_to_the_previous_system() {
    let systems = [Behaviour::Good, Behaviour::FailActivation];
    let Some(t) = OneHost::start("actfail", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, bad) = (t.systems[0].clone(), t.systems[1].clone());
    server.publish_release("web1", 2, &bad).await;

    let started = std::time::Instant::now();
    let (code, log) = agent_once(host, config).await;
    eprintln!(
        "activation failure to restored system: {:?}",
        started.elapsed()
    );
    assert_eq!(code, 5, "{log}");
    assert_eq!(host.running().as_deref(), Some(old.as_str()));
    assert_eq!(
        host.activations(),
        fake::switched(&[&bad, &old]),
        "the previous system itself is re-activated"
    );
    // The profile points at the previous system again.
    let profile = std::fs::canonicalize(host.root.join("nix/var/nix/profiles/system")).unwrap();
    let profile = profile
        .to_string_lossy()
        .replace(&*host.root.join("nix").to_string_lossy(), "/nix");
    assert_eq!(profile, old);
    let reports = server.final_reports("web1");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome.as_str(), "activation-failed");
    let reason = reports[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("switch-to-configuration"), "{reason}");
    assert!(
        reports[0].log.contains("activation failed on purpose"),
        "{}",
        reports[0].log
    );

    // The failed generation is not retried; a newer one is.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3);
    assert_eq!(host.activations().len(), 2);
    let fixed = fake::build("web1", 3, &Behaviour::Good, "actfail");
    server.publish_release("web1", 3, &fixed).await;
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.running().as_deref(), Some(fixed.as_str()));
}
