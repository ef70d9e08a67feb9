//! What the whole-closure transfer brings is judged by Nix as any copy is: a NAR with one
//! byte flipped, or narinfos signed by another key of the same name, are refused (exit 4,
//! nothing activated, a `refused` report), and nothing refused stays staged; so by the
//! delivery, by the two-request form, and for a large entry imported as it arrives (through
//! a pipe). Positive controls: the same server with honest entries is applied.
//!
//! The server here speaks the transfer's routes (`bento::transfer::wire`, `deliver`) from a
//! binary cache that Nix itself wrote (`nix copy --to file://…?secret-key=…`), altered by
//! the test: a cache that lies, which `bento serve` cannot be made to be. Real agent, real
//! Nix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::routing::post;
use bento::nix::SecretKey;
use bento::nix::store::{self, StorePath};
use bento::transfer::wire::{self, ClosureEntry};
use bento::transfer::{CLOSURE_PATH, DELIVER_PATH, NARS_PATH, deliver, order};
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
    entries_altering(scratch, top, top, key, alter)
}

/// [`entries`], `alter` changing the file of `target` (a path of the closure).
fn entries_altering(
    scratch: &Path,
    top: &str,
    target: &str,
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
            if p == target {
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

/// The NAR stream of `chosen`.
fn stream(chosen: &[&Entry]) -> Vec<u8> {
    let mut out = wire::nars_start();
    for e in chosen {
        out.extend(wire::entry_header(e.narinfo.len(), e.file.len() as u64));
        out.extend(&e.narinfo);
        out.extend(&e.file);
    }
    out.extend(wire::nars_end(chosen.len() as u64));
    out
}

/// Serves `entries` on the transfer's routes at `ip` (the delivery's too when `delivery`);
/// returns the cache URL.
async fn serve(ip: &str, entries: Vec<Entry>, delivery: bool) -> String {
    serve_cutting(ip, entries, delivery, Cut::No).await
}

/// [`serve`]; with `cut`, a delivery answer holding an entry of 16 MiB or more ends in the
/// middle of it (a server gone mid-entry).
/// Where a lying server's delivery answer holding an entry of 16 MiB or more ends.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Whole.
    No,
    /// Halfway: in the middle of that entry, while Nix reads it from the pipe.
    Half,
    /// 64 KiB after its first line: the start of that entry, which the agent has written
    /// into the pipe's buffer before the `nix copy` reading the pipe has even opened it.
    Early,
}

async fn serve_cutting(ip: &str, entries: Vec<Entry>, delivery: bool, cut: Cut) -> String {
    let entries: Arc<HashMap<StorePath, Entry>> =
        Arc::new(entries.into_iter().map(|e| (e.path.clone(), e)).collect());
    let for_closure = entries.clone();
    let for_delivery = entries.clone();
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
            stream(&chosen)
        }
    };
    let delivered = move |body: Bytes| {
        let entries = for_delivery.clone();
        async move {
            let asked = deliver::parse_request(&body).unwrap();
            let all: Vec<&Entry> = entries
                .values()
                .filter(|e| !asked.have.contains(&deliver::hint(&e.path)))
                .collect();
            let all = order::dependency_order(all, |e| &e.path, |e| &e.refs);
            let sizes: Vec<u64> = all.iter().map(|e| e.file.len() as u64).collect();
            let mine: Vec<&Entry> = all
                .iter()
                .zip(deliver::split(&sizes, asked.shards))
                .filter(|(_, s)| *s == asked.shard)
                .map(|(e, _)| *e)
                .collect();
            let mut out = deliver::encode_head(&deliver::Head {
                shard_entries: mine.len() as u64,
                entries: all.len() as u64,
                file_bytes: sizes.iter().sum(),
                nar_bytes: sizes.iter().sum(),
            });
            let big = mine.iter().any(|e| e.file.len() >= 16 << 20);
            let head = out.len();
            out.extend(stream(&mine));
            match cut {
                Cut::Half if big => out.truncate(out.len() / 2),
                Cut::Early if big => out.truncate(head + 64 * 1024),
                _ => {}
            }
            out
        }
    };
    let mut app = axum::Router::new()
        .route(CLOSURE_PATH, post(closure))
        .route(NARS_PATH, post(nars));
    if delivery {
        app = app.route(DELIVER_PATH, post(delivered));
    }
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Points the agent at a lying server with `entries` (`delivery`: speaking the delivery
/// too), runs it, and checks the refusal.
async fn refused(t: &mut OneHost, entries: Vec<Entry>, why: &str, delivery: bool) {
    let url = serve(&t.net.server_ip(), entries, delivery).await;
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
    let ran = if delivery {
        "connections bring the"
    } else {
        "in one request"
    };
    assert!(r.log.contains(ran), "the transfer ran ({ran}): {}", r.log);
    assert!(r.log.contains(why), "{why:?} not in {}", r.log);
    for staging in ["agent-state/transfer", "run/bento-agent/transfer"] {
        assert!(
            !t.host.root.join(staging).exists(),
            "nothing refused stays staged ({staging})"
        );
    }
}

/// Points the agent at a server with honest `entries` (the delivery too) and checks that
/// `new` is applied.
async fn applied(t: &mut OneHost, entries: Vec<Entry>, new: &str) {
    let url = serve(&t.net.server_ip(), entries, true).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let (code, log) = agent_once(&t.host, &t.config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new));
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
    refused(&mut t, flipped, "hash mismatch", true).await;
    // The two-request form, from a server without the delivery.
    let flipped = entries(&scratch, &new, &key, |b| {
        let i = b.len() / 2;
        b[i] ^= 0x20;
    });
    refused(&mut t, flipped, "hash mismatch", false).await;

    // Same key name as the fleet's, other bytes.
    let impostor = SecretKey::generate(key.name()).unwrap();
    let foreign = entries(&scratch, &new, &impostor, |_| {});
    refused(&mut t, foreign, "lacks a valid signature", true).await;
    let foreign = entries(&scratch, &new, &impostor, |_| {});
    refused(&mut t, foreign, "lacks a valid signature", false).await;

    // Positive control: honest entries from the same server are applied.
    let honest = entries(&scratch, &new, &key, |_| {});
    applied(&mut t, honest, &new).await;
}

