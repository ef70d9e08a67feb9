//! `bento deploy`: build the selected hosts (or reuse their last build), then publish a
//! signed release, with the next generation, for every host whose system changed; or
//! `--rollback HOST`. One deploy at a time (a lock in the state directory).

use std::process::ExitCode;

use serde::Serialize;

use super::args::{HostsToBuild, WaveFlags};
use super::{build as build_cli, table};
use crate::build::{self, BuildPhase, Options, Status};
use crate::config::{self, Fleet, Host};
use crate::deploy::{DeployLock, DeployOutcome, Publisher, Reason};
use crate::rollout::drive::{Built, Deploy, Placed};

/// Build hosts and publish a new signed release for each host whose system changed.
///
/// For every selected host that builds, the release (host, generation, store path, time,
/// signed with the fleet key) is written atomically to <state_dir>/publish/<host>/release
/// and appended to <state_dir>/history/<host>.jsonl. Hosts whose system is unchanged keep
/// their release (unless --force). A host that fails to build keeps its current release;
/// the others are still published, and the exit status is non-zero.
///
/// --rollback HOST republishes the system before the host's current one as a new, higher
/// generation (agents only accept newer generations). A later deploy publishes the
/// configuration's build again.
///
/// With [rollout] in bento.toml (or --wave), hosts go in waves: the first wave is published
/// now and the rollout recorded; `bento serve` publishes each next wave once enough hosts of
/// the current one succeeded and its soak time passed, and halts the rollout when too many
/// fail (`bento rollout status|pause|resume|abort`). A deploy while a rollout is still going
/// waits (refused) unless [rollout] supersede = "restart" or --supersede; one while it is
/// halted amends it: its first wave gets the new systems, `bento rollout resume` goes on.
///
/// The commit of the flake's git repository (and whether its tree had uncommitted changes)
/// is recorded with each release in the history.
///
/// --store-path HOST=PATH publishes a system built elsewhere (CI, a remote builder, a VM
/// test), without evaluating: PATH must be a NixOS system (bin/switch-to-configuration)
/// valid in this machine's Nix store, e.g. after `nix copy --to ssh://server PATH`. It is
/// signed and rooted like any release; publishing the same path again changes nothing.
///
/// Each published system is kept from Nix's garbage collector by a GC root; after
/// publishing, only the newest [fleet] keep_systems (default 5) distinct systems of the host
/// keep theirs, so `nix-collect-garbage` on the server frees older ones.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(super) selection: HostsToBuild,
    /// Publish each host's last build (from `bento build`) instead of building now.
    #[arg(long)]
    no_build: bool,
    /// Publish a new generation even for hosts whose system did not change.
    #[arg(long)]
    force: bool,
    /// Republish HOST's previous system as a new generation, instead of deploying.
    #[arg(long, value_name = "HOST", conflicts_with_all = ["hosts", "no_build", "force"])]
    rollback: Option<String>,
    /// Publish PATH for HOST as built elsewhere, instead of building (repeatable).
    #[arg(
        long = "store-path",
        value_name = "HOST=PATH",
        value_parser = parse_store_path_arg,
        conflicts_with_all = ["hosts", "no_build", "rollback"]
    )]
    store_paths: Vec<(String, String)>,
    /// Before publishing, show per host what changes (packages added, removed, version
    /// changes) between the system it reports running and the one to be published.
    #[arg(long)]
    diff: bool,
    #[command(flatten)]
    waves: WaveFlags,
}

/// `HOST=PATH` of `--store-path`: the split, and a path that is a store path by its form.
fn parse_store_path_arg(arg: &str) -> Result<(String, String), String> {
    let (host, path) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=PATH, got {arg:?}"))?;
    crate::release::check_host_name(host).map_err(|e| e.to_string())?;
    crate::nix::store::parse(path).map_err(|e| e.to_string())?;
    Ok((host.to_owned(), path.to_owned()))
}

