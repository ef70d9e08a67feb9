//! The one harness of Bento's integration tests. Each test file declares `mod harness;` and
//! uses what it needs; what a test needs from outside (Nix, OpenSSH, namespaces, the real
//! `bento` binary) is made here, once, and removed when its guard drops, also when a test
//! panics.
//!
//! - [`root`]: the rule for tests that need root: fail, naming why, unless
//!   `BENTO_ALLOW_SKIP=1` allows a loud skip.
//! - [`nix`]: the Nix settings every child process gets, builds of `/bin/sh` derivations
//!   (no nixpkgs), Nix-made signing keys, and Nix stores of a test's own (usable without
//!   root) as golden-data makers and as the judges of what Bento serves.
//! - [`keys`]: SSH keys made by `ssh-keygen`.
//! - [`ran`]: running processes and reading how they went; waiting for a condition.
//! - [`net`]: simulated hosts, each a network namespace on a bridge of the test's own plus
//!   a mount namespace with its own `/nix` and `/run`.
//! - [`fake`]: fake NixOS systems whose `switch-to-configuration` the test controls.
//! - [`servers`]: the server's state directory, and the binary cache and SFTP server run
//!   in-process on a listener the test binds; [`http`] is a raw HTTP/1.1 client for them.
//! - [`relay`]: a recording relay in front of the cache that can cut or refuse the
//!   whole-closure transfer.
//! - [`scene`]: one or more simulated hosts with both servers on their bridge, and the real
//!   `bento agent` run inside a host.
//! - [`systemd`]: a Debian container booted with systemd as PID 1 (the systemd host in a
//!   box), for what the agent does with systemd.
//! - [`repo`]: a configuration repository (a flake of fake hosts, `bento.toml`, the fleet
//!   key) and the real `bento` binary run against it; [`init`]: a fleet repository made by
//!   `bento init` (no Nix store needed); [`serve`] runs `bento serve` as a process;
//!   [`fleet`]: a whole fleet run by the real binaries.
//! - [`browser`]: headless Chromium, the judge of the dashboard's pages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod fake;
pub mod fleet;
pub mod http;
pub mod init;
pub mod keys;
pub mod net;
pub mod nix;
pub mod ran;
pub mod relay;
pub mod repo;
pub mod root;
pub mod scene;
pub mod serve;
pub mod servers;
pub mod systemd;

#[allow(unused_imports)] // each test binary uses some of them
pub use root::needs_root;
