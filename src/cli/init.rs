//! `bento init [DIR]`: scaffold a configuration repository: `bento.toml` with one host, a
//! flake with that host's NixOS configuration, the fleet signing key, a `.gitignore` that
//! keeps the secret key out of git; then print the next steps. Never overwrites a file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::SshPublicKey;
use crate::nix::keys::{self, SecretKey};
use crate::release;

/// Create a fleet repository: bento.toml, flake.nix, one example host, the fleet key.
///
/// Writes DIR/bento.toml, DIR/flake.nix, DIR/hosts/HOST/configuration.nix, DIR/.gitignore
/// and the fleet signing key pair in DIR/keys/ (the secret is git-ignored). Refuses to run
/// if any of these files exists already; nothing is overwritten.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the new repository (created if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Name of the example host.
    #[arg(long, default_value = "example")]
    host: String,
    /// The example host's SSH public key (its /etc/ssh/ssh_host_ed25519_key.pub). Without
    /// it, bento.toml gets a placeholder to replace.
    #[arg(long, value_name = "KEY")]
    ssh_key: Option<String>,
    /// Name of the fleet signing key, as it appears in signatures.
    #[arg(long, default_value = "bento-fleet-1")]
    key_name: String,
}

/// The files of a new repository, relative to its directory, with their content.
pub fn scaffold(
    host: &str,
    ssh_key: Option<&SshPublicKey>,
    key_name: &str,
) -> Vec<(PathBuf, String)> {
    // A dotted host name is one key, quoted, in both TOML and Nix.
    let key = if host.contains('.') {
        format!("\"{host}\"")
    } else {
        host.to_owned()
    };
    let ssh_line = match ssh_key {
        Some(k) => format!("ssh_key = \"{}\"", k.to_openssh()),
        None => format!(
            "ssh_key = \"REPLACE with the content of /etc/ssh/ssh_host_ed25519_key.pub on {host}\""
        ),
    };
    let bento_toml = format!(
        r#"# The fleet: every host, its SSH public key, and how its system is built.
# Relative paths are relative to this file.

[fleet]
# The flake whose nixosConfigurations.<host> are built.
flake = "."
# Where the server keeps releases, build records and GC roots.
# state_dir = "/var/lib/bento"
# The fleet signing key. Secret: never commit it. Hosts trust keys/{key_name}.public.
signing_key = "keys/{key_name}.secret"

[hosts.{key}]
# The key the host logs in with: its /etc/ssh/ssh_host_ed25519_key.pub.
{ssh_line}
tags = ["example"]
# Built from nixosConfigurations.{key}.config.system.build.toplevel (set `attr` to change
# it, or `configuration = "path/configuration.nix"` for a host without flakes).

# Files for this host that must stay out of the Nix store (secrets): the agent installs
# them in /run/bento/files/<name>, mode 0400 unless given. Keep their sources out of git.
# [hosts.{key}.files]
# db-password = "secrets/{host}/db-password"
"#
    );
    let flake_nix = format!(
        r#"{{
  description = "A NixOS fleet deployed with Bento";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = {{ self, nixpkgs }}: {{
    # One entry per host of bento.toml.
    nixosConfigurations.{key} = nixpkgs.lib.nixosSystem {{
      system = "x86_64-linux";
      modules = [ ./hosts/{host}/configuration.nix ];
    }};
  }};
}}
"#
    );
    let configuration = format!(
        r#"# The system of host {host}. Replace the hardware placeholders with the host's own
# (`nixos-generate-config --show-hardware-config` on the host prints them).
{{ config, pkgs, ... }}:
{{
  networking.hostName = "{host}";

  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {{
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  }};

  # Also creates /etc/ssh/ssh_host_ed25519_key, the key this host logs in to Bento with.
  services.openssh.enable = true;

  system.stateVersion = "25.05";
}}
"#
    );
    let gitignore = "# The fleet's secret signing key must never be committed.\n/keys/*.secret\n# Nor the files delivered to hosts outside the store ([hosts.<name>.files]).\n/secrets/\n# nix build output links\nresult\nresult-*\n";
    vec![
        (PathBuf::from("bento.toml"), bento_toml),
        (PathBuf::from("flake.nix"), flake_nix),
        (
            Path::new("hosts").join(host).join("configuration.nix"),
            configuration,
        ),
        (PathBuf::from(".gitignore"), gitignore.to_owned()),
    ]
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    release::check_host_name(&args.host).context("--host")?;
    let ssh_key = args
        .ssh_key
        .as_deref()
        .map(SshPublicKey::parse)
        .transpose()
        .context("--ssh-key is not an OpenSSH public key")?;
    let key = SecretKey::generate(&args.key_name)?;
    let files = scaffold(&args.host, ssh_key.as_ref(), &args.key_name);
    let keys_dir = args.dir.join("keys");
    let mut targets: Vec<PathBuf> = files.iter().map(|(p, _)| args.dir.join(p)).collect();
    targets.push(keys_dir.join(format!("{}.secret", args.key_name)));
    targets.push(keys_dir.join(format!("{}.public", args.key_name)));
    let existing: Vec<String> = targets
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!(
            "refusing to overwrite existing files: {}; nothing was written",
            existing.join(", ")
        );
    }

    for (rel, content) in &files {
        write_new(&args.dir.join(rel), content)?;
    }
    let pair = keys::write_key_pair(&keys_dir, &key)?;

    let d = args.dir.display();
    println!("Created a Bento fleet in {d}:");
    for (rel, _) in &files {
        println!("  {}", rel.display());
    }
    println!("  {} (secret; git-ignored)", pair.secret.display());
    println!("  {}", pair.public.display());
    println!();
    println!("Next steps:");
    let mut n = 0;
    let mut step = |text: String| {
        n += 1;
        println!("  {n}. {text}");
    };
    if ssh_key.is_none() {
        step(format!(
            "Put host {}'s SSH public key (its /etc/ssh/ssh_host_ed25519_key.pub) in bento.toml.",
            args.host
        ));
    }
    step(format!(
        "Fit hosts/{}/configuration.nix to the machine (nixos-generate-config --show-hardware-config).",
        args.host
    ));
    let cd = if args.dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {d} && ")
    };
    step(format!(
        "{cd}git init && git add -A   (flakes only see files known to git)"
    ));
    step("bento build    evaluates and builds every host".into());
    step("bento deploy   signs and publishes a release per host".into());
    step(format!("Make hosts trust the fleet key: {}", key.public()));
    Ok(ExitCode::SUCCESS)
}

