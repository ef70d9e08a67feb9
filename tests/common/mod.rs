//! Shared harness of the integration tests that run real Nix 2.8: the Nix settings every
//! child process gets (offline, no sandbox, no build users; see `scripts/nix-env.sh`),
//! building derivations with `builder = "/bin/sh"` (no nixpkgs needed), Nix-made signing
//! keys, and checks of Nix's refusals.
//!
//! Every `nix` process a test starts goes through [`Nix`], so plain `cargo test` works
//! without sourcing anything, and Nix never reaches for the network.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bento::nix::cmd::{self, CmdError, Command, Output};
use bento::nix::pathinfo::Store;
use bento::nix::store::{self, StorePath};

#[allow(unused_imports)] // each test binary uses some of them
pub use support::{NIX_CONFIG, nonce};

#[path = "../support/mod.rs"]
mod support;

/// True when running as root. Otherwise says loudly that `test` is skipped, so that a
/// skipped test is never mistaken for a passing one.
pub fn root_or_skip(test: &str) -> bool {
    support::root_or_skip(test, "single-user Nix 2.8 opens /nix/store directly")
}

/// The environment for one test's Nix processes: [`NIX_CONFIG`] and a fresh
/// `XDG_CACHE_HOME`, so that Nix's narinfo disk cache never carries answers from one test
/// (or run) into another.
pub struct Nix {
    cache_home: tempfile::TempDir,
}

impl Nix {
    pub fn new() -> Self {
        Nix {
            cache_home: tempfile::tempdir().expect("temp dir for XDG_CACHE_HOME"),
        }
    }

    fn with_env(&self, c: Command) -> Command {
        c.env("NIX_CONFIG", NIX_CONFIG)
            .env("XDG_CACHE_HOME", self.cache_home.path())
    }

    /// Any Nix program (`nix-build`, `nix-store`).
    pub fn cmd(&self, program: &str) -> Command {
        self.with_env(Command::new(program))
    }

    /// `nix` with the experimental features on, like Bento's runner.
    pub fn nix(&self) -> Command {
        self.with_env(cmd::nix())
    }

    /// Bento's store queries, with this environment.
    pub fn store(&self, url: Option<&str>) -> Store {
        let s = match url {
            Some(url) => Store::at(url),
            None => Store::local(),
        };
        s.env("NIX_CONFIG", NIX_CONFIG).env(
            "XDG_CACHE_HOME",
            self.cache_home.path().display().to_string(),
        )
    }

    /// Runs a command that must succeed, showing its argv and stderr if it does not.
    pub fn run(&self, c: Command) -> Output {
        match c.run() {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs a command that Nix must refuse: a non-zero exit whose stderr contains `needle`.
    /// Returns the stderr tail.
    pub fn refuses(&self, c: Command, needle: &str) -> String {
        let argv = c.argv();
        match c.run() {
            Ok(out) => panic!(
                "Nix accepted what it must refuse: `{argv}`\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(CmdError::Failed {
                code, stderr_tail, ..
            }) => {
                assert_ne!(code, Some(0));
                assert!(
                    stderr_tail.contains(needle),
                    "`{argv}` failed, but not with {needle:?}:\n{stderr_tail}"
                );
                stderr_tail
            }
            Err(e) => panic!("`{argv}` did not run: {e}"),
        }
    }

    /// A signing key made by `nix key generate-secret`, and its public half made by
    /// `nix key convert-secret-to-public`, written to `dir/<name>.secret`.
    pub fn generate_key(&self, name: &str, dir: &Path) -> NixKey {
        let secret = self
            .run(
                self.nix()
                    .args(["key", "generate-secret", "--key-name", name]),
            )
            .stdout;
        let public = self.run(
            self.nix()
                .args(["key", "convert-secret-to-public"])
                .stdin_bytes(secret.clone()),
        );
        let path = dir.join(format!("{name}.secret"));
        std::fs::write(&path, &secret).unwrap();
        NixKey {
            secret: String::from_utf8(secret).unwrap(),
            public: public.stdout_text(),
            path,
        }
    }

    /// Builds `drvs` in one `nix-build` call. `nonce`, when given, becomes an attribute of
    /// every derivation, so the store paths are new to this run.
    pub fn build(&self, drvs: &[Drv], nonce: Option<&str>) -> Built {
        let dir = tempfile::tempdir().unwrap();
        let mut expr = String::new();
        let nonce_attr = nonce
            .map(|n| format!("bentoTestNonce = \"{n}\";"))
            .unwrap_or_default();
        writeln!(
            expr,
            "let mk = name: script: extra: derivation ({{ inherit name; \
             system = builtins.currentSystem; builder = \"/bin/sh\"; \
             PATH = \"/usr/bin:/bin\"; args = [ script ]; {nonce_attr} }} // extra);"
        )
        .unwrap();
        for (i, d) in drvs.iter().enumerate() {
            // The script is a file: no escaping of Nix strings, and bytes like \377 reach
            // the shell as they are.
            let file = format!("{i}-{}.sh", d.name);
            std::fs::write(dir.path().join(&file), &d.script).unwrap();
            let deps = d
                .deps
                .iter()
                .map(|dep| {
                    let j = drvs
                        .iter()
                        .position(|x| x.name == *dep)
                        .unwrap_or_else(|| panic!("{} depends on unknown {dep}", d.name));
                    format!("{} = d{j};", dep.replace('-', "_"))
                })
                .collect::<String>();
            writeln!(expr, "  d{i} = mk \"{}\" ./{file} {{ {deps} }};", d.name).unwrap();
        }
        let list = (0..drvs.len())
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(expr, "in [ {list} ]").unwrap();
        let file = dir.path().join("default.nix");
        std::fs::write(&file, &expr).unwrap();
        let out = self.run(self.cmd("nix-build").arg("--no-out-link").arg(&file));
        let text = out.stdout_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), drvs.len(), "nix-build printed {text:?}");
        let mut paths = BTreeMap::new();
        for (d, line) in drvs.iter().zip(lines) {
            let p = store::parse(line).unwrap();
            assert_eq!(p.name(), d.name);
            paths.insert(d.name.clone(), p);
        }
        Built {
            paths,
            delete_on_drop: nonce.is_some(),
            env: self.cache_home.path().to_owned(),
        }
    }
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

