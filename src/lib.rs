//! Bento: pull-based deployment for fleets of NixOS machines.
//!
//! Layers, data flowing one way (see `docs/architecture.md`):
//! `nix` (pure formats and the process runner) is under everything; the CLI sits on top.

pub mod agent;
pub mod blocking;
pub mod build;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod durable;
pub mod files;
pub mod gitops;
pub mod nix;
pub mod openssh;
pub mod release;
pub mod report;
pub mod rollout;
pub mod secret;
pub mod server;
pub mod sftp;
pub mod slots;
pub mod status;
pub mod transfer;
