//! `bento status`: where each selected host stands — its release, what it runs, its state,
//! when it was last heard from, and its last error. `--json` prints the schema documented in
//! `docs/status.md`; `--watch` redraws whenever something changes.

use std::process::ExitCode;
use std::time::Duration;

use super::args::FleetFile;
use super::table;
use crate::config;
use crate::status::{self, FleetStatus, HostStatus, view::ago};

/// Show where each host stands: its release (desired generation and system), the system it
/// runs, its state, when it was last seen, and its last error.
///
/// States: up-to-date, pending (a release it has not started on), deploying, unconfirmed
/// (applied, being confirmed), activation-failed, rolled-back, rollback-failed (the
/// rollback itself failed: an operator must look), retry-later (rolled back
/// while the server was unreachable; will retry), copy-failed, refused, stale (silent for
/// more than [fleet] stale_after_secs), never-seen, not-deployed (no release yet). A report
/// counts for the generation it names, never by when it arrived.
///
/// Exit status: 0 when every selected host is up-to-date, 3 when some host is not, 1 when
/// the status cannot be read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hosts to show: host names and @tags. None means every host.
    #[arg(value_name = "HOST|@TAG")]
    hosts: Vec<String>,
    #[command(flatten)]
    fleet: FleetFile,
    /// Print JSON (schema 1, see docs/status.md) instead of a table.
    #[arg(long)]
    json: bool,
    /// Redraw whenever the state directory changes (checked every second), until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

/// Exit status when some host is not up to date.
const NOT_ALL_UP_TO_DATE: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let fleet = args.fleet.load()?;
    let hosts: Vec<String> = config::select(&fleet, &args.hosts)?
        .into_iter()
        .map(|h| h.name.clone())
        .collect();
    let get = || -> anyhow::Result<FleetStatus> {
        let mut s = status::collect(
            &fleet.state,
            hosts.iter().map(String::as_str),
            crate::clock::unix_now(),
            fleet.stale_after_secs,
        )?;
        s.rollout = crate::rollout::record::load(&fleet.state)?.map(|r| r.view());
        Ok(s)
    };
    let mut fleet_status = get()?;
    let mut shown = String::new();
    loop {
        let text = if args.json {
            format!("{}\n", serde_json::to_string_pretty(&fleet_status)?)
        } else {
            render(&fleet_status)
        };
        if !args.watch {
            print!("{text}");
            break;
        }
        if text != shown {
            // Clear the screen and home the cursor, then draw.
            print!("\x1b[2J\x1b[H{text}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            shown = text;
        }
        std::thread::sleep(Duration::from_secs(1));
        fleet_status = get()?;
    }
    Ok(if fleet_status.all_up_to_date() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_ALL_UP_TO_DATE)
    })
}

fn short_path(path: &str) -> String {
    // /nix/store/<32 hash chars>-name → <first 8 hash chars>…-name
    match path.strip_prefix("/nix/store/") {
        Some(rest) if rest.len() > 33 => format!("{}…{}", &rest[..8], &rest[32..]),
        Some(rest) => rest.to_owned(),
        None => path.to_owned(),
    }
}

fn row(h: &HostStatus) -> Vec<String> {
    let dash = || "-".to_owned();
    let desired = h
        .desired
        .as_ref()
        .map(|d| {
            let commit = d
                .commit
                .as_ref()
                .map(|c| format!(" @{c}"))
                .unwrap_or_default();
            format!("g{} {}{commit}", d.generation, short_path(&d.store_path))
        })
        .unwrap_or_else(dash);
    let running = match (&h.running, &h.desired) {
        (Some(r), Some(d)) if *r == d.store_path => "= desired".to_owned(),
        (Some(r), _) => short_path(r),
        (None, _) => dash(),
    };
    vec![
        h.host.clone(),
        h.state.as_str().to_owned(),
        desired,
        running,
        h.seconds_since_seen
            .map(ago)
            .unwrap_or_else(|| "never".into()),
        h.seconds_since_release.map(ago).unwrap_or_else(dash),
        printable(h.last_error.as_deref().unwrap_or_default()),
    ]
}

/// Agent-written text with control characters (terminal escapes) replaced.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The human table.
pub fn render(fleet: &FleetStatus) -> String {
    let rows: Vec<Vec<String>> = fleet.hosts.iter().map(row).collect();
    let mut out = table::render(
        &[
            "HOST",
            "STATE",
            "DESIRED",
            "RUNNING",
            "SEEN",
            "RELEASED",
            "LAST ERROR",
        ],
        &rows,
    );
    let up = fleet
        .hosts
        .iter()
        .filter(|h| h.state == status::HostState::UpToDate)
        .count();
    out.push_str(&format!("{up} of {} hosts up to date\n", fleet.hosts.len()));
    if let Some(r) = &fleet.rollout {
        out.push_str(&format!("{}\n", printable(&r.headline)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_cannot_drive_the_terminal() {
        assert_eq!(printable("ok \x1b[2Jgone\r"), "ok \u{fffd}[2Jgone\u{fffd}");
        assert_eq!(
            short_path("/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top"),
            "6ns18gbb…-top"
        );
    }
}
