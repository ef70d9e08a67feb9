//! The host side: fetch → verify → copy → activate → confirm or roll back → report.
//!
//! May import: `nix`, `release`, `files`, `report`, `durable`, `clock`, `sftp::client`, and
//! `transfer`.
//! Never the server-side modules (`config`, `build`, `cache`, `sftp::server`).

pub mod activate;
pub mod children;
pub mod config;
pub mod copy;
pub mod cycle;
pub mod decide;
pub mod deliver;
pub mod exit;
pub mod files_dir;
pub mod http_trigger;
pub mod journal;
pub mod link;
pub mod nar_check;
pub mod outbox;
pub mod run;
pub mod self_update;
pub mod sftp_link;
pub mod substitute;
pub mod system;
pub mod transfer;
pub mod trigger;
