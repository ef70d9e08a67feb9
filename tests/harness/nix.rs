//! Nix for the tests. Every Nix process a test starts gets [`NIX_CONFIG`] (the settings of
//! `scripts/nix-env.sh`: offline, no sandbox, no build users, no substituters, and narinfo
//! answers never cached), so a plain `cargo test` works without sourcing anything and Nix
//! never reaches for the network.
//!
//! Two kinds of store:
//! - the machine's own (`/nix`), where the functions of this file build (root needed:
//!   single-user Nix 2.8 opens it directly) and which `bento` itself reads;
//! - a store of one [`Nix`] environment, `local?root=DIR` under a temp dir. Nix 2.8 builds
//!   into it as any user (in its sandbox, with the host's `/bin` and `/usr` visible), so the
//!   golden-data tests need no root. Its paths keep their `/nix/store/...` names; their
//!   files are at [`Nix::real`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bento::nix::cmd::{self, CmdError, Command, Output};
use bento::nix::pathinfo::Store;
use bento::nix::store::{self, StorePath};

/// The settings every Nix child process gets.
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes\n\
     sandbox = false\n\
     build-users-group =\n\
     substituters =\n\
     warn-dirty = false\n\
     narinfo-cache-negative-ttl = 0\n\
     narinfo-cache-positive-ttl = 0";

/// The Nix system name of this machine, spelled out so that flakes (pure evaluation, no
/// `builtins.currentSystem`) can use it too.
pub fn nix_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// A random hex string, to make store paths or key names unique to one test run.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A Nix program (`nix-build`, `nix-store`) with the test settings.
pub fn command(program: &str) -> Command {
    Command::new(program).env("NIX_CONFIG", NIX_CONFIG)
}

/// `nix` with the test settings and the experimental features on, like Bento's runner.
pub fn nix() -> Command {
    cmd::nix().env("NIX_CONFIG", NIX_CONFIG)
}

/// The `mk` helper of TESTING.md, for expressions given to [`build`].
pub const MK: &str = r#"let mk = name: script: derivation {
      inherit name; system = builtins.currentSystem;
      builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ];
    }; in "#;

/// Builds `expr` (which may use `mk`) in the machine's store; returns its output paths.
pub fn build_all(expr: &str) -> Vec<String> {
    let out = command("nix-build")
        .args(["--no-out-link", "-E", &format!("{MK}{expr}")])
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.stdout_text().lines().map(str::to_owned).collect()
}

/// [`build_all`] of an expression with one output.
pub fn build(expr: &str) -> String {
    build_all(expr).pop().expect("nix-build printed no path")
}

/// A closure with the NAR cases that break naive encoders: non-UTF-8 file names, a
/// 3000-byte symlink target, a directory of 10,001 entries, and a reference.
pub fn build_tricky(salt: &str) -> String {
    build(&format!(
        r#"let dep = mk "bento-dep-{salt}" "echo dep-{salt} > $out"; in
        mk "bento-tricky-{salt}" ''
          mkdir -p $out/many
          cd $out
          touch "$(printf 'caf\351')" "$(printf '\377\376')"
          ln -s "$(head -c 3000 /dev/zero | tr '\000' a)" long-link
          (cd many && seq 1 10001 | xargs touch)
          echo ${{dep}} > ref
        ''"#
    ))
}

/// A closure of `n` leaves under one top, with `payload` bytes of random data each.
pub fn build_fan(salt: &str, n: usize, payload: usize) -> String {
    build(&format!(
        r#"let leaf = i: mk "bento-leaf-{salt}-${{toString i}}" "head -c {payload} /dev/urandom > $out";
               leaves = builtins.genList leaf {n}; in
           mk "bento-fan-{salt}" "mkdir $out; echo ${{toString leaves}} > $out/refs""#
    ))
}

/// Writes `path`'s closure (from the machine's store) into a `file://` binary cache at `dir`
/// with Nix itself, uncompressed, signed by `key` (its secret written beside `dir`).
pub fn signed_file_cache(dir: &Path, key: &bento::nix::SecretKey, path: &str) {
    let secret = dir.with_extension("secret");
    std::fs::write(&secret, key.to_secret_string()).unwrap();
    let url = format!(
        "file://{}?compression=none&secret-key={}",
        dir.display(),
        secret.display()
    );
    super::ran::run(nix().args(["copy", "--to", &url, path]));
}

/// Every path in the closure of `path`, in the machine's store.
pub fn closure(path: &str) -> Vec<String> {
    let out = command("nix-store")
        .args(["-qR", path])
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.stdout_text().lines().map(str::to_owned).collect()
}

/// The hash part of a store path (`/nix/store/<hash>-name`).
pub fn hash_part(path: &str) -> String {
    path.trim_start_matches("/nix/store/")[..32].to_owned()
}

/// The environment of one test's Nix processes: [`NIX_CONFIG`], a narinfo disk cache of
/// its own (`XDG_CACHE_HOME`), so that no answer is carried from one test or run into
/// another, and, for [`Nix::chroot`], a store of its own. Everything goes when dropped.
pub struct Nix {
    dir: tempfile::TempDir,
    /// `local?root=...` for a store of its own; `None` for the machine's.
    store: Option<String>,
    config: String,
}