/// Whether `path` can be published as a host's system: valid in this machine's store (so
/// its whole closure is, and the cache can serve it) and a NixOS system.
fn check_prebuilt(host: &str, path: &str) -> Result<(), String> {
    let parsed = crate::nix::store::parse(path).map_err(|e| e.to_string())?;
    match crate::nix::pathinfo::Store::local().query(&[parsed]) {
        Ok(_) => {}
        Err(crate::nix::pathinfo::PathInfoError::NotValid(_)) => {
            return Err(format!(
                "{path} is not in this machine's Nix store; copy it here first (`nix copy --to ssh://<this server> {path}` from where it was built)"
            ));
        }
        Err(e) => return Err(format!("cannot query {path}: {e}")),
    }
    if !std::path::Path::new(path)
        .join("bin/switch-to-configuration")
        .exists()
    {
        return Err(format!(
            "{path} is not a NixOS system for {host}: it has no bin/switch-to-configuration (pass config.system.build.toplevel)"
        ));
    }
    Ok(())
}

/// `--store-path`: one report per host, with the path when it can be published.
fn prebuilt(fleet: &Fleet, paths: &[(String, String)]) -> anyhow::Result<Vec<HostReport>> {
    let mut reports: Vec<HostReport> = Vec::new();
    for (host, path) in paths {
        if !fleet.hosts.contains_key(host) {
            anyhow::bail!(
                "--store-path {host}=...: {host} is not a host of {}",
                fleet.file.display()
            );
        }
        if reports.iter().any(|r| &r.host == host) {
            anyhow::bail!("--store-path names {host} twice");
        }
        let (store_path, error) = match check_prebuilt(host, path) {
            Ok(()) => (Some(path.clone()), None),
            Err(e) => (None, Some(e)),
        };
        reports.push(HostReport {
            host: host.clone(),
            build: if error.is_none() {
                "prebuilt"
            } else {
                "failed"
            },
            build_phase: None,
            store_path,
            release: None,
            wave: None,
            error,
        });
    }
    Ok(reports)
}

