//! `bento build`: evaluate and build the selected hosts in parallel, show progress, print a
//! summary, and exit non-zero naming every host that failed.

use std::process::ExitCode;

use anyhow::Context as _;

use super::args::HostsToBuild;
use super::{progress, table};
use crate::build::{self, HostResult, Options, Status};
use crate::config::{self, Fleet, Host};

/// Evaluate and build hosts' systems, in parallel.
///
/// Each host is evaluated and built by its own Nix processes, at most --jobs hosts at once;
/// a host that fails never stops the others. Built systems are kept from garbage collection
/// by roots under <state_dir>/gcroots/<host>/ and recorded in <state_dir>/builds/<host>.json
/// (what `bento deploy --no-build` publishes). Exits non-zero when any host failed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(super) selection: HostsToBuild,
    /// Evaluate only: print each host's derivation, build nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let HostsToBuild {
        hosts,
        fleet,
        jobs: jobs_arg,
        json,
    } = args.selection;
    let fleet = fleet.load()?;
    let hosts: Vec<Host> = config::select(&fleet, &hosts)?
        .into_iter()
        .cloned()
        .collect();
    let options = Options {
        jobs: jobs(&fleet, jobs_arg),
        dry_run: args.dry_run,
    };
    let results = build_with_progress(&fleet, &hosts, options)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", summary(&results));
    }
    Ok(exit_code(&results))
}

/// `--jobs`, else `[fleet] jobs`, else what fits the machine.
pub(crate) fn jobs(fleet: &Fleet, arg: Option<u16>) -> usize {
    arg.map(usize::from)
        .or(fleet.jobs)
        .unwrap_or_else(build::machine_jobs)
}

/// Runs the builds on a fresh runtime with a live display; Ctrl-C stops them all (their
/// Nix processes are killed).
pub(crate) fn build_with_progress(
    fleet: &Fleet,
    hosts: &[Host],
    options: Options,
) -> anyhow::Result<Vec<HostResult>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let what = if options.dry_run {
        "evaluating"
    } else {
        "building"
    };
    tracing::info!(hosts = hosts.len(), jobs = options.jobs, "{what}");
    let report = progress::reporter(hosts.len());
    runtime.block_on(async {
        tokio::select! {
            results = build::build_hosts(&fleet.state, hosts, options, report) => Ok(results),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; builds stopped"),
        }
    })
}

/// The summary table.
pub(crate) fn summary(results: &[HostResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let (status, result) = match &r.status {
                Status::Built { store_path, .. } => ("built".to_owned(), store_path.clone()),
                Status::Evaluated { drv_path } => ("evaluated".to_owned(), drv_path.clone()),
                Status::Failed { phase, error, .. } => (format!("FAILED ({phase})"), error.clone()),
            };
            vec![
                r.host.clone(),
                status,
                table::duration(r.duration()),
                result,
            ]
        })
        .collect();
    table::render(&["HOST", "STATUS", "TIME", "RESULT"], &rows)
}

/// Success when every host succeeded; otherwise a line on stderr naming the failed hosts
/// and the phase each failed in, and exit status 1.
pub(crate) fn exit_code(results: &[HostResult]) -> ExitCode {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.status {
            Status::Failed { phase, .. } => Some(format!("{} ({phase})", r.host)),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} of {} hosts failed: {}",
            failed.len(),
            results.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
