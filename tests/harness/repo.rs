//! A configuration repository as an administrator keeps one, in a temp dir: `repo/` (git,
//! a flake of fake NixOS hosts, `bento.toml`), the fleet key and each host's SSH key in
//! `keys/`, and the server's state directory `state/`; and the real `bento` binary run
//! against it with the test Nix settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bento::nix::cmd::Command;
use bento::nix::keys::{self, PublicKey, SecretKey};
use bento::release::{Expectation, Release, ReleaseError};

use super::fake::{self, Behaviour};
use super::keys::{public_key_line, ssh_keygen};
use super::nix::nix_system;
use super::ran::{Ran, bento, run};

/// How a host's configuration evaluates and builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builds {
    /// To a fake system (see [`fake`]).
    Fine,
    /// Its attribute throws during evaluation.
    EvalFails,
    /// Its builder exits 1.
    BuildFails,
}

/// What a host's configuration builds to: a fake system at `version`.
#[derive(Debug, Clone)]
pub struct Spec {
    pub version: u64,
    pub behaviour: Behaviour,
    /// An incompressible file of this many MiB in the closure (0: none).
    pub blob_mib: u32,
    /// More store paths in the closure, 128 KiB each (0: none).
    pub leaves: u32,
    pub builds: Builds,
    pub tags: Vec<String>,
}

impl Spec {
    pub fn good(version: u64) -> Spec {
        Spec {
            version,
            behaviour: Behaviour::Good,
            blob_mib: 0,
            leaves: 0,
            builds: Builds::Fine,
            tags: Vec::new(),
        }
    }

    pub fn behaving(mut self, behaviour: Behaviour) -> Spec {
        self.behaviour = behaviour;
        self
    }

    pub fn with_blob(mut self, mib: u32) -> Spec {
        self.blob_mib = mib;
        self
    }

    pub fn with_leaves(mut self, leaves: u32) -> Spec {
        self.leaves = leaves;
        self
    }

    pub fn building(mut self, builds: Builds) -> Spec {
        self.builds = builds;
        self
    }

    pub fn tagged(mut self, tags: &[&str]) -> Spec {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

pub struct Repo {
    /// Configurations in the flake, by host.
    specs: BTreeMap<String, Spec>,
    /// Which hosts `bento.toml` lists (a host may be removed while it lives on).
    listed: Vec<String>,
    /// `[hosts.<h>.files]`: host → (file name → (source, mode)).
    files: BTreeMap<String, BTreeMap<String, (PathBuf, u32)>>,
    /// Lines added to `[fleet]`.
    fleet_options: Vec<String>,
    /// Tables added after the hosts (e.g. `[rollout]`), verbatim.
    sections: Vec<String>,
    pub fleet_key: SecretKey,
    salt: String,
    tmp: tempfile::TempDir,
}

impl Repo {
    /// A repository of `hosts`, each configured as `Spec::good(1)`. `salt` goes into every
    /// system, so that tests with different salts never share a store path.
    pub fn new(salt: &str, hosts: &[&str]) -> Repo {
        Repo::with_specs(
            salt,
            hosts
                .iter()
                .map(|h| ((*h).to_owned(), Spec::good(1)))
                .collect(),
        )
    }

    pub fn with_specs(salt: &str, specs: Vec<(String, Spec)>) -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let fleet_key = SecretKey::generate(&format!("bento-test-{salt}")).unwrap();
        keys::write_key_pair(&tmp.path().join("keys"), &fleet_key).unwrap();
        for (name, _) in &specs {
            ssh_keygen(&tmp.path().join("keys"), name);
        }
        std::fs::create_dir_all(tmp.path().join("repo")).unwrap();
        let repo = Repo {
            listed: specs.iter().map(|(n, _)| n.clone()).collect(),
            specs: specs.into_iter().collect(),
            files: BTreeMap::new(),
            fleet_options: Vec::new(),
            sections: Vec::new(),
            fleet_key,
            salt: salt.to_owned(),
            tmp,
        };
        run(Command::new("git")
            .args(["init", "-q"])
            .current_dir(repo.repo()));
        repo.write();
        repo
    }

    /// The temp dir holding everything.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.dir().join("repo")
    }

