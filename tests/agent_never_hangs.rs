//! Nothing the agent starts may hang it: a `switch-to-configuration` that never ends is
//! killed (with everything it started) at `activation_timeout_secs` and treated as a
//! failed activation, rolled back; a copy left running by an agent that was killed alone is
//! killed by the next agent, which then completes instead of racing it. (The whole-closure
//! transfer downloads in the agent's own process; the substitution from a cache without it
//! is the long child, so that test puts such a cache in front: `harness::relay`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use harness::fake::{self, Behaviour};
use harness::ran::{processes_with, wait_for};
use harness::relay::Relay;
use harness::scene::{OneHost, spawn_agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_hangs_is_killed_at_its_deadline_and_rolled_back() {
    let timeout = 4;
    let systems = [Behaviour::Good, Behaviour::Hang];
    let extra = format!("activation_timeout_secs = {timeout}");
    let Some(t) = OneHost::start("hang", &systems, &extra).await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let (old, bad) = (&t.systems[0], &t.systems[1]);
    server.publish_release("web1", 2, bad).await;

    let started = Instant::now();
    let agent = spawn_agent_once(host, config);
    // Positive control: the hanging switch and the child it started are seen running.
    let tag = format!("hang-{bad}");
    assert!(
        wait_for(30, || !processes_with(&tag).is_empty()).await,
        "the hanging switch never ran"
    );
    assert!(!processes_with(&format!("{bad}/bin/switch-to-configuration")).is_empty());
    let out = tokio::time::timeout(Duration::from_secs(timeout + 60), agent.wait_with_output())
        .await
        .expect("the agent itself hung")
        .unwrap();
    let took = started.elapsed();
    eprintln!("hung switch to restored system: {took:?} (activation_timeout_secs = {timeout})");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(
        took < Duration::from_secs(timeout + 10),
        "rolled back after {took:?}, more than the deadline + 10 s"
    );
    assert_eq!(host.running().as_deref(), Some(old.as_str()));
    assert_eq!(host.activations(), fake::switched(&[bad, old]));
    assert!(
        processes_with(&tag).is_empty() && processes_with(bad).is_empty(),
        "processes of the hung switch are left: {:?}",
        processes_with(bad)
    );
    let r = server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "activation-failed");
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("timed out after {timeout}s")),
        "{reason}"
    );
    // The tail of what it printed before hanging.
    assert!(reason.contains("hanging on purpose"), "{reason}");
    assert!(r.log.contains("hanging on purpose"), "{}", r.log);
}

/// The copies of `path` that run: a `nix copy`, or the substitution (`nix-store
/// --realise`) that copies from a cache without the transfer.
fn copy_running(path: &str) -> Vec<u32> {
    let mut copies = processes_with("copy --from");
    copies.extend(processes_with("nix-store --realise"));
    copies
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(path))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_left_by_an_agent_killed_alone_is_killed_by_the_next_one() {
    let systems = [(Behaviour::Good, 0), (Behaviour::Good, 48)];
    let Some(mut t) = OneHost::start_sized("alone", &systems, "").await else {
        return;
    };
    // A cache without the transfer: the agent copies with a `nix-store --realise` child.
    let (relay, url) = Relay::start(&t.net.server_ip(), t.server.cache.addr).await;
    relay.old_server.store(true, Ordering::SeqCst);
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let new = &t.systems[1];
    // Slow enough that the copy outlives the agent by far (48 MiB at 16 Mbit/s: 25 s).
    host.throttle("16mbit");
    server.publish_release("web1", 2, new).await;

    let agent = spawn_agent_once(host, config);
    assert!(
        wait_for(60, || !copy_running(new).is_empty()).await,
        "never saw the copy"
    );
    let copy = copy_running(new);
    // SIGKILL to the agent alone (the OOM killer, `kill -9 <pid>`): its copy goes on.
    let pid = agent.id().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let _ = agent.wait_with_output().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        copy_running(new),
        copy,
        "the copy went on without its agent"
    );

    // The next agent, with the link still slow: the leftover copy cannot finish on its own
    // before that agent has killed it (unthrottled, it would, in a fraction of a second).
    let started = Instant::now();
    let next = spawn_agent_once(host, config);
    let killed = wait_for(60, || {
        let running = copy_running(new);
        copy.iter().all(|pid| !running.contains(pid))
    })
    .await;
    host.unthrottle();
    let out = next.wait_with_output().await.unwrap();
    let (code, log) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "next agent, with a leftover copy to kill: {:?}",
        started.elapsed()
    );
    assert!(killed, "the leftover copy still runs: {log}");
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("killed process group") && log.contains("left by an earlier agent"),
        "{log}"
    );
    for pid in &copy {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || !copy_running(new).contains(pid),
            "the leftover copy {pid} still runs"
        );
    }
    assert_eq!(host.running().as_deref(), Some(new.as_str()));
    assert_eq!(host.activations().len(), 1, "activated once");
    assert_eq!(
        server.final_reports("web1").pop().unwrap().outcome.as_str(),
        "applied"
    );
}
