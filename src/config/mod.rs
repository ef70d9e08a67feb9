//! The fleet file, `bento.toml`: which hosts exist, their SSH public keys, how each system
//! is built (a flake attribute or a `configuration.nix`), tags, and where the server keeps
//! its state. Loading validates everything at once and fails with one message naming the
//! host and the field; later layers only ever see a valid [`Fleet`].
//!
//! ```toml
//! [fleet]
//! flake = "."                       # default; a path (relative to bento.toml) or a flake URL
//! state_dir = "/var/lib/bento"      # default
//! signing_key = "keys/fleet.secret" # default: <state_dir>/keys/fleet.secret
//! jobs = 2                          # default: from cores and memory
//! keep_systems = 5                  # default; GC roots kept per host (newest systems)
//! secret_recipients = ["ssh-ed25519 AAAA... alice"]  # operators who may edit age secrets
//!
//! [hosts.web1]
//! ssh_key = "ssh-ed25519 AAAA... root@web1"
//! tags = ["web", "prod"]
//! # attr = "nixosConfigurations.web1.config.system.build.toplevel"   (default)
//!
//! [hosts.router]
//! ssh_key = "ssh-ed25519 AAAA..."
//! configuration = "hosts/router/configuration.nix"
//!
//! [hosts.web1.files]                # delivered outside the store, see `files`
//! db-password = "secrets/web1/db-password"                      # mode 0400
//! "tls.key" = { source = "secrets/web1/tls.key", mode = 0o440 }
//! api-token = "secrets/web1/api-token.age"   # age, to web1's ssh_key: see `secret`
//! ```
//!
//! May import: `nix` (keys), `release` (host-name rules), `files` (file-name rules), `openssh`
//! (the hosts' SSH keys).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::nix::keys::{KeyError, SecretKey};
use crate::release;

mod layout;
pub mod ops;
mod select;
mod toml_error;

pub use crate::openssh::{SshKeyError, SshPublicKey};
pub use layout::StateDir;
pub use ops::{GitSource, RolloutPolicy, Supersede, WaveSpec};
pub use select::select;

/// Defaults, all in one place.
pub mod defaults {
    /// The flake holding `nixosConfigurations`: the directory of `bento.toml`.
    pub const FLAKE: &str = ".";
    /// The server's state directory.
    pub const STATE_DIR: &str = "/var/lib/bento";
    /// `[fleet] stale_after_secs`: a host silent this long is stale (five default polls).
    pub const STALE_AFTER_SECS: u64 = 300;
    /// `[fleet] keep_systems`: per host, the newest distinct published systems whose GC
    /// roots are kept (so `bento deploy --rollback` can go back this many minus one).
    pub const KEEP_SYSTEMS: usize = 5;

    /// The flake attribute of a host's system: `nixosConfigurations.<host>.config.system.build.toplevel`
    /// (the host name quoted when it contains a dot).
    pub fn attr(host: &str) -> String {
        let name = if host.contains('.') {
            format!("\"{host}\"")
        } else {
            host.to_owned()
        };
        format!("nixosConfigurations.{name}.config.system.build.toplevel")
    }
}

