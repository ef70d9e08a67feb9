//! What every test harness needs, once: the Nix settings child processes get, the root
//! check that says loudly why a test skips, unique names, SSH keys made by `ssh-keygen`,
//! and the outcome of a finished process.
//!
//! Not a test target of its own: each harness (`common`, `cache_harness`,
//! `publish_harness`, `fleet_support`, `harness`) pulls it in with
//! `#[path = "../support/mod.rs"] mod support;` and re-exports what its tests use, so a
//! test file still declares only the harness it uses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bento::nix::cmd::Command;

/// The settings of `scripts/nix-env.sh`, as a literal so that [`NIX_CONFIG_NO_NARINFO_CACHE`]
/// can extend it at compile time.
macro_rules! nix_config {
    () => {
        "experimental-features = nix-command flakes\n\
         sandbox = false\n\
         build-users-group =\n\
         substituters =\n\
         warn-dirty = false"
    };
}

/// The settings of `scripts/nix-env.sh`, given to every Nix child process so that a plain
/// `cargo test` works on an offline single-user machine: flakes on, no sandbox, no build
/// users, no substituters.
pub const NIX_CONFIG: &str = nix_config!();

/// [`NIX_CONFIG`], and Nix forgets narinfo answers at once: a cache test that changes what
/// the server says sees Nix ask again rather than trust an answer cached a moment ago.
pub const NIX_CONFIG_NO_NARINFO_CACHE: &str = concat!(
    nix_config!(),
    "\nnarinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0"
);

/// The Nix system name of this machine, spelled out so that flakes (pure evaluation, no
/// `builtins.currentSystem`) can use it too.
pub fn nix_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// True when running as root. Otherwise prints a loud reason (`test` skipped, it `needs`
/// root for what), so that a skipped test is never mistaken for a passing one.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if rustix::process::getuid().is_root() {
        return true;
    }
    // Straight to the stderr handle: libtest captures `eprintln!`, not this.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: needs root ({needs}); CI runs as root and must run it \
         !!!!!!!!\n"
    );
    false
}

/// The name of the running test (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

/// A random hex string, to make store paths or key names unique to one test run.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// `ssh-keygen -t ed25519 -N ''` into `dir/name`; returns the private key's path.
pub fn ssh_keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if let Err(e) = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .run()
    {
        panic!("{e}");
    }
    path
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

/// How a process that ran to its end (or was killed) went.
#[derive(Debug)]
pub struct Ran {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Everything printed, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr)
    }
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Ran {
        use std::os::unix::process::ExitStatusExt as _;
        Ran {
            code: out.status.code().unwrap_or(-1),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Publisher limits for tests: fast rejections and release polls.
pub fn publish_config() -> bento::sftp::server::SftpConfig {
    bento::sftp::server::SftpConfig {
        auth_rejection_time: std::time::Duration::from_millis(10),
        release_poll_interval: std::time::Duration::from_millis(200),
        ..bento::sftp::server::SftpConfig::default()
    }
}
