//! `bento agent`: the host side. Runs the loop (or one attempt with `--once`), validates a
//! configuration (`check-config`), asks the running agent to check now (`trigger`), or puts
//! the delivered files back after a reboot (`restore-files`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::config::Agent;
use crate::agent::run::LoopEnd;
use crate::agent::sftp_link::SftpLink;
use crate::agent::{
    children, cycle, exit, files_dir, http_trigger, run, self_update, system, trigger,
};

/// Pull this host's release, copy its system from the cache, activate it, confirm it or
/// roll back by itself, and report to the server.
///
/// Without a subcommand the agent runs until stopped: an attempt, then it waits for the
/// poll interval (with jitter), a local `bento agent trigger`, or, with instant updates,
/// the server telling it the release changed.
///
/// Exit codes of `--once`: 0 applied, 1 error, 3 nothing to do, 4 refused, 5 failed
/// (copy or activation; rolled back), 6 rolled back (or retry later), 7 another agent runs,
/// 8 rollback failed (an operator must look). Both `--once` and the loop exit 9 after an
/// attempt when the running system names another agent configuration or binary
/// (`/etc/bento/agent-unit.json`): systemd then starts that one.
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
    /// Put back the delivered files of the generation this host runs (after a reboot
    /// emptied `files_dir`), from the agent's verified copy, checked again against the
    /// signed manifest. Exit 0 when they are in place (or there are none), 7 when an agent
    /// runs (it does this itself), 1 otherwise.
    RestoreFiles {
        /// The agent configuration file.
        #[arg(long, short, default_value = "/etc/bento/agent.toml")]
        config: PathBuf,
    },
    /// Copy a store path's closure from the cache into this host's store as an attempt
    /// does (the whole-closure transfer from `bento serve`, else `nix copy`), with only the
    /// fleet key trusted; nothing is activated or reported. To fetch a release ahead of
    /// time, or to measure the copy alone. Exit 0 copied, 4 refused, 5 failed, 7 when an
    /// agent runs.
    Copy {
        /// The agent configuration file.
        #[arg(long, short, default_value = "/etc/bento/agent.toml")]
        config: PathBuf,
        /// The store path whose closure to copy.
        path: String,
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
        Some(Sub::RestoreFiles { config }) => restore_files(&config),
        Some(Sub::Copy { config, path }) => rt.block_on(copy(&config, &path)),
        None => rt.block_on(agent(&args.config, args.once)),
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let a = Agent::load(file)?;
    files_dir::check(&a.files_dir).with_context(|| format!("agent config {}", file.display()))?;
    println!("{}: ok", file.display());
    println!("  host            {}", a.host);
    println!("  server          {} (host key pinned)", a.server);
    println!("  cache           {}", a.cache_url);
    println!(
        "  copy            {} ({} paths at once when substituting)",
        a.copy_method.as_str(),
        a.substitute_jobs
    );
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
    println!(
        "  deadlines       copy {}s, activation {}s",
        a.copy_timeout.as_secs(),
        a.activation_timeout.as_secs()
    );
    println!("  health checks   {}", a.health_checks.len());
    println!("  state           {}", a.state_dir.display());
    println!("  files           {}", a.files_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The agent lock, or `None` (after saying so, with `note`) when another agent holds it.
fn lock_or_busy(agent: &Agent, note: &str) -> anyhow::Result<Option<system::Lock>> {
    match system::lock(&agent.state_dir) {
        Ok(l) => Ok(Some(l)),
        Err(e @ system::SystemError::Busy { .. }) => {
            eprintln!("{e}{note}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn copy(config: &std::path::Path, path: &str) -> anyhow::Result<ExitCode> {
    let agent = Agent::load(config)?;
    let Some(_lock) = lock_or_busy(&agent, "")? else {
        return Ok(ExitCode::from(exit::BUSY));
    };
    let mut log = String::new();
    let result = crate::agent::copy::copy_closure(&agent, path, &mut log).await;
    eprint!("{log}");
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{e}");
            let refused = matches!(
                e,
                system::SystemError::CopyRefused { .. } | system::SystemError::CopyTampered { .. }
            );
            Ok(ExitCode::from(if refused {
                exit::REFUSED
            } else {
                exit::FAILED
            }))
        }
    }
}

fn restore_files(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let agent = Agent::load(config)?;
    let Some(_lock) = lock_or_busy(&agent, "; it puts the files back itself")? else {
        return Ok(ExitCode::from(exit::BUSY));
    };
    let names = files_dir::restore(
        &agent.state_dir,
        &agent.fleet_key,
        &agent.host,
        &agent.ssh_key,
        &agent.files_dir,
    )?;
    if names.is_empty() {
        println!(
            "{}: every delivered file is in place (or none was delivered)",
            agent.files_dir.display()
        );
    } else {
        println!(
            "{}: put back {}",
            agent.files_dir.display(),
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM (never, if they cannot be watched).
async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// What the agent does once it holds the lock, before its first attempt: kill what an
/// earlier agent killed alone left running, and put back files a reboot removed.
fn prepare(agent: &Agent) {
    for line in children::kill_leftovers(&agent.state_dir) {
        tracing::warn!("{line}");
    }
    files_dir::put_back(agent);
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
    let Some(_lock) = lock_or_busy(&agent, "")? else {
        return Ok(ExitCode::from(exit::BUSY));
    };
    prepare(&agent);
    // The agent the running system names, as this one starts (see agent::self_update).
    let started_with = self_update::read(&agent.current_system);
    let link = SftpLink::new(&agent);
    let progress = run::progress_channel();
    if once {
        let result = tokio::select! {
            r = cycle::run_once(&agent, &link, &progress) => r,
            () = stop_requested() => {
                eprintln!("error: interrupted; the next start resumes the attempt");
                return Ok(ExitCode::from(exit::ERROR));
            }
        };
        let code = match result {
            Ok(ended) => {
                eprintln!("{}", run::summary(&Ok(ended.clone())));
                exit::code(&ended)
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::ERROR
            }
        };
        let now = self_update::read(&agent.current_system);
        if let Some(why) = self_update::restart_reason(&started_with, &now) {
            eprintln!("{why}");
            return Ok(ExitCode::from(exit::RESTART));
        }
        return Ok(ExitCode::from(code));
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
        stop_requested().await;
        stop.cancel();
    });
    tracing::info!(host = %agent.host, server = %agent.server, "agent started");
    match run::run_loop(&agent, &link, progress, req_rx, shutdown, &started_with).await {
        LoopEnd::Shutdown => Ok(ExitCode::SUCCESS),
        LoopEnd::Restart(why) => {
            eprintln!("{why}");
            Ok(ExitCode::from(exit::RESTART))
        }
    }
}
