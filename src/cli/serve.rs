//! `bento serve`: what hosts talk to. Binds the binary cache (HTTP), the SFTP server and the
//! dashboard, prints where they are and the keys agents trust, turns Ctrl-C and SIGTERM into
//! the shutdown token, and runs `server::run`, which wires the parts and follows the fleet
//! file.

use std::net::SocketAddr;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::args::FleetFile;
use crate::server::{self, Listeners, ServerConfig};

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
///
/// A staged rollout started by `bento deploy` is advanced here as reports arrive (see
/// `bento rollout`); a restart continues it. With --follow, the branch of [fleet] git is
/// fetched every interval_secs, each new commit built and deployed through [rollout]
/// (docs/gitops.md); --hook-listen serves POST /hooks/git, which makes it fetch at once.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    fleet: FleetFile,
    /// Address of the binary cache (HTTP).
    #[arg(long, default_value = "[::]:8080")]
    cache_listen: SocketAddr,
    /// Address of the SFTP server (SSH).
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
    /// Follow the branch of [fleet] git: build each new commit and deploy it.
    #[arg(long)]
    follow: bool,
    /// Address of the git push hook (POST /hooks/git, with the secret of [fleet] git
    /// hook_secret_file as `Authorization: Bearer SECRET`). Needs --follow.
    #[arg(long, requires = "follow")]
    hook_listen: Option<SocketAddr>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Check the fleet file and these flags, print what would be served, and exit (0 when
    /// sound, 1 otherwise) without binding, reading keys or touching the state directory:
    /// it runs where only the fleet file exists (the NixOS module runs it at build time).
    #[arg(long)]
    check_config: bool,
}

/// `--check-config`: the problems found in the flags alone (the fleet file was parsed
/// before), each a sentence.
fn flag_problems(args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    if args.max_nar_streams == 0 {
        problems.push("--max-nar-streams must be at least 1".to_owned());
    }
    if args.threads == Some(0) {
        problems.push("--threads must be at least 1".to_owned());
    }
    let mut listens = vec![
        ("--cache-listen", args.cache_listen),
        ("--sftp-listen", args.sftp_listen),
    ];
    if !args.no_dashboard {
        listens.push(("--dashboard-listen", args.dashboard_listen));
    }
    for (i, (a, a_addr)) in listens.iter().enumerate() {
        for (b, b_addr) in &listens[i + 1..] {
            if a_addr.port() != 0 && a_addr == b_addr {
                problems.push(format!("{a} and {b} are both {a_addr}"));
            }
        }
    }
    problems
}

/// `--check-config`: parses the fleet file and checks the flags; prints a summary or the
/// problems.
fn check_config(args: &Args) -> anyhow::Result<ExitCode> {
    let fleet = crate::config::Fleet::load_text_only(&args.fleet.config)?;
    let problems = flag_problems(args);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: {} hosts ({}), state directory {}",
        fleet.file.display(),
        fleet.hosts.len(),
        fleet.hosts.keys().cloned().collect::<Vec<_>>().join(", "),
        fleet.state.root().display()
    );
    println!("  fleet key  {} (not read)", fleet.signing_key.display());
    println!("  cache      http://{}", args.cache_listen);
    println!("  sftp       {}", args.sftp_listen);
    if args.no_dashboard {
        println!("  dashboard  off");
    } else {
        println!("  dashboard  http://{}/", args.dashboard_listen);
    }
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.check_config {
        return check_config(&args);
    }
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

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::load(&args.fleet.config)?;
    config.host_tokens = args.host_tokens;
    config.max_nar_streams = args.max_nar_streams;
    config.verify_sends = args.verify_sends;
    if args.follow {
        let Some(git) = &config.fleet.git else {
            return Err(crate::gitops::GitopsError::NotConfigured {
                path: config.fleet.file.clone(),
            }
            .into());
        };
        let hook_secret = match (&git.hook_secret_file, args.hook_listen) {
            (Some(path), Some(_)) => Some(crate::gitops::HookSecret::load(path)?),
            (None, Some(addr)) => anyhow::bail!(
                "--hook-listen {addr}: [fleet] git has no hook_secret_file; the hook needs a shared secret"
            ),
            (_, None) => None,
        };
        config.follow = Some(server::Follow { hook_secret });
    }
    let listeners = bind(&args).await?;

    let addr = |l: &TcpListener, default| l.local_addr().unwrap_or(default);
    println!(
        "bento serve: {} hosts from {}",
        config.fleet.hosts.len(),
        config.fleet.file.display()
    );
    println!(
        "  cache      http://{}",
        addr(&listeners.cache, args.cache_listen)
    );
    if let Some(l) = &listeners.dashboard {
        println!("  dashboard  http://{}/", addr(l, args.dashboard_listen));
    }
    println!("  fleet key  {}", config.signing_key.public());
    println!("  sftp       {}", addr(&listeners.sftp, args.sftp_listen));
    if let (Some(l), Some(default)) = (&listeners.hook, args.hook_listen) {
        println!("  hook       http://{}/hooks/git", addr(l, default));
    }
    println!("  host key   {}", config.host_key.public_openssh());
    println!(
        "Agents pin the host key: server_host_key = \"{}\"",
        config.host_key.public_openssh()
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    server::run(listeners, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Binds the cache, SFTP and dashboard addresses, with a message naming the one that failed.
async fn bind(args: &Args) -> anyhow::Result<Listeners> {
    let cache = TcpListener::bind(args.cache_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the cache", args.cache_listen))?;
    let sftp = TcpListener::bind(args.sftp_listen)
        .await
        .with_context(|| format!("cannot listen on {} for SFTP", args.sftp_listen))?;
    let dashboard = if args.no_dashboard {
        None
    } else {
        Some(
            TcpListener::bind(args.dashboard_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the dashboard (choose another with --dashboard-listen, or --no-dashboard)",
                        args.dashboard_listen
                    )
                })?,
        )
    };
    let hook = match args.hook_listen {
        None => None,
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} for the git hook"))?,
        ),
    };
    Ok(Listeners {
        cache,
        sftp,
        dashboard,
        hook,
    })
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
