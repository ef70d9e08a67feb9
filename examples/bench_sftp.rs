//! Benchmark of the SFTP server (prints figures, asserts nothing). Run it with
//! `scripts/bench-sftp.sh`, which builds it in release mode and pins the processes.
//!
//! The server runs in its own process on a single-threaded tokio runtime, pinned to one CPU
//! (`--server-cpu`), so its CPU time and RSS are its own; this driver process runs the
//! clients (our Rust agent client) on the other CPU. Phases:
//!
//! 1. polls: `--clients` concurrent hosts, each in a loop: TCP connect, SSH handshake,
//!    public-key auth, SFTP start, read `/release`, disconnect. Polls per wall second, server
//!    CPU per poll, and so how many hosts polling once a minute one server core carries.
//! 2. reads on open sessions: the same hosts reading `/release` in a loop on kept sessions.
//! 3. idle sessions: server RSS before and after `--idle` open SFTP sessions, then with each
//!    of them waiting on `/watch` (the instant-update mode), per session.
//! 4. notify latency: every host waits on `/watch`; new releases are written and the server
//!    is told (as `bento deploy` would); time until each agent has the new generation. Then
//!    the same without telling the server (release-file poll, `--poll-ms`).
//!
//! Server role (internal): `bench_sftp server <state_dir> <hosts_file>`; prints
//! `READY <port> <pinned key>`, then reads `notify <host>`, `notify-all`, `metrics` lines.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bento::nix::cmd::Command;
use bento::sftp::server::{HostKey, HostKeys, Sessions, SftpConfig, serve};
use clap::Parser;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients (one host each) in the poll and read phases.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Idle sessions opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// CPU the server process is pinned to (with taskset), if any.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Release-file poll interval of the server, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    #[arg(hide = true, num_args = 0..)]
    role: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.role.first().map(String::as_str) == Some("server") {
        let [_, state_dir, hosts_file] = args.role.as_slice() else {
            bail!("usage: bench_sftp server STATE_DIR HOSTS_FILE");
        };
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(server(
                PathBuf::from(state_dir),
                PathBuf::from(hosts_file),
                args.poll_ms,
            ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(driver(args))
}

// ---------------------------------------------------------------- server role

async fn server(state_dir: PathBuf, hosts_file: PathBuf, poll_ms: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&hosts_file)?;
    let hosts = HostKeys::parse(text.lines().filter_map(|l| {
        let (host, key) = l.split_once(' ')?;
        Some((host.to_owned(), vec![key.to_owned()]))
    }))?;
    let config = SftpConfig {
        max_sessions: 16_384,
        max_sessions_per_host: 16,
        // Every client of the benchmark comes from 127.0.0.1.
        max_unauthenticated_per_ip: 16_384,
        // Phase 2 reads as fast as it can on each session; the cap would cut it off.
        request_rate: 100_000.0,
        request_burst: 100_000,
        release_poll_interval: Duration::from_millis(poll_ms),
        ..SftpConfig::default()
    };
    let state = Sessions::new(&state_dir, HostKey::generate(), hosts, config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
    println!("READY {port} {}", state.host_key().public_openssh());
    std::io::stdout().flush()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.split_once(' ') {
            Some(("notify", host)) => state.notify_release_changed(host),
            _ if line == "notify-all" => {
                for host in state.hosts().hosts() {
                    state.notify_release_changed(host);
                }
            }
            _ if line == "metrics" => {
                println!("{}", serde_json::to_string(&state.metrics().snapshot())?);
                std::io::stdout().flush()?;
            }
            _ => {}
        }
    }
    shutdown.cancel();
    server.await?;
    Ok(())
}

// ---------------------------------------------------------------- driver

struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pid: u32,
    addr: String,
    pinned: String,
}

impl Server {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// utime + stime of the server process, in seconds.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let after = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / 100.0)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no VmRSS value")?
            .parse()?)
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<String>,
}

impl Fleet {
    fn key(&self, host: &str) -> PathBuf {
        self.dir.path().join("keys").join(host)
    }

    fn write_release(&self, host: &str, generation: u64) -> anyhow::Result<()> {
        let dir = self.dir.path().join("state/publish").join(host);
        std::fs::create_dir_all(&dir)?;
        let path = format!("/nix/store/00000000000000000000000000000000-nixos-system-{host}");
        let key = bento::nix::keys::SecretKey::generate("bench-fleet")?;
        let release = bento::release::Release::sign(host, generation, &path, 1, &key)?;
        let body = release.to_bytes();
        std::fs::write(dir.join(".tmp"), body)?;
        std::fs::rename(dir.join(".tmp"), dir.join("release"))?;
        Ok(())
    }
}

