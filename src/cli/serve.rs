//! `bento serve`: the server side that hosts talk to. For now the HTTP binary cache; the
//! SFTP publish server joins the same shutdown token and task set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, Access, CacheConfig, CacheState};
use crate::nix::keys::SecretKey;

/// Serve the fleet's binary cache: the closures of published releases, over HTTP.
///
/// Narinfos are signed with the fleet key; hosts trust its public half. Releases appearing
/// in STATE_DIR/publish/ are picked up within a second or two. Stops on Ctrl-C or SIGTERM.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's state directory (releases are read from STATE_DIR/publish/).
    #[arg(long, default_value = "/var/lib/bento")]
    state_dir: PathBuf,
    /// The fleet secret key (Nix format, as made by `bento keygen`).
    #[arg(long)]
    signing_key: PathBuf,
    /// Address to listen on for HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
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

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let key = SecretKey::load(&args.signing_key)?;
    let mut config = CacheConfig::new(&args.state_dir, key);
    config.max_nar_streams = args.max_nar_streams;
    config.verify_sends = args.verify_sends;
    if args.host_tokens {
        config.access = Access::TokenDir;
    }
    let state = CacheState::new(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(args.listen),
        public_key = %state.public_key(),
        state_dir = %args.state_dir.display(),
        "binary cache listening"
    );
    let shutdown = CancellationToken::new();
    let mut servers = JoinSet::new();
    servers.spawn(cache::serve(listener, state, shutdown.clone()));
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let mut failed = false;
    while let Some(joined) = servers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "server stopped");
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