/// One host's line of the deploy summary (and of `--json`).
#[derive(Debug, Serialize)]
struct HostReport {
    host: String,
    /// `built`, `reused` (--no-build), `prebuilt` (--store-path) or `failed`.
    build: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_phase: Option<BuildPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<DeployOutcome>,
    /// Published when this wave (`2 (web)`) of the rollout starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    wave: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let HostsToBuild {
        hosts,
        fleet,
        jobs,
        json,
    } = args.selection;
    let fleet = fleet.load()?;
    let key = fleet.load_signing_key()?;
    if let Some(host) = &args.rollback {
        let selected = config::select(&fleet, std::slice::from_ref(host))?;
        if host.starts_with('@') || selected.len() != 1 {
            anyhow::bail!("--rollback takes one host name, not a tag");
        }
        let _lock = DeployLock::acquire(&fleet.state)?;
        let commit = flake_commit(&fleet);
        let publisher = Publisher {
            state: &fleet.state,
            key: &key,
            now: crate::clock::unix_now(),
            keep_systems: fleet.keep_systems,
            commit: commit.as_ref(),
        };
        let files = crate::deploy::read_sources(&fleet, host)?;
        let outcome = publisher.rollback(host, &files)?;
        wait_for_server(&fleet, [(host.as_str(), &outcome)]);
        if json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else if let DeployOutcome::Published {
            generation,
            store_path,
            previous,
            ..
        } = &outcome
        {
            let was = previous
                .map(|p| format!(" (was generation {p})"))
                .unwrap_or_default();
            println!("{host}: rolled back: generation {generation} publishes {store_path}{was}");
        }
        return Ok(ExitCode::SUCCESS);
    }

    let hosts: Vec<Host> = config::select(&fleet, &hosts)?
        .into_iter()
        .cloned()
        .collect();
    let _lock = DeployLock::acquire(&fleet.state)?;
    let mut reports = if !args.store_paths.is_empty() {
        prebuilt(&fleet, &args.store_paths)?
    } else if args.no_build {
        reuse_builds(&fleet, &hosts)
    } else {
        let options = Options {
            jobs: build_cli::jobs(&fleet, jobs),
            dry_run: false,
        };
        build_cli::build_with_progress(&fleet, &hosts, options)?
            .into_iter()
            .map(|r| match r.status {
                Status::Built { store_path, .. } => HostReport {
                    host: r.host,
                    build: "built",
                    build_phase: None,
                    store_path: Some(store_path),
                    release: None,
                    wave: None,
                    error: None,
                },
                Status::Failed { phase, error, .. } => HostReport {
                    host: r.host,
                    build: "failed",
                    build_phase: Some(phase),
                    store_path: None,
                    release: None,
                    wave: None,
                    error: Some(error),
                },
                Status::Evaluated { .. } => HostReport {
                    host: r.host,
                    build: "failed",
                    build_phase: Some(BuildPhase::Build),
                    store_path: None,
                    release: None,
                    wave: None,
                    error: Some("evaluated but not built".into()),
                },
            })
            .collect()
    };

    if args.diff {
        show_diffs(&fleet, &reports, json);
    }
    let policy = args.waves.policy(&fleet)?;
    let commit = flake_commit(&fleet);
    let built: Vec<Built> = reports
        .iter()
        .filter_map(|r| {
            Some(Built {
                host: r.host.clone(),
                store_path: r.store_path.clone()?,
            })
        })
        .collect();
    let deploy = Deploy {
        fleet: &fleet,
        key: &key,
        commit: commit.as_ref(),
        policy: policy.as_ref(),
        supersede: args.waves.supersede,
        force: args.force,
    };
    let deployed = deploy.run(&built, crate::clock::unix_now())?;
    for h in deployed.hosts {
        let Some(report) = reports.iter_mut().find(|r| r.host == h.host) else {
            continue;
        };
        match h.outcome {
            Ok(Placed::Now { release }) => report.release = Some(release),
            Ok(Placed::Later { wave, number }) => report.wave = Some(format!("{number} ({wave})")),
            Err(e) => report.error = Some(e),
        }
    }
    wait_for_server(
        &fleet,
        reports
            .iter()
            .filter_map(|r| Some((r.host.as_str(), r.release.as_ref()?))),
    );
    let said = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if let Some(old) = &deployed.replaced {
        said(format!("replaced {}", old.headline()));
    }
    if let Some(r) = &deployed.rollout {
        said(format!(
            "{}\n`bento serve` publishes the next waves; see `bento rollout status`",
            r.headline()
        ));
    }

    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", summary(&reports));
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| match (r.build_phase, r.build) {
            (Some(phase), _) => format!("{} ({phase} failed)", r.host),
            (None, "failed") => format!("{} (refused)", r.host),
            (None, _) => format!("{} (publishing failed)", r.host),
        })
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} of {} hosts not deployed: {}",
            failed.len(),
            reports.len(),
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// How long a deploy waits for a running `bento serve` to show hosts their new releases.
const SERVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Returns once a `bento serve` running on this state directory shows the hosts the
/// releases just published, that is once it serves their closures, so that an agent run
/// right after the deploy finds both; says so when it does not within [`SERVE_WAIT`].
fn wait_for_server<'a>(
    fleet: &Fleet,
    outcomes: impl IntoIterator<Item = (&'a str, &'a DeployOutcome)>,
) {
    use crate::server::shown::{Waited, wait_until_shown};
    let wanted = outcomes
        .into_iter()
        .filter_map(|(host, outcome)| match outcome {
            DeployOutcome::Published { generation, .. } => Some((host.to_owned(), *generation)),
            DeployOutcome::Unchanged { .. } => None,
        })
        .collect();
    if let Waited::TimedOut(hosts) = wait_until_shown(fleet.state.root(), &wanted, SERVE_WAIT) {
        eprintln!(
            "warning: after {} s, the running bento serve does not serve the new releases of {} yet; their agents see them once it does (its log says why)",
            SERVE_WAIT.as_secs(),
            hosts.join(", ")
        );
    }
}

