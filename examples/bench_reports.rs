//! Report uploads from many agents at once against a running `bento serve`: the client side
//! of `scripts/bench-reports.sh` (prints figures, asserts nothing).
//!
//! Every host of HOSTS_FILE (one name a line; its private key is KEYS_DIR/<name>) opens one
//! SFTP session with our agent's client, as an agent with instant updates keeps one; once
//! all are open the driver prints `READY`, and then every session uploads reports (4 KiB
//! each, new names, as agents do after a fleet-wide deploy) back to back for SECONDS.
//! Connections refused by the server's per-address limit on logins in progress (all
//! clients share 127.0.0.1 here) are retried.
//!
//! Usage: bench_reports ADDR PINNED_KEY KEYS_DIR HOSTS_FILE SECONDS

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bento::sftp::client::{Session, connect};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, pinned, keys, hosts, seconds] = args.as_slice() else {
        bail!("usage: bench_reports ADDR PINNED_KEY KEYS_DIR HOSTS_FILE SECONDS");
    };
    let hosts: Vec<String> = std::fs::read_to_string(hosts)
        .with_context(|| format!("cannot read {hosts}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(addr, pinned, PathBuf::from(keys), hosts, seconds))
}

async fn open(addr: &str, pinned: &str, keys: &std::path::Path, host: &str) -> Session {
    loop {
        match connect(addr, host, &keys.join(host), pinned).await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run(
    addr: &str,
    pinned: &str,
    keys: PathBuf,
    hosts: Vec<String>,
    seconds: u64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let sessions: Vec<Session> =
        futures::future::join_all(hosts.iter().map(|h| open(addr, pinned, &keys, h))).await;
    eprintln!(
        "{} sessions open in {:.1} s",
        sessions.len(),
        t0.elapsed().as_secs_f64()
    );
    println!("READY");
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let body = vec![b' '; 4096];
    // Reports are write-once: names of this run differ from an earlier run's.
    let run = std::process::id();
    let end = Instant::now() + Duration::from_secs(seconds);
    let t1 = Instant::now();
    futures::future::join_all(sessions.iter().enumerate().map(|(i, s)| {
        let (done, failed, body) = (done.clone(), failed.clone(), &body);
        async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                match s
                    .upload_report(&format!("bench-{run}-{i}-{n}.json"), body)
                    .await
                {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }))
    .await;
    let wall = t1.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    println!(
        "uploads: {done} in {wall:.1} s ({:.0}/s) from {} sessions, {} failed",
        done as f64 / wall,
        sessions.len(),
        failed.load(Ordering::Relaxed)
    );
    for s in sessions {
        s.close().await;
    }
    Ok(())
}
