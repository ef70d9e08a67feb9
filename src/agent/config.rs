//! The agent's configuration file (TOML, rendered by the NixOS module): where the server
//! is and how to trust it, which host this is, how to activate and confirm.
//!
//! Defaults live in this file only. Unknown fields are refused. The file's form stays private
//! here; the rest of the agent reads the checked [`Agent`], whose fields are parsed keys and
//! durations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use url::Url;

use crate::nix::keys::PublicKey;
use crate::release::check_host_name;

#[derive(Debug, Error)]
pub enum AgentConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("agent config {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// What `switch-to-configuration` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationAction {
    /// Activate now and make it the boot default.
    Switch,
    /// Make it the boot default only; it runs after the next reboot (not confirmed now).
    Boot,
    /// Activate now without making it the boot default.
    Test,
}

/// How the agent copies a closure from the cache (`agent::substitute` decides and runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// The whole-closure transfer from a `bento serve` cache (`http://`); substitution
    /// from any other cache, or from an `http(s)://` server that turns out not to be
    /// `bento serve`.
    Auto,
    /// Only the whole-closure transfer (`http://` caches served by `bento serve`).
    Transfer,
    /// Only parallel substitution (`nix-store --realise` with that cache alone).
    Substitute,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Auto => "auto",
            CopyMethod::Transfer => "transfer",
            CopyMethod::Substitute => "substitute",
        }
    }
}

impl ActivationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationAction::Switch => "switch",
            ActivationAction::Boot => "boot",
            ActivationAction::Test => "test",
        }
    }
}

fn default_profile() -> PathBuf {
    PathBuf::from("/nix/var/nix/profiles/system")
}
fn default_current_system() -> PathBuf {
    PathBuf::from("/run/current-system")
}
fn default_action() -> ActivationAction {
    ActivationAction::Switch
}
fn default_poll_interval() -> u64 {
    60
}
fn default_jitter() -> f64 {
    0.2
}
fn default_confirm_timeout() -> u64 {
    90
}
fn default_confirm_retry() -> u64 {
    3
}
fn default_retry_base() -> u64 {
    60
}
fn default_activation_timeout() -> u64 {
    600
}
fn default_copy_timeout() -> u64 {
    3600
}
fn default_copy_method() -> CopyMethod {
    CopyMethod::Auto
}
fn default_substitute_jobs() -> u32 {
    16
}
/// Most parallel downloads `substitute_jobs` may ask for.
const MAX_SUBSTITUTE_JOBS: u32 = 256;
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/bento-agent")
}
fn default_files_dir() -> PathBuf {
    PathBuf::from("/run/bento/files")
}
fn default_memory_staging_dir() -> PathBuf {
    PathBuf::from("/run/bento-agent/transfer")
}
fn default_memory_staging_max_mib() -> u64 {
    64
}
fn default_trigger_socket() -> PathBuf {
    PathBuf::from("/run/bento-agent/trigger.sock")
}
fn default_true() -> bool {
    true
}