#[derive(Debug, Error)]
pub enum FleetFileError {
    #[error(
        "no fleet file at {path}: run `bento init` in your configuration repository to create one, or name yours with --config FILE (or BENTO_CONFIG=FILE)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read fleet file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {}{message}", subject_prefix(.subject))]
    Syntax {
        path: PathBuf,
        line: usize,
        subject: String,
        message: String,
    },
    #[error("{path}: [fleet] field {field}: {problem}")]
    Fleet {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    #[error("{path}: [rollout] field {field}: {problem}")]
    Rollout {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    #[error("{path}: host {host}, field {field}: {problem}")]
    Host {
        path: PathBuf,
        host: String,
        field: &'static str,
        problem: String,
    },
    #[error("{path}: {subject}: file {file} does not exist")]
    MissingFile {
        path: PathBuf,
        /// "host router, field configuration" or "[fleet] field flake".
        subject: String,
        file: PathBuf,
    },
    #[error("{path} defines no hosts; add a [hosts.NAME] table")]
    NoHosts { path: PathBuf },
    #[error("unknown host {name:?}; the hosts in {path} are: {known}")]
    UnknownHost {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("unknown tag @{tag}; the tags in {path} are: {known}")]
    UnknownTag {
        path: PathBuf,
        tag: String,
        known: String,
    },
    #[error("cannot load the fleet signing key {path} (set by [fleet] signing_key): {source}")]
    SigningKey {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
}

fn subject_prefix(subject: &str) -> String {
    if subject.is_empty() {
        String::new()
    } else {
        format!("{subject}: ")
    }
}

/// The whole fleet, validated.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The fleet file it was loaded from (absolute).
    pub file: PathBuf,
    /// The flake reference: an absolute path, or a flake URL as written.
    pub flake: String,
    /// The server's state directory.
    pub state: StateDir,
    /// The fleet signing key (a Nix secret key file).
    pub signing_key: PathBuf,
    /// `[fleet] jobs`: hosts built at once, when set.
    pub jobs: Option<usize>,
    /// Seconds without contact after which `bento status` calls a host stale.
    pub stale_after_secs: u64,
    /// Per host, how many of the newest distinct published systems keep their GC roots.
    pub keep_systems: usize,
    /// `[fleet] secret_recipients`: keys (OpenSSH public key lines or `age1…`) every age
    /// secret is encrypted to besides its host's, so that these operators can edit it.
    pub secret_recipients: Vec<String>,
    /// Hosts by name (sorted).
    pub hosts: BTreeMap<String, Host>,
    /// `[rollout]`: the waves a deploy goes through; `None` deploys every host at once.
    pub rollout: Option<RolloutPolicy>,
    /// `[fleet] git`: the branch `bento serve --follow` deploys.
    pub git: Option<GitSource>,
}

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// The key the host's agent logs in to the SFTP server with.
    pub ssh_key: SshPublicKey,
    /// Sorted, without duplicates.
    pub tags: Vec<String>,
    pub system: System,
    /// Files delivered to the host outside the Nix store (`[hosts.<h>.files]`), by the
    /// name they get on the host.
    pub files: BTreeMap<String, DeliveredFile>,
}

/// One file of `[hosts.<h>.files]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredFile {
    /// Where it is read on the server (absolute).
    pub source: PathBuf,
    /// Its mode on the host.
    pub mode: u32,
}

/// How a host's system is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum System {
    /// `nix build <flake>#<attr>`.
    Flake { flake: String, attr: String },
    /// `nix-build '<nixpkgs/nixos>' -A system -I nixos-config=<path>`.
    Configuration { path: PathBuf },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    rollout: Option<ops::RawRollout>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    flake: Option<String>,
    state_dir: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    jobs: Option<usize>,
    stale_after_secs: Option<u64>,
    keep_systems: Option<usize>,
    git: Option<ops::RawGit>,
    #[serde(default)]
    secret_recipients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    ssh_key: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    attr: Option<String>,
    configuration: Option<PathBuf>,
    #[serde(default)]
    files: BTreeMap<String, RawDeliveredFile>,
}

/// `name = "path"` or `name = { source = "path", mode = 0o440 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDeliveredFile {
    Source(PathBuf),
    Full { source: PathBuf, mode: Option<u32> },
}