    pub fn fleet_file(&self) -> PathBuf {
        self.repo().join("bento.toml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn state_dir(&self) -> bento::config::StateDir {
        bento::config::StateDir::new(self.state())
    }

    /// The private SSH key of `host`.
    pub fn ssh_key(&self, host: &str) -> PathBuf {
        self.dir().join("keys").join(host)
    }

    pub fn public_key(&self) -> PublicKey {
        self.fleet_key.public()
    }

    /// Changes one host's configuration (not deployed yet).
    pub fn configure(&mut self, host: &str, spec: Spec) {
        self.specs.insert(host.to_owned(), spec);
        self.write();
    }

    /// Changes one host's system version, so that it builds to a new path.
    pub fn set_version(&mut self, host: &str, version: u64) {
        let spec = self.specs[host].clone();
        self.configure(host, Spec { version, ..spec });
    }

    /// Adds `line` to `[fleet]` of `bento.toml` (for example `keep_systems = 2`).
    pub fn add_fleet_option(&mut self, line: &str) {
        self.fleet_options.push(line.to_owned());
        self.write();
    }

    /// Adds `text` (whole TOML tables, e.g. `[rollout]`) at the end of `bento.toml`.
    pub fn add_section(&mut self, text: &str) {
        self.sections.push(text.to_owned());
        self.write();
    }

    /// Delivers `content` to `host` as file `name` (`[hosts.<h>.files]`, source kept beside
    /// the repository); written to `bento.toml`, not deployed yet.
    pub fn give_file(&mut self, host: &str, name: &str, content: &str, mode: u32) {
        let source = self.dir().join("secrets").join(host).join(name);
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::write(&source, content).unwrap();
        self.files
            .entry(host.to_owned())
            .or_default()
            .insert(name.to_owned(), (source, mode));
        self.write();
    }

    /// Delivers the existing file `source` to `host` as file `name` (an age file is
    /// published as it is); written to `bento.toml`, not deployed yet.
    pub fn give_source(&mut self, host: &str, name: &str, source: &Path, mode: u32) {
        self.files
            .entry(host.to_owned())
            .or_default()
            .insert(name.to_owned(), (source.to_owned(), mode));
        self.write();
    }

    /// Stops delivering file `name` to `host` (`bento.toml` only).
    pub fn remove_file(&mut self, host: &str, name: &str) {
        if let Some(files) = self.files.get_mut(host) {
            files.remove(name);
        }
        self.write();
    }

    /// Removes `host` from `bento.toml` and the flake.
    pub fn remove_from_fleet_file(&mut self, host: &str) {
        self.listed.retain(|h| h != host);
        self.specs.remove(host);
        self.write();
    }

    fn write(&self) {
        self.write_flake();
        self.write_fleet_file();
        run(Command::new("git")
            .args(["add", "-A"])
            .current_dir(self.repo()));
    }

    fn write_flake(&self) {
        let system = nix_system();
        let mut hosts = String::new();
        for (name, spec) in &self.specs {
            let expr = match spec.builds {
                Builds::Fine => fake::expression_with_leaves(
                    name,
                    spec.version,
                    &spec.behaviour,
                    &self.salt,
                    spec.blob_mib,
                    spec.leaves,
                ),
                Builds::EvalFails => format!("throw \"deliberate evaluation failure of {name}\""),
                Builds::BuildFails => format!(
                    "derivation {{ name = \"nixos-system-{name}\"; system = \"{system}\"; \
                     builder = \"/bin/sh\"; args = [ \"-c\" \"echo deliberate build failure \
                     of {name}; exit 1\" ]; }}"
                ),
            };
            hosts.push_str(&format!(
                "    nixosConfigurations.\"{name}\".config.system.build.toplevel = {expr};\n"
            ));
        }
        std::fs::write(
            self.repo().join("flake.nix"),
            format!("{{\n  outputs = {{ self }}: {{\n{hosts}  }};\n}}\n"),
        )
        .unwrap();
    }

    fn write_fleet_file(&self) {
        let secret = self
            .dir()
            .join("keys")
            .join(format!("{}.secret", self.fleet_key.name()));
        let mut text = format!(
            "[fleet]\nstate_dir = \"{}\"\nsigning_key = \"{}\"\n",
            self.state().display(),
            secret.display()
        );
        for line in &self.fleet_options {
            text.push_str(&format!("{line}\n"));
        }
        for name in &self.listed {
            let tags: Vec<String> = self.specs.get(name).map_or(Vec::new(), |s| {
                s.tags.iter().map(|t| format!("\"{t}\"")).collect()
            });
            text.push_str(&format!(
                "\n[hosts.\"{name}\"]\nssh_key = \"{}\"\ntags = [{}]\n",
                public_key_line(&self.ssh_key(name)),
                tags.join(", ")
            ));
            if let Some(files) = self.files.get(name) {
                text.push_str(&format!("\n[hosts.\"{name}\".files]\n"));
                for (file, (source, mode)) in files {
                    text.push_str(&format!(
                        "\"{file}\" = {{ source = \"{}\", mode = 0o{mode:o} }}\n",
                        source.display()
                    ));
                }
            }
        }
        for section in &self.sections {
            text.push_str(&format!("\n{section}\n"));
        }
        // Written whole and renamed, as an editor saves: `bento serve` never reads half.
        bento::durable::write_atomic(&self.fleet_file(), text.as_bytes(), 0o644).unwrap();
    }

    /// `bento ARGS -c bento.toml` (the subcommand first), from the repository, not started.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = bento();
        c.args(args)
            .arg("-c")
            .arg(self.fleet_file())
            .current_dir(self.repo());
        c
    }

