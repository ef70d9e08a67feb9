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
use crate::cache::Limits;
use crate::server::{self, Listeners, ServerConfig};

/// Serve the fleet: the binary cache of published closures (HTTP) and each host's signed
/// release over SFTP, where every host logs in with its own key and sees only its own
/// directory.
///
/// Narinfos are signed with the fleet key; hosts trust its public half. Releases written by
/// `bento deploy` are picked up within a second or two, and a host sees its new release
/// only once the cache serves its closure (`bento deploy` waits for that when it finds this
/// server running on its state directory). The SSH host key is made on first
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
    /// NAR bodies sent at once; further requests wait their turn (see --nar-wait).
    #[arg(long, default_value_t = 64)]
    max_nar_streams: usize,
    /// NAR bodies one source address may be sent at once (hosts behind one NAT share it).
    #[arg(long, default_value_t = Limits::default().max_nar_streams_per_address)]
    max_nar_streams_per_address: usize,
    /// NAR bodies one host may be sent at once, told by its token (with --host-tokens).
    #[arg(long, default_value_t = Limits::default().max_nar_streams_per_host)]
    max_nar_streams_per_host: usize,
    /// Seconds a NAR request waits for its turn before it is answered 503 with
    /// Retry-After (Nix retries it).
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().nar_wait.as_secs())]
    nar_wait: u64,
    /// Seconds a client may take nothing of a response before its connection is cut and
    /// its NAR stream freed (a stalled or malicious reader holds nothing longer).
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().send_timeout.as_secs())]
    send_timeout: u64,
    /// Seconds a client has to send a whole request head; idle keep-alive connections are
    /// closed after as long.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().header_read_timeout.as_secs())]
    header_read_timeout: u64,
    /// Cache connections open at once; more are closed at accept.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Cache connections one source address may hold at once.
    #[arg(long, default_value_t = Limits::default().max_connections_per_address)]
    max_connections_per_address: usize,
    /// Require `Authorization: Bearer <token>` on the cache's /metrics, the token being the
    /// first line of FILE (keep it 0600; give Prometheus the same file as its
    /// `bearer_token_file`). Without it /metrics is open to whoever reaches the cache port.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<std::path::PathBuf>,
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
    let mut problems = flag_problems(args);
    match (&fleet.git, args.follow, args.hook_listen) {
        (None, true, _) => problems.push(format!(
            "--follow: {} has no [fleet] git to follow",
            fleet.file.display()
        )),
        (Some(git), true, Some(addr)) if git.hook_secret_file.is_none() => problems.push(
            format!("--hook-listen {addr}: [fleet] git has no hook_secret_file; the hook needs a shared secret"),
        ),
        _ => {}
    }
    if let Some(addr) = args.hook_listen
        && [args.cache_listen, args.sftp_listen].contains(&addr)
        && addr.port() != 0
    {
        problems.push(format!(
            "--hook-listen {addr} is also the cache's or SFTP's address"
        ));
    }
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
    if let Some(git) = fleet.git.as_ref().filter(|_| args.follow) {
        println!("  follows    {} (branch {})", git.url, git.branch);
    }
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}

/// `println!` that carries on when stdout is gone (`bento serve | head -1`): the server's
/// output is a courtesy, never a reason to stop.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
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
    let served = rt.block_on(serve(args));
    // Blocking work still running (a refresh compressing a big NAR) does not hold up the
    // exit.
    rt.shutdown_timeout(Duration::from_secs(2));
    served
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::load(&args.fleet.config)?;
    config.host_tokens = args.host_tokens;
    config.max_nar_streams = args.max_nar_streams;
    config.verify_sends = args.verify_sends;
    config.limits = limits(&args);
    config.metrics_token = match &args.metrics_token_file {
        Some(file) => Some(read_metrics_token(file)?),
        None => None,
    };
    config.limits.check().map_err(anyhow::Error::msg)?;
    raise_open_files_limit(&config);
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
    say!(
        "bento serve: {} hosts from {}",
        config.fleet.hosts.len(),
        config.fleet.file.display()
    );
    say!(
        "  cache      http://{}",
        addr(&listeners.cache, args.cache_listen)
    );
    if let Some(l) = &listeners.dashboard {
        say!("  dashboard  http://{}/", addr(l, args.dashboard_listen));
    }
    say!("  fleet key  {}", config.signing_key.public());
    say!("  sftp       {}", addr(&listeners.sftp, args.sftp_listen));
    if let (Some(l), Some(default)) = (&listeners.hook, args.hook_listen) {
        say!("  hook       http://{}/hooks/git", addr(l, default));
    }
    say!("  host key   {}", config.host_key.public_openssh());
    say!(
        "Agents pin the host key: server_host_key = \"{}\"",
        config.host_key.public_openssh()
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    server::run(listeners, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The first line of `file`, which must not be empty.
fn read_metrics_token(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the metrics token file {}", file.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        anyhow::bail!(
            "the metrics token file {} is empty; put a random token on its first line (e.g. `openssl rand -hex 32`)",
            file.display()
        );
    }
    Ok(token)
}

fn limits(args: &Args) -> Limits {
    Limits {
        max_nar_streams_per_address: args.max_nar_streams_per_address,
        max_nar_streams_per_host: args.max_nar_streams_per_host,
        nar_wait: Duration::from_secs(args.nar_wait),
        send_timeout: Duration::from_secs(args.send_timeout),
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
    }
}

/// Raises the soft limit on open files to the hard one (cache connections, SFTP sessions,
/// NAR files and store files all count), and warns with the numbers when even that is
/// below what the fleet holds at once, or what the limits allow (`cache::limits::OpenFiles`).
fn raise_open_files_limit(config: &ServerConfig) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
        limit = getrlimit(Resource::Nofile);
    }
    let need = crate::cache::limits::OpenFiles {
        hosts: config.fleet.hosts.len(),
        max_nar_streams: config.max_nar_streams,
        max_sftp_sessions: crate::sftp::server::SftpConfig::default().max_sessions,
    };
    match limit
        .current
        .and_then(|have| need.warning(have, &config.limits))
    {
        Some(warning) => tracing::warn!("{warning}"),
        None => {
            tracing::debug!(open_files_limit = ?limit.current, fleet_needs = need.fleet_needs(), "open files limit")
        }
    }
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
