//! `bento status` states come from what real agents report, in their own namespaces against
//! the real servers: up-to-date after a confirmed apply; pending when a new release lands
//! after it (the newest report names the older generation, so it does not count);
//! deploying while activation runs; unconfirmed while health checks fail, then rolled-back;
//! activation-failed; refused (release signed by a stranger); copy-failed (a system the
//! cache does not have); retry-later (the server vanished during activation); never-seen;
//! not-deployed; stale (the same reports, read an hour later). The SFTP server's login
//! record (`seen/<host>`) is written for hosts that logged in, and an agent with
//! `metrics_textfile` writes its last outcome there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::config::StateDir;
use bento::nix::keys::SecretKey;
use bento::release::Release;
use bento::status::{self, HostState};
use harness::fake::{self, Behaviour};
use harness::net::Net;
use harness::ran::wait_for;
use harness::scene::{Server, agent_once, spawn_agent_once};

const HOSTS: [&str; 9] = [
    "good",
    "later",
    "slow",
    "unhealthy",
    "broken",
    "forged",
    "missing",
    "silent",
    "outage",
];

fn state_of(state: &StateDir, host: &str) -> HostState {
    status::collect_host(state, host, bento::clock::unix_now(), 300)
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn states_follow_what_real_agents_report() {
    if !harness::needs_root("network and mount namespaces, the machine's Nix store") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new();
    let mut all = HOSTS.to_vec();
    all.push("unreleased");
    let mut server = Server::start(&net, &all).await;
    let state = StateDir::new(&server.dir.state);
    let salt = "status";
    let mut hosts = Vec::new();
    for (i, name) in HOSTS.iter().enumerate() {
        let h = net.host(name, i as u8 + 1, &tmp.path().join(name));
        let g1 = fake::build(name, 1, &Behaviour::Good, salt);
        h.install(&g1);
        hosts.push(h);
    }
    let host = |name: &str| hosts.iter().find(|h| h.name == name).unwrap();

    // Before anything: released hosts are never-seen; a host without release not-deployed.
    let good_g2 = fake::build("good", 2, &Behaviour::Good, salt);
    server.publish_release("good", 2, &good_g2).await;
    assert_eq!(state_of(&state, "good"), HostState::NeverSeen);
    assert_eq!(state_of(&state, "unreleased"), HostState::NotDeployed);

    // good: applied and confirmed → up-to-date, running the release. Its agent also writes
    // the node-exporter textfile.
    let prom = tmp.path().join("good.prom");
    let config = server.agent_config(
        host("good"),
        &format!("metrics_textfile = \"{}\"", prom.display()),
    );
    let (code, log) = agent_once(host("good"), &config).await;
    assert_eq!(code, 0, "{log}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("bento_agent_last_outcome{outcome=\"applied\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("bento_agent_last_generation 2\n"), "{text}");
    let s = status::collect_host(&state, "good", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::UpToDate, "{s:?}");
    assert_eq!(s.running.as_deref(), Some(good_g2.as_str()));
    assert_eq!(s.current_generation, Some(2));
    assert!(
        state.last_seen("good").exists(),
        "the SFTP login was recorded"
    );

    // later: applied g2, then g3 is published before the agent looks again → pending,
    // although its newest report (about g2) says "applied".
    let later_g2 = fake::build("later", 2, &Behaviour::Good, salt);
    server.publish_release("later", 2, &later_g2).await;
    let config = server.agent_config(host("later"), "");
    let (code, log) = agent_once(host("later"), &config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(state_of(&state, "later"), HostState::UpToDate);
    let later_g3 = fake::build("later", 3, &Behaviour::Good, salt);
    server.publish_release("later", 3, &later_g3).await;
    let s = status::collect_host(&state, "later", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::Pending, "{s:?}");
    assert_eq!(s.last_report.as_ref().unwrap().outcome, "applied");
    assert_eq!(s.desired.as_ref().unwrap().generation, 3);

    // slow: activation runs until the test lets it finish → deploying meanwhile, then
    // up-to-date.
    let slow_g2 = fake::build("slow", 2, &Behaviour::Hold, salt);
    server.publish_release("slow", 2, &slow_g2).await;
    let config = server.agent_config(host("slow"), "");
    let agent = spawn_agent_once(host("slow"), &config);
    assert!(
        wait_for(30, || state_of(&state, "slow") == HostState::Deploying).await,
        "never deploying: {:?}",
        state_of(&state, "slow")
    );
    host("slow").release_hold();
    let out = agent.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&state, "slow"), HostState::UpToDate);

    // unhealthy: health checks fail → unconfirmed while it retries, then rolled-back.
    let unhealthy_g2 = fake::build("unhealthy", 2, &Behaviour::Good, salt);
    server.publish_release("unhealthy", 2, &unhealthy_g2).await;
    let config = server.agent_config(
        host("unhealthy"),
        "confirm_timeout_secs = 4\nhealth_checks = [[\"/bin/false\"]]",
    );
    let agent = spawn_agent_once(host("unhealthy"), &config);
    assert!(
        wait_for(30, || state_of(&state, "unhealthy")
            == HostState::Unconfirmed)
        .await,
        "never unconfirmed: {:?}",
        state_of(&state, "unhealthy")
    );
    let out = agent.wait_with_output().await.unwrap();
    assert_ne!(out.status.code(), Some(0));
    let s = status::collect_host(&state, "unhealthy", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::RolledBack, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    assert_eq!(s.current_generation, None, "g2 never applied");

    // broken: switch-to-configuration fails → activation-failed, with its reason.
    let broken_g2 = fake::build("broken", 2, &Behaviour::FailActivation, salt);
    server.publish_release("broken", 2, &broken_g2).await;
    let config = server.agent_config(host("broken"), "");
    let (code, log) = agent_once(host("broken"), &config).await;
    assert_ne!(code, 0, "{log}");
    let s = status::collect_host(&state, "broken", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::ActivationFailed, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");

    // forged: a release signed by another key → refused.
    let forged_g2 = fake::build("forged", 2, &Behaviour::Good, salt);
    let stranger = SecretKey::generate("other-fleet").unwrap();
    let forged = Release::sign("forged", 2, &forged_g2, 1_790_000_000, &stranger).unwrap();
    server.write_release("forged", &forged.to_bytes()).await;
    let config = server.agent_config(host("forged"), "");
    let (code, log) = agent_once(host("forged"), &config).await;
    assert_ne!(code, 0, "{log}");
    assert_eq!(state_of(&state, "forged"), HostState::Refused);

    // missing: the release names a system the cache cannot serve → copy-failed.
    let gone = "/nix/store/0000000000000000000000000000000a-nixos-system-missing-2";
    server.publish_release("missing", 2, gone).await;
    let config = server.agent_config(host("missing"), "");
    let (code, log) = agent_once(host("missing"), &config).await;
    assert_ne!(code, 0, "{log}");
    let s = status::collect_host(&state, "missing", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::CopyFailed, "{s:?}\n{log}");

    // silent: released, its agent never ran → never-seen.
    let silent_g2 = fake::build("silent", 2, &Behaviour::Good, salt);
    server.publish_release("silent", 2, &silent_g2).await;
    assert_eq!(state_of(&state, "silent"), HostState::NeverSeen);

    // outage: the server goes away during activation (held until then), so the agent rolls
    // back and still cannot reach it; once the server is back the queued report says
    // retry-later.
    let outage_g2 = fake::build("outage", 2, &Behaviour::Hold, salt);
    server.publish_release("outage", 2, &outage_g2).await;
    let config = server.agent_config(
        host("outage"),
        "confirm_timeout_secs = 3\nretry_base_secs = 600",
    );
    let agent = spawn_agent_once(host("outage"), &config);
    assert!(
        wait_for(30, || host("outage").running().as_deref()
            == Some(outage_g2.as_str()))
        .await
    );
    server.stop_sftp().await;
    host("outage").release_hold();
    let out = agent.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart_sftp().await;
    let (_, log) = agent_once(host("outage"), &config).await;
    let s = status::collect_host(&state, "outage", bento::clock::unix_now(), 300).unwrap();
    assert_eq!(s.state, HostState::RetryLater, "{s:?}\n{log}");

    // The whole fleet at once, and the same reports an hour later: every host that was
    // heard from is stale; the others keep their state.
    let names: Vec<&str> = all.clone();
    let now = bento::clock::unix_now();
    let fleet = status::collect(&state, names.iter().copied(), now, 300).unwrap();
    let got: Vec<(&str, &str)> = fleet
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.state.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("good", "up-to-date"),
            ("later", "pending"),
            ("slow", "up-to-date"),
            ("unhealthy", "rolled-back"),
            ("broken", "activation-failed"),
            ("forged", "refused"),
            ("missing", "copy-failed"),
            ("silent", "never-seen"),
            ("outage", "retry-later"),
            ("unreleased", "not-deployed"),
        ]
    );
    assert!(!fleet.all_up_to_date());
    let later = status::collect(&state, names.iter().copied(), now + 3600, 300).unwrap();
    for h in &later.hosts {
        let want = match h.host.as_str() {
            "silent" => HostState::NeverSeen,
            "unreleased" => HostState::NotDeployed,
            _ => HostState::Stale,
        };
        assert_eq!(h.state, want, "{}", h.host);
    }
    // The metrics text of the same fleet.
    let text = status::metrics::render(&fleet);
    assert!(
        text.contains("bento_hosts{state=\"up-to-date\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("bento_host_desired_generation{host=\"later\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("bento_host_current_generation{host=\"later\"} 2\n"),
        "{text}"
    );
}
