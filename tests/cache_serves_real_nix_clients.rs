//! The real Nix client is the judge: `nix copy --from http://127.0.0.1:PORT` into a
//! separate store, with signatures required and only the fleet key trusted, copies a
//! published closure holding the NAR cases that break naive encoders (non-UTF-8 names,
//! a 3000-byte symlink target, 10,001 directory entries), and `nix store verify` passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::cache::request::Endpoint;
use harness::nix::{self, Nix, build_tricky, closure, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

/// The tricky closure, published for web1 and served; `None` when this test may not run
/// (see `harness::root`).
async fn tricky_served() -> Option<(String, ServerDir, CacheServer)> {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return None;
    }
    let top = build_tricky(&nonce());
    let dir = ServerDir::new();
    dir.publish("web1", 1, &top);
    let server = CacheServer::start(dir.cache_config()).await;
    Some((top, dir, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copies_a_tricky_closure_over_zstd_and_verifies_it() {
    let Some((top, dir, server)) = tricky_served().await else {
        return;
    };
    let pubkey = dir.key.public().to_string();

    // The narinfo advertises the zstd file, signed by the fleet key.
    let ni = server.get(&format!("/{}.narinfo", hash_part(&top))).await;
    assert_eq!(ni.status, 200, "{}", ni.text());
    assert_eq!(ni.field("Compression").as_deref(), Some("zstd"));
    assert_eq!(ni.field("StorePath").as_deref(), Some(top.as_str()));
    assert!(ni.field("URL").unwrap().ends_with(".nar.zst"));
    assert!(ni.field("FileHash").is_some() && ni.field("FileSize").is_some());
    assert!(ni.field("Sig").unwrap().starts_with("bento-test-fleet-1:"));

    let client = Nix::chroot();
    let copied = client.copy_from(&server.url(), &pubkey, &top, &[]).await;
    assert!(copied.is_ok(), "nix copy failed: {}", copied.err().unwrap());
    for path in closure(&top) {
        assert!(client.has(&path), "{path} was not copied");
    }
    let verified = client.verify(&pubkey, &top).await;
    assert!(
        verified.is_ok(),
        "nix store verify failed: {}",
        verified.err().unwrap()
    );

    // Every NAR came from a zstd file; no plain NAR was needed.
    let m = server.state.metrics();
    assert_eq!(m.requests_total(Endpoint::NarZst, 200), 2);
    assert_eq!(m.requests_total(Endpoint::Nar, 200), 0);
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains("bento_cache_requests_total{endpoint=\"nar_zst\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bento_cache_nar_streams_in_flight 0"),
        "{metrics}"
    );

    // Positive control for the "lacks a signature" refusal elsewhere: the same copy with a
    // key that is not ours trusted must fail, so the success above is the key's doing.
    let other = bento::nix::keys::SecretKey::generate("bento-test-fleet-1")
        .unwrap()
        .public()
        .to_string();
    let refused = Nix::chroot()
        .copy_from(&server.url(), &other, &top, &[])
        .await;
    assert!(
        refused.is_err(),
        "copy must fail when the fleet key is not trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_nar_served_on_the_fly_is_byte_identical_to_nix_store_dump() {
    let Some((top, _dir, server)) = tricky_served().await else {
        return;
    };
    let ni = server.get(&format!("/{}.narinfo", hash_part(&top))).await;
    let nar_hash = ni.field("NarHash").unwrap();
    let digest = nar_hash.strip_prefix("sha256:").unwrap();
    let nar = server.get(&format!("/nar/{digest}.nar")).await;
    assert_eq!(nar.status, 200);
    let dump = nix::command("nix-store")
        .args(["--dump", &top])
        .run_async()
        .await
        .unwrap();
    assert_eq!(nar.body.len(), dump.stdout.len());
    assert!(nar.body == dump.stdout, "NAR differs from nix-store --dump");
    assert_eq!(
        nar.header("content-length").map(str::to_owned),
        ni.field("NarSize")
    );
}
