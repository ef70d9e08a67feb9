//! The agent copies a release's closure with the whole-closure transfer: one delivery
//! (a request per connection, each naming the top path and what the host holds), no
//! narinfo fetched one by one; a delivery cut short (the server going away mid-stream)
//! imports its complete entries and the next attempt asks only for the rest (a small
//! delivery staged in memory, the host's /run; a larger one on the disk); a server with
//! only the two-request form (closure, then NARs) is copied from with it; a server without
//! the transfer (not `bento serve`) is copied from by substitution (`agent::copy`).
//!
//! Real agent in a host namespace, real cache and SFTP server, real Nix. Between the host
//! and the cache sits `harness::relay`, which records every request and can cut the
//! transfer's answers 20 bytes before their end, answer the delivery 404, or answer every
//! transfer request as a server without them does (405).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bento::agent::transfer::SHARDS;
use bento::transfer::deliver;
use harness::fake::Behaviour;
use harness::relay::Relay;
use harness::scene::{OneHost, agent_once};

/// The store paths a transfer request's body names.
fn paths_named(request: &str) -> Vec<String> {
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    body.lines().map(str::to_owned).collect()
}

/// The delivery request in a recorded request.
fn delivery(request: &[u8]) -> deliver::Request {
    let at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    deliver::parse_request(&request[at..]).unwrap()
}

async fn setup(salt: &str) -> Option<(OneHost, Arc<Relay>)> {
    setup_with(salt, "").await
}

/// [`setup`] with more lines of agent configuration.
async fn setup_with(salt: &str, extra: &str) -> Option<(OneHost, Arc<Relay>)> {
    // Generation 2 brings 12 leaves of its own: enough entries for every connection to
    // carry several (2.5 MiB in all, with its 1 MiB blob).
    let systems = [(Behaviour::Good, 0, 0), (Behaviour::Good, 1, 12)];
    let mut t = OneHost::start_leaves(salt, &systems, "").await?;
    let (relay, url) = Relay::start(&t.net.server_ip(), t.server.cache.addr).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\"\n{extra}"));
    Some((t, relay))
}

/// Where the agent stages a delivery: in memory (the host's /run, `memory_staging_dir`'s
/// default) or in its state directory.
const MEMORY_STAGING: &str = "run/bento-agent/transfer";
const DISK_STAGING: &str = "agent-state/transfer";

