//! `bento serve`: what hosts talk to. The binary cache (HTTP) and the SFTP publisher, both
//! from the fleet file, under one shutdown token; the fleet file is re-read on SIGHUP or
//! when it changes, so hosts are added and removed without dropping the others' sessions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, Access, Cache, CacheConfig, ExtraMetrics};
use crate::config::Fleet;
use crate::sftp::server::{self as sftp, HostKeys, Sessions, SftpConfig};
use crate::status;

/// Serve the fleet: the binary cache of published closures (HTTP) and each host's signed
/// release over SFTP, where every host logs in with its own key and sees only its own
/// directory.
///
/// Narinfos are signed with the fleet key; hosts trust its public half. Releases written by
/// `bento deploy` are picked up within a second or two. The SSH host key is made on first
/// start (STATE_DIR/ssh/host_ed25519_key) and printed: agents pin it. Edit bento.toml and
/// send SIGHUP (or just save it) to add or remove hosts. Stops on Ctrl-C or SIGTERM.
///
/// The fleet dashboard (/, one page per host at /hosts/NAME, JSON at /api/status) has its
/// own address, loopback by default: it shows every host's report logs, so it is kept off
/// the port hosts reach. The cache's /metrics carries the fleet gauges too.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fleet file.
    #[arg(long, short, default_value = "bento.toml", env = "BENTO_CONFIG")]
    config: PathBuf,
    /// Address of the binary cache (HTTP).
    #[arg(long, default_value = "[::]:8080")]
    cache_listen: SocketAddr,
    /// Address of the SFTP publisher (SSH).
    #[arg(long, default_value = "[::]:2222")]
    sftp_listen: SocketAddr,
    /// Give each host a token (STATE_DIR/cache-tokens/HOST, made when missing) and let it
    /// fetch only its own closure, with HTTP basic auth (user = host, password = token).
    #[arg(long)]
    host_tokens: bool,
    /// NAR bodies sent at once; further requests wait their turn.
    #[arg(long, default_value_t = 64)]
    max_nar_streams: usize,
    /// Hash every whole NAR while sending it and cut the body if it does not match (costs
    /// about a third of NAR throughput; files are verified at load either way).
    #[arg(long)]
    verify_sends: bool,
    /// Address of the dashboard (/, /hosts/NAME, /api/...). It shows every host's state
    /// and report logs to whoever reaches it and has no login: keep it on loopback (reach
    /// it through an SSH tunnel or a reverse proxy with authentication).
    #[arg(long, default_value = "127.0.0.1:8081")]
    dashboard_listen: SocketAddr,
    /// Do not serve the dashboard at all.
    #[arg(long, conflicts_with = "dashboard_listen")]
    no_dashboard: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args))
}

