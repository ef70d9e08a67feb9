//! `bento diff HOST`: what a deploy would change on a host, package by package (added,
//! removed, version changes, sizes), between the system it runs and its newest build.

use std::process::ExitCode;

use anyhow::Context as _;

use super::args::FleetFile;
use crate::build;
use crate::config::{self, Fleet};
use crate::status::{self, diff::ClosureDiff, diff::PackageChange};

/// Show the package-level difference between the system HOST runs (from its newest report)
/// and its newest build (from `bento build` or `bento deploy`), like nvd: packages added,
/// removed, changed in version, and closure sizes. Both closures must be in the local store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The host.
    host: String,
    #[command(flatten)]
    fleet: FleetFile,
    /// Compare from this system instead of the one the host reports running.
    #[arg(long, value_name = "PATH")]
    from: Option<String>,
    /// Compare to this system instead of the host's newest build.
    #[arg(long, value_name = "PATH")]
    to: Option<String>,
    /// Print JSON (schema 1, see docs/status.md).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let fleet = args.fleet.load()?;
    let selected = config::select(&fleet, std::slice::from_ref(&args.host))?;
    if args.host.starts_with('@') || selected.len() != 1 {
        anyhow::bail!("bento diff takes one host name, not a tag");
    }
    let from = match args.from {
        Some(p) => p,
        None => running(&fleet, &args.host)?.with_context(|| {
            format!(
                "host {} has not reported a running system yet; give --from PATH",
                args.host
            )
        })?,
    };
    let to = match args.to {
        Some(p) => p,
        None => build::record::read(&fleet.state, &args.host)?
            .map(|r| r.store_path)
            .with_context(|| {
                format!(
                    "host {} has no recorded build; run `bento build {}` or give --to PATH",
                    args.host, args.host
                )
            })?,
    };
    let d = status::diff::closure_diff(&from, &to)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", render(&d));
    }
    Ok(ExitCode::SUCCESS)
}

/// The store path the host reports running (its newest report naming one).
pub fn running(fleet: &Fleet, host: &str) -> anyhow::Result<Option<String>> {
    let reports = status::collect::reports(&fleet.state, host, status::collect::RECENT_REPORTS)?;
    Ok(status::derive::newest(&reports, |r| r.running.is_some()).and_then(|r| r.running.clone()))
}

/// `12.3 KiB`, `4.0 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn delta(d: i128) -> String {
    let sign = if d < 0 { "-" } else { "+" };
    format!(
        "{sign}{}",
        size(u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

fn versions(v: &[String]) -> String {
    let shown: Vec<&str> = v
        .iter()
        .map(|s| if s.is_empty() { "<none>" } else { s.as_str() })
        .collect();
    shown.join(", ")
}

/// The human rendering, nvd style.
pub fn render(d: &ClosureDiff) -> String {
    let mut out = format!("<<< {}\n>>> {}\n", d.from, d.to);
    let section = |out: &mut String,
                   title: &str,
                   items: &[PackageChange],
                   line: &dyn Fn(&PackageChange) -> String| {
        if items.is_empty() {
            return;
        }
        out.push_str(title);
        out.push('\n');
        let width = items.iter().map(|c| c.pname.len()).max().unwrap_or(0);
        for c in items {
            out.push_str(&format!("  {:<width$}  {}\n", c.pname, line(c)));
        }
    };
    section(&mut out, "Version changes:", &d.changed, &|c| {
        format!(
            "{} -> {}  ({})",
            versions(&c.from),
            versions(&c.to),
            delta(c.size_delta())
        )
    });
    section(&mut out, "Added packages:", &d.added, &|c| {
        format!("{}  ({})", versions(&c.to), delta(c.size_delta()))
    });
    section(&mut out, "Removed packages:", &d.removed, &|c| {
        format!("{}  ({})", versions(&c.from), delta(c.size_delta()))
    });
    if d.is_empty() {
        out.push_str("No package changes.\n");
    }
    out.push_str(&format!(
        "Closure size: {} ({} paths) -> {} ({} paths), {}\n",
        size(d.size_from),
        d.paths_from,
        size(d.size_to),
        d.paths_to,
        delta(i128::from(d.size_to) - i128::from(d.size_from)),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_deltas() {
        for (b, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (5 << 20, "5.0 MiB"),
        ] {
            assert_eq!(size(b), want);
        }
        assert_eq!(delta(-2048), "-2.0 KiB");
        assert_eq!(delta(10), "+10 B");
    }
}