/// A host whose generation 2 brings an etc path of 20 MiB referring to nothing (so the
/// agent imports it through a pipe while it arrives), and that generation's path.
async fn with_a_large_entry(salt: &str) -> Option<(OneHost, String)> {
    let t = OneHost::start_sized(salt, &[(Behaviour::Good, 0), (Behaviour::Good, 20)], "").await?;
    let new = t.publish(2).await;
    Some((t, new))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_entry_imported_as_it_arrives_is_verified_by_nix() {
    // Generation 2's etc path holds 20 MiB and refers to nothing: the agent imports it
    // through a pipe while it arrives.
    let Some((mut t, new)) = with_a_large_entry("lyingpipe").await else {
        return;
    };
    let big = harness::nix::closure(&new)
        .into_iter()
        .find(|p| p.ends_with("-web1-etc-2"))
        .unwrap();
    let valid = |t: &OneHost| {
        t.host
            .command(Path::new("nix-store"), &["--check-validity", &big])
            .status()
            .unwrap()
            .success()
    };
    let scratch = t.server.dir.scratch().to_owned();
    let key = t.server.dir.key.clone();

    let flipped = entries_altering(&scratch, &new, &big, &key, |b| {
        let i = b.len() - 1000;
        b[i] ^= 0x20;
    });
    refused(&mut t, flipped, "hash mismatch", true).await;
    // Nix may have unpacked it before the hash failed; it is not valid in the store.
    assert!(!valid(&t), "{big} is not valid after the refusal");
    let impostor = SecretKey::generate(key.name()).unwrap();
    let foreign = entries(&scratch, &new, &impostor, |_| {});
    refused(&mut t, foreign, "lacks a valid signature", true).await;

    // Positive control: the honest entry is imported as it arrives, and applied.
    let honest = entries(&scratch, &new, &key, |_| {});
    applied(&mut t, honest, &new).await;
    let r = t.server.final_reports("web1").pop().unwrap();
    assert!(
        r.log.contains(&format!("imported {big} as it arrived")),
        "{}",
        r.log
    );
    assert!(valid(&t), "{big} is valid once applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_entry_cut_while_piped_is_fetched_again_not_refused() {
    // As above, but the delivery stops in the middle of the 20 MiB entry Nix is reading from
    // the pipe: Nix sees a truncated NAR, which is the cut's fault, not the cache's.
    cut_in_the_large_entry("cutpipe", Cut::Half).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_entry_cut_before_nix_opens_the_pipe_leaves_no_copy_waiting() {
    // The delivery stops 64 KiB into the 20 MiB entry: the agent sees the cut before the
    // `nix copy` it started for that entry has opened the pipe. That copy must not wait for
    // a writer that will never come (an hour, the copy's deadline).
    cut_in_the_large_entry("earlycut", Cut::Early).await;
}

/// A delivery cut (`cut`) in its 20 MiB entry: the agent reports the cut and, at once, the
/// two-request form brings the rest and the new system is applied.
async fn cut_in_the_large_entry(salt: &str, cut: Cut) {
    let Some((mut t, new)) = with_a_large_entry(salt).await else {
        return;
    };
    let scratch = t.server.dir.scratch().to_owned();
    let key = t.server.dir.key.clone();
    let honest = entries(&scratch, &new, &key, |_| {});
    let url = serve_cutting(&t.net.server_ip(), honest, true, cut).await;
    t.config = t
        .server
        .agent_config(&t.host, &format!("cache_url = \"{url}\""));
    let (code, log) = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        agent_once(&t.host, &t.config),
    )
    .await
    .expect("the agent still waits for the copy reading the pipe");
    assert_eq!(code, 0, "{log}");
    assert_eq!(t.host.running().as_deref(), Some(new.as_str()));
    let r = t.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "applied", "{r:?}");
    assert!(
        r.log.contains("the stream ended inside an entry"),
        "the pipe was cut: {}",
        r.log
    );
    assert!(
        r.log.contains("in one request"),
        "the two-request form followed: {}",
        r.log
    );
}
