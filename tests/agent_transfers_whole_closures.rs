//! The agent copies a release's closure with the whole-closure transfer: one request for
//! the closure, one for every missing path, no narinfo fetched one by one; a transfer cut
//! short (the server going away mid-stream) imports its complete entries and the next
//! attempt asks only for the rest; a server without the transfer (an older `bento serve`)
//! is copied from by substitution (`agent::copy`).
//!
//! Real agent in a host namespace, real cache and SFTP server, real Nix. Between the host
//! and the cache sits `harness::relay`, which records every request and can cut the
//! transfer's answer 20 bytes before its end, or answer the transfer's requests as an older
//! server does (405).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harness::fake::Behaviour;
use harness::relay::Relay;
use harness::scene::{OneHost, agent_once};

/// The store paths a transfer request's body names.
fn paths_named(request: &str) -> Vec<String> {
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    body.lines().map(str::to_owned).collect()
}

async fn setup(salt: &str) -> Option<(OneHost, Arc<Relay>)> {
    let systems = [(Behaviour::Good, 0), (Behaviour::Good, 4)];
    let mut t = OneHost::start_sized(salt, &systems, "").await?;
    let (relay, url) = Relay::start(&t.net.server_ip(), t.server.cache.addr).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    Some((t, relay))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_comes_in_one_request_and_a_cut_transfer_resumes_with_the_rest() {
    let Some((t, relay)) = setup("wholeclosure").await else {
        return;
    };
    let new = t.publish(2).await;
    let closure = harness::nix::closure(&new);
    let missing: Vec<&String> = closure
        .iter()
        .filter(|p| !t.host.root.join(p.trim_start_matches('/')).exists())
        .collect();
    assert!(
        missing.len() >= 2,
        "the test needs paths to move: {missing:?}"
    );

    // The stream is cut 20 bytes before its end: inside the last entry, the top path.
    relay.cut_next.store(true, Ordering::SeqCst);
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_ne!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(t.systems[0].as_str()));
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "copy-failed", "{r:?}");
    let first = relay.requests_to("POST /_bento/v1/nars");
    assert_eq!(first.len(), 1, "one request for every missing path");
    let mut asked = paths_named(&first[0]);
    asked.sort();
    let mut want: Vec<String> = missing.iter().map(|p| (*p).clone()).collect();
    want.sort();
    assert_eq!(asked, want, "the first attempt asks for every missing path");
    let imported: Vec<&&String> = missing
        .iter()
        .filter(|p| t.host.root.join(p.trim_start_matches('/')).exists())
        .collect();
    let mut want_imported: Vec<&&String> = missing.iter().filter(|p| **p != &new).collect();
    want_imported.sort();
    let mut imported_sorted = imported.clone();
    imported_sorted.sort();
    assert_eq!(
        imported_sorted, want_imported,
        "every complete entry is imported, the cut one is not"
    );
    relay.clear();

    // The next attempt asks only for the entry that was cut, and applies.
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    assert_eq!(relay.requests_to("POST /_bento/v1/closure").len(), 1);
    let second = relay.requests_to("POST /_bento/v1/nars");
    assert_eq!(second.len(), 1);
    assert_eq!(
        paths_named(&second[0]),
        vec![new.clone()],
        "only the cut entry"
    );
    assert!(
        relay.requests_to("GET").is_empty(),
        "nothing fetched path by path: {:?}",
        relay.requests_to("GET")
    );
    let r = t.server.final_reports("web1").pop().unwrap();
    let staged = "1 missing here, 0 of them staged by an earlier attempt; fetching 1 (";
    assert!(r.log.contains(staged), "{}", r.log);
    assert!(
        !t.host.root.join("agent-state/transfer").exists(),
        "the staging directory is emptied after the copy"
    );
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
    // The agent asked once, was told no, and Nix fetched the narinfos itself.
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
