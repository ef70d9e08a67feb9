//! The cache follows the publish tree while it runs: a release published after start is
//! served within a couple of seconds without a restart (by polling, and at once through
//! `refresh()`), and a path that leaves every closure stops being served; a deploy's wake
//! (`serve/wake.sock`) has it refreshed at once, and hosts are shown the release only with
//! its closure servable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::nix::{build, closure, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_releases_become_servable_and_old_paths_leave() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let gen1 = build(&format!(r#"mk "bento-gen1-{salt}" "echo one > $out""#));
    let gen2 = build(&format!(
        r#"let lib = mk "bento-lib-{salt}" "echo lib > $out"; in mk "bento-gen2-{salt}" "echo ${{lib}} > $out""#
    ));
    let lib = closure(&gen2)
        .into_iter()
        .find(|p| p.contains("bento-lib-"))
        .unwrap();
    let other = build(&format!(r#"mk "bento-web2-{salt}" "echo web2 > $out""#));

    let dir = ServerDir::new();
    dir.publish("web1", 1, &gen1);
    let server = CacheServer::start(dir.cache_config()).await;
    let narinfo = |p: &str| format!("/{}.narinfo", hash_part(p));
    assert_eq!(server.get(&narinfo(&gen1)).await.status, 200);
    assert_eq!(server.get(&narinfo(&gen2)).await.status, 404);
    assert_eq!(server.get(&narinfo(&lib)).await.status, 404);

    // Published while running: the poller picks it up, no restart.
    dir.publish("web1", 2, &gen2);
    server
        .wait_for(&narinfo(&gen2), Duration::from_secs(10), |r| {
            r.status == 200 && r.field("Compression").as_deref() == Some("zstd")
        })
        .await;
    assert_eq!(
        server.get(&narinfo(&lib)).await.status,
        200,
        "the closure, not only the top"
    );
    // gen1 left web1's closure and is in no other: it is no longer served, and its
    // compressed file is gone from disk.
    let r = server.get(&narinfo(&gen1)).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // The deploy path calls refresh() and can rely on it being done when it returns.
    dir.publish("web2", 1, &other);
    let report = server.state.refresh().await.unwrap();
    assert_eq!(report.hosts, 2);
    assert_eq!(
        report.asked, 1,
        "only the new system's closure is asked of Nix; web1's is known from the index"
    );
    let r = server.get(&narinfo(&other)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("Compression").as_deref(), Some("zstd"));

    // A host whose release disappears takes its closure with it.
    std::fs::remove_file(dir.state.join("publish/web2/release")).unwrap();
    server.state.refresh().await.unwrap();
    assert_eq!(server.get(&narinfo(&other)).await.status, 404);
    assert_eq!(server.get(&narinfo(&gen2)).await.status, 200);
    let files = std::fs::read_dir(dir.state.join("cache/nar"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "only gen2's closure keeps compressed files");
}

/// Each release `bento deploy` publishes wakes the running server instead of its poll: with a poll
/// interval longer than any test, a release published and then woken for is shown by the
/// next refresh, and at the moment it is shown its closure is already served, compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploys_wake_shows_its_release_in_one_refresh_without_the_poll() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let gen1 = build(&format!(r#"mk "bento-wake1-{salt}" "echo one > $out""#));
    let gen2 = build(&format!(
        r#"let lib = mk "bento-wakelib-{salt}" "echo lib > $out"; in mk "bento-wake2-{salt}" "echo ${{lib}} > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &gen1);
    let mut config = dir.cache_config();
    config.poll_interval = Duration::from_secs(24 * 3600);
    let server = CacheServer::start(config).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let socket = bento::server::wake::bind(&dir.state).unwrap();
    tokio::spawn(bento::server::wake::follow(
        socket,
        server.state.clone(),
        shutdown.clone(),
    ));
    let mut shown = server.state.releases_shown();
    let mut refreshes = server.state.refreshes();
    let refreshed_before = *refreshes.borrow_and_update();
    let generation = |bytes: &bytes::Bytes| {
        bento::release::Release::parse_untrusted(bytes)
            .unwrap()
            .generation
    };
    assert_eq!(generation(&shown.borrow_and_update()["web1"]), 1);

    dir.publish("web1", 2, &gen2);
    // Written but not woken for: the cache has not looked, the host is still shown gen 1.
    assert!(!shown.has_changed().unwrap());
    assert_eq!(*refreshes.borrow(), refreshed_before);
    assert!(
        bento::deploy::wake_server(&bento::config::StateDir::new(&dir.state)),
        "the wake is taken"
    );
    let now = tokio::time::timeout(
        Duration::from_secs(120),
        shown.wait_for(|s| s.get("web1").is_some_and(|b| generation(b) == 2)),
    )
    .await
    .expect("a woken cache shows the new release without waiting for its poll")
    .unwrap()
    .clone();
    // Shown means servable in its final form: the new system and its dependency answer at
    // once, compressed (an agent that lists the closure now gets the NARs as listed).
    let narinfo = |p: &str| format!("/{}.narinfo", hash_part(p));
    let r = server.get(&narinfo(&gen2)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("Compression").as_deref(), Some("zstd"));
    let lib = closure(&gen2)
        .into_iter()
        .find(|p| p.contains("bento-wakelib-"))
        .unwrap();
    assert_eq!(server.get(&narinfo(&lib)).await.status, 200);
    assert_eq!(generation(&now["web1"]), 2);
    // One wake, one refresh.
    tokio::time::timeout(
        Duration::from_secs(120),
        refreshes.wait_for(|n| *n > refreshed_before),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(*refreshes.borrow(), refreshed_before + 1);
    shutdown.cancel();
}
