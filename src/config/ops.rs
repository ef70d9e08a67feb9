//! The fleet file's operations tables: `[rollout]` (the waves a deploy goes through) and
//! `[fleet] git` (the branch `bento serve --follow` deploys). Parsed from their raw TOML
//! forms and validated against the hosts, with messages naming the field at fault.
//!
//! ```toml
//! [fleet]
//! git = { url = "https://git.example/fleet.git", branch = "main", interval_secs = 60,
//!         hook_secret_file = "/run/keys/bento-hook" }
//! # or a local repository: git = "/srv/fleet"
//!
//! [rollout]
//! timeout_secs = 1800          # a host silent this long after its wave started has failed
//! supersede = "wait"           # or "restart": what a new deploy does to a running rollout
//! [[rollout.waves]]
//! name = "canary"
//! hosts = ["@canary"]          # host names, @tags, or "*" (every host of no earlier wave)
//! threshold = 100              # percent of the wave's hosts that must succeed
//! soak_secs = 300              # then wait this long before the next wave
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Host;

/// `[rollout]` defaults.
pub mod defaults {
    /// Seconds a host of a started wave may take to succeed before it counts as failed.
    pub const TIMEOUT_SECS: u64 = 1800;
    /// Percent of a wave's hosts that must succeed.
    pub const THRESHOLD: u8 = 100;
    /// The branch followed when `[fleet] git` names none.
    pub const BRANCH: &str = "main";
    /// Seconds between two fetches of the followed branch.
    pub const INTERVAL_SECS: u64 = 60;
    /// The fleet file's name inside the followed repository.
    pub const FLEET_FILE: &str = "bento.toml";
}

/// The waves a deploy goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// In order; each host belongs to the first wave that selects it.
    pub waves: Vec<WaveSpec>,
    pub timeout_secs: u64,
    pub supersede: Supersede,
}

/// One wave as the fleet file (or `bento deploy --wave`) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSpec {
    pub name: String,
    /// Host names, `@tag`s, or `*` for every host no earlier wave took.
    pub hosts: Vec<String>,
    /// Percent (1 to 100) of the wave's changed hosts that must succeed.
    pub threshold: u8,
    /// Seconds to wait once the threshold is met, before the next wave.
    pub soak_secs: u64,
}

/// What a new deploy does to a rollout that is still running or paused (a halted one is
/// always amended: see `rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Supersede {
    /// The new deploy waits: `bento deploy` refuses (unless `--supersede`), the follower
    /// deploys the commit once the rollout has ended.
    Wait,
    /// The new deploy replaces it and starts again at the first wave.
    Restart,
}

impl RolloutPolicy {
    /// Assigns `hosts` (the selected ones, by name) to waves: each host to the first wave
    /// that names it, by name, by tag, or with `*`. Waves left without hosts are dropped;
    /// hosts no wave takes are returned apart (the fleet file's check makes that impossible
    /// for the whole fleet; `--wave` flags may leave some out).
    pub fn assign<'a>(
        &self,
        hosts: &[&'a Host],
    ) -> (Vec<(&WaveSpec, Vec<&'a Host>)>, Vec<&'a Host>) {
        let mut left: Vec<&Host> = hosts.to_vec();
        let mut waves = Vec::new();
        for wave in &self.waves {
            let (taken, rest): (Vec<&Host>, Vec<&Host>) =
                left.into_iter().partition(|h| selects(&wave.hosts, h));
            left = rest;
            if !taken.is_empty() {
                waves.push((wave, taken));
            }
        }
        (waves, left)
    }
}

fn selects(patterns: &[String], host: &Host) -> bool {
    patterns.iter().any(|p| match p.strip_prefix('@') {
        _ if p == "*" => true,
        Some(tag) => host.tags.iter().any(|t| t == tag),
        None => *p == host.name,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    #[serde(default)]
    waves: Vec<RawWave>,
    timeout_secs: Option<u64>,
    supersede: Option<Supersede>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Option<String>,
    hosts: Vec<String>,
    threshold: Option<u8>,
    soak_secs: Option<u64>,
}

/// Checks `[rollout]` against the fleet's hosts; `Err((field, problem))`.
pub(super) fn rollout(
    raw: RawRollout,
    hosts: &BTreeMap<String, Host>,
) -> Result<RolloutPolicy, (&'static str, String)> {
    if raw.waves.is_empty() {
        return Err((
            "waves",
            "lists no wave; add [[rollout.waves]] tables or remove [rollout]".into(),
        ));
    }
    let timeout_secs = raw.timeout_secs.unwrap_or(defaults::TIMEOUT_SECS);
    if timeout_secs == 0 {
        return Err(("timeout_secs", "must be at least 1".into()));
    }
    let mut waves = Vec::new();
    for (i, w) in raw.waves.into_iter().enumerate() {
        let name = w.name.unwrap_or_else(|| format!("wave{}", i + 1));
        let spec = wave(name, w.hosts, w.threshold, w.soak_secs.unwrap_or(0), hosts)
            .map_err(|p| ("waves", p))?;
        if waves.iter().any(|x: &WaveSpec| x.name == spec.name) {
            return Err(("waves", format!("wave name {:?} is used twice", spec.name)));
        }
        waves.push(spec);
    }
    let policy = RolloutPolicy {
        waves,
        timeout_secs,
        supersede: raw.supersede.unwrap_or(Supersede::Wait),
    };
    let all: Vec<&Host> = hosts.values().collect();
    let (_, left) = policy.assign(&all);
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|h| h.name.as_str()).collect();
        return Err((
            "waves",
            format!(
                "host(s) {} are in no wave; name them in one, or end with a wave of hosts = [\"*\"]",
                names.join(", ")
            ),
        ));
    }
    Ok(policy)
}

/// Checks one wave: its name, its host patterns (known hosts and tags), its threshold.
pub fn wave(
    name: String,
    patterns: Vec<String>,
    threshold: Option<u8>,
    soak_secs: u64,
    hosts: &BTreeMap<String, Host>,
) -> Result<WaveSpec, String> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!(
            "wave name {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' and '.'"
        ));
    }
    if patterns.is_empty() {
        return Err(format!("wave {name} selects no hosts"));
    }
    for p in &patterns {
        let known = match p.strip_prefix('@') {
            _ if p == "*" => true,
            Some(tag) => hosts.values().any(|h| h.tags.iter().any(|t| t == tag)),
            None => hosts.contains_key(p),
        };
        if !known {
            return Err(format!(
                "wave {name}: {p:?} is neither a host, a tag used by a host (@tag), nor \"*\""
            ));
        }
    }
    let threshold = threshold.unwrap_or(defaults::THRESHOLD);
    if !(1..=100).contains(&threshold) {
        return Err(format!(
            "wave {name}: threshold {threshold} is not a percentage from 1 to 100"
        ));
    }
    Ok(WaveSpec {
        name,
        hosts: patterns,
        threshold,
        soak_secs,
    })
}

