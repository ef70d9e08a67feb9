//! Reads what `bento status` needs from the state directory: each host's release
//! (`publish/<host>/release`), its agent's reports (`publish/<host>/reports/*.json`) and the
//! SFTP server's record of its last login (`seen/<host>`). Reports that cannot be read or
//! parsed (an agent can upload anything) are skipped with a warning; a release that cannot
//! be read or parsed makes that host `unreadable` in the fleet view (the others are shown
//! as usual) and is an error for that host alone.

use std::path::Path;

use super::StatusError;
use super::view::{self, FleetStatus, HostStatus, SCHEMA};
use crate::config::StateDir;
use crate::release::Release;
use crate::report::Report;

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StatusError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StatusError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The host's current release, if one was published (its signature is not checked: this is
/// the server's own file).
pub fn release(state: &StateDir, host: &str) -> Result<Option<Release>, StatusError> {
    let path = state.release(host);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(None);
    };
    Release::parse_untrusted(&bytes)
        .map(Some)
        .map_err(|e| StatusError::Release {
            host: host.to_owned(),
            path,
            problem: e.to_string(),
        })
}

/// How many of the newest reports `bento status` reads besides the newest one about the
/// current generation: enough for the running system, the last success and the last error
/// in practice, without reading up to `max_reports` (200) bodies per host and poll.
pub const RECENT_REPORTS: usize = 16;

/// What a report file name (`<unix-millis>-g<generation>-<outcome>.json`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportName {
    pub finished_ms: u64,
    pub generation: u64,
}

/// Reads a report file name. Used only to choose which files to read: what counts is the
/// content.
pub fn parse_report_name(name: &str) -> Option<ReportName> {
    let stem = name.strip_suffix(".json")?;
    let (millis, rest) = stem.split_once("-g")?;
    let (generation, _outcome) = rest.split_once('-')?;
    Some(ReportName {
        finished_ms: millis.parse().ok()?,
        generation: generation.parse().ok()?,
    })
}

/// Which of `names` (sorted oldest first) to read: the newest `recent`, and the newest one
/// naming `generation`. Oldest first.
pub fn choose_reports(names: &[String], generation: Option<u64>, recent: usize) -> Vec<&str> {
    let start = names.len().saturating_sub(recent);
    let mut chosen: Vec<&str> = Vec::new();
    let names_gen = |n: &&String, g: u64| parse_report_name(n).is_some_and(|r| r.generation == g);
    if let Some(g) = generation.filter(|g| !names[start..].iter().any(|n| names_gen(&n, *g)))
        && let Some(n) = names[..start].iter().rev().find(|n| names_gen(n, g))
    {
        chosen.push(n);
    }
    chosen.extend(names[start..].iter().map(String::as_str));
    chosen
}

/// The names of the host's report files (upload temporaries left out), oldest first.
pub fn report_names(state: &StateDir, host: &str) -> Result<Vec<String>, StatusError> {
    let dir = state.reports_dir(host);
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StatusError::Read { path: dir, source }),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads the named reports of the host, skipping unreadable ones and reports naming
/// another host.
pub fn read_reports<'a>(
    state: &StateDir,
    host: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Report>, StatusError> {
    let dir = state.reports_dir(host);
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(name);
        let bytes = match read_optional(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue, // rotated away meanwhile
            Err(e) => {
                tracing::warn!(host, error = %e, "report cannot be read; ignored");
                continue;
            }
        };
        match Report::parse(&bytes) {
            Ok(r) if r.host == host => out.push(r),
            Ok(r) => {
                tracing::warn!(host, file = %path.display(), named = %r.host, "report names another host; ignored")
            }
            Err(e) => {
                tracing::warn!(host, file = %path.display(), error = %e, "unreadable report ignored")
            }
        }
    }
    Ok(out)
}

/// The newest `count` readable reports of the host, oldest first.
pub fn reports(state: &StateDir, host: &str, count: usize) -> Result<Vec<Report>, StatusError> {
    let names = report_names(state, host)?;
    read_reports(state, host, choose_reports(&names, None, count))
}