/// A key pair made by Nix.
pub struct NixKey {
    /// The secret key file's text (`name:base64`).
    pub secret: String,
    /// `name:base64` of the public key.
    pub public: String,
    /// Where the secret is written (for `?secret-key=` and `nix store sign -k`).
    pub path: PathBuf,
}

/// One derivation: `/bin/sh script`, with `$out` to write and, for each of `deps`, an
/// environment variable of that name (`-` becomes `_`) holding the dependency's path.
pub struct Drv {
    pub name: String,
    pub script: String,
    pub deps: Vec<String>,
}

impl Drv {
    pub fn new(name: &str, script: &str) -> Self {
        Drv {
            name: name.to_owned(),
            script: script.to_owned(),
            deps: Vec::new(),
        }
    }

    pub fn dep(mut self, name: &str) -> Self {
        self.deps.push(name.to_owned());
        self
    }
}

/// Store paths built by [`Nix::build`], by derivation name. Paths made unique by a nonce
/// are deleted from the store again (with their derivations) when this is dropped.
pub struct Built {
    pub paths: BTreeMap<String, StorePath>,
    delete_on_drop: bool,
    env: PathBuf,
}

impl Built {
    pub fn path(&self, name: &str) -> &StorePath {
        self.paths
            .get(name)
            .unwrap_or_else(|| panic!("no derivation named {name}"))
    }

    /// The absolute path in the store.
    pub fn abs(&self, name: &str) -> String {
        store::render(self.path(name))
    }
}

/// Store paths a test made only for itself, deleted when this is dropped (also when the
/// test fails). Best effort: paths still referenced by others stay.
pub struct DeleteOnDrop(pub Vec<String>);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("nix-store")
                .env("NIX_CONFIG", NIX_CONFIG)
                .arg("--delete")
                .args(&self.0)
                .run();
        }
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        if !self.delete_on_drop {
            return;
        }
        // Best effort: paths still referenced (or in use by a concurrent test) stay.
        let env = || {
            Command::new("nix-store")
                .env("NIX_CONFIG", NIX_CONFIG)
                .env("XDG_CACHE_HOME", &self.env)
        };
        let outputs: Vec<String> = self.paths.values().map(store::render).collect();
        let derivers = env()
            .args(["--query", "--deriver"])
            .args(&outputs)
            .run()
            .map(|o| {
                o.stdout_text()
                    .lines()
                    .filter(|l| l.starts_with('/'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let _ = env().arg("--delete").args(&outputs).run();
        let _ = env().arg("--delete").args(&derivers).run();
    }
}