impl Nix {
    /// Nix on the machine's store.
    pub fn new() -> Self {
        Nix {
            dir: tempfile::tempdir().expect("temp dir for Nix"),
            store: None,
            config: NIX_CONFIG.to_owned(),
        }
    }

    /// Nix on a new, empty store of its own, which any user can build into.
    pub fn chroot() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for a Nix store");
        let url = format!("local?root={}", dir.path().join("root").display());
        // What builders may see of the host: the shell and the tools of TESTING.md's `mk`.
        let visible: Vec<&str> = ["/bin", "/usr", "/lib", "/lib64"]
            .into_iter()
            .filter(|p| Path::new(p).exists())
            .collect();
        let config = format!(
            "{NIX_CONFIG}\nstore = {url}\nextra-sandbox-paths = {}",
            visible.join(" ")
        );
        Nix {
            dir,
            store: Some(url),
            config,
        }
    }

    /// The store's URL (`local?root=DIR`, or `auto` for the machine's).
    pub fn store_url(&self) -> String {
        self.store.clone().unwrap_or_else(|| "auto".to_owned())
    }

    /// The `NIX_CONFIG` this environment gives Nix (to extend for one command).
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Where the files of store path `path` are.
    pub fn real(&self, path: &str) -> PathBuf {
        match &self.store {
            Some(_) => self
                .dir
                .path()
                .join("root")
                .join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }

    /// Whether `path` is in this store (its files are there).
    pub fn has(&self, path: &str) -> bool {
        self.real(path).symlink_metadata().is_ok()
    }

    /// This environment on a command made elsewhere (for example Bento's own argv).
    pub fn prepare(&self, c: Command) -> Command {
        c.env("NIX_CONFIG", &self.config)
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
    }

    /// Any Nix program (`nix-build`, `nix-store`).
    pub fn cmd(&self, program: &str) -> Command {
        self.prepare(Command::new(program))
    }

    /// `nix` with the experimental features on, like Bento's runner.
    pub fn nix(&self) -> Command {
        self.prepare(cmd::nix())
    }

    /// Bento's store queries, on this store with this environment.
    pub fn pathinfo(&self) -> Store {
        match &self.store {
            Some(url) => self.pathinfo_at(url),
            None => self.with_env(Store::local()),
        }
    }

    /// Bento's store queries on the store at `url`, with this environment.
    pub fn pathinfo_at(&self, url: &str) -> Store {
        self.with_env(Store::at(url.to_owned()))
    }

    fn with_env(&self, store: Store) -> Store {
        store.env("NIX_CONFIG", self.config.clone()).env(
            "XDG_CACHE_HOME",
            self.dir.path().join("xdg-cache").display().to_string(),
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

    /// Builds `drvs` in one `nix-build` call, in this store.
    pub fn build(&self, drvs: &[Drv]) -> Built {
        let dir = tempfile::tempdir().unwrap();
        let mut expr = String::new();
        writeln!(
            expr,
            "let mk = name: script: extra: derivation ({{ inherit name; \
             system = builtins.currentSystem; builder = \"/bin/sh\"; \
             PATH = \"/usr/bin:/bin\"; args = [ script ]; }} // extra);"
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
        Built { paths }
    }

    /// `nix copy --from URL` into this store, with only `trusted_key` trusted and
    /// signatures required; `extra` arguments go before the path.
    pub async fn copy_from(
        &self,
        url: &str,
        trusted_key: &str,
        path: &str,
        extra: &[&str],
    ) -> Result<Output, CmdError> {
        self.nix()
            .args(["copy", "--from", url, "--to", &self.store_url()])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "trusted-public-keys", trusted_key])
            .args(["--option", "substituters", ""])
            .args(extra)
            .arg(path)
            .timeout(Duration::from_secs(300))
            .run_async()
            .await
    }

    /// `nix store verify -r` of `path` in this store, trusting only `trusted_key`.
    pub async fn verify(&self, trusted_key: &str, path: &str) -> Result<Output, CmdError> {
        self.nix()
            .args(["store", "verify", "--store", &self.store_url(), "-r"])
            .args(["--option", "trusted-public-keys", trusted_key])
            .arg(path)
            .run_async()
            .await
    }

    /// [`Nix::copy_from`] then [`Nix::verify`], both of which must succeed.
    pub async fn copy_and_verify(&self, url: &str, trusted_key: &str, path: &str, extra: &[&str]) {
        if let Err(e) = self.copy_from(url, trusted_key, path, extra).await {
            panic!("{e}");
        }
        if let Err(e) = self.verify(trusted_key, path).await {
            panic!("{e}");
        }
    }
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Nix {
    fn drop(&mut self) {
        // Store directories are read-only: make them writable so that the temp dir can go
        // (root needs no such thing; everyone else does).
        if self.store.is_some() {
            let _ = Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(self.dir.path())
                .run();
        }
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

/// Store paths built by [`Nix::build`], by derivation name.
pub struct Built {
    pub paths: BTreeMap<String, StorePath>,
}

impl Built {
    pub fn path(&self, name: &str) -> &StorePath {
        self.paths
            .get(name)
            .unwrap_or_else(|| panic!("no derivation named {name}"))
    }

    /// The store path, as text.
    pub fn abs(&self, name: &str) -> String {
        store::render(self.path(name))
    }
}