/// The SFTP server's record of the host's last login, Unix seconds.
pub fn last_login(state: &StateDir, host: &str) -> Result<Option<u64>, StatusError> {
    let path = state.last_seen(host);
    Ok(read_optional(&path)?.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
}

/// One host's status now.
pub fn collect_host(
    state: &StateDir,
    host: &str,
    now: u64,
    stale_after: u64,
) -> Result<HostStatus, StatusError> {
    let release = release(state, host)?;
    let names = report_names(state, host)?;
    let chosen = choose_reports(
        &names,
        release.as_ref().map(|r| r.generation),
        RECENT_REPORTS,
    );
    let reports = read_reports(state, host, chosen)?;
    let login = last_login(state, host)?;
    let mut status = view::summarize(host, release.as_ref(), &reports, login, now, stale_after);
    if let Some(desired) = status.desired.as_mut() {
        desired.commit = commit_of(state, host, desired.generation);
    }
    Ok(status)
}

/// The commit `generation` of `host` was built from, from the end of its history (a
/// damaged or missing history only loses the commit).
fn commit_of(state: &StateDir, host: &str, generation: u64) -> Option<String> {
    crate::deploy::history::read_tail(&state.history(host))
        .ok()?
        .into_iter()
        .rev()
        .find(|e| e.generation == generation)?
        .source()
        .map(|c| c.short())
}

/// [`collect_host`], or, when the host's files cannot be read, an `unreadable` host saying
/// why: one broken host never hides the others.
pub fn collect_host_or_unreadable(
    state: &StateDir,
    host: &str,
    now: u64,
    stale_after: u64,
) -> HostStatus {
    collect_host(state, host, now, stale_after).unwrap_or_else(|e| {
        tracing::warn!(host, error = %e, "host shown as unreadable");
        view::unreadable(host, &e.to_string())
    })
}

/// The status of `hosts`, in the order given.
pub fn collect<'a>(
    state: &StateDir,
    hosts: impl IntoIterator<Item = &'a str>,
    now: u64,
    stale_after: u64,
) -> Result<FleetStatus, StatusError> {
    let hosts = hosts
        .into_iter()
        .map(|h| collect_host_or_unreadable(state, h, now, stale_after))
        .collect();
    Ok(FleetStatus {
        schema: SCHEMA,
        now,
        stale_after_secs: stale_after,
        hosts,
        rollout: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unreadable_release_makes_only_its_host_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let key = crate::nix::keys::SecretKey::generate("fleet").unwrap();
        let path = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-nixos-system-x";
        let hosts: Vec<String> = (1..=10).map(|i| format!("web{i}")).collect();
        for (i, host) in hosts.iter().enumerate() {
            let file = state.release(host);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let bytes = if i == 6 {
                b"{\"torn".to_vec()
            } else {
                Release::sign(host, 1, path, 1_790_000_000, &key)
                    .unwrap()
                    .to_bytes()
            };
            std::fs::write(&file, bytes).unwrap();
        }
        // An unreadable report (a directory where a file should be) is skipped too.
        std::fs::create_dir_all(state.reports_dir("web1").join("1-g1-applied.json")).unwrap();

        let fleet = collect(&state, hosts.iter().map(String::as_str), 1_790_000_100, 600).unwrap();
        let states: Vec<(&str, &str)> = fleet
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.state.as_str()))
            .collect();
        let unreadable: Vec<&str> = states
            .iter()
            .filter(|(_, s)| *s == "unreadable")
            .map(|(h, _)| *h)
            .collect();
        assert_eq!(unreadable, ["web7"], "{states:?}");
        assert!(
            states
                .iter()
                .filter(|(h, _)| *h != "web7")
                .all(|(_, s)| *s == "never-seen"),
            "the nine others are shown as usual: {states:?}"
        );
        let web7 = &fleet.hosts[6];
        assert!(
            web7.last_error
                .as_deref()
                .is_some_and(|e| e.contains("web7")),
            "{web7:?}"
        );
    }

    #[test]
    fn report_names_parse() {
        let cases = [
            (
                "1790000012345-g4-rolled-back.json",
                Some((1_790_000_012_345, 4)),
            ),
            ("0000000000001-g0-refused.json", Some((1, 0))),
            ("1-g2-applied", None),
            ("x-g2-applied.json", None),
            ("17-gx-applied.json", None),
            ("notes.json", None),
        ];
        for (name, want) in cases {
            let got = parse_report_name(name).map(|r| (r.finished_ms, r.generation));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn chooses_the_recent_and_the_newest_of_the_generation() {
        let names: Vec<String> = [
            "01-g1-applied.json",
            "02-g2-deploying.json",
            "03-g2-applied.json",
            "04-g3-refused.json",
            "05-g3-refused.json",
            "06-g3-refused.json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        type Case = (Option<u64>, usize, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (Some(3), 2, vec!["05-g3-refused.json", "06-g3-refused.json"]),
            (
                Some(2),
                2,
                vec![
                    "03-g2-applied.json",
                    "05-g3-refused.json",
                    "06-g3-refused.json",
                ],
            ),
            (Some(9), 1, vec!["06-g3-refused.json"]),
            (None, 0, vec![]),
        ];
        for (generation, recent, want) in cases {
            assert_eq!(
                choose_reports(&names, generation, recent),
                want,
                "{generation:?} {recent}"
            );
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(choose_reports(&names, Some(1), 10), all);
    }
}