/// The agent configuration as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    /// This host's name, as in the fleet file; it is also the SFTP user name.
    host: String,
    /// SFTP server address, `host:port`.
    server: String,
    /// The server's SSH host key (`ssh-ed25519 AAAA...`), pinned: nothing else is trusted.
    server_host_key: String,
    /// This host's SSH private key, used to log in to the server.
    ssh_key: PathBuf,
    /// The binary cache URL (`http://server:8080`, or `file:///mnt/cache` for a cache
    /// carried by hand to an air-gapped host).
    cache_url: String,
    /// A netrc file with this host's cache token, when the cache requires one.
    #[serde(default)]
    cache_netrc: Option<PathBuf>,
    /// The fleet's public key (`name:base64`), the only signer of releases and narinfos.
    fleet_public_key: String,
    #[serde(default = "default_profile")]
    profile: PathBuf,
    /// The link to the running system (NixOS: `/run/current-system`).
    #[serde(default = "default_current_system")]
    current_system: PathBuf,
    #[serde(default = "default_action")]
    action: ActivationAction,
    #[serde(default = "default_poll_interval")]
    poll_interval_secs: u64,
    /// Random spread of the poll interval, as a fraction (0.2 = ±20 %).
    #[serde(default = "default_jitter")]
    poll_jitter: f64,
    #[serde(default = "default_confirm_timeout")]
    confirm_timeout_secs: u64,
    #[serde(default = "default_confirm_retry")]
    confirm_retry_secs: u64,
    /// Deadline of setting the profile and of `switch-to-configuration` (each); a switch
    /// still running then is killed and treated as a failed activation.
    #[serde(default = "default_activation_timeout")]
    activation_timeout_secs: u64,
    /// Deadline of copying a closure (and of checking a failed copy).
    #[serde(default = "default_copy_timeout")]
    copy_timeout_secs: u64,
    /// How closures are copied: `auto`, `transfer` or `substitute` (see [`CopyMethod`]).
    #[serde(default = "default_copy_method")]
    copy_method: CopyMethod,
    /// Paths substituted at once when copying by substitution (Nix's `max-jobs`).
    #[serde(default = "default_substitute_jobs")]
    substitute_jobs: u32,
    /// Commands (argv lists) that must all exit 0 for a new system to be confirmed.
    #[serde(default)]
    health_checks: Vec<Vec<String>>,
    /// First delay before retrying a generation that was rolled back while the server was
    /// unreachable (not the configuration's fault); doubles per attempt, at most an hour.
    #[serde(default = "default_retry_base")]
    retry_base_secs: u64,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Where the files the fleet file delivers to this host (`[hosts.<h>.files]`) are
    /// installed, outside the Nix store; a tmpfs (the default, under /run) keeps them off
    /// the disk. It must be a directory Bento owns (its marker file `.bento-files` inside,
    /// or not there yet), never a system or home directory; the agent removes only files
    /// it installed, and puts them back from its state directory after a reboot.
    #[serde(default = "default_files_dir")]
    files_dir: PathBuf,
    /// Where a delivery of at most `memory_staging_max_mib` is staged instead of the state
    /// directory: a memory file system (NixOS's /run is a tmpfs), so a small update is
    /// written to the disk once, by Nix into the store. Staged entries there last until a
    /// reboot; a larger delivery, or one that would fill more than half of that file system,
    /// is staged in the state directory.
    #[serde(default = "default_memory_staging_dir")]
    memory_staging_dir: PathBuf,
    /// The largest delivery staged in `memory_staging_dir`, in MiB; 0 stages every
    /// delivery in the state directory.
    #[serde(default = "default_memory_staging_max_mib")]
    memory_staging_max_mib: u64,
    /// Unix socket for `bento agent trigger`; writable by root (and `trigger_group`).
    #[serde(default = "default_trigger_socket")]
    trigger_socket: PathBuf,
    #[serde(default)]
    trigger_group: Option<String>,
    /// A local web page with a "check for updates" button (e.g. `127.0.0.1:51337`), off
    /// unless set; only loopback addresses are accepted.
    #[serde(default)]
    http_trigger: Option<std::net::SocketAddr>,
    /// Keep one SSH session open to be told of new releases at once (polling stays the
    /// fallback).
    #[serde(default = "default_true")]
    instant_updates: bool,
    /// Node-exporter textfile written (atomically) with this agent's last outcome after
    /// each attempt, e.g. `/var/lib/prometheus-node-exporter/bento.prom`.
    #[serde(default)]
    metrics_textfile: Option<PathBuf>,
}