    /// Runs `bento ARGS -c bento.toml`.
    pub fn bento(&self, args: &[&str]) -> Ran {
        Ran::of(&mut self.command(args))
    }

    /// [`Repo::bento`] with more environment.
    pub fn bento_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Ran::of(&mut c)
    }

    /// `bento deploy ARGS` (every host when empty); panics when it fails.
    pub fn deploy(&self, args: &[&str]) -> Ran {
        let mut all = vec!["deploy"];
        all.extend_from_slice(args);
        let ran = self.bento(&all);
        assert_eq!(ran.code, 0, "bento deploy failed: {}", ran.both());
        ran
    }

    /// The release of `host` on disk, parsed without checking it.
    pub fn release(&self, host: &str) -> Option<Release> {
        let bytes = std::fs::read(self.state_dir().release(host)).ok()?;
        Some(Release::parse_untrusted(&bytes).expect("release parses"))
    }

    /// `(generation, store path)` of `host`'s current release.
    pub fn released(&self, host: &str) -> Option<(u64, String)> {
        self.release(host).map(|r| (r.generation, r.store_path))
    }

    /// Verifies a host's release as its agent would.
    pub fn verify(&self, host: &str, last_applied: Option<u64>) -> Result<Release, ReleaseError> {
        let bytes = std::fs::read(self.state_dir().release(host)).expect("release file");
        let key = self.public_key();
        bento::release::verify(
            &bytes,
            Expectation {
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

    /// `bento status --json`, parsed: host → its JSON object.
    pub fn status(&self) -> BTreeMap<String, serde_json::Value> {
        let ran = self.bento(&["status", "--json"]);
        assert!(
            ran.code == 0 || ran.code == 3,
            "bento status failed: {ran:#?}"
        );
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["host"].as_str().unwrap().to_owned(), h.clone()))
            .collect()
    }

    /// Each host's state as `bento status` says.
    pub fn states(&self) -> BTreeMap<String, String> {
        self.status()
            .into_iter()
            .map(|(h, v)| (h, v["state"].as_str().unwrap_or("?").to_owned()))
            .collect()
    }

    /// Whether Nix counts a root under the state directory for store path `path`.
    pub fn rooted_by_bento(&self, path: &str) -> bool {
        let roots = run(super::nix::command("nix-store").args(["--query", "--roots", path]));
        let state = self.state().canonicalize().unwrap();
        roots
            .lines()
            .any(|l| l.starts_with(&*state.to_string_lossy()))
    }
}

/// The line of a summary table that starts with `host`.
pub fn row<'a>(summary: &'a str, host: &str) -> &'a str {
    summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host} in:\n{summary}"))
}
