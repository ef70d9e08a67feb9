//! `bento rollout status|pause|resume|abort`: the current rollout, and an operator's say
//! over it. The commands change the rollout record under the deploy lock; `bento serve`
//! acts on it within seconds.

use std::process::ExitCode;

use super::args::FleetFile;
use super::table;
use crate::rollout::decide::{self, Command};
use crate::rollout::record::{self, Progress, Rollout, RolloutState};
use crate::status::view::ago;

/// Show or steer the current rollout (see `bento deploy` and [rollout] in bento.toml).
///
/// status: the rollout's state, each wave (hosts, threshold, soak, how it went) and each
/// host (its wave, progress, generation and what was last heard), and what happened. Exit
/// status 0, or 3 when the rollout is halted, 1 when there is none.
///
/// pause: publish nothing more until resumed. resume: go on with a paused or halted
/// rollout from its current wave, whose count restarts (a fresh timeout, the soak again).
/// abort: end it; nothing more is published and nothing is republished: hosts keep what
/// they have.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the current rollout.
    Status(Options),
    /// Publish nothing more until `bento rollout resume`.
    Pause(Options),
    /// Go on with a paused or halted rollout.
    Resume(Options),
    /// End the rollout; hosts keep what they have.
    Abort(Options),
}

#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    fleet: FleetFile,
    /// Print the rollout record as JSON (see docs/rollouts.md).
    #[arg(long)]
    json: bool,
}

/// Exit status of `status` for a halted rollout.
const HALTED: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (options, command) = match args.action {
        Action::Status(o) => (o, None),
        Action::Pause(o) => (o, Some(Command::Pause)),
        Action::Resume(o) => (o, Some(Command::Resume)),
        Action::Abort(o) => (o, Some(Command::Abort)),
    };
    let fleet = options.fleet.load()?;
    let now = crate::clock::unix_now();
    let rollout = match command {
        Some(c) => crate::rollout::drive::command(&fleet.state, c, now)?,
        None => record::load(&fleet.state)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no rollout was ever recorded in {}; `bento deploy` starts one when [rollout] or --wave gives waves",
                fleet.state.rollout().display()
            )
        })?,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&rollout)?);
    } else if command.is_some() {
        println!("{}", rollout.headline());
        if command == Some(Command::Resume) {
            println!("`bento serve` goes on with it within seconds.");
        }
    } else {
        print!("{}", render(&rollout, now));
    }
    Ok(
        if command.is_none() && rollout.state == RolloutState::Halted {
            ExitCode::from(HALTED)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// How a wave went, in a few words.
pub fn wave_text(r: &Rollout, i: usize, now: u64) -> String {
    let Some(w) = r.waves.get(i) else {
        return String::new();
    };
    if w.started.is_none() {
        return "not started".into();
    }
    let t = decide::tally(w, false);
    let counts = format!(
        "{} of {} succeeded, {} failed, {} waiting",
        t.succeeded, t.counted, t.failed, t.waiting
    );
    if let Some(at) = w.passed {
        return format!("passed {} ago ({counts})", ago(now.saturating_sub(at)));
    }
    if i != r.wave {
        return counts;
    }
    match w.met {
        Some(met) if r.state == RolloutState::Running => format!(
            "{counts}; soak ends in {}",
            ago((met + w.soak_secs).saturating_sub(now))
        ),
        _ => counts,
    }
}

/// The whole rollout for humans.
pub fn render(r: &Rollout, now: u64) -> String {
    let mut out = format!("{}\n", r.headline());
    out.push_str(&format!(
        "created {} ago; a host has {} s to succeed once its wave starts\n\n",
        ago(now.saturating_sub(r.created)),
        r.timeout_secs
    ));
    let rows: Vec<Vec<String>> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            vec![
                format!(
                    "{}{} {}",
                    if i == r.wave { "*" } else { " " },
                    i + 1,
                    w.name
                ),
                w.targets.len().to_string(),
                format!("{}%", w.threshold),
                format!("{}s", w.soak_secs),
                wave_text(r, i, now),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["WAVE", "HOSTS", "THRESHOLD", "SOAK", "PROGRESS"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.targets.iter().map(move |t| (i, t)))
        .map(|(i, t)| {
            vec![
                t.host.clone(),
                (i + 1).to_string(),
                t.progress.as_str().to_owned(),
                t.generation.map_or("-".into(), |g| format!("g{g}")),
                match (t.progress, &t.detail) {
                    (Progress::NotStarted, _) => format!(
                        "keeps g{} until its wave",
                        t.previous.map_or("-".into(), |g| g.to_string())
                    ),
                    (_, Some(d)) => printable(d),
                    (_, None) => String::new(),
                },
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["HOST", "WAVE", "PROGRESS", "GEN", "DETAIL"],
        &rows,
    ));
    out.push_str("\nevents:\n");
    for e in r.events.iter().rev().take(10).rev() {
        out.push_str(&format!(
            "  {} ago  {}\n",
            ago(now.saturating_sub(e.at)),
            printable(&e.text)
        ));
    }
    out
}

/// Text agents wrote, with control characters replaced.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}
