//! The emulated wide-area link as a program, for `scripts/bench-wan.sh`: relays each
//! `--forward LISTEN=UPSTREAM` through one link (shared bandwidth), printing a line when a
//! connection opens and when it closes (the benchmark counts TCP connections from them).
//! The link itself is `tests/link/mod.rs`, the same code the tests check.
//!
//! Usage: wan_link --rtt-ms MS [--rate-mbit MBIT] [--window BYTES] [--no-slow-start]
//!                 --forward LISTEN=UPSTREAM [--forward LISTEN=UPSTREAM ...]
//! Prints `ready` once every relay listens; runs until killed.

#[path = "../tests/link/mod.rs"]
mod link;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};

const USAGE: &str = "usage: wan_link --rtt-ms MS [--rate-mbit MBIT] [--window BYTES] \
                     [--no-slow-start] --forward LISTEN=UPSTREAM [--forward ...]";

struct Args {
    spec: link::Spec,
    forwards: Vec<(SocketAddr, SocketAddr)>,
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut spec = link::Spec::new(Duration::ZERO);
    let mut forwards = Vec::new();
    let mut rtt = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-slow-start" {
            spec = spec.slow_start(false);
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--rtt-ms" => rtt = Some(value.parse::<f64>().context("--rtt-ms")?),
            "--rate-mbit" => spec = spec.rate_mbit(value.parse().context("--rate-mbit")?),
            "--window" => spec = spec.window(value.parse().context("--window")?),
            "--forward" => {
                let (listen, upstream) = value
                    .split_once('=')
                    .with_context(|| format!("--forward {value}: expected LISTEN=UPSTREAM"))?;
                forwards.push((
                    listen
                        .parse()
                        .with_context(|| format!("listen address {listen}"))?,
                    upstream
                        .parse()
                        .with_context(|| format!("upstream address {upstream}"))?,
                ));
            }
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    let Some(rtt) = rtt else {
        bail!("--rtt-ms is required; {USAGE}")
    };
    if forwards.is_empty() {
        bail!("at least one --forward is required; {USAGE}");
    }
    spec.rtt = Duration::from_secs_f64(rtt / 1e3);
    Ok(Args { spec, forwards })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args { spec, forwards } = parse(&args)?;
    let link = link::Link::with_events(spec, |event| println!("{event}"));
    println!("link: {spec}");
    let mut relays = Vec::new();
    for (listen, upstream) in forwards {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("relay {listen} -> {upstream}");
        relays.push(link.relay(listener, upstream));
    }
    println!("ready");
    for relay in relays {
        relay.wait().await;
    }
    Ok(())
}
