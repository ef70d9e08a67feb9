//! No release outruns its closure: with `bento serve` running, `bento deploy` returns only
//! once hosts may see the new release and the cache serves its closure, so `bento agent
//! --once` run right after it applies the new system every time (it used to fail with
//! `copy-failed`, Nix saying no substituter has the path, because the SFTP side showed the
//! release a second before the cache picked its closure up).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::fleet::Fleet;
use harness::http::curl_status;

const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_right_after_each_deploy_applies_it() {
    let Some(mut fleet) = Fleet::new("deploy-then-once", &["web1"]) else {
        return;
    };
    fleet.start_serve(&[]).await;
    let config = fleet.agent_config("web1", "", "agent.toml");
    let cache = fleet.endpoints().cache_url;
    let mut applied = 0;
    let mut failures = Vec::new();
    for round in 1..=ROUNDS {
        fleet.set_version("web1", round);
        fleet.deploy(&["web1"]);
        let (generation, path) = fleet.released("web1").unwrap();
        // The moment deploy returns, the cache answers for the new system.
        let narinfo = format!("{cache}/{}.narinfo", harness::nix::hash_part(&path));
        assert_eq!(curl_status(&narinfo), 200, "round {round}: {narinfo}");
        let ran = fleet.in_host(
            "web1",
            env!("CARGO_BIN_EXE_bento"),
            &["agent", "--once", "--config", &config.to_string_lossy()],
        );
        if ran.code == 0 && fleet.host("web1").running().as_deref() == Some(path.as_str()) {
            applied += 1;
        } else {
            failures.push(format!(
                "round {round} (generation {generation}): exit {}: {}",
                ran.code,
                ran.both()
            ));
        }
    }
    assert_eq!(
        applied,
        ROUNDS,
        "every agent run right after a deploy applies it; failures:\n{}\n{}",
        failures.join("\n"),
        fleet.diagnostics()
    );
    let activations = fleet.host("web1").activations();
    assert_eq!(
        activations.len() as u64,
        ROUNDS,
        "one activation per round: {activations:?}"
    );
}