/// A checked agent configuration: what the file says, with keys parsed and durations made.
#[derive(Debug, Clone)]
pub struct Agent {
    /// This host's name, as in the fleet file; it is also the SFTP user name.
    pub host: String,
    /// SFTP server address, `host:port`.
    pub server: String,
    /// The server's SSH host key (`ssh-ed25519 AAAA...`), pinned: nothing else is trusted.
    pub server_host_key: String,
    /// This host's SSH private key, used to log in to the server.
    pub ssh_key: PathBuf,
    /// The binary cache URL (`http://`, `https://` or `file://`), as Nix is given it.
    pub cache_url: Url,
    /// A netrc file with this host's cache token, when the cache requires one.
    pub cache_netrc: Option<PathBuf>,
    /// The fleet's public key, the only signer of releases and narinfos.
    pub fleet_key: PublicKey,
    /// The system profile switched on activation.
    pub profile: PathBuf,
    /// The link to the running system (NixOS: `/run/current-system`).
    pub current_system: PathBuf,
    pub action: ActivationAction,
    pub poll_interval: Duration,
    /// Random spread of the poll interval, as a fraction (0.2 = ±20 %).
    pub poll_jitter: f64,
    pub confirm_timeout: Duration,
    pub confirm_retry: Duration,
    /// Deadline of setting the profile and of `switch-to-configuration` (each).
    pub activation_timeout: Duration,
    /// Deadline of copying a closure.
    pub copy_timeout: Duration,
    /// How closures are copied.
    pub copy_method: CopyMethod,
    /// Paths substituted at once when copying by substitution.
    pub substitute_jobs: u32,
    /// Commands (argv lists) that must all exit 0 for a new system to be confirmed.
    pub health_checks: Vec<Vec<String>>,
    /// First delay before retrying a generation rolled back while the server was unreachable.
    pub retry_base: Duration,
    /// The agent's state directory: its journal, outbox and lock.
    pub state_dir: PathBuf,
    /// Where delivered files are installed; Bento owns the directory.
    pub files_dir: PathBuf,
    /// Where small deliveries are staged (a memory file system), with the largest staged
    /// there in bytes; `None` when every delivery is staged in the state directory.
    pub memory_staging: Option<(PathBuf, u64)>,
    /// Unix socket for `bento agent trigger`.
    pub trigger_socket: PathBuf,
    pub trigger_group: Option<String>,
    /// The local "check for updates" page, when set (loopback only).
    pub http_trigger: Option<std::net::SocketAddr>,
    /// Keep one SSH session open to be told of new releases at once.
    pub instant_updates: bool,
    /// Node-exporter textfile written after each attempt, when set.
    pub metrics_textfile: Option<PathBuf>,
}