async fn driver(args: Args) -> anyhow::Result<()> {
    let hosts_needed = args.clients.max(args.idle.div_ceil(10));
    let fleet = make_fleet(hosts_needed)?;
    let mut server = start_server(&fleet, &args).await?;
    println!(
        "SFTP server benchmark: {} hosts, server pid {} on {}, single-threaded runtime",
        fleet.hosts.len(),
        server.pid,
        args.server_cpu
            .map_or("any CPU".to_owned(), |c| format!("CPU {c}"))
    );
    let clients = &fleet.hosts[..args.clients.min(fleet.hosts.len())];

    // 1. polls: handshake + auth + read /release + disconnect
    let (polls, errors, wall, cpu) = polls(&fleet, &server, clients, args.seconds).await?;
    let per_core = polls as f64 / cpu.max(0.01);
    println!("\n1. full polls (connect, handshake, auth, SFTP, read /release, disconnect)");
    println!(
        "   {} concurrent clients, {:.1} s: {} polls, {} errors",
        clients.len(),
        wall,
        polls,
        errors
    );
    println!(
        "   {:.0} polls/s wall; server CPU {:.1} s ({:.0}% of one core)",
        polls as f64 / wall,
        cpu,
        100.0 * cpu / wall
    );
    println!(
        "   server CPU per poll: {:.0} µs -> {:.0} polls per core-second",
        1e6 * cpu / polls.max(1) as f64,
        per_core
    );
    println!(
        "   hosts polling once a minute that one server core carries: {:.0}",
        per_core * 60.0
    );

    // 2. reads on kept sessions
    let (reads, wall, cpu) = kept_reads(&fleet, &server, clients, args.seconds).await?;
    println!("\n2. release reads on open sessions");
    println!(
        "   {:.0} reads/s wall; server CPU per read {:.0} µs ({:.0}% of one core)",
        reads as f64 / wall,
        1e6 * cpu / reads.max(1) as f64,
        100.0 * cpu / wall
    );

    // 3. memory per idle and per waiting session
    let (idle_kib, waiting_kib, n) = memory(&fleet, &mut server, args.idle).await?;
    println!("\n3. memory (server RSS) with {n} sessions open");
    println!("   idle SFTP session: {:.1} KiB each", idle_kib);
    println!("   session waiting on /watch: {:.1} KiB each", waiting_kib);

    // 4. notify latency
    let told = notify_latency(&fleet, &mut server, clients, true).await?;
    println!(
        "\n4. new release -> waiting agent told ({} agents waiting)",
        clients.len()
    );
    println!(
        "   via notify_release_changed (deploy path): {}",
        summary(&told)
    );
    let polled = notify_latency(&fleet, &mut server, clients, false).await?;
    println!(
        "   via release-file poll every {} ms: {}",
        args.poll_ms,
        summary(&polled)
    );
    let single = single_latency(&fleet, &mut server).await?;
    println!("   one agent alone, notify, 20 runs: {}", summary(&single));

    server.send("metrics").await?;
    if let Some(line) = server.lines.next_line().await? {
        println!("\nserver metrics: {line}");
    }
    drop(server.stdin);
    let _ = tokio::time::timeout(Duration::from_secs(20), server.child.wait()).await;
    Ok(())
}

fn make_fleet(n: usize) -> anyhow::Result<Fleet> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("keys"))?;
    let hosts: Vec<String> = (0..n).map(|i| format!("host{i:04}")).collect();
    let mut list = String::new();
    for host in &hosts {
        let path = dir.path().join("keys").join(host);
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", host, "-f"])
            .arg(&path)
            .run()?;
        let public = std::fs::read_to_string(path.with_extension("pub"))?;
        list.push_str(&format!("{host} {}\n", public.trim()));
    }
    std::fs::write(dir.path().join("hosts"), list)?;
    let fleet = Fleet { dir, hosts };
    for host in &fleet.hosts {
        fleet.write_release(host, 1)?;
    }
    Ok(fleet)
}

