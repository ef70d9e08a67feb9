//! The pure Nix layer: store paths, hashes, keys and signatures, narinfo, NAR encoding,
//! store queries, and the one runner through which every external process is started.
//!
//! May import: std, the Nix format crates (`nix-derivation`, `nix-narinfo`, `nix-archive`),
//! crypto and encoding crates. Never the network, never a layer above it (`config`, `build`,
//! `release`, `cache`, `sftp`, `agent`, `status`).

pub mod cmd;
pub mod hash;
pub mod keys;
pub mod messages;
pub mod nar;
pub mod narinfo;
pub mod pathinfo;
pub mod store;
pub mod transient;

pub use cmd::{CmdError, Command, Output};
pub use hash::{HashError, Sha256Hash};
pub use keys::{KeyError, PublicKey, SecretKey};
pub use pathinfo::PathInfo;
pub use store::{STORE_DIR, StoreError, StorePath};