/// The branch `bento serve --follow` deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// A URL git fetches from, or an absolute path of a local repository.
    pub url: String,
    pub branch: String,
    pub interval_secs: u64,
    /// The shared secret of `POST /hooks/git` (never printed).
    pub hook_secret_file: Option<PathBuf>,
    /// The fleet file's path inside the repository.
    pub fleet_file: PathBuf,
}

/// `git = "/path"` or `git = { url = "...", branch = "...", ... }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawGit {
    Path(String),
    Full(RawGitTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGitTable {
    url: String,
    branch: Option<String>,
    interval_secs: Option<u64>,
    hook_secret_file: Option<PathBuf>,
    fleet_file: Option<PathBuf>,
}

/// Checks `[fleet] git`; relative paths resolve with `resolve` (against the fleet file).
pub(super) fn git(raw: RawGit, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<GitSource, String> {
    let t = match raw {
        RawGit::Path(url) => RawGitTable {
            url,
            branch: None,
            interval_secs: None,
            hook_secret_file: None,
            fleet_file: None,
        },
        RawGit::Full(t) => t,
    };
    let url = t.url.trim().to_owned();
    if url.is_empty() || url.starts_with('-') || url.contains(['\n', '\0']) {
        return Err(format!("url {url:?} is not a repository URL or path"));
    }
    // A URL (`scheme://...`, scp-like `user@host:path`) is kept; anything else is a path.
    let is_url = url.contains("://") || (url.contains(':') && !url.starts_with('/'));
    let url = if is_url {
        url
    } else {
        resolve(Path::new(&url)).to_string_lossy().into_owned()
    };
    let branch = t.branch.unwrap_or_else(|| defaults::BRANCH.to_owned());
    let branch_ok = !branch.is_empty()
        && !branch.starts_with(['-', '/', '.'])
        && !branch.contains("..")
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !branch_ok {
        return Err(format!(
            "branch {branch:?} is not a branch name Bento follows (letters, digits, '-', '_', '.', '/')"
        ));
    }
    let interval_secs = t.interval_secs.unwrap_or(defaults::INTERVAL_SECS);
    if interval_secs == 0 {
        return Err("interval_secs must be at least 1".into());
    }
    let fleet_file = t
        .fleet_file
        .unwrap_or_else(|| PathBuf::from(defaults::FLEET_FILE));
    if fleet_file.is_absolute()
        || fleet_file
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "fleet_file {} must be a relative path inside the repository",
            fleet_file.display()
        ));
    }
    Ok(GitSource {
        url,
        branch,
        interval_secs,
        hook_secret_file: t.hook_secret_file.map(|p| resolve(&p)),
        fleet_file,
    })
}