async fn start_server(fleet: &Fleet, args: &Args) -> anyhow::Result<Server> {
    let me = std::env::current_exe()?;
    let mut cmd = match args.server_cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&me);
            c
        }
        None => tokio::process::Command::new(&me),
    };
    cmd.arg("--poll-ms")
        .arg(args.poll_ms.to_string())
        .arg("server")
        .arg(fleet.dir.path().join("state"))
        .arg(fleet.dir.path().join("hosts"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .env("RUST_LOG", "error")
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the server process")?;
    let pid = child.id().context("server pid")?;
    let stdin = child.stdin.take().context("server stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("server stdout")?).lines();
    let ready = lines.next_line().await?.context("server exited")?;
    let mut parts = ready.splitn(3, ' ');
    let (Some("READY"), Some(port), Some(pinned)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("unexpected server greeting {ready:?}");
    };
    Ok(Server {
        child,
        stdin,
        lines,
        pid,
        addr: format!("127.0.0.1:{port}"),
        pinned: pinned.to_owned(),
    })
}

async fn connect(
    fleet: &Fleet,
    server: &Server,
    host: &str,
) -> anyhow::Result<bento::sftp::client::Session> {
    Ok(
        bento::sftp::client::connect(server.addr.as_str(), host, &fleet.key(host), &server.pinned)
            .await?,
    )
}

async fn polls(
    fleet: &Fleet,
    server: &Server,
    hosts: &[String],
    seconds: u64,
) -> anyhow::Result<(u64, u64, f64, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = server.cpu_seconds()?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    let tasks = hosts.iter().map(|host| {
        let (done, errors) = (done.clone(), errors.clone());
        async move {
            while Instant::now() < end {
                let poll = async {
                    let s = connect(fleet, server, host).await?;
                    let release = s.read_release().await?;
                    s.close().await;
                    anyhow::ensure!(release.is_some(), "no release");
                    Ok(())
                };
                match poll.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    futures::future::join_all(tasks).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu0;
    Ok((
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wall,
        cpu,
    ))
}

async fn kept_reads(
    fleet: &Fleet,
    server: &Server,
    hosts: &[String],
    seconds: u64,
) -> anyhow::Result<(u64, f64, f64)> {
    let mut sessions = Vec::new();
    for host in hosts {
        sessions.push(connect(fleet, server, host).await?);
    }
    let done = AtomicU64::new(0);
    let cpu0 = server.cpu_seconds()?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    futures::future::join_all(sessions.iter().map(|s| async {
        while Instant::now() < end {
            if matches!(s.read_release().await, Ok(Some(_))) {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu0;
    for s in sessions {
        s.close().await;
    }
    Ok((done.load(Ordering::Relaxed), wall, cpu))
}

async fn memory(fleet: &Fleet, server: &mut Server, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    let mut sessions = Vec::new();
    for i in 0..n {
        let host = &fleet.hosts[i % fleet.hosts.len()];
        sessions.push(Arc::new(connect(fleet, server, host).await?));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib()?;
    let waits: Vec<_> = sessions
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.wait_release_change(1, Duration::from_secs(25)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = server.rss_kib()?;
    // Wake them all and let them finish.
    for host in &fleet.hosts {
        fleet.write_release(host, 2)?;
    }
    server.send("notify-all").await?;
    for w in waits {
        let _ = w.await;
    }
    for host in &fleet.hosts {
        fleet.write_release(host, 1)?;
    }
    server.send("notify-all").await?;
    for s in sessions {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.close().await;
        }
    }
    Ok((
        (idle.saturating_sub(before)) as f64 / n as f64,
        (waiting.saturating_sub(before)) as f64 / n as f64,
        n,
    ))
}

/// Latencies from "release written (and server told)" to each agent having the new generation.
async fn notify_latency(
    fleet: &Fleet,
    server: &mut Server,
    hosts: &[String],
    tell: bool,
) -> anyhow::Result<Vec<Duration>> {
    let mut sessions = Vec::new();
    for host in hosts {
        let s = connect(fleet, server, host).await?;
        let release = s.read_release().await?.context("no release")?;
        let generation = bento::release::Release::parse_untrusted(&release)
            .map(|r| r.generation)
            .context("gen")?;
        sessions.push((Arc::new(s), generation));
    }
    let waits: Vec<_> = sessions
        .iter()
        .map(|(s, g)| {
            let (s, g) = (s.clone(), *g);
            tokio::spawn(async move {
                let told = s.wait_release_change(g, Duration::from_secs(60)).await;
                let at = Instant::now();
                told.map(|t| (t, at))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let next = sessions.first().map_or(1, |(_, g)| g + 1);
    for host in hosts {
        fleet.write_release(host, next)?;
    }
    let t0 = Instant::now();
    if tell {
        server.send("notify-all").await?;
    }
    let mut out = Vec::new();
    for w in waits {
        if let Ok(Ok((Some(_), at))) = w.await {
            out.push(at.saturating_duration_since(t0));
        }
    }
    for (s, _) in sessions {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.close().await;
        }
    }
    if out.len() != hosts.len() {
        println!(
            "   ({} of {} agents were not told)",
            hosts.len() - out.len(),
            hosts.len()
        );
    }
    Ok(out)
}

async fn single_latency(fleet: &Fleet, server: &mut Server) -> anyhow::Result<Vec<Duration>> {
    let host = fleet.hosts[0].clone();
    let s = Arc::new(connect(fleet, server, &host).await?);
    let mut out = Vec::new();
    for _ in 0..20 {
        let release = s.read_release().await?.context("no release")?;
        let g = bento::release::Release::parse_untrusted(&release)
            .map(|r| r.generation)
            .context("gen")?;
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s.wait_release_change(g, Duration::from_secs(30)).await;
                (r, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        fleet.write_release(&host, g + 1)?;
        let t0 = Instant::now();
        server.send(&format!("notify {host}")).await?;
        let (r, at) = waiter.await?;
        if r?.is_some() {
            out.push(at.saturating_duration_since(t0));
        }
    }
    Ok(out)
}

fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "no samples".to_owned();
    }
    let mut v = samples.to_vec();
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    )
}