/// The SFTP access map of a fleet: each host with its SSH key.
fn host_keys(fleet: &Fleet) -> anyhow::Result<HostKeys> {
    Ok(HostKeys::parse(
        fleet
            .hosts
            .values()
            .map(|h| (h.name.clone(), vec![h.ssh_key.to_openssh()])),
    )?)
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::load(&args.config)?;
    let state_dir = fleet.state.root().to_owned();
    let key = fleet.load_signing_key()?;
    let mut config = CacheConfig::new(&state_dir, key);
    config.max_nar_streams = args.max_nar_streams;
    config.verify_sends = args.verify_sends;
    if args.host_tokens {
        config.access = Access::TokenDir;
    }
    let source = status::StatusSource::new(
        fleet.state.clone(),
        fleet.hosts.keys().cloned().collect(),
        fleet.stale_after_secs,
    );
    let gauges = Arc::new(status::metrics::Cached::new(source.clone()));
    config.extra_metrics = Some(ExtraMetrics(Arc::new(move || gauges.render())));
    let cache_state = Cache::new(config)?;
    cache_state.serve_only(fleet.hosts.keys().cloned().collect());
    let host_key = sftp::load_or_create_host_key(&fleet.state.ssh_host_key())?;
    // Agents waiting for a release are told once the cache serves its closure (below), not
    // when the SFTP side's own poll sees the file: its poll is only a fallback here.
    let publish_config = SftpConfig {
        release_poll_interval: Duration::from_secs(60),
        ..SftpConfig::default()
    };
    let publish_state = Sessions::new(&state_dir, host_key, host_keys(&fleet)?, publish_config)?;
    let cache_listener = tokio::net::TcpListener::bind(args.cache_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the cache", args.cache_listen))?;
    let sftp_listener = tokio::net::TcpListener::bind(args.sftp_listen)
        .await
        .with_context(|| format!("cannot listen on {} for SFTP", args.sftp_listen))?;
    let dashboard_listener = if args.no_dashboard {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.dashboard_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the dashboard (choose another with --dashboard-listen, or --no-dashboard)",
                        args.dashboard_listen
                    )
                })?,
        )
    };
    let cache_addr = cache_listener.local_addr().unwrap_or(args.cache_listen);
    let sftp_addr = sftp_listener.local_addr().unwrap_or(args.sftp_listen);
    println!(
        "bento serve: {} hosts from {}",
        fleet.hosts.len(),
        fleet.file.display()
    );
    println!("  cache      http://{cache_addr}");
    if let Some(l) = &dashboard_listener {
        let addr = l.local_addr().unwrap_or(args.dashboard_listen);
        println!("  dashboard  http://{addr}/");
    }
    println!("  fleet key  {}", cache_state.public_key());
    println!("  sftp       {sftp_addr}");
    println!("  host key   {}", publish_state.host_key().public_openssh());
    println!(
        "Agents pin the host key: server_host_key = \"{}\"",
        publish_state.host_key().public_openssh()
    );
    tracing::info!(
        cache = %cache_addr,
        sftp = %sftp_addr,
        state_dir = %state_dir.display(),
        "serving"
    );

    let shutdown = CancellationToken::new();
    let mut servers = JoinSet::new();
    tokio::spawn(announce_after_refresh(
        cache_state.refreshes(),
        publish_state.clone(),
        shutdown.clone(),
    ));
    let cache_stop = shutdown.clone();
    let cache_server = cache_state.clone();
    servers.spawn(async move {
        cache::serve(cache_listener, cache_server, cache_stop)
            .await
            .context("the binary cache stopped")
    });
    let sftp_stop = shutdown.clone();
    let sftp_state = publish_state.clone();
    servers.spawn(async move {
        sftp::serve(sftp_listener, sftp_state, sftp_stop).await;
        Ok(())
    });
    if let Some(listener) = dashboard_listener {
        let (stop, source) = (shutdown.clone(), source.clone());
        servers.spawn(async move {
            status::web::serve(listener, source, stop)
                .await
                .context("the dashboard stopped")
        });
    }
    tokio::spawn(reload_on_change(
        fleet.file.clone(),
        publish_state,
        cache_state,
        source,
        shutdown.clone(),
    ));
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let mut failed = false;
    while let Some(joined) = servers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "server stopped");
                failed = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "server task panicked");
                failed = true;
            }
        }
        // One server ending ends them all.
        shutdown.cancel();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// After every cache refresh, lets the SFTP side re-read the releases agents wait on: a host
/// is woken only when the closure of its new release can be copied.
async fn announce_after_refresh(
    mut refreshes: tokio::sync::watch::Receiver<u64>,
    state: Arc<Sessions>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = refreshes.changed() => if changed.is_err() { return },
        }
        state.poll_releases();
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the fleet file on SIGHUP or when its modification time changes, and gives the
/// SFTP server the new access map and the cache the new set of hosts it serves. A fleet
/// file that does not load is reported and the current hosts kept.
async fn reload_on_change(
    file: PathBuf,
    state: Arc<Sessions>,
    cache_state: Arc<Cache>,
    source: Arc<status::StatusSource>,
    shutdown: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = modified(&file);
    loop {
        let by_signal = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = modified(&file);
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        match Fleet::load(&file)
            .map_err(anyhow::Error::from)
            .and_then(|f| Ok((host_keys(&f)?, f)))
        {
            Ok((keys, fleet)) => {
                source.set_hosts(fleet.hosts.keys().cloned().collect());
                let summary = state.reload(keys);
                tracing::info!(?summary, file = %file.display(), "fleet file reloaded");
                cache_state.serve_only(fleet.hosts.keys().cloned().collect());
                if let Err(e) = cache_state.refresh().await {
                    tracing::error!(error = %e, "cache refresh after the reload failed; the cache serves the hosts it served before until its next refresh");
                }
            }
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                file = %file.display(),
                "fleet file not reloaded; keeping the hosts as they were"
            ),
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
        () = shutdown.cancelled() => return,
    }
    tracing::info!("stopping");
    shutdown.cancel();
    // In-flight NAR bodies get a moment to finish; then the process ends regardless.
    tokio::time::sleep(Duration::from_secs(10)).await;
    tracing::warn!("in-flight requests did not finish within 10 s; exiting");
    std::process::exit(0);
}