impl Fleet {
    /// Reads and validates a fleet file. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Fleet, FleetFileError> {
        let (file, text) = read_fleet_file(path)?;
        Fleet::parse(&text, &file)
    }

    /// Reads and validates a fleet file like [`Fleet::load`], without requiring the files
    /// it names (flake, configuration.nix, delivered files) to exist: for checks made where
    /// only the fleet file is, such as a Nix build sandbox, and by `bento serve`, which
    /// never reads them (deploy does).
    pub fn load_text_only(path: &Path) -> Result<Fleet, FleetFileError> {
        let (file, text) = read_fleet_file(path)?;
        Fleet::parse_checking(&text, &file, Paths::Unchecked)
    }

    /// Validates the text of a fleet file that lives at `file` (used to resolve relative
    /// paths and in messages).
    pub fn parse(text: &str, file: &Path) -> Result<Fleet, FleetFileError> {
        Fleet::parse_checking(text, file, Paths::MustExist)
    }

    fn parse_checking(text: &str, file: &Path, paths: Paths) -> Result<Fleet, FleetFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = toml_error::locate(text, e.span().map(|s| s.start), e.message());
            FleetFileError::Syntax {
                path: file.to_owned(),
                line: at.line,
                subject: at.subject,
                message: at.message,
            }
        })?;
        let dir = file.parent().unwrap_or(Path::new("/"));
        let resolve = |p: &Path| normalize(&dir.join(p));
        let fleet_err = |field, problem: String| FleetFileError::Fleet {
            path: file.to_owned(),
            field,
            problem,
        };

        let flake_raw = raw
            .fleet
            .flake
            .unwrap_or_else(|| defaults::FLAKE.to_owned());
        if flake_raw.trim().is_empty() {
            return Err(fleet_err("flake", "is empty".into()));
        }
        let flake_is_path = !flake_raw.contains(':');
        let flake = if flake_is_path {
            resolve(Path::new(&flake_raw))
                .to_string_lossy()
                .into_owned()
        } else {
            flake_raw
        };
        let state = StateDir::new(resolve(
            &raw.fleet
                .state_dir
                .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
        ));
        let signing_key = match raw.fleet.signing_key {
            Some(p) => resolve(&p),
            None => state.default_signing_key(),
        };
        let stale_after_secs = raw
            .fleet
            .stale_after_secs
            .unwrap_or(defaults::STALE_AFTER_SECS);
        if stale_after_secs == 0 {
            return Err(fleet_err("stale_after_secs", "must be at least 1".into()));
        }
        if raw.fleet.jobs == Some(0) {
            return Err(fleet_err("jobs", "must be at least 1".into()));
        }
        let keep_systems = raw.fleet.keep_systems.unwrap_or(defaults::KEEP_SYSTEMS);
        if keep_systems == 0 {
            return Err(fleet_err(
                "keep_systems",
                "must be at least 1 (the system each host is told to run is always kept)".into(),
            ));
        }

        for key in &raw.fleet.secret_recipients {
            let key = key.trim();
            if !key.starts_with("age1")
                && let Err(e) = SshPublicKey::parse(key)
            {
                return Err(fleet_err(
                    "secret_recipients",
                    format!("{key:?} is neither an OpenSSH public key nor an age1… key: {e}"),
                ));
            }
        }

        let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
        let mut lowercase: BTreeMap<String, String> = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (name, raw_host) in raw.hosts {
            let host = validate_host(file, &flake, &resolve, name, raw_host, paths)?;
            let host_err = |problem: String, field| FleetFileError::Host {
                path: file.to_owned(),
                host: host.name.clone(),
                field,
                problem,
            };
            if let Some(other) = lowercase.insert(host.name.to_lowercase(), host.name.clone()) {
                return Err(host_err(
                    format!(
                        "differs from host {other} only in case; host names must differ in more than case"
                    ),
                    "name",
                ));
            }
            if let Some(other) =
                keys.insert(host.ssh_key.key().key_data().clone(), host.name.clone())
            {
                return Err(host_err(
                    format!(
                        "is the same key as host {other}'s; each host needs its own key to log in as itself"
                    ),
                    "ssh_key",
                ));
            }
            hosts.insert(host.name.clone(), host);
        }

        let uses_flake = hosts
            .values()
            .any(|h| matches!(h.system, System::Flake { .. }));
        if uses_flake && flake_is_path && paths == Paths::MustExist {
            let flake_nix = Path::new(&flake).join("flake.nix");
            if !flake_nix.is_file() {
                return Err(FleetFileError::MissingFile {
                    path: file.to_owned(),
                    subject: "[fleet] field flake".into(),
                    file: flake_nix,
                });
            }
        }

        let rollout = raw
            .rollout
            .map(|r| ops::rollout(r, &hosts))
            .transpose()
            .map_err(|(field, problem)| FleetFileError::Rollout {
                path: file.to_owned(),
                field,
                problem,
            })?;
        let git = raw
            .fleet
            .git
            .map(|g| ops::git(g, &resolve))
            .transpose()
            .map_err(|problem| fleet_err("git", problem))?;

        Ok(Fleet {
            file: file.to_owned(),
            flake,
            state,
            signing_key,
            jobs: raw.fleet.jobs,
            stale_after_secs,
            keep_systems,
            secret_recipients: raw.fleet.secret_recipients,
            hosts,
            rollout,
            git,
        })
    }

    /// Loads the fleet signing key, with a message naming where it was expected.
    pub fn load_signing_key(&self) -> Result<SecretKey, FleetFileError> {
        SecretKey::load(&self.signing_key).map_err(|source| FleetFileError::SigningKey {
            path: self.signing_key.clone(),
            source,
        })
    }

    /// All tags used by any host, sorted.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.hosts.values().flat_map(|h| h.tags.clone()).collect();
        tags.sort();
        tags.dedup();
        tags
    }
}