/// The hash parts of the entries staged whole (narinfo written) in `staging`.
fn staged(staging: &std::path::Path) -> HashSet<String> {
    std::fs::read_dir(staging)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".narinfo").map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_comes_in_one_delivery_and_a_cut_one_resumes_with_the_rest() {
    // A small delivery is staged in memory (the host's /run).
    cut_then_resumed("wholeclosure", "", MEMORY_STAGING, DISK_STAGING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_larger_than_the_memory_staging_is_staged_and_resumed_on_the_disk() {
    cut_then_resumed(
        "diskstaged",
        "memory_staging_max_mib = 1",
        DISK_STAGING,
        MEMORY_STAGING,
    )
    .await;
}

/// A delivery cut at the end of every connection's answer keeps its complete entries in
/// `staged_in` (under the host's root) and none in `not_in`; the next attempt asks for the
/// rest only, applies, and leaves nothing staged.
async fn cut_then_resumed(salt: &str, extra: &str, staged_in: &str, not_in: &str) {
    let Some((t, relay)) = setup_with(salt, extra).await else {
        return;
    };
    let new = t.publish(2).await;
    let closure = harness::nix::closure(&new);
    let in_store = |p: &str| t.host.root.join(p.trim_start_matches('/')).exists();
    let missing: Vec<&String> = closure.iter().filter(|p| !in_store(p)).collect();
    assert!(
        missing.len() >= 3,
        "the test needs paths to move: {missing:?}"
    );

    // Every answer is cut 20 bytes before its end: inside the last entry of each.
    relay.cut.store(true, Ordering::SeqCst);
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_ne!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(t.systems[0].as_str()));
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "copy-failed", "{r:?}");
    let first = relay.requests_raw("POST /_bento/v1/deliver");
    assert_eq!(first.len(), SHARDS, "one delivery request per connection");
    let mut shards: Vec<usize> = first.iter().map(|r| delivery(r).shard).collect();
    shards.sort();
    assert_eq!(shards, (0..SHARDS).collect::<Vec<_>>());
    // What the host holds (its current system) is named, so only the missing paths move.
    let held = harness::nix::closure(&t.systems[0]);
    for r in &first {
        let d = delivery(r);
        assert_eq!(bento::nix::store::render(&d.top), new);
        assert_eq!(d.shards, SHARDS);
        let named: HashSet<_> = held
            .iter()
            .map(|p| deliver::hint(&bento::nix::store::parse(p).unwrap()))
            .collect();
        assert_eq!(d.have, named, "the hints are the current system's closure");
    }
    assert!(!in_store(&new), "the top path comes last: not imported");
    // The complete entries stayed (imported, or staged for their references).
    let staging = t.host.root.join(staged_in);
    // As the agent names it: the host's /run is bound on its own directory.
    let shown = match staged_in {
        MEMORY_STAGING => std::path::PathBuf::from("/").join(staged_in),
        _ => t.host.root.join(staged_in),
    };
    let into = format!("into {} (", shown.display());
    assert!(r.log.contains(&into), "{into}\n{}", r.log);
    assert_eq!(r.log.contains(" (memory)"), staged_in == MEMORY_STAGING);
    assert!(
        staged(&t.host.root.join(not_in)).is_empty(),
        "nothing staged in {not_in}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&staging).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{staged_in} is root's alone");
    }
    let kept = staged(&staging);
    let to_fetch: Vec<&&String> = missing
        .iter()
        .filter(|p| !kept.contains(&harness::nix::hash_part(p)))
        .collect();
    assert!(
        !to_fetch.is_empty() && to_fetch.len() < missing.len(),
        "the first attempt kept part of the closure: {} to fetch of {}",
        to_fetch.len(),
        missing.len()
    );
    relay.cut.store(false, Ordering::SeqCst);
    relay.clear();

    // The next attempt asks only for what was cut, in one delivery, and applies.
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    let second = relay.requests_to("POST /_bento/v1/deliver");
    assert_eq!(second.len(), SHARDS);
    assert!(relay.requests_to("POST /_bento/v1/closure").is_empty());
    assert!(relay.requests_to("POST /_bento/v1/nars").is_empty());
    assert!(
        relay.requests_to("GET").is_empty(),
        "nothing fetched path by path: {:?}",
        relay.requests_to("GET")
    );
    let r = t.server.final_reports("web1").pop().unwrap();
    let asked = format!(
        "{} connections bring the {} others (",
        SHARDS,
        to_fetch.len()
    );
    assert!(r.log.contains(&asked), "{asked}\n{}", r.log);
    assert!(r.log.contains(&into), "{into}\n{}", r.log);
    for dir in [staged_in, not_in] {
        assert!(
            !t.host.root.join(dir).exists(),
            "{dir} is removed after the copy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_delivery_is_copied_from_with_two_requests() {
    let Some((t, relay)) = setup("nodelivery").await else {
        return;
    };
    relay.no_delivery.store(true, Ordering::SeqCst);
    let new = t.publish(2).await;
    let closure = harness::nix::closure(&new);
    let mut missing: Vec<String> = closure
        .iter()
        .filter(|p| !t.host.root.join(p.trim_start_matches('/')).exists())
        .cloned()
        .collect();
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    assert_eq!(relay.requests_to("POST /_bento/v1/deliver").len(), SHARDS);
    assert_eq!(relay.requests_to("POST /_bento/v1/closure").len(), 1);
    let nars = relay.requests_to("POST /_bento/v1/nars");
    assert_eq!(nars.len(), 1, "one request for every missing path");
    let mut asked = paths_named(&nars[0]);
    asked.sort();
    missing.sort();
    assert_eq!(asked, missing);
    assert!(relay.requests_to("GET").is_empty());
    let r = t.server.final_reports("web1").pop().unwrap();
    assert!(r.log.contains("the delivery was not answered"), "{}", r.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_transfer_is_copied_from_with_nix() {
    let Some((t, relay)) = setup("oldserver").await else {
        return;
    };
    relay.old_server.store(true, Ordering::SeqCst);
    let new = t.publish(2).await;
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    // The agent asked (a delivery, then the closure), was told no, and Nix fetched the
    // narinfos itself.
    assert_eq!(relay.requests_to("POST /_bento/v1/deliver").len(), SHARDS);
    assert_eq!(relay.requests_to("POST /_bento/v1/closure").len(), 1);
    assert!(relay.requests_to("POST /_bento/v1/nars").is_empty());
    assert!(
        !relay.requests_to("GET /").is_empty(),
        "Nix substituted from the cache"
    );
    let r = t.server.final_reports("web1").pop().unwrap();
    assert!(
        r.log.contains("copying by substitution instead"),
        "{}",
        r.log
    );
}
