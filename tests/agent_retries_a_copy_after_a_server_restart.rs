//! A copy cut by a restart of `bento serve` in the middle of the transfer is retried: the
//! attempt that was cut reports `copy-failed`, the next one applies the release, and it asks
//! the restarted server only for what is still missing (neither in the host's store nor
//! staged whole by the first attempt).
//!
//! Real binaries: `bento deploy` publishes a system whose closure holds 60 paths of 128 KiB
//! of incompressible data, `bento serve` runs as a process and is killed (SIGKILL) then
//! started again on the same ports, `bento agent --once` runs inside the host. The host
//! reaches the cache through the emulated link of `tests/link` capped at 16 Mbit/s, so the
//! stream lasts about 4 s and the kill lands inside it: the test waits until the agent has
//! staged 15 entries whole, kills the server and ends the link's connections (a link holds
//! what the server already sent), and checks that the first attempt did not get everything
//! (the positive controls that the stream was under way and not finished).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod link;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use harness::fleet::Fleet;
use harness::ran::wait_for;
use harness::repo::Spec;
use harness::scene::{agent_once, spawn_agent_once};

/// The hash parts of the entries staged whole (their narinfo is there).
fn staged_whole(staging: &Path) -> HashSet<String> {
    std::fs::read_dir(staging)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".narinfo").map(str::to_owned)
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The value of the metric line starting with `name` (labels included) in `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Narinfo requests the cache answered, whatever their status.
fn narinfo_requests(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("bento_cache_requests_total{endpoint=\"narinfo\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cut_by_a_server_restart_is_retried_with_only_what_is_missing() {
    let Some(mut fleet) = Fleet::new("restartmid", &["web1"]) else {
        return;
    };
    fleet.configure("web1", Spec::good(2).with_leaves(60));
    fleet.start_serve(&[]).await;
    let deployed = fleet.deploy(&[]);
    assert!(deployed.success(), "{}", deployed.both());
    let (_, new) = fleet.released("web1").unwrap();

    let cache: SocketAddr = fleet
        .serve()
        .cache
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let wan = link::Link::new(link::Spec::new(Duration::from_millis(10)).rate_mbit(16.0));
    let listener = tokio::net::TcpListener::bind(format!("{}:0", fleet.net.server_ip()))
        .await
        .unwrap();
    let relay = wan.relay(listener, cache);
    let relay_addr = relay.addr();
    let config = fleet.agent_config(
        "web1",
        &format!("cache_url = \"http://{}\"", relay.addr()),
        "agent.toml",
    );
    let root = fleet.host("web1").root.clone();
    // A small delivery: staged in memory (the host's /run).
    let staging = root.join("run/bento-agent/transfer");
    let in_store = |p: &str| root.join(p.trim_start_matches('/')).exists();
    let closure = harness::nix::closure(&new);
    assert!(closure.len() > 60, "{closure:?}");

    // First attempt: the server is killed in the middle of the stream.
    let first = spawn_agent_once(fleet.host("web1"), &config);
    let mid = wait_for(60, || staged_whole(&staging).len() >= 15).await;
    assert!(mid, "the agent never staged 15 entries");
    // The server dies, and its connections with it (the link would otherwise deliver what
    // it already holds: its queue and the kernel's buffers outlive the process).
    fleet.kill_serve();
    drop(relay);
    let out = first.wait_with_output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert_ne!(fleet.host("web1").running().as_deref(), Some(new.as_str()));
    assert!(!in_store(&new), "the top path comes last: not imported");
    let staged = staged_whole(&staging);
    let missing: Vec<&String> = closure.iter().filter(|p| !in_store(p)).collect();
    let to_fetch: Vec<&&String> = missing
        .iter()
        .filter(|p| !staged.contains(&harness::nix::hash_part(p)))
        .collect();
    assert!(
        !to_fetch.is_empty() && to_fetch.len() + 15 <= closure.len(),
        "the first attempt got part of the closure: {} to fetch of {}",
        to_fetch.len(),
        closure.len()
    );

    // The server comes back on the same ports; the next attempt applies.
    fleet.start_serve(&[]).await;
    let listener = tokio::net::TcpListener::bind(relay_addr).await.unwrap();
    let _relay = wan.relay(listener, cache);
    // Once its first refresh has loaded what is published.
    let narinfo = format!(
        "{}/{}.narinfo",
        fleet.serve().cache,
        harness::nix::hash_part(&new)
    );
    let loaded = wait_for(60, || harness::http::curl_status(&narinfo) == 200).await;
    assert!(loaded, "the restarted server never served {narinfo}");
    let metrics_url = format!("{}/metrics", fleet.serve().cache);
    let narinfos_before = narinfo_requests(&harness::http::curl(&metrics_url));
    let host = fleet.host("web1");
    let (code, log) = agent_once(host, &config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(host.running().as_deref(), Some(new.as_str()));

    let reports = fleet.final_reports("web1");
    let outcomes: Vec<&str> = reports.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["copy-failed", "applied"], "{reports:?}");
    let applied = reports.last().unwrap();
    // One delivery over its connections, for what is neither in the store nor staged.
    let asked = format!(
        "{} connections bring the {} others (",
        bento::agent::transfer::SHARDS,
        to_fetch.len()
    );
    assert!(applied.log.contains(&asked), "{asked}\n{}", applied.log);
    assert!(!applied.log.contains("asking for"), "{}", applied.log);

    // The restarted server saw exactly the delivery's requests (no path-by-path copy).
    let metrics = harness::http::curl(&metrics_url);
    let other = metric(
        &metrics,
        "bento_cache_requests_total{endpoint=\"other\",status=\"200\"}",
    );
    let narinfos = narinfo_requests(&metrics) - narinfos_before;
    assert_eq!(
        (other, narinfos),
        (bento::agent::transfer::SHARDS as f64, 0.0),
        "{metrics}"
    );
    // And sent what is missing, not the closure again: each leaf is 128 KiB of random data
    // (zstd adds a few bytes), the other paths a few hundred bytes.
    let sent = metric(&metrics, "bento_cache_bytes_sent_total{endpoint=\"other\"}");
    let most = (to_fetch.len() as f64) * 135_000.0 + 50_000.0;
    let least = (to_fetch.len() as f64 - 3.0) * 131_072.0;
    assert!(
        sent <= most && sent >= least,
        "{sent} bytes sent for {} paths",
        to_fetch.len()
    );
}
