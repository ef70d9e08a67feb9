//! The agent adopts its own new configuration: a system that names another agent
//! configuration (`etc/bento/agent-unit.json`, as the NixOS module writes it) is applied
//! and reported, then the agent exits with code 9 so that its service manager starts the
//! new one; that one does not activate again and does not exit again. An exit code after a
//! recovery tells the truth too: when an agent is killed after it recorded `applied` and
//! before its report went out, its successor delivers that report and exits 0, not 3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::fake::Behaviour;
use harness::ran::wait_for;
use harness::scene::{OneHost, agent_command, agent_once};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_configuration_changes_exits_once_to_be_restarted() {
    let systems = [
        Behaviour::NamesAgent("/nix/store/aaaa-bento-agent.toml".into()),
        Behaviour::NamesAgent("/nix/store/bbbb-bento-agent.toml".into()),
    ];
    let Some(t) = OneHost::start("selfupdate", &systems, "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    let new = &t.systems[1];
    let run_agent = || {
        agent_command(host, &["agent", "--config", &config.to_string_lossy()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // The agent runs as a service would (its loop), and a release brings a new agent.
    server.publish_release("web1", 2, new).await;
    let first = run_agent();
    let out = tokio::time::timeout(Duration::from_secs(90), first.wait_with_output())
        .await
        .expect("the agent did not exit for its restart")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{log}");
    assert!(log.contains("bbbb-bento-agent.toml"), "{log}");
    // It exited after its report.
    let reports = server.final_reports("web1");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome.as_str(), "applied");
    assert_eq!(host.running().as_deref(), Some(new.as_str()));

    // What systemd does next: start the agent again. It has nothing to do and keeps running.
    let second = run_agent();
    let pid = second.id().unwrap();
    // It keeps running: several attempts (one a second) pass; its log shows them below.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the new agent exited"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), second.wait_with_output())
        .await
        .expect("the agent did not stop on SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("attempt finished"), "{log}");
    assert!(!log.contains("activating"), "{log}");
    assert_eq!(host.activations().len(), 1, "activated once");
    assert_eq!(server.final_reports("web1").len(), 1, "reported once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_short_before_its_report_gives_its_code_to_the_next_run() {
    let Some(t) = OneHost::start("late", &[Behaviour::Good, Behaviour::Good], "").await else {
        return;
    };
    let (host, server, config) = (&t.host, &t.server, &t.config);
    server.publish_release("web1", 2, &t.systems[1]).await;
    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    // Positive control: a run with nothing to do says so.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3);

    // What an agent killed after recording `applied` and before uploading its report
    // leaves: the journal says applied and that the attempt has not ended (`untold`), the
    // report waits in the outbox. (Made here by hand: the window is milliseconds wide.)
    let journal = host.root.join("agent-state/state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert_eq!(state["last_applied"], 2);
    state["untold"] = serde_json::json!([2, "applied"]);
    std::fs::write(&journal, serde_json::to_vec(&state).unwrap()).unwrap();
    let reports = server.dir.host_dir("web1").join("reports");
    let name = std::fs::read_dir(&reports)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with("-g2-applied.json"))
        .unwrap();
    let outbox = host.root.join("agent-state/outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::rename(reports.join(&name), outbox.join(&name)).unwrap();

    let (code, log) = agent_once(host, config).await;
    assert_eq!(code, 0, "{log}");
    assert!(reports.join(&name).exists(), "the report was delivered");
    assert!(wait_for(1, || !outbox.join(&name).exists()).await);
    assert_eq!(host.activations().len(), 1);
    // Told once: the run after that has nothing to do again.
    let (code, _) = agent_once(host, config).await;
    assert_eq!(code, 3);
}
