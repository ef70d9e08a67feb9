//! A fleet repository made by the real `bento init`, served by the real `bento serve` as a
//! process, and reached as an operator or a host would: `curl` for HTTP, OpenSSH's `sftp`
//! for SFTP. Keys come from `ssh-keygen`. Used by the tests of what `bento serve` shows
//! (metrics, dashboard) and of which SSH keys it accepts; needs no root and no Nix store.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `bento` binary under test, quiet, without a fleet file from the environment.
pub fn bento() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bento"));
    c.env("RUST_LOG", "warn").env_remove("BENTO_CONFIG");
    c
}

/// Stdout then stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ssh-keygen -t kind [-b bits]` into `dir/name`: the private key's path and the public line.
pub fn keygen(dir: &Path, name: &str, kind: &str, bits: Option<&str>) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", kind, "-N", "", "-C", name]);
    if let Some(b) = bits {
        c.args(["-b", b]);
    }
    let out = c
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen (openssh-client; scripts/setup.sh installs it)");
    assert!(out.status.success(), "ssh-keygen -t {kind}: {}", text(&out));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (path, public.trim().to_owned())
}

/// A fleet repository `dir/repo` made by `bento init`, its state directory `dir/state`.
pub struct Repo {
    pub root: PathBuf,
    /// Its `bento.toml`.
    pub file: PathBuf,
    pub state: PathBuf,
}

impl Repo {
    /// `bento init` with one host, `host`, whose SSH key is then set to `key` (any text: the
    /// fleet file is written as an operator would, valid or not).
    pub fn init(dir: &Path, host: &str, key: &str) -> Repo {
        let root = dir.join("repo");
        let out = bento()
            .args(["init", "--host", host])
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "bento init: {}", text(&out));
        let file = root.join("bento.toml");
        let state = dir.join("state");
        let toml = std::fs::read_to_string(&file).unwrap();
        let line = toml
            .lines()
            .find(|l| l.starts_with("ssh_key = "))
            .unwrap()
            .to_owned();
        let toml = toml
            .replace(&line, &format!("ssh_key = \"{key}\""))
            .replace(
                "[fleet]\n",
                &format!("[fleet]\nstate_dir = \"{}\"\n", state.display()),
            );
        std::fs::write(&file, toml).unwrap();
        Repo { root, file, state }
    }

    /// The fleet's public key, as agents are given it.
    pub fn fleet_public_key(&self) -> String {
        std::fs::read_to_string(self.root.join("keys/bento-fleet-1.public"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The fleet's signing key.
    pub fn fleet_secret_key(&self) -> bento::nix::keys::SecretKey {
        let text = std::fs::read_to_string(self.root.join("keys/bento-fleet-1.secret")).unwrap();
        bento::nix::keys::SecretKey::parse(text.trim()).unwrap()
    }
}

/// Kills the process when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `bento serve`: where it listens and the host key agents pin.
pub struct Server {
    _process: Killed,
    /// `http://127.0.0.1:PORT`
    pub cache: String,
    /// `127.0.0.1:PORT`
    pub sftp: String,
    /// `http://127.0.0.1:PORT`, when the dashboard is on.
    pub dashboard: Option<String>,
    pub pinned: String,
}

/// What `bento serve` did with a fleet file.
pub enum Served {
    Up(Server),
    /// It stopped; what it said.
    Refused(String),
}

/// `bento serve` on loopback ports of its own choosing (and the dashboard when asked),
/// until it has printed where it listens, or it stopped.
pub fn serve(fleet_file: &Path, dashboard: bool) -> Served {
    let mut c = bento();
    c.args([
        "serve",
        "--cache-listen",
        "127.0.0.1:0",
        "--sftp-listen",
        "127.0.0.1:0",
    ]);
    if dashboard {
        c.args(["--dashboard-listen", "127.0.0.1:0"]);
    } else {
        c.arg("--no-dashboard");
    }
    let mut child = c
        .arg("--config")
        .arg(fleet_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (mut cache, mut sftp, mut dash) = (String::new(), String::new(), None);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let field = |name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_owned());
        if let Some(v) = field("cache ") {
            cache = v;
        }
        if let Some(v) = field("sftp ") {
            sftp = v;
        }
        if let Some(v) = field("dashboard ") {
            dash = Some(v.trim_end_matches('/').to_owned());
        }
        if let Some(p) = line.strip_prefix("Agents pin the host key: server_host_key = ") {
            let pinned = p.trim_matches('"').to_owned();
            // Keep reading what it prints, so that it never writes to a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Served::Up(Server {
                _process: Killed(child),
                cache,
                sftp,
                dashboard: dash,
                pinned,
            });
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "serve ended quietly: {}", text(&out));
    Served::Refused(text(&out))
}

/// The body of an HTTP GET that must succeed.
pub fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "20", url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET {url}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OpenSSH's `sftp` as `user` with `private`, trusting only the pinned key; runs `batch`.
pub fn openssh_sftp(
    dir: &Path,
    server: &Server,
    user: &str,
    private: &Path,
    batch: &str,
) -> Output {
    let (host, port) = server.sftp.rsplit_once(':').unwrap();
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[{host}]:{port} {}\n", server.pinned)).unwrap();
    let mut child = Command::new("sftp")
        .args(["-F", "/dev/null", "-b", "-", "-P", port, "-i"])
        .arg(private)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg(format!("{user}@{host}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp (openssh-client; scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
