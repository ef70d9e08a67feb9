//! `bento agent`: the host side. Runs the loop (or one attempt with `--once`), validates a
//! configuration (`check-config`), or asks the running agent to check now (`trigger`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::config::Agent;
use crate::agent::sftp_link::SftpLink;
use crate::agent::{cycle, exit, http_trigger, run, system, trigger};

/// Pull this host's release, copy its system from the cache, activate it, confirm it or
/// roll back by itself, and report to the server.
///
/// Without a subcommand the agent runs until stopped: an attempt, then it waits for the
/// poll interval (with jitter), a local `bento agent trigger`, or, with instant updates,
/// the server telling it the release changed.
///
/// Exit codes of `--once`: 0 applied, 1 error, 3 nothing to do, 4 refused, 5 failed
/// (copy or activation; rolled back), 6 rolled back (or retry later), 7 another agent runs.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The agent configuration file.
    #[arg(long, short, default_value = "/etc/bento/agent.toml")]
    config: PathBuf,
    /// Make one attempt and exit with its code.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Validate an agent configuration file and print what it means.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Ask the running agent to check for a new release now, and follow its progress.
    Trigger {
        /// The agent's trigger socket.
        #[arg(long, default_value = "/run/bento-agent/trigger.sock")]
        socket: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        Some(Sub::CheckConfig { file }) => check_config(&file),
        Some(Sub::Trigger { socket }) => rt.block_on(trigger_now(&socket)),
        None => rt.block_on(agent(&args.config, args.once)),
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let a = Agent::load(file)?;
    println!("{}: ok", file.display());
    println!("  host            {}", a.host);
    println!("  server          {} (host key pinned)", a.server);
    println!("  cache           {}", a.cache_url);
    println!("  fleet key       {}", a.fleet_key);
    println!("  action          {}", a.action.as_str());
    println!(
        "  poll            every {}s ±{:.0}%{}",
        a.poll_interval.as_secs(),
        a.poll_jitter * 100.0,
        if a.instant_updates {
            ", instant updates on"
        } else {
            ""
        }
    );
    println!("  confirm within  {}s", a.confirm_timeout.as_secs());
    println!("  health checks   {}", a.health_checks.len());
    println!("  state           {}", a.state_dir.display());
    println!("  files           {}", a.files_dir.display());
    Ok(ExitCode::SUCCESS)
}

async fn trigger_now(socket: &std::path::Path) -> anyhow::Result<ExitCode> {
    let result = trigger::request_check(socket, |line| println!("{line}")).await?;
    println!("result: {result}");
    Ok(
        if result == "applied" || result == "up-to-date" || result == "nothing to do" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

async fn agent(config: &std::path::Path, once: bool) -> anyhow::Result<ExitCode> {
    let agent = Agent::load(config)?;
    let _lock = match system::lock(&agent.state_dir) {
        Ok(l) => l,
        Err(e @ system::SystemError::Busy { .. }) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(exit::BUSY));
        }
        Err(e) => return Err(e.into()),
    };
    let link = SftpLink::new(&agent);
    let progress = run::progress_channel();
    if once {
        let result = cycle::run_once(&agent, &link, &progress).await;
        return Ok(match result {
            Ok(ended) => {
                eprintln!("{}", run::summary(&Ok(ended.clone())));
                ExitCode::from(exit::code(&ended))
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(exit::ERROR)
            }
        });
    }
    let (req_tx, req_rx) = mpsc::channel(4);
    let listener = trigger::bind(&agent.trigger_socket, agent.trigger_group.as_deref())?;
    if let Some(addr) = agent.http_trigger {
        let page = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the http_trigger page"))?;
        let router = http_trigger::router(req_tx.clone(), progress.clone());
        let stop = CancellationToken::new();
        tokio::spawn(http_trigger::serve(page, router, stop));
        tracing::info!(%addr, "update page listening");
    }
    tokio::spawn(trigger::serve(listener, req_tx, progress.clone()));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    tracing::info!(host = %agent.host, server = %agent.server, "agent started");
    run::run_loop(&agent, &link, progress, req_rx, shutdown).await;
    Ok(ExitCode::SUCCESS)
}