/// `--diff`: each built host's package changes, on stderr when the summary is JSON.
fn show_diffs(fleet: &Fleet, reports: &[HostReport], json: bool) {
    for r in reports {
        let Some(to) = &r.store_path else { continue };
        let text = match super::diff::running(fleet, &r.host) {
            Ok(Some(from)) => match crate::status::diff::closure_diff(&from, to) {
                Ok(d) => super::diff::render(&d),
                Err(e) => format!("cannot compare: {e}\n"),
            },
            Ok(None) => "has not reported a running system yet: everything is new\n".into(),
            Err(e) => format!("cannot read its reports: {}\n", super::describe_error(&e)),
        };
        let text = format!("== {} ==\n{text}", r.host);
        if json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
}

fn reuse_builds(fleet: &Fleet, hosts: &[Host]) -> Vec<HostReport> {
    hosts
        .iter()
        .map(|h| {
            let (store_path, error) = match build::record::read(&fleet.state, &h.name) {
                Ok(Some(rec)) => (Some(rec.store_path), None),
                Ok(None) => (
                    None,
                    Some(format!(
                        "host {} has no recorded build; run `bento build {}` first, or deploy without --no-build",
                        h.name, h.name
                    )),
                ),
                Err(e) => (None, Some(e.to_string())),
            };
            HostReport {
                host: h.name.clone(),
                build: if store_path.is_some() { "reused" } else { "failed" },
                build_phase: store_path.is_none().then_some(BuildPhase::Build),
                store_path,
                release: None,
                wave: None,
                error,
            }
        })
        .collect()
}

fn release_text(outcome: &DeployOutcome) -> String {
    match outcome {
        DeployOutcome::Published {
            generation,
            reason,
            previous,
            ..
        } => {
            let why = match reason {
                Reason::First => "first",
                Reason::Changed => "changed",
                Reason::Resigned => "re-signed",
                Reason::FilesChanged => "files changed",
                Reason::Forced => "forced",
                Reason::Rollback => "rollback",
            };
            let was = previous.map(|p| format!(", was {p}")).unwrap_or_default();
            format!("generation {generation} ({why}{was})")
        }
        DeployOutcome::Unchanged { generation, .. } => format!("unchanged ({generation})"),
    }
}

fn summary(reports: &[HostReport]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let build = match r.build_phase {
                Some(phase) => format!("FAILED ({phase})"),
                None => r.build.to_owned(),
            };
            let release = match (&r.release, &r.error, r.build_phase) {
                (Some(o), _, _) => release_text(o),
                (None, None, None) if r.wave.is_some() => {
                    format!("in wave {}", r.wave.as_deref().unwrap_or_default())
                }
                (None, Some(_), None) => "FAILED".to_owned(),
                _ => "-".to_owned(),
            };
            let result = r
                .error
                .clone()
                .or_else(|| r.store_path.clone())
                .unwrap_or_default();
            vec![r.host.clone(), build, release, result]
        })
        .collect();
    table::render(&["HOST", "BUILD", "RELEASE", "RESULT"], &rows)
}

/// The commit of the flake's repository, when the flake is a local path in one; said on
/// stderr when its tree has uncommitted changes (recorded as dirty).
fn flake_commit(fleet: &Fleet) -> Option<crate::deploy::Commit> {
    let dir = std::path::Path::new(&fleet.flake);
    if !dir.is_absolute() {
        return None;
    }
    let commit = crate::gitops::git::describe(dir)?;
    if commit.dirty {
        eprintln!(
            "note: {} has uncommitted changes; the releases record commit {} as dirty",
            dir.display(),
            commit.short()
        );
    }
    Some(commit)
}
