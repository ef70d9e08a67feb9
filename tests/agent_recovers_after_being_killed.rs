//! The agent is killed (SIGKILL) at the worst moments; its next start ends in a correct
//! state from what it persisted: nothing is activated twice, and an activation that was
//! not confirmed by its deadline is rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::fake::{self, Behaviour};
use harness::ran::wait_for;
use harness::relay::Relay;
use harness::scene::{OneHost, agent_once, spawn_agent_once, wait_running};

/// SIGKILL to the agent and everything it started, as systemd stopping the unit would.
fn kill(child: &tokio::process::Child) {
    let pid = child.id().unwrap();
    let mut doomed = vec![pid];
    let mut i = 0;
    while i < doomed.len() {
        doomed.extend(children(doomed[i]));
        i += 1;
    }
    for p in doomed {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = stat.rsplit_once(") ")?.1;
            let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then(|| e.file_name().to_string_lossy().parse().ok())?
        })
        .collect()
}

/// The `deadline` (Unix seconds) anywhere in the agent's persisted state.
fn deadline_in(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get("deadline")
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(deadline_in)),
        serde_json::Value::Array(a) => a.iter().find_map(deadline_in),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_copy_it_copies_again_and_activates_once() {
    // The new system holds a 64 MiB path, which the agent imports while it arrives. Every
    // NAR stream stalls halfway at the relay, so the agent is killed in the middle of the
    // transfer (and of Nix's import of that path), however fast this machine is.
    let systems = [(Behaviour::Good, 0), (Behaviour::Good, 64)];
    let Some(mut t) = OneHost::start_sized("killcopy", &systems, "").await else {
        return;
    };
    let (relay, url) = Relay::start(&t.net.server_ip(), t.server.cache.addr).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, new) = (&t.systems[0], &t.systems[1]);
    server.publish_release("web1", 2, new).await;

    relay.stall.store(true, Ordering::SeqCst);
    let agent = spawn_agent_once(host, config);
    assert!(
        wait_for(60, || relay.stalled.load(Ordering::SeqCst) > 0).await,
        "the agent never started the transfer"
    );
    kill(&agent);
    relay.stall.store(false, Ordering::SeqCst);
    let _ = agent.wait_with_output().await;
    assert!(host.activations().is_empty(), "killed before activation");
    assert_eq!(host.running().as_deref(), Some(old.as_str()));

    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    assert_eq!(host.activations().len(), 1, "activated once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_switch_it_confirms_without_activating_again() {
    // The new system's script points /run/current-system at itself, then holds: the agent
    // is killed in the middle of the activation.
    let systems = [Behaviour::Good, Behaviour::Hold];
    let extra = "confirm_timeout_secs = 60";
    let Some(t) = OneHost::start("killswitch", &systems, extra).await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let new = &t.systems[1];
    server.publish_release("web1", 2, new).await;

    let agent = wait_running(host, new, spawn_agent_once(host, config)).await;
    kill(&agent);
    let _ = agent.wait_with_output().await;
    let state = std::fs::read_to_string(host.root.join("agent-state/state.json")).unwrap();
    assert!(state.contains("\"activating\""), "{state}");

    let started = std::time::Instant::now();
    let (code, log) = agent_once(host, config).await;
    eprintln!(
        "recovery after a kill mid-activation: {:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.activations().len(), 1, "not activated twice");
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    let r = server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "applied");
    assert!(r.log.contains("recovering generation 2"), "{}", r.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_confirming_past_its_deadline_it_rolls_back() {
    let systems = [Behaviour::Good, Behaviour::BreakNetwork];
    let extra = "confirm_timeout_secs = 4";
    let Some(t) = OneHost::start("killconfirm", &systems, extra).await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, bad) = (&t.systems[0], &t.systems[1]);
    server.publish_release("web1", 2, bad).await;

    let agent = spawn_agent_once(host, config);
    let state_file = host.root.join("agent-state/state.json");
    assert!(
        wait_for(30, || std::fs::read_to_string(&state_file)
            .is_ok_and(|s| s.contains("\"confirming\"")))
        .await
    );
    kill(&agent);
    let _ = agent.wait_with_output().await;
    assert_eq!(host.running().as_deref(), Some(bad.as_str()));
    // The host stays broken while no agent runs; wait until the deadline the agent
    // persisted has passed.
    let state = std::fs::read_to_string(&state_file).unwrap();
    let deadline = deadline_in(&serde_json::from_str(&state).unwrap())
        .unwrap_or_else(|| panic!("no confirmation deadline in {state}"));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let started = std::time::Instant::now();
    let (code, log) = agent_once(host, config).await;
    eprintln!(
        "recovery (rollback) after a kill mid-confirmation: {:?}",
        started.elapsed()
    );
    assert_eq!(code, 6, "{log}");
    assert_eq!(host.running().as_deref(), Some(old.as_str()));
    assert_eq!(host.activations(), fake::switched(&[bad, old]));
    let r = server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "rolled-back");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or_default()
            .contains("interrupted"),
        "{r:?}"
    );
    // The rolled-back generation is not tried again.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3);
}
