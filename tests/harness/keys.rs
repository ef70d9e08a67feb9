//! SSH keys for the tests: pairs made by the stock `ssh-keygen`, and well-formed public keys
//! without a private half for tests that only validate a fleet file.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bento::nix::cmd::Command;

/// `ssh-keygen -t ed25519 -N ''` into `dir/name`; returns the private key's path.
pub fn ssh_keygen(dir: &Path, name: &str) -> PathBuf {
    ssh_keygen_of(dir, name, "ed25519", None).0
}

/// `ssh-keygen -t kind [-b bits] -N ''` into `dir/name`: the private key's path and the
/// public key line.
pub fn ssh_keygen_of(dir: &Path, name: &str, kind: &str, bits: Option<&str>) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    let mut c = Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", name]);
    if let Some(b) = bits {
        c = c.args(["-b", b]);
    }
    if let Err(e) = c.arg("-f").arg(&path).run() {
        panic!("{e} (ssh-keygen is in openssh-client; scripts/setup.sh installs it)");
    }
    let public = public_key_line(&path);
    (path, public)
}

/// The public key line (`ssh-ed25519 AAAA… name`) of a private key made by [`ssh_keygen`].
pub fn public_key_line(private: &Path) -> String {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    std::fs::read_to_string(PathBuf::from(p))
        .unwrap()
        .trim()
        .to_owned()
}

/// A well-formed OpenSSH ed25519 public key line, distinct per `seed`; nobody holds its
/// private half.
pub fn made_up_public_key(seed: u8) -> String {
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &[seed; 32][..]] {
        blob.extend((part.len() as u32).to_be_bytes());
        blob.extend(part);
    }
    format!(
        "ssh-ed25519 {} root@h{seed}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}