impl Agent {
    pub fn load(path: &Path) -> Result<Agent, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Agent, AgentConfigError> {
        let raw: AgentFile = toml::from_str(text).map_err(|e| AgentConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let field = |field: &'static str, message: String| AgentConfigError::Field {
            path: path.to_owned(),
            field,
            message,
        };
        check_host_name(&raw.host).map_err(|e| field("host", e.to_string()))?;
        let fleet_key = PublicKey::parse(&raw.fleet_public_key)
            .map_err(|e| field("fleet_public_key", e.to_string()))?;
        crate::sftp::client::parse_pinned_key(&raw.server_host_key)
            .map_err(|e| field("server_host_key", e.to_string()))?;
        if !raw.server.contains(':') {
            return Err(field("server", "expected host:port".into()));
        }
        let cache_url =
            parse_cache_url(&raw.cache_url).map_err(|message| field("cache_url", message))?;
        if let Some(addr) = raw.http_trigger
            && !super::http_trigger::is_allowed(&addr)
        {
            return Err(field(
                "http_trigger",
                format!("{addr} is not a loopback address; the page must not face the network"),
            ));
        }
        if raw.poll_interval_secs == 0 {
            return Err(field("poll_interval_secs", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&raw.poll_jitter) {
            return Err(field("poll_jitter", "must be between 0 and 1".into()));
        }
        if raw.confirm_timeout_secs == 0 || raw.confirm_retry_secs == 0 {
            return Err(field(
                "confirm_timeout_secs",
                "confirm_timeout_secs and confirm_retry_secs must be at least 1".into(),
            ));
        }
        if raw.activation_timeout_secs == 0 || raw.copy_timeout_secs == 0 {
            return Err(field(
                "activation_timeout_secs",
                "activation_timeout_secs and copy_timeout_secs must be at least 1".into(),
            ));
        }
        check_copy_method(raw.copy_method, &cache_url).map_err(|m| field("copy_method", m))?;
        if !(1..=MAX_SUBSTITUTE_JOBS).contains(&raw.substitute_jobs) {
            return Err(field(
                "substitute_jobs",
                format!("must be between 1 and {MAX_SUBSTITUTE_JOBS}"),
            ));
        }
        check_files_dir(&raw.files_dir, &raw.state_dir).map_err(|m| field("files_dir", m))?;
        check_memory_staging_dir(&raw.memory_staging_dir, &raw.state_dir)
            .map_err(|m| field("memory_staging_dir", m))?;
        let memory_staging = (raw.memory_staging_max_mib > 0).then(|| {
            (
                raw.memory_staging_dir.clone(),
                raw.memory_staging_max_mib.saturating_mul(1024 * 1024),
            )
        });
        if let Some(empty) = raw.health_checks.iter().position(Vec::is_empty) {
            return Err(field(
                "health_checks",
                format!("check #{} is an empty command", empty + 1),
            ));
        }
        Ok(Agent {
            host: raw.host,
            server: raw.server,
            server_host_key: raw.server_host_key,
            ssh_key: raw.ssh_key,
            cache_url,
            cache_netrc: raw.cache_netrc,
            fleet_key,
            profile: raw.profile,
            current_system: raw.current_system,
            action: raw.action,
            poll_interval: Duration::from_secs(raw.poll_interval_secs),
            poll_jitter: raw.poll_jitter,
            confirm_timeout: Duration::from_secs(raw.confirm_timeout_secs),
            confirm_retry: Duration::from_secs(raw.confirm_retry_secs),
            activation_timeout: Duration::from_secs(raw.activation_timeout_secs),
            copy_timeout: Duration::from_secs(raw.copy_timeout_secs),
            copy_method: raw.copy_method,
            substitute_jobs: raw.substitute_jobs,
            health_checks: raw.health_checks,
            retry_base: Duration::from_secs(raw.retry_base_secs.max(1)),
            state_dir: raw.state_dir,
            files_dir: raw.files_dir,
            memory_staging,
            trigger_socket: raw.trigger_socket,
            trigger_group: raw.trigger_group,
            http_trigger: raw.http_trigger,
            instant_updates: raw.instant_updates,
            metrics_textfile: raw.metrics_textfile,
        })
    }
}

/// Directories delivered files may never be put in (their contents are the system's or
/// someone's; Bento must be able to own what it removes files from).
const NOT_FILES_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/nix",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/cache",
    "/var/empty",
    "/var/lib",
    "/var/log",
    "/var/spool",
    "/var/tmp",
    "/etc/nixos",
    "/etc/ssh",
    "/etc/systemd",
    "/run/current-system",
    "/run/booted-system",
    "/run/systemd",
    "/run/user",
    "/run/wrappers",
];

/// Trees no delivered file may go under at any depth.
const NOT_UNDER: &[&str] = &["/nix", "/proc", "/sys", "/dev", "/usr", "/boot"];

/// Checks `files_dir` by its name: absolute, plain (no `.`, `..` or `//`), not a system or
/// home directory, not holding the agent's state. (That it is Bento's own when it exists
/// is checked on the host: `agent::files_dir`.)
pub fn check_files_dir(files_dir: &Path, state_dir: &Path) -> Result<(), String> {
    use std::path::Component;
    let text = files_dir.to_string_lossy();
    let plain = files_dir.is_absolute()
        && !text.contains("//")
        && files_dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(format!(
            "{text} must be an absolute path without `.`, `..` or `//`"
        ));
    }
    let path = text.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    if NOT_FILES_DIRS.contains(&path) {
        return Err(format!(
            "{path} is a system directory; delivered files need a directory of their own, such as /run/bento/files"
        ));
    }
    if let Some(root) = NOT_UNDER
        .iter()
        .find(|r| path.starts_with(&format!("{r}/")))
    {
        return Err(format!(
            "{path} is under {root}, where delivered files may not go"
        ));
    }
    let parent = Path::new(path).parent().and_then(Path::to_str);
    if parent == Some("/home") {
        return Err(format!("{path} is a home directory"));
    }
    if state_dir.starts_with(path) || Path::new(path).starts_with(state_dir) {
        return Err(format!(
            "{path} and the agent's state directory {} must not hold one another",
            state_dir.display()
        ));
    }
    Ok(())
}

