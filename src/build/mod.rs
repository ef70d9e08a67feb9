//! Building the fleet: every selected host is evaluated and built by its own Nix processes,
//! at most `jobs` hosts at once (one `Semaphore`), each in its own task (`JoinSet`). A host
//! that fails evaluation or build never stops the others; every host ends with a
//! [`HostResult`]. Progress is reported as [`Event`]s: the CLI decides how to show them.
//!
//! A successful build leaves a GC root at `gcroots/<host>/build` and a record at
//! `builds/<host>.json`.
//!
//! May import: `nix`, `config`, `durable`, `clock`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::config::{Host, StateDir};
use crate::durable::WriteError;
use crate::nix::cmd::CmdError;
use crate::nix::transient::{self, Backoff};

pub mod gcroot;
pub mod plan;
pub mod record;

pub use record::BuildRecord;

/// How many lines of a Nix error a summary shows.
pub const EXCERPT_LINES: usize = 6;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("build record {path} is unusable: {problem}")]
    Record {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("cannot access {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Hosts evaluated and built at once (at least 1).
    pub jobs: usize,
    /// Evaluate only: no build, no GC root, no record.
    pub dry_run: bool,
}

/// The phase a host is in, or failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildPhase {
    Evaluate,
    Build,
    /// Writing the build record.
    Record,
}

impl std::fmt::Display for BuildPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildPhase::Evaluate => "evaluation",
            BuildPhase::Build => "build",
            BuildPhase::Record => "recording the build",
        })
    }
}

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Built {
        drv_path: String,
        store_path: String,
    },
    /// `--dry-run`: evaluated, not built.
    Evaluated { drv_path: String },
    Failed {
        phase: BuildPhase,
        /// The first lines of the error, for a summary.
        error: String,
        /// The whole error (command line, exit status, end of stderr).
        detail: String,
    },
}

/// One host's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostResult {
    pub host: String,
    #[serde(flatten)]
    pub status: Status,
    pub duration_ms: u64,
}

impl HostResult {
    pub fn ok(&self) -> bool {
        !matches!(self.status, Status::Failed { .. })
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// Progress of a fleet build.
#[derive(Debug, Clone)]
pub enum Event {
    /// The host entered a phase.
    Phase { host: String, phase: BuildPhase },
    /// A line Nix printed on stderr for the host.
    Line { host: String, line: String },
    /// The host is done.
    Finished(HostResult),
}

/// Where events go; called from several tasks.
pub type Reporter = Arc<dyn Fn(Event) + Send + Sync>;

/// Default `--jobs` for this machine: its cores and available memory.
pub fn machine_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| plan::parse_mem_available(&t));
    plan::default_jobs(cores, mem)
}

/// Evaluates and builds `hosts`, returning one result per host in name order.
pub async fn build_hosts(
    state: &StateDir,
    hosts: &[Host],
    options: Options,
    report: Reporter,
) -> Vec<HostResult> {
    // Parallel Nix processes on a store nobody opened yet race to create it.
    if !hosts.is_empty()
        && let Err(e) = transient::ensure_store_initialised().await
    {
        tracing::warn!(error = %e, "cannot open the Nix store before building");
    }
    let semaphore = Arc::new(Semaphore::new(options.jobs.max(1)));
    let mut tasks = JoinSet::new();
    for host in hosts {
        let host = host.clone();
        let state = state.clone();
        let semaphore = Arc::clone(&semaphore);
        let report = Arc::clone(&report);
        let span = tracing::info_span!("build", host = %host.name);
        tasks.spawn(
            async move {
                // Closed only if dropped, which cannot happen while tasks hold it.
                let _permit = semaphore.acquire_owned().await.ok();
                let result = build_one(&state, &host, options.dry_run, &report).await;
                report(Event::Finished(result.clone()));
                result
            }
            .instrument(span),
        );
    }
    let mut results = Vec::with_capacity(hosts.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(error = %e, "a build task ended abnormally"),
        }
    }
    // A task that panicked still gets a line in the summary.
    for host in hosts {
        if !results.iter().any(|r| r.host == host.name) {
            results.push(HostResult {
                host: host.name.clone(),
                status: failed(
                    BuildPhase::Build,
                    "the build task ended abnormally".into(),
                    String::new(),
                ),
                duration_ms: 0,
            });
        }
    }
    results.sort_by(|a, b| a.host.cmp(&b.host));
    results
}

fn failed(phase: BuildPhase, error: String, detail: String) -> Status {
    Status::Failed {
        phase,
        error,
        detail,
    }
}

fn cmd_failure(phase: BuildPhase, err: &CmdError) -> Status {
    let excerpt = plan::error_excerpt(err.stderr_tail(), EXCERPT_LINES);
    let error = if excerpt.is_empty() {
        err.to_string()
    } else {
        excerpt
    };
    failed(phase, error, err.to_string())
}

async fn build_one(state: &StateDir, host: &Host, dry_run: bool, report: &Reporter) -> HostResult {
    let start = Instant::now();
    let status = run_phases(state, host, dry_run, report).await;
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &status {
        Status::Failed { phase, error, .. } => {
            tracing::debug!(%phase, error = %error, "host failed");
        }
        _ => tracing::debug!(duration_ms, "host done"),
    }
    HostResult {
        host: host.name.clone(),
        status,
        duration_ms,
    }
}

async fn run_phases(state: &StateDir, host: &Host, dry_run: bool, report: &Reporter) -> Status {
    let name = host.name.clone();
    let lines = |line: &str| {
        report(Event::Line {
            host: name.clone(),
            line: line.to_owned(),
        });
    };

    report(Event::Phase {
        host: name.clone(),
        phase: BuildPhase::Evaluate,
    });
    let out =
        match transient::run_retrying(&plan::eval_command(&host.system), Backoff::STORE, lines)
            .await
        {
            Ok(out) => out,
            Err(e) => return cmd_failure(BuildPhase::Evaluate, &e),
        };
    let drv_path = match plan::parse_drv_path(&out.stdout_text()) {
        Ok(d) => d,
        Err(msg) => return failed(BuildPhase::Evaluate, msg.clone(), msg),
    };
    if dry_run {
        return Status::Evaluated { drv_path };
    }

    report(Event::Phase {
        host: name.clone(),
        phase: BuildPhase::Build,
    });
    let root = state.build_root(&host.name);
    if let Some(dir) = root.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        let msg = format!("cannot create {}: {e}", dir.display());
        return failed(BuildPhase::Build, msg.clone(), msg);
    }
    let build = plan::build_command(&drv_path, &root);
    let out = match transient::run_retrying(&build, Backoff::STORE, lines).await {
        Ok(out) => out,
        Err(e) => return cmd_failure(BuildPhase::Build, &e),
    };
    let store_path = match plan::parse_build_json(&out.stdout_text()) {
        Ok(p) => p,
        Err(msg) => return failed(BuildPhase::Build, msg.clone(), msg),
    };

    let record = BuildRecord {
        format: record::RECORD_FORMAT,
        host: host.name.clone(),
        drv_path: drv_path.clone(),
        store_path: store_path.clone(),
        built: crate::clock::unix_now(),
    };
    if let Err(e) = record::write(state, &record) {
        return failed(BuildPhase::Record, e.to_string(), e.to_string());
    }
    Status::Built {
        drv_path,
        store_path,
    }
}
