//! A cache that is not `bento serve` is copied from by parallel substitution, judged as
//! strictly as the transfer: for a `file://` cache carried to an air-gapped host and for a
//! plain HTTP binary cache (a static file server over a directory Nix wrote, which has no
//! transfer route), a NAR with one byte flipped and narinfos signed by another key of the
//! fleet key's name are refused (exit 4, nothing activated, a `refused` report), and the
//! honest cache is applied (positive control). The transfer's own refusals are
//! `agent_refuses_a_tampered_transfer`. Also: the methods forced by `copy_method`.
//! Real agent, real Nix 2.8 (`nix-store --realise`), real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use bento::nix::SecretKey;
use harness::fake::Behaviour;
use harness::scene::{OneHost, agent_once};

/// A binary cache of `path`'s closure written by Nix into `dir` (uncompressed), signed by
/// `key`; `alter` may change the bytes of `path`'s own NAR.
fn file_cache(dir: &Path, key: &SecretKey, path: &str, alter: impl FnOnce(&mut Vec<u8>)) {
    harness::nix::signed_file_cache(dir, key, path);
    let narinfo =
        std::fs::read_to_string(dir.join(format!("{}.narinfo", harness::nix::hash_part(path))))
            .unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let nar = dir.join(url);
    let mut bytes = std::fs::read(&nar).unwrap();
    alter(&mut bytes);
    std::fs::write(&nar, bytes).unwrap();
}

/// A static file server over `dir` at `ip`, as nginx or an object store would be: `GET`
/// of a file, 404 for a missing one, 405 for any other method (the transfer's `POST`).
async fn static_server(ip: &str, dir: PathBuf) -> String {
    async fn file(State(dir): State<PathBuf>, method: Method, uri: Uri) -> (StatusCode, Vec<u8>) {
        if method != Method::GET {
            return (StatusCode::METHOD_NOT_ALLOWED, b"GET only\n".to_vec());
        }
        let rel = uri.path().trim_start_matches('/');
        if rel.split('/').any(|c| c.is_empty() || c == "..") {
            return (StatusCode::NOT_FOUND, Vec::new());
        }
        match std::fs::read(dir.join(rel)) {
            Ok(bytes) => (StatusCode::OK, bytes),
            Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
        }
    }
    let app = axum::Router::new().fallback(file).with_state(dir);
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Where the test's cache is.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// `file://` (a cache carried to the host).
    File,
    /// A static HTTP server (a plain binary cache).
    Plain,
}

/// Writes a cache of system 2 (signed by `key`, altered by `alter`) as `source`, points the
/// agent at it, and returns the URL.
async fn cache_of(
    t: &mut OneHost,
    source: Source,
    key: &SecretKey,
    alter: impl FnOnce(&mut Vec<u8>),
    extra: &str,
) -> String {
    let dir = t
        .server
        .dir
        .scratch()
        .join(format!("cache-{}", harness::nix::nonce()));
    file_cache(&dir, key, &t.systems[1], alter);
    let url = match source {
        Source::File => format!("file://{}", dir.display()),
        Source::Plain => static_server(&t.net.server_ip(), dir).await,
    };
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\"\n{extra}"));
    url
}

/// Runs the agent on a cache that lies: refused, by substitution, with `why` in its log.
async fn refused(t: &OneHost, source: Source, why: &str) {
    let before = t.server.final_reports("web1").len();
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 4, "{source:?}: {log}");
    assert!(t.host.activations().is_empty(), "nothing activated");
    assert_eq!(t.host.running().as_deref(), Some(t.systems[0].as_str()));
    let reports = t.server.final_reports("web1");
    assert_eq!(reports.len(), before + 1);
    let r = reports.last().unwrap();
    assert_eq!(r.outcome.as_str(), "refused", "{source:?}: {r:?}");
    assert!(
        r.log.contains("substituting the closure from"),
        "{source:?}: copied by substitution: {}",
        r.log
    );
    assert!(r.log.contains(why), "{source:?}: {why:?} not in {}", r.log);
}