/// `memory_staging_dir` is emptied after each copy: an absolute path that neither holds
/// the state directory nor lies in it.
fn check_memory_staging_dir(dir: &Path, state_dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!("{} is not an absolute path", dir.display()));
    }
    if state_dir.starts_with(dir) || dir.starts_with(state_dir) {
        return Err(format!(
            "{} overlaps the state directory {} (the agent empties it after each copy); use a directory of its own on a memory file system, e.g. /run/bento-agent/transfer",
            dir.display(),
            state_dir.display()
        ));
    }
    Ok(())
}

/// Whether `method` can copy from `cache_url`: the transfer speaks only to `bento serve`
/// over `http://`.
fn check_copy_method(method: CopyMethod, cache_url: &Url) -> Result<(), String> {
    if method == CopyMethod::Transfer && cache_url.scheme() != "http" {
        return Err(format!(
            "\"transfer\" needs an http:// cache served by bento serve, and cache_url is {}; use \"auto\" or \"substitute\" (parallel substitution from any binary cache)",
            redacted(cache_url)
        ));
    }
    Ok(())
}

/// The cache URL, read by the `url` crate: `http(s)://` with a host, `s3://` with a
/// bucket, or `file://` with a path. Credentials belong in `cache_netrc`: a URL carrying them would be printed in logs.
fn parse_cache_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let usable = match url.scheme() {
        "http" | "https" | "s3" => url.host().is_some(),
        "file" => !url.path().is_empty() && url.path() != "/",
        _ => false,
    };
    if !usable {
        return Err(format!(
            "{text:?}: expected http:// or https:// (the bento server or a binary cache), s3:// (a bucket holding the cache) or file:// (a mounted cache)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{}: put the host's cache token in a netrc file (cache_netrc), not in the URL",
            redacted(&url)
        ));
    }
    Ok(url)
}

