//! 64 concurrent keep-alive clients for 10 s, mixing narinfo hits and misses, whole and
//! ranged NARs (zstd and plain): every response is the expected one, nothing fails, and
//! the process's resident memory grows by a bounded amount (NAR streams are chunked
//! through small channels and limited by a semaphore, never buffered whole).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::http::Conn;
use harness::nix::{build, build_fan, closure, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

const CLIENTS: usize = 64;
const DURATION: Duration = Duration::from_secs(10);
const RSS_GROWTH_LIMIT_KIB: u64 = 256 * 1024;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_for_ten_seconds() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let top = build_fan(&salt, 40, 64 * 1024);
    let big = build(&format!(
        r#"mk "bento-big-{salt}" "head -c 4000000 /dev/urandom > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &top);
    dir.publish("web2", 1, &big);
    let mut config = dir.cache_config();
    config.max_nar_streams = 16;
    let server = CacheServer::start(config).await;

    // What each kind of request must answer: (target, status, body length).
    let mut targets: Vec<(String, u16, usize, Option<&str>)> = Vec::new();
    let mut paths = closure(&top);
    paths.push(big.clone());
    for p in &paths {
        let ni = server.get(&format!("/{}.narinfo", hash_part(p))).await;
        assert_eq!(ni.status, 200);
        targets.push((
            format!("/{}.narinfo", hash_part(p)),
            200,
            ni.body.len(),
            None,
        ));
        let file_size: usize = ni.field("FileSize").unwrap().parse().unwrap();
        let nar_size: usize = ni.field("NarSize").unwrap().parse().unwrap();
        targets.push((
            format!("/{}", ni.field("URL").unwrap()),
            200,
            file_size,
            None,
        ));
        let plain = format!(
            "/nar/{}.nar",
            ni.field("NarHash").unwrap().trim_start_matches("sha256:")
        );
        targets.push((plain.clone(), 200, nar_size, None));
        targets.push((plain, 206, 1000, Some("bytes=100-1099")));
    }
    for i in 0..20 {
        targets.push((format!("/{:032}.narinfo", i), 404, 0, None));
    }
    let targets = Arc::new(targets);
    let rss_before = rss_kib();

    let ok = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + DURATION;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (targets, ok, addr) = (targets.clone(), ok.clone(), server.addr);
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut i = client * 7;
            while Instant::now() < deadline {
                let (target, status, len, range) = &targets[i % targets.len()];
                i += 1;
                let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
                let r = conn
                    .request("GET", target, &headers)
                    .await
                    .map_err(|e| format!("GET {target}: {e}"))?;
                if r.status != *status || (*status != 404 && r.body.len() != *len) {
                    return Err(format!(
                        "GET {target}: status {} with {} bytes, expected {status} with {len}",
                        r.status,
                        r.body.len()
                    ));
                }
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            errors.push(e);
        }
    }
    let rss_after = rss_kib();
    let done = ok.load(Ordering::Relaxed);
    eprintln!(
        "{done} requests in {DURATION:?} by {CLIENTS} clients; RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        errors.is_empty(),
        "{} clients failed, first: {}",
        errors.len(),
        errors[0]
    );
    assert!(done > CLIENTS as u64, "only {done} requests completed");
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // A producer ends just after its client read the last byte: give them a moment.
    let metrics = server
        .wait_for("/metrics", Duration::from_secs(5), |r| {
            r.text().contains("bento_cache_nar_streams_in_flight 0")
        })
        .await
        .text();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
}
