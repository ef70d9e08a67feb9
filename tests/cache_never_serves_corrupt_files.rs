//! A compressed NAR corrupted or lost on disk is never served as if it were good.
//!
//! What happens, and why Nix then succeeds: the serving path compares the file's identity
//! (inode, size, mtime, ctime) with the one it had when its hash was verified; an altered
//! file is answered 503 (which Nix retries) and reported to the refresher. The refresher
//! advertises the plain NAR (`Compression: none`) while the file is not verified, hashes
//! the file, finds it corrupt, deletes it and compresses again. Recompression is
//! deterministic, so the same FileHash (and URL) comes back. When recompression is
//! impossible, the plain NAR stays advertised and Nix copies that instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{Seek as _, SeekFrom, Write as _};
use std::time::Duration;

use bento::cache::request::Endpoint;
use bento::nix::hash::Sha256Hash;
use harness::nix::{Nix, build, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

/// A path of this test's own, published for web1 and served.
async fn one_path_served() -> (String, ServerDir, CacheServer) {
    let salt = nonce();
    let path = build(&format!(
        r#"mk "bento-corrupt-{salt}" "seq 1 200000 > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &path);
    let server = CacheServer::start(dir.cache_config()).await;
    (path, dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_zstd_file_is_refused_then_repaired_and_nix_succeeds() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let (path, dir, server) = one_path_served().await;
    let narinfo_url = format!("/{}.narinfo", hash_part(&path));
    let before = server.get(&narinfo_url).await;
    let zst_url = format!("/{}", before.field("URL").unwrap());
    let file_hash = before.field("FileHash").unwrap();
    let file = dir.state.join("cache").join(before.field("URL").unwrap());
    assert!(file.exists(), "{}", file.display());

    // Flip bytes in the middle of the file, in place (same inode, same size).
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(b"CORRUPTION").unwrap();
    }
    let r = server.get(&zst_url).await;
    assert_eq!(r.status, 503, "an altered file must not be served");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(!r.body.windows(10).any(|w| w == b"CORRUPTION"));

    // The refresher re-hashes it, recompresses, and the same file comes back.
    let after = server
        .wait_for(&zst_url, Duration::from_secs(10), |r| r.status == 200)
        .await;
    assert_eq!(
        format!("sha256:{}", Sha256Hash::of(&after.body).nix32_digest()),
        file_hash
    );
    let ni = server.get(&narinfo_url).await;
    assert_eq!(ni.field("FileHash"), Some(file_hash));

    let pubkey = dir.key.public().to_string();
    Nix::chroot()
        .copy_and_verify(&server.url(), &pubkey, &path, &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_file_that_cannot_be_remade_falls_back_to_the_plain_nar() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let (path, dir, server) = one_path_served().await;
    let narinfo_url = format!("/{}.narinfo", hash_part(&path));
    let before = server.get(&narinfo_url).await;
    assert_eq!(before.field("Compression").as_deref(), Some("zstd"));
    let zst_url = format!("/{}", before.field("URL").unwrap());

    // The compressed files are lost and the directory cannot be recreated.
    let nar_dir = dir.state.join("cache/nar");
    std::fs::remove_dir_all(&nar_dir).unwrap();
    std::fs::write(&nar_dir, b"not a directory").unwrap();
    assert_eq!(server.get(&zst_url).await.status, 503);

    let ni = server
        .wait_for(&narinfo_url, Duration::from_secs(10), |r| {
            r.field("Compression").as_deref() == Some("none")
        })
        .await;
    let nar_hash = ni.field("NarHash").unwrap();
    assert_eq!(
        ni.field("URL"),
        Some(format!(
            "nar/{}.nar",
            nar_hash.trim_start_matches("sha256:")
        ))
    );
    assert_eq!(ni.field("FileHash"), None);
    assert_eq!(
        ni.field("Sig"),
        before.field("Sig"),
        "same fingerprint, same signature"
    );

    let pubkey = dir.key.public().to_string();
    Nix::chroot()
        .copy_and_verify(&server.url(), &pubkey, &path, &[])
        .await;
    assert!(server.state.metrics().requests_total(Endpoint::Nar, 200) >= 1);

    // Once the directory can be written again, a refresh brings the same file back.
    std::fs::remove_file(&nar_dir).unwrap();
    let report = server.state.refresh().await.unwrap();
    assert_eq!(report.compressed, 1);
    let ni = server.get(&narinfo_url).await;
    assert_eq!(ni.field("Compression").as_deref(), Some("zstd"));
    assert_eq!(ni.field("FileHash"), before.field("FileHash"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_corrupted_while_the_server_was_down_is_caught_at_load() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let (path, dir, first) = one_path_served().await;
    let ni = first.get(&format!("/{}.narinfo", hash_part(&path))).await;
    drop(first);
    let file = dir.state.join("cache").join(ni.field("URL").unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    // A new server does not trust the file it finds: it hashes it, and remakes it.
    let state = bento::cache::Cache::new(dir.cache_config()).unwrap();
    let report = state.refresh().await.unwrap();
    assert_eq!((report.reused_files, report.compressed), (0, 1));
    let good = std::fs::read(&file).unwrap();
    assert_eq!(
        format!("sha256:{}", Sha256Hash::of(&good).nix32_digest()),
        ni.field("FileHash").unwrap()
    );
    // And an intact file is reused, not recompressed.
    let again = bento::cache::Cache::new(dir.cache_config()).unwrap();
    let report = again.refresh().await.unwrap();
    assert_eq!((report.reused_files, report.compressed), (1, 0));
}
