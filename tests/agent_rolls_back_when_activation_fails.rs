//! Activation exits non-zero: the agent re-activates the exact previous system, reports
//! `activation-failed` and exits 5; the failed generation is not tried again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fake::{self, Behaviour};
use harness::scene::OneHost;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_activation_is_rolled_back_to_the_previous_system() {
    let systems = [Behaviour::Good, Behaviour::FailActivation];
    let Some(t) = OneHost::start("actfail", &systems, "").await else {
        return;
    };
    let (report, took) = t
        .expect_rolled_back(5, "activation-failed", "switch-to-configuration")
        .await;
    eprintln!("activation failure to restored system: {took:?}");
    let (host, server, old) = (&t.host, &t.server, &t.systems[0]);
    // The profile points at the previous system again.
    let profile = std::fs::canonicalize(host.root.join("nix/var/nix/profiles/system")).unwrap();
    let profile = profile
        .to_string_lossy()
        .replace(&*host.root.join("nix").to_string_lossy(), "/nix");
    assert_eq!(&profile, old);
    assert!(
        report.log.contains("activation failed on purpose"),
        "{}",
        report.log
    );

    // The failed generation is not retried; a newer one is.
    let (code, _) = t.agent_once().await;
    assert_eq!(code, 3);
    assert_eq!(host.activations().len(), 2);
    let fixed = fake::build("web1", 3, &Behaviour::Good, "actfail");
    server.publish_release("web1", 3, &fixed).await;
    let (code, log) = t.agent_once().await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.running().as_deref(), Some(fixed.as_str()));
}