/// The absolute path of a fleet file and its text.
fn read_fleet_file(path: &Path) -> Result<(PathBuf, String), FleetFileError> {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok((file, text)),
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(FleetFileError::Missing { path: file })
        }
        Err(source) => Err(FleetFileError::Read { path: file, source }),
    }
}

/// Whether the files a fleet file names must exist when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paths {
    MustExist,
    Unchecked,
}

/// Checks one host on its own (checks across hosts are the caller's).
fn validate_host(
    file: &Path,
    flake: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    name: String,
    raw: RawHost,
    paths: Paths,
) -> Result<Host, FleetFileError> {
    let host_err = |field, problem: String| FleetFileError::Host {
        path: file.to_owned(),
        host: name.clone(),
        field,
        problem,
    };
    release::check_host_name(&name).map_err(|e| host_err("name", e.to_string()))?;
    let ssh_text = raw.ssh_key.ok_or_else(|| {
        host_err(
            "ssh_key",
            "is missing; set it to the host's SSH public key (the content of /etc/ssh/ssh_host_ed25519_key.pub on the host)".into(),
        )
    })?;
    let ssh_key = SshPublicKey::parse(&ssh_text).map_err(|e| host_err("ssh_key", e.to_string()))?;
    let mut tags = raw.tags;
    for tag in &tags {
        check_tag(tag).map_err(|problem| host_err("tags", problem))?;
    }
    tags.sort();
    tags.dedup();
    let system = match (raw.attr, raw.configuration) {
        (Some(_), Some(_)) => {
            return Err(host_err(
                "configuration",
                "is set together with attr; a host is built either from a flake attribute (attr) or from a configuration.nix (configuration), not both".into(),
            ));
        }
        (None, Some(conf)) => {
            let path = resolve(&conf);
            if paths == Paths::MustExist && !path.is_file() {
                return Err(FleetFileError::MissingFile {
                    path: file.to_owned(),
                    subject: format!("host {name}, field configuration"),
                    file: path,
                });
            }
            System::Configuration { path }
        }
        (attr, None) => {
            let attr = attr.unwrap_or_else(|| defaults::attr(&name));
            if attr.trim().is_empty() || attr.contains(['#', ' ', '\n']) {
                return Err(host_err(
                    "attr",
                    format!(
                        "{attr:?} is not a flake attribute path (e.g. {})",
                        defaults::attr(&name)
                    ),
                ));
            }
            System::Flake {
                flake: flake.to_owned(),
                attr,
            }
        }
    };
    let mut files = BTreeMap::new();
    for (file_name, raw_file) in raw.files {
        let (source, mode) = match raw_file {
            RawDeliveredFile::Source(source) => (source, crate::files::DEFAULT_MODE),
            RawDeliveredFile::Full { source, mode } => {
                (source, mode.unwrap_or(crate::files::DEFAULT_MODE))
            }
        };
        crate::files::check_name(&file_name)
            .and_then(|()| crate::files::check_mode(&file_name, mode))
            .map_err(|e| host_err("files", e.to_string()))?;
        let source = resolve(&source);
        if paths == Paths::MustExist && !source.is_file() {
            return Err(FleetFileError::MissingFile {
                path: file.to_owned(),
                subject: format!("host {name}, field files.{file_name}"),
                file: source,
            });
        }
        files.insert(file_name, DeliveredFile { source, mode });
    }
    Ok(Host {
        name,
        ssh_key,
        tags,
        system,
        files,
    })
}

/// Removes `.` and resolves `..` lexically (the file need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not valid: use letters, digits, '-', '_' and '.'"
        ))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::ssh_key as tests_support_ssh_key;
