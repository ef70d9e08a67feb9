//! What the whole-closure transfer brings is judged by Nix as any copy is: a NAR with one
//! byte flipped, or narinfos signed by another key of the same name, are refused (exit 4,
//! nothing activated, a `refused` report), and nothing refused stays staged. Positive
//! control: the same server with honest entries is applied.
//!
//! The server here speaks the transfer's two routes (`bento::transfer::wire`) from a binary
//! cache that Nix itself wrote (`nix copy --to file://…?secret-key=…`), altered by the test:
//! a cache that lies, which `bento serve` cannot be made to be. Real agent, real Nix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::routing::post;
use bento::nix::SecretKey;
use bento::nix::store::{self, StorePath};
use bento::transfer::wire::{self, ClosureEntry};
use bento::transfer::{CLOSURE_PATH, NARS_PATH, order};
use bytes::Bytes;
use harness::fake::Behaviour;
use harness::scene::{OneHost, agent_once};

/// One path as the lying server sends it.
struct Entry {
    path: StorePath,
    refs: std::collections::BTreeSet<StorePath>,
    narinfo: Vec<u8>,
    file: Vec<u8>,
}

/// The entries of `top`'s closure from a `file://` cache Nix writes, signed by `key`,
/// uncompressed; `alter` may change the file of `top`.
fn entries(
    scratch: &Path,
    top: &str,
    key: &SecretKey,
    alter: impl FnOnce(&mut Vec<u8>),
) -> Vec<Entry> {
    let dir = scratch.join(format!("cache-{}", harness::nix::nonce()));
    harness::nix::signed_file_cache(&dir, key, top);
    let mut alter = Some(alter);
    let mut out: Vec<Entry> = harness::nix::closure(top)
        .iter()
        .map(|p| {
            let path = store::parse(p).unwrap();
            let narinfo =
                std::fs::read(dir.join(format!("{}.narinfo", store::hash_part(&path)))).unwrap();
            let ni = bento::nix::narinfo::parse(&narinfo).unwrap();
            let mut file = std::fs::read(dir.join(ni.url())).unwrap();
            if p == top {
                (alter.take().unwrap())(&mut file);
            }
            Entry {
                refs: ni.references().clone(),
                path,
                narinfo,
                file,
            }
        })
        .collect();
    out = order::dependency_order(out, |e| &e.path, |e| &e.refs);
    out
}

/// Serves `entries` on the transfer's routes at `ip`; returns the cache URL.
async fn serve(ip: &str, entries: Vec<Entry>) -> String {
    let entries: Arc<HashMap<StorePath, Entry>> =
        Arc::new(entries.into_iter().map(|e| (e.path.clone(), e)).collect());
    let for_closure = entries.clone();
    let closure = move |body: Bytes| {
        let entries = for_closure.clone();
        async move {
            let _top = wire::parse_paths(&body, 1).unwrap();
            let all: Vec<&Entry> = entries.values().collect();
            let all = order::dependency_order(all, |e| &e.path, |e| &e.refs);
            let list: Vec<ClosureEntry> = all
                .iter()
                .map(|e| ClosureEntry {
                    path: e.path.clone(),
                    file_size: e.file.len() as u64,
                    nar_size: e.file.len() as u64,
                })
                .collect();
            wire::encode_closure(&list)
        }
    };
    let nars = move |body: Bytes| {
        let entries = entries.clone();
        async move {
            let asked = wire::parse_paths(&body, 1000).unwrap();
            let chosen: Vec<&Entry> = asked.iter().map(|p| &entries[p]).collect();
            let chosen = order::dependency_order(chosen, |e| &e.path, |e| &e.refs);
            let mut out = wire::nars_start();
            for e in &chosen {
                out.extend(wire::entry_header(e.narinfo.len(), e.file.len() as u64));
                out.extend(&e.narinfo);
                out.extend(&e.file);
            }
            out.extend(wire::nars_end(chosen.len() as u64));
            out
        }
    };
    let app = axum::Router::new()
        .route(CLOSURE_PATH, post(closure))
        .route(NARS_PATH, post(nars));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Points the agent at a lying server with `entries`, runs it, and checks the refusal.
async fn refused(t: &mut OneHost, entries: Vec<Entry>, why: &str) {
    let url = serve(&t.net.server_ip(), entries).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let before = t.server.final_reports("web1").len();
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 4, "{log}");
    assert!(t.host.activations().is_empty(), "nothing activated");
    assert_eq!(t.host.running().as_deref(), Some(t.systems[0].as_str()));
    let reports = t.server.final_reports("web1");
    assert_eq!(reports.len(), before + 1);
    let r = reports.last().unwrap();
    assert_eq!(r.outcome.as_str(), "refused", "{r:?}");
    assert!(
        r.log.contains("in one request"),
        "the transfer ran: {}",
        r.log
    );
    assert!(r.log.contains(why), "{why:?} not in {}", r.log);
    assert!(
        !t.host.root.join("agent-state/transfer").exists(),
        "nothing refused stays staged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_transfer_brings_is_verified_by_nix() {
    let Some(mut t) =
        OneHost::start("lyingtransfer", &[Behaviour::Good, Behaviour::Good], "").await
    else {
        return;
    };
    let new = t.publish(2).await;
    let scratch = t.server.dir.scratch().to_owned();
    let key = t.server.dir.key.clone();

    let flipped = entries(&scratch, &new, &key, |b| {
        let i = b.len() / 2;
        b[i] ^= 0x20;
    });
    refused(&mut t, flipped, "hash mismatch").await;

    // Same key name as the fleet's, other bytes.
    let impostor = SecretKey::generate(key.name()).unwrap();
    let foreign = entries(&scratch, &new, &impostor, |_| {});
    refused(&mut t, foreign, "lacks a valid signature").await;

    // Positive control: honest entries from the same server are applied.
    let honest = entries(&scratch, &new, &key, |_| {});
    let url = serve(&t.net.server_ip(), honest).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
}