fn write_new(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fleet;

    #[test]
    fn the_scaffold_loads_once_the_key_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let key = SshPublicKey::parse(&crate::config::tests_support_ssh_key(9)).unwrap();
        for (rel, content) in scaffold("web1", Some(&key), "fleet-1") {
            write_new(&dir.path().join(rel), &content).unwrap();
        }
        let fleet = Fleet::load(&dir.path().join("bento.toml")).unwrap();
        assert_eq!(fleet.hosts["web1"].ssh_key, key);
        assert_eq!(fleet.signing_key, dir.path().join("keys/fleet-1.secret"));

        let bare = tempfile::tempdir().unwrap();
        for (rel, content) in scaffold("web1", None, "fleet-1") {
            write_new(&bare.path().join(rel), &content).unwrap();
        }
        let msg = Fleet::load(&bare.path().join("bento.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("host web1, field ssh_key"), "{msg}");
    }

    #[test]
    fn dotted_host_names_stay_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SshPublicKey::parse(&crate::config::tests_support_ssh_key(9)).unwrap();
        let files = scaffold("web1.example.org", Some(&key), "fleet-1");
        for (rel, content) in &files {
            write_new(&dir.path().join(rel), content).unwrap();
        }
        let fleet = Fleet::load(&dir.path().join("bento.toml")).unwrap();
        assert!(
            fleet.hosts.contains_key("web1.example.org"),
            "{:?}",
            fleet.hosts.keys()
        );
        let flake = &files[1].1;
        assert!(
            flake.contains("nixosConfigurations.\"web1.example.org\" = "),
            "{flake}"
        );
    }
}
