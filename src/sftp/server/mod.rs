//! The SFTP server of `bento serve`: one SSH port where each host logs in as itself, with its
//! own key, and sees only its own directory (the tree and the watch protocol are described in
//! [`crate::sftp`]).
//!
//! May import: `nix`, `release`, `report` (report names), `durable`, `clock`, `openssh`,
//! `slots`; russh,
//! russh-sftp, rustix, tokio. Never `build` or `deploy` (it reads what they wrote into the
//! publish tree), never `sftp::client`.
//!
//! # Using it
//!
//! ```text
//! let key      = load_or_create_host_key(&state_dir.join("ssh/host_ed25519_key"))?;
//! let hosts    = HostKeys::new(fleet.hosts.values().map(|h| (h.name.clone(), vec![h.ssh_key.clone()])))?;
//! let sessions = Sessions::new(&state_dir, key, hosts, SftpConfig::default())?;
//! println!("{}", sessions.host_key().known_hosts_line("bento.example", port));
//! tokio::spawn(serve(listener, sessions.clone(), shutdown.clone()));
//! // on SIGHUP / fleet file change:   sessions.reload(new_hosts);
//! // after writing a release:         sessions.notify_release_changed("web1");
//! ```
//!
//! # Files
//!
//! `accept` (the accept loop and each connection's supervisor), `ssh` (authentication and
//! channels), `requests` (the SFTP request loop of a session) and `reply` (its answer
//! queue), `ops` (what each request may do), `vfs` (the virtual tree, pure) and `confine`
//! (opening files beneath a host's directory), `reports` (uploads, caps, rotation), `watch`
//! (release generations agents wait on), `sessions` (what every session shares: access map,
//! host key, watches, session counts), `control` (one session's identity, rate bucket and
//! kill switch), `access` (the access map), `config` (limits), `hostkey`, `seen`,
//! `metrics`, `ratelimit`, `killswitch`; slots per address and per host are
//! `crate::slots`.
//!
//! # Limits
//!
//! Connections at once (`max_sessions`, refused on accept), sessions per host (refused at
//! authentication), authentication timeout, idle timeout, and a per-session token bucket over
//! SFTP and SSH channel requests: a session that empties it is disconnected; every session
//! runs in its own tasks, so a flood costs the others nothing but its bucket's worth.

mod accept;
pub mod access;
pub mod config;
mod confine;
mod control;
pub mod hostkey;
mod killswitch;
pub mod metrics;
mod ops;
mod ratelimit;
mod reply;
mod reports;
mod requests;
pub mod seen;
pub mod sessions;
mod ssh;
pub mod vfs;
mod watch;

pub use accept::serve;
pub use access::{HostKeys, HostKeysError, ReloadSummary};
pub use config::{SftpConfig, SftpConfigError};
pub use hostkey::{HostKey, HostKeyError, load_or_create_host_key};
pub use metrics::{Limit, Metrics, MetricsSnapshot};
pub use sessions::{Sessions, SessionsError};
