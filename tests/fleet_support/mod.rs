//! Shared harness of the build/deploy scenario tests: a configuration repository with a
//! flake of fake NixOS hosts (TESTING.md: plain derivations with `builder = "/bin/sh"`, a
//! `bin/switch-to-configuration` and a `nixos-version`), a fleet file, a fleet key, and a
//! way to run the real `bento` binary against it with offline Nix settings.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use bento::nix::keys::{self, PublicKey, SecretKey};

#[allow(unused_imports)] // each test binary uses some of them
pub use support::{NIX_CONFIG, Ran, nix_system};

#[path = "../support/mod.rs"]
mod support;

/// The fleet key's name in tests.
pub const KEY_NAME: &str = "test-fleet-1";

/// How a simulated host's system behaves when Bento builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    /// Its attribute throws during evaluation.
    EvalFails,
    /// Its builder exits 1.
    BuildFails,
}

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub kind: Kind,
    pub version: String,
    pub tags: Vec<String>,
}

/// A configuration repository in a temp directory: `repo/` (git, flake, bento.toml,
/// keys/) and the state directory `state/` beside it.
pub struct TestFleet {
    dir: tempfile::TempDir,
    pub hosts: Vec<HostSpec>,
}

/// A well-formed OpenSSH ed25519 public key, distinct per `seed`.
pub fn ssh_key(seed: u8) -> String {
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

impl TestFleet {
    /// A fleet of `hosts`, each at version "1".
    pub fn new(hosts: &[(&str, Kind)]) -> TestFleet {
        let specs = hosts
            .iter()
            .map(|(name, kind)| HostSpec {
                name: (*name).to_owned(),
                kind: *kind,
                version: "1".to_owned(),
                tags: Vec::new(),
            })
            .collect();
        TestFleet::with_specs(specs)
    }

    pub fn with_specs(hosts: Vec<HostSpec>) -> TestFleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let fleet = TestFleet { dir, hosts };
        std::fs::create_dir_all(fleet.repo()).expect("repo dir");
        fleet.write_flake();
        fleet.write_bento_toml();
        let key = SecretKey::generate(KEY_NAME).expect("key");
        keys::write_key_pair(&fleet.repo().join("keys"), &key).expect("key files");
        git(&fleet.repo(), &["init", "-q"]);
        git(&fleet.repo(), &["add", "-A"]);
        fleet
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn config(&self) -> PathBuf {
        self.repo().join("bento.toml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn state_dir(&self) -> bento::config::StateDir {
        bento::config::StateDir::new(self.state())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::load(&self.repo().join("keys").join(format!("{KEY_NAME}.public")))
            .expect("public key")
    }

    pub fn secret_key(&self) -> SecretKey {
        SecretKey::load(&self.repo().join("keys").join(format!("{KEY_NAME}.secret")))
            .expect("secret key")
    }

    /// Changes one host's system (its `nixos-version`), so that it builds to a new path.
    pub fn set_version(&mut self, host: &str, version: &str) {
        for h in &mut self.hosts {
            if h.name == host {
                h.version = version.to_owned();
            }
        }
        self.write_flake();
    }

    fn write_flake(&self) {
        let mut hosts = String::new();
        for h in &self.hosts {
            let value = match h.kind {
                Kind::Ok => format!("mk \"{}\" \"{}\"", h.name, h.version),
                Kind::EvalFails => format!("throw \"deliberate evaluation failure of {}\"", h.name),
                Kind::BuildFails => format!(
                    "derivation {{ name = \"nixos-system-{0}\"; inherit system; builder = \"/bin/sh\"; args = [ \"-c\" \"echo deliberate build failure of {0}; exit 1\" ]; }}",
                    h.name
                ),
            };
            hosts.push_str(&format!(
                "    nixosConfigurations.\"{}\".config.system.build.toplevel = {value};\n",
                h.name
            ));
        }
        let flake = format!(
            r#"{{
  outputs = {{ self }}: let
    system = "{system}";
    # A fake NixOS toplevel: what an agent activates, and nothing else.
    mk = host: version: derivation {{
      name = "nixos-system-${{host}}-${{version}}";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = [ "-c" ''
        mkdir -p $out/bin
        echo ${{version}} > $out/nixos-version
        printf '%s\n' '#!/bin/sh' 'echo "switch-to-configuration $1"' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      '' ];
    }};
  in {{
{hosts}  }};
}}
"#,
            system = nix_system()
        );
        std::fs::write(self.repo().join("flake.nix"), flake).expect("flake.nix");
    }

    fn write_bento_toml(&self) {
        let mut text = format!(
            "[fleet]\nstate_dir = \"../state\"\nsigning_key = \"keys/{KEY_NAME}.secret\"\n"
        );
        for (i, h) in self.hosts.iter().enumerate() {
            let tags: Vec<String> = h.tags.iter().map(|t| format!("\"{t}\"")).collect();
            text.push_str(&format!(
                "\n[hosts.\"{}\"]\nssh_key = \"{}\"\ntags = [{}]\n",
                h.name,
                ssh_key(u8::try_from(i).unwrap_or(255)),
                tags.join(", ")
            ));
        }
        std::fs::write(self.config(), text).expect("bento.toml");
    }

    /// Runs `bento ARGS -c bento.toml` (the subcommand first) with offline Nix settings.
    pub fn bento(&self, args: &[&str]) -> Ran {
        self.bento_env(args, &[])
    }

    pub fn bento_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ran::from(cmd.output().expect("run bento"))
    }

    /// The command line of `bento ARGS -c bento.toml`, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bento();
        cmd.args(args).arg("-c").arg(self.config());
        cmd
    }

    /// The store path a host's current release names, if any.
    pub fn release(&self, host: &str) -> Option<bento::release::Release> {
        let bytes = std::fs::read(self.state_dir().release(host)).ok()?;
        Some(bento::release::Release::parse_untrusted(&bytes).expect("release parses"))
    }

    /// Verifies a host's release as its agent would.
    pub fn verify(
        &self,
        host: &str,
        last_applied: Option<u64>,
    ) -> Result<bento::release::Release, bento::release::ReleaseError> {
        let bytes = std::fs::read(self.state_dir().release(host)).expect("release file");
        let key = self.public_key();
        bento::release::verify(
            &bytes,
            bento::release::Expectation {
                key: &key,
                host,
                last_applied,
            },
        )
    }

    /// A host's history, one entry per published release.
    pub fn history(&self, host: &str) -> Vec<bento::deploy::HistoryEntry> {
        bento::deploy::history::read(&self.state_dir().history(host))
            .expect("history")
            .entries
    }
}

/// The `bento` binary with offline Nix settings.
pub fn bento() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bento"));
    cmd.env("NIX_CONFIG", NIX_CONFIG).env("RUST_LOG", "warn");
    cmd
}

pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?} failed");
}

/// The line of a summary table that starts with `host`.
pub fn row<'a>(summary: &'a str, host: &str) -> &'a str {
    summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host} in:\n{summary}"))
}