/// The URL without its credentials, for messages.
fn redacted(url: &Url) -> Url {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw=";

    fn minimal() -> String {
        format!(
            r#"
host = "web1"
server = "10.77.0.1:2222"
server_host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO9ASb4F2D1xKP2Xmvh66LRWTxkAa/c3FHXOlUcY+n"
ssh_key = "/etc/bento/id_ed25519"
cache_url = "http://10.77.0.1:8080"
fleet_public_key = "{KEY}"
"#
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let a = Agent::parse(Path::new("agent.toml"), &minimal()).unwrap();
        assert_eq!(a.profile, PathBuf::from("/nix/var/nix/profiles/system"));
        assert_eq!(a.action, ActivationAction::Switch);
        assert_eq!(a.poll_interval, Duration::from_secs(60));
        assert_eq!(a.fleet_key.to_string(), KEY);
        assert!(a.instant_updates);
    }

    #[test]
    fn small_deliveries_are_staged_in_run_unless_told_otherwise() {
        let with = |extra: &str| {
            Agent::parse(Path::new("a"), &format!("{}\n{extra}\n", minimal()))
                .map(|a| a.memory_staging)
                .map_err(|e| e.to_string())
        };
        const MIB: u64 = 1024 * 1024;
        let run = || PathBuf::from("/run/bento-agent/transfer");
        type Want = Result<Option<(PathBuf, u64)>, &'static str>;
        let cases: &[(&str, Want)] = &[
            ("", Ok(Some((run(), 64 * MIB)))),
            ("memory_staging_max_mib = 0", Ok(None)),
            ("memory_staging_max_mib = 512", Ok(Some((run(), 512 * MIB)))),
            (
                "memory_staging_dir = \"/dev/shm/bento\"",
                Ok(Some((PathBuf::from("/dev/shm/bento"), 64 * MIB))),
            ),
            (
                "memory_staging_dir = \"run/x\"",
                Err("not an absolute path"),
            ),
            (
                "memory_staging_dir = \"/var/lib/bento-agent/transfer\"",
                Err("overlaps the state directory"),
            ),
            (
                "memory_staging_dir = \"/var/lib\"",
                Err("overlaps the state directory"),
            ),
            (
                "state_dir = \"/run/bento-agent\"",
                Err("overlaps the state directory"),
            ),
            ("memory_staging_max_mib = -1", Err("memory_staging_max_mib")),
        ];
        for (extra, want) in cases {
            match (want, with(extra)) {
                (Ok(w), Ok(got)) => assert_eq!(&got, w, "{extra}"),
                (Err(w), Err(e)) => assert!(e.contains(w), "{extra}: {e}"),
                (w, got) => panic!("{extra}: wanted {w:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn cache_urls_are_read_by_the_url_crate() {
        let cases: [(&str, Result<&str, &str>); 10] = [
            ("http://10.77.0.1:8080", Ok("http://10.77.0.1:8080/")),
            (
                "https://cache.example/bento/",
                Ok("https://cache.example/bento/"),
            ),
            ("http://[fd00::1]:8080", Ok("http://[fd00::1]:8080/")),
            ("file:///mnt/cache", Ok("file:///mnt/cache")),
            (
                "s3://fleet-cache?region=eu-west-1",
                Ok("s3://fleet-cache?region=eu-west-1"),
            ),
            ("s3:///no-bucket", Err("expected http://")),
            ("ftp://x", Err("expected http://")),
            ("file:///", Err("expected http://")),
            ("10.77.0.1:8080", Err("is not a URL")),
            ("http://web1:s3cret@cache:8080", Err("netrc")),
        ];
        for (text, want) in cases {
            let got = parse_cache_url(text);
            match (want, got) {
                (Ok(w), Ok(u)) => assert_eq!(u.as_str(), w, "{text}"),
                (Err(w), Err(e)) => {
                    assert!(e.contains(w), "{text}: {e}");
                    assert!(!e.contains("s3cret"), "{text}: the token is not shown: {e}");
                }
                (w, g) => panic!("{text}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("host = \"web1\"", "host = \"web 1\"", "host"),
            (KEY, "nonsense", "fleet_public_key"),
            ("ssh-ed25519 AAAAC3", "AAAAC3", "server_host_key"),
            ("10.77.0.1:2222", "10.77.0.1", "server"),
            ("http://10.77.0.1:8080", "ftp://x", "cache_url"),
        ];
        for (from, to, field) in cases {
            let text = minimal().replacen(from, to, 1);
            let err = Agent::parse(Path::new("agent.toml"), &text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{field}: {err}");
        }
        let unknown = format!("{}\nsurprise = 1\n", minimal());
        let err = Agent::parse(Path::new("agent.toml"), &unknown)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("surprise"), "{err}");
        let open_page = format!("{}\nhttp_trigger = \"0.0.0.0:51337\"\n", minimal());
        let err = Agent::parse(Path::new("agent.toml"), &open_page)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("http_trigger") && err.contains("loopback"),
            "{err}"
        );
        let local_page = format!("{}\nhttp_trigger = \"127.0.0.1:51337\"\n", minimal());
        assert!(Agent::parse(Path::new("agent.toml"), &local_page).is_ok());
        let empty_check = format!("{}\nhealth_checks = [[]]\n", minimal());
        assert!(Agent::parse(Path::new("a"), &empty_check).is_err());
        let no_deadline = format!("{}\nactivation_timeout_secs = 0\n", minimal());
        assert!(Agent::parse(Path::new("a"), &no_deadline).is_err());
    }

    #[test]
    fn the_copy_method_is_checked_against_the_cache_url() {
        let with = |url: &str, extra: &str| {
            let text = minimal().replacen("http://10.77.0.1:8080", url, 1);
            Agent::parse(Path::new("a"), &format!("{text}\n{extra}\n"))
                .map(|a| (a.copy_method, a.substitute_jobs))
                .map_err(|e| e.to_string())
        };
        use CopyMethod::{Auto, Substitute, Transfer};
        let ok = |m, j| Ok::<(CopyMethod, u32), &str>((m, j));
        type Want = Result<(CopyMethod, u32), &'static str>;
        let cases: &[(&str, &str, Want)] = &[
            ("http://c:8080", "", ok(Auto, 16)),
            ("file:///mnt/c", "", ok(Auto, 16)),
            (
                "http://c:8080",
                "copy_method = \"transfer\"",
                ok(Transfer, 16),
            ),
            (
                "https://c",
                "copy_method = \"substitute\"",
                ok(Substitute, 16),
            ),
            ("s3://b", "copy_method = \"substitute\"", ok(Substitute, 16)),
            ("http://c", "substitute_jobs = 1", ok(Auto, 1)),
            ("http://c", "substitute_jobs = 256", ok(Auto, 256)),
            (
                "file:///mnt/c",
                "copy_method = \"transfer\"",
                Err("`copy_method`: \"transfer\" needs an http:// cache"),
            ),
            (
                "https://c",
                "copy_method = \"transfer\"",
                Err("cache_url is https://c/"),
            ),
            (
                "s3://b",
                "copy_method = \"transfer\"",
                Err("use \"auto\" or \"substitute\""),
            ),
            (
                "http://c",
                "copy_method = \"nix-copy\"",
                Err("unknown variant `nix-copy`"),
            ),
            (
                "http://c",
                "substitute_jobs = 0",
                Err("`substitute_jobs`: must be between 1 and 256"),
            ),
            (
                "http://c",
                "substitute_jobs = 257",
                Err("`substitute_jobs`"),
            ),
        ];
        for (url, extra, want) in cases {
            match (want, with(url, extra)) {
                (Ok(w), Ok(g)) => assert_eq!(&g, w, "{url} {extra}"),
                (Err(w), Err(e)) => assert!(e.contains(w), "{url} {extra}: {e}"),
                (w, g) => panic!("{url} {extra}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn deadlines_default_and_can_be_set() {
        let a = Agent::parse(Path::new("a"), &minimal()).unwrap();
        assert_eq!(a.activation_timeout, Duration::from_secs(600));
        assert_eq!(a.copy_timeout, Duration::from_secs(3600));
        let text = format!(
            "{}\nactivation_timeout_secs = 30\ncopy_timeout_secs = 90\n",
            minimal()
        );
        let a = Agent::parse(Path::new("a"), &text).unwrap();
        assert_eq!(a.activation_timeout, Duration::from_secs(30));
        assert_eq!(a.copy_timeout, Duration::from_secs(90));
    }

    #[test]
    fn files_dir_must_be_a_directory_of_its_own() {
        let state = Path::new("/var/lib/bento-agent");
        let refused = [
            "/",
            "/etc",
            "/etc/",
            "/var",
            "/run",
            "/nix",
            "/nix/store/x",
            "/home",
            "/home/alice",
            "/root",
            "/usr/local/share",
            "/tmp",
            "/var/lib",
            "relative/dir",
            "/run/bento/../files",
            "/run//bento",
            "/var/lib/bento-agent",
            "/var/lib/bento-agent/files",
        ];
        for dir in refused {
            assert!(
                check_files_dir(Path::new(dir), state).is_err(),
                "{dir} accepted"
            );
        }
        let accepted = [
            "/run/bento/files",
            "/var/lib/bento-files",
            "/etc/bento/files",
            "/home/alice/bento",
        ];
        for dir in accepted {
            assert_eq!(check_files_dir(Path::new(dir), state), Ok(()), "{dir}");
        }
        let text = format!("{}\nfiles_dir = \"/etc\"\n", minimal());
        let err = Agent::parse(Path::new("a"), &text)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("files_dir") && e.contains("system directory")),
            "{err:?}"
        );
    }
}
