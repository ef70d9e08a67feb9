//! Serve only what verifies: a store path altered on the server after it was published
//! (same size, or longer) is never sent as a complete NAR. The first body that shows it is
//! cut before its end, the path is marked broken (counted on /metrics), its narinfo and NAR
//! are refused from then on, and the real Nix client fails naming the path instead of
//! "bad archive". Repaired and redeployed, the path is served again. A NAR that was hashed
//! right before goes out unhashed while nothing under its path changes; the alteration
//! changes that, so it is still caught.
//!
//! The cache is kept from making zstd files (a file where their directory goes), so hosts
//! get plain NARs, encoded from the store as it is now.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::PermissionsExt as _;

use harness::http::http;
use harness::nix::{Nix, build, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

/// Replaces the contents of store file `path` (made writable for the moment).
fn overwrite(path: &str, bytes: &[u8]) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(path, perms.clone()).unwrap();
    std::fs::write(path, bytes).unwrap();
    perms.set_mode(0o444);
    std::fs::set_permissions(path, perms).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_store_path_is_cut_marked_refused_and_served_again_once_repaired() {
    if !harness::needs_root("the machine's Nix store, which the cache serves and the test alters") {
        return;
    }
    let salt = nonce();
    let make = |name: &str| {
        build(&format!(
            r#"mk "bento-altered-{name}-{salt}" "head -c 700000 /dev/urandom > $out""#
        ))
    };
    let (same, longer) = (make("same"), make("longer"));
    let dir = ServerDir::new();
    std::fs::create_dir_all(dir.state.join("cache")).unwrap();
    std::fs::write(dir.state.join("cache/nar"), b"not a directory").unwrap();
    dir.publish("web1", 1, &same);
    dir.publish("web2", 1, &longer);
    let server = CacheServer::start(dir.cache_config()).await;
    let pubkey = dir.key.public().to_string();
    let metrics = server.state.metrics();

    // A whole body is hashed unless the same NAR was hashed right before and nothing under
    // its path changed since; a path changed in the last 2 s is never vouched for, so wait
    // that out (the paths were just built) to have the second bodies sent unhashed.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut originals = Vec::new();
    for path in [&same, &longer] {
        let narinfo = format!("/{}.narinfo", hash_part(path));
        let ni = server.get(&narinfo).await;
        assert_eq!(ni.field("Compression").as_deref(), Some("none"));
        let nar = format!("/{}", ni.field("URL").unwrap());
        let size: usize = ni.field("NarSize").unwrap().parse().unwrap();
        // Positive control: intact, the plain NAR is sent whole.
        let whole = http(server.addr, "GET", &nar, &[]).await.unwrap();
        assert_eq!((whole.status, whole.body.len()), (200, size));
        // Hashed right once, the same NAR goes out again unhashed (and whole).
        let skipped = metrics.nar_hash_skipped_total();
        let again = http(server.addr, "GET", &nar, &[]).await.unwrap();
        assert_eq!((again.status, again.body), (200, whole.body));
        assert_eq!(metrics.nar_hash_skipped_total(), skipped + 1, "{path}");
        originals.push((path.clone(), std::fs::read(path).unwrap(), narinfo, nar));
    }

    // Altered under the server: one byte flipped (same size), 100 bytes appended (longer).
    let (mut flipped, mut appended) = (originals[0].1.clone(), originals[1].1.clone());
    flipped[350_000] ^= 0xff;
    appended.extend_from_slice(&[7u8; 100]);
    overwrite(&same, &flipped);
    overwrite(&longer, &appended);

    for (n, (path, _, narinfo, nar)) in originals.iter().enumerate() {
        let cut = http(server.addr, "GET", nar, &[]).await;
        assert!(
            cut.is_err(),
            "{path}: an altered NAR must never arrive whole: {:?}",
            cut.map(|r| (r.status, r.body.len()))
        );
        assert_eq!(metrics.broken_found_total(), n as u64 + 1, "{path}");
        let refused = server.get(narinfo).await;
        assert_eq!(refused.status, 404, "{path}");
        assert!(
            refused.text().contains("altered on the server"),
            "{}",
            refused.text()
        );
        assert_eq!(server.get(nar).await.status, 404, "{path}");
    }
    // Found once, logged and counted once, whatever is asked again.
    let _ = http(server.addr, "GET", &originals[0].3, &[]).await;
    assert_eq!(metrics.broken_found_total(), 2);
    let text = server.get("/metrics").await.text();
    assert!(
        text.contains("bento_cache_broken_paths_found_total 2"),
        "{text}"
    );
    assert!(text.contains("bento_cache_broken_paths 2"), "{text}");

    // The real client fails naming the path, not "bad archive".
    let failed = Nix::chroot()
        .copy_from(&server.url(), &pubkey, &same, &[])
        .await;
    let message = failed
        .expect_err("copying an altered path must fail")
        .to_string();
    assert!(message.contains(&hash_part(&same)), "{message}");
    assert!(!message.contains("bad archive"), "{message}");

    // Repaired and redeployed: served again, and the client copies and verifies it.
    for (path, original, _, _) in &originals {
        overwrite(path, original);
    }
    dir.publish("web1", 2, &same);
    dir.publish("web2", 2, &longer);
    server.state.refresh().await.unwrap();
    for (path, _, narinfo, _) in &originals {
        assert_eq!(server.get(narinfo).await.status, 200, "{path}");
        Nix::chroot()
            .copy_and_verify(&server.url(), &pubkey, path, &[])
            .await;
    }
    assert!(
        server
            .get("/metrics")
            .await
            .text()
            .contains("bento_cache_broken_paths 0"),
        "no path is marked broken any more"
    );
}
