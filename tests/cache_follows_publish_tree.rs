//! The cache follows the publish tree while it runs: a release published after start is
//! served within a couple of seconds without a restart (by polling, and at once through
//! `refresh()`), and a path that leaves every closure stops being served.
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