/// Tampered NAR, foreign signature, then the honest cache, from `source`.
async fn refusals_and_control(salt: &str, source: Source) {
    let Some(mut t) = OneHost::start(salt, &[Behaviour::Good, Behaviour::Good], "").await else {
        return;
    };
    let key = t.server.dir.key.clone();
    t.publish(2).await;

    cache_of(
        &mut t,
        source,
        &key,
        |b| {
            let i = b.len() / 2;
            b[i] ^= 0x20;
        },
        "",
    )
    .await;
    refused(&t, source, "hash mismatch").await;

    // Same key name as the fleet's, other bytes.
    let impostor = SecretKey::generate(key.name()).unwrap();
    cache_of(&mut t, source, &impostor, |_| {}, "").await;
    refused(
        &t,
        source,
        "is not signed by any of the keys in 'trusted-public-keys'",
    )
    .await;

    // Positive control: the same kind of cache, honest, is applied.
    let url = cache_of(&mut t, source, &key, |_| {}, "").await;
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{source:?}: {log}");
    assert_eq!(t.host.running().as_deref(), Some(t.systems[1].as_str()));
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "applied", "{r:?}");
    assert!(
        r.log
            .contains(&format!("substituting the closure from {url}")),
        "{}",
        r.log
    );
    if let Source::Plain = source {
        assert!(
            r.log
                .contains("copying by substitution instead: the cache offers no closure transfer")
                && r.log.contains("405"),
            "the transfer was tried first and the 405 taken for a plain cache: {}",
            r.log
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cache_is_substituted_from_and_judged_like_the_transfer() {
    refusals_and_control("subst-file", Source::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_cache_is_substituted_from_and_judged_like_the_transfer() {
    refusals_and_control("subst-plain", Source::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_air_gapped_host_applies_its_release_from_a_file_cache() {
    let Some(mut t) = OneHost::start("airgap", &[Behaviour::Good, Behaviour::Good], "").await
    else {
        return;
    };
    let new = t.publish(2).await;
    let key = t.server.dir.key.clone();
    cache_of(&mut t, Source::File, &key, |_| {}, "").await;
    let (code, log) = t.agent_once().await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    assert_eq!(t.host.activations().len(), 1, "{log}");
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "applied", "{r:?}");
    assert!(!r.log.contains("in one request"), "no transfer: {}", r.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_method_forced_by_copy_method_is_the_only_one_tried() {
    let Some(mut t) = OneHost::start("forced", &[Behaviour::Good, Behaviour::Good], "").await
    else {
        return;
    };
    let new = t.publish(2).await;
    let key = t.server.dir.key.clone();

    // Only the transfer, from a plain cache: a failed copy that says why, not a fallback.
    cache_of(
        &mut t,
        Source::Plain,
        &key,
        |_| {},
        "copy_method = \"transfer\"",
    )
    .await;
    let (code, log) = t.agent_once().await;
    assert_eq!(code, 5, "{log}");
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "copy-failed", "{r:?}");
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("no closure transfer") && reason.contains("allows no other method"),
        "{reason}"
    );
    assert!(!r.log.contains("substituting"), "{}", r.log);
    assert!(t.host.activations().is_empty());

    // Only substitution, from bento serve itself: applied without the transfer.
    t.config = t
        .server
        .agent_config(&t.host, "copy_method = \"substitute\"\nsubstitute_jobs = 4");
    let (code, log) = t.agent_once().await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    let r = t.server.final_reports("web1").pop().unwrap();
    assert!(
        r.log.contains(&format!(
            "substituting the closure from {}/ (4 paths at once)",
            t.server.cache.url()
        )),
        "{}",
        r.log
    );
    assert!(!r.log.contains("in one request"), "no transfer: {}", r.log);
}
