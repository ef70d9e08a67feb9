//! Reads what `bento status` needs from the state directory: each host's release
//! (`publish/<host>/release`), its agent's reports (`publish/<host>/reports/*.json`) and the
//! SFTP server's record of its last login (`seen/<host>`). Reports that do not parse (an
//! agent can upload anything) are skipped with a warning; a release that does not parse is
//! an error (the server wrote it).

use std::path::Path;

use super::StatusError;
use super::view::{self, FleetStatus, HostStatus, SCHEMA};
use crate::config::StateDir;
use crate::release::Release;
use crate::report::Report;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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

/// Every readable report of the host (upload temporaries and reports naming another host
/// are left out), oldest first by file name.
pub fn reports(state: &StateDir, host: &str) -> Result<Vec<Report>, StatusError> {
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
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let Some(bytes) = read_optional(&path)? else {
            continue; // rotated away meanwhile
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
    let reports = reports(state, host)?;
    let login = last_login(state, host)?;
    Ok(view::summarize(
        host,
        release.as_ref(),
        &reports,
        login,
        now,
        stale_after,
    ))
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
        .map(|h| collect_host(state, h, now, stale_after))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FleetStatus {
        schema: SCHEMA,
        now,
        stale_after_secs: stale_after,
        hosts,
    })
}
