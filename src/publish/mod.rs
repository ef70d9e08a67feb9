//! The SFTP publisher: one SSH port where each host logs in as itself, with its own key, and
//! sees only its own directory, `<state_dir>/publish/<host>/`. The privacy of the original
//! Bento's chroot users, without users to manage. See `docs/sftp.md` for operators.
//!
//! May import: `nix` (nothing yet), russh, russh-sftp, rustix, tokio. Never `build`; it reads
//! what the release path wrote into the publish tree.
//!
//! # Using it
//!
//! ```text
//! let key   = load_or_create_host_key(&state_dir.join("ssh_host_ed25519_key"))?;
//! let hosts = HostKeys::parse(fleet.hosts.iter().map(|h| (h.name, vec![h.ssh_key])))?;
//! let state = PublishState::new(&state_dir, key, hosts, PublishConfig::default())?;
//! println!("{}", state.host_key().known_hosts_line("bento.example", port));
//! tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
//! // on SIGHUP / fleet file change:   state.reload(new_hosts);
//! // after writing a release:         state.notify_release_changed("web1");
//! ```
//!
//! # The tree a host sees
//!
//! | path                  | what                                                        |
//! |-----------------------|-------------------------------------------------------------|
//! | `/release`            | read-only: its signed release                               |
//! | `/files/...`          | read-only: files delivered outside the store (secrets)      |
//! | `/reports/<name>`     | write-only, create-new: reports; capped and rotated         |
//! | `/watch/<gen>[/<s>]`  | read blocks until the release generation is not `<gen>`     |
//!
//! Nothing else exists. Paths are normalized lexically (`..` above `/` is refused; absolute
//! and relative paths both start at `/`) and opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` under the host's directory, so a symlink planted in the state
//! directory cannot lead outside it. `/reports` lists as empty: reports are write-only.
//!
//! # The watch protocol (instant updates)
//!
//! An agent that holds generation `G` opens `/watch/G` (or `/watch/G/S` to wait at most `S`
//! seconds) for reading and reads at offset 0. The read is answered when the server's
//! generation for the host differs from `G`, or after `min(S, watch_max_wait)` seconds,
//! whichever comes first; the data is the server's current generation in decimal followed by
//! a newline (`0` when there is no readable release). An answer equal to `G` means "no change
//! yet": read again. Reads at other offsets answer end-of-file. The agent reads `/release`
//! when the answer differs; the release itself stays the only thing it trusts (the
//! generation here is a hint, never verified). Waiting reads cost no polling: each is a task
//! parked on the host's `tokio::sync::watch` channel, which [`PublishState::notify_release_changed`]
//! (the deploy path) or the release-file poll (every `release_poll_interval`) updates.
//! With the stock client: `sftp> get /watch/7/60 -`.
//!
//! # Limits
//!
//! Connections at once (`max_sessions`, refused on accept), sessions per host (refused at
//! authentication), authentication timeout, idle timeout, and a per-session token bucket over
//! SFTP and SSH channel requests: a session that empties it is disconnected; every session
//! runs in its own tasks, so a flood costs the others nothing but its bucket's worth.

pub mod access;
pub mod client;
pub mod config;
mod confine;
pub mod hostkey;
mod killswitch;
pub mod metrics;
mod ops;
mod per_ip;
mod ratelimit;
mod reports;
pub mod seen;
mod server;
mod session;
mod sftp;
mod ssh;
pub mod state;
mod vfs;
mod watch;

pub use access::{AccessError, HostKeys, ReloadSummary};
pub use client::{ClientError, Session, connect};
pub use config::{ConfigError, PublishConfig};
pub use hostkey::{HostKey, HostKeyError, load_or_create_host_key};
pub use metrics::{Metrics, MetricsSnapshot};
pub use server::serve;
pub use state::{PublishState, StateError};
