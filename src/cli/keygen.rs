//! `bento keygen`: make a fleet signing key pair in Nix's key format.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::nix::keys::{self, SecretKey};

/// Generate a signing key pair in Nix's format (the same as `nix key generate-secret`).
///
/// Writes DIR/NAME.secret (mode 0600) and DIR/NAME.public and prints the public key.
/// The fleet key signs releases and narinfos; hosts trust its public half. Existing files
/// are never overwritten.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key name, as it will appear in signatures (e.g. bento-fleet-1).
    #[arg(long)]
    name: String,
    /// Directory to write the key files into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate(&args.name)?;
    let files = keys::write_key_pair(&args.out, &key)?;
    eprintln!("secret key: {}", files.secret.display());
    eprintln!("public key: {}", files.public.display());
    println!("{}", key.public());
    Ok(ExitCode::SUCCESS)
}
