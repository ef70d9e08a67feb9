//! SFTP, the one way between hosts and the server: each host logs in as itself, with its own
//! key, and sees only its own directory, `<state_dir>/publish/<host>/`. The privacy of the
//! original Bento's chroot users, without users to manage. See `docs/sftp.md` for operators.
//!
//! [`server`] is the SSH/SFTP server `bento serve` runs; [`client`] is what the agent uses to
//! talk to it. What both sides must agree on, the tree a host sees and the watch protocol,
//! is described here; the rule for report names is `report::check_report_name`.
//!
//! May import: see [`server`] and [`client`]. The client imports nothing of the server: the
//! agent links the client only.
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
//! parked on the host's `tokio::sync::watch` channel, which `server::Sessions::notify_release_changed`
//! (the deploy path) or the release-file poll (every `release_poll_interval`) updates.
//! With the stock client: `sftp> get /watch/7/60 -`.

pub mod client;
pub mod server;
