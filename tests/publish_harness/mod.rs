//! Shared harness of the `publish_*` tests: a publisher serving in-process on 127.0.0.1:0
//! over a temporary state directory, hosts with keys made by `ssh-keygen`, and helpers to
//! drive the stock OpenSSH clients (`sftp`, `ssh`) and our Rust client against it.
//!
//! Every external process goes through `bento::nix::cmd::Command`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bento::nix::cmd::{CmdError, Command, Output};
use bento::nix::keys::SecretKey;
use bento::release::Release;
use bento::sftp::client::{ClientError, Session};
use bento::sftp::server::{
    HostKey, HostKeys, Sessions, SftpConfig, load_or_create_host_key, serve,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)] // each test binary uses some of them
pub use support::{public_key_line, publish_config, ssh_keygen};

#[path = "../support/mod.rs"]
mod support;

pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub state: Arc<Sessions>,
    pub addr: SocketAddr,
    /// A known_hosts file holding the line the server printed.
    pub known_hosts: PathBuf,
    /// The server's public key, as an agent pins it.
    pub pinned: String,
    keys: HashMap<String, PathBuf>,
    release_key: SecretKey,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl Fleet {
    pub async fn start(hosts: &[&str]) -> Fleet {
        Fleet::start_with(hosts, publish_config()).await
    }

    pub async fn start_with(hosts: &[&str], config: SftpConfig) -> Fleet {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let key_dir = tmp.path().join("keys");
        std::fs::create_dir_all(&key_dir).unwrap();
        let mut keys = HashMap::new();
        for host in hosts {
            keys.insert((*host).to_owned(), ssh_keygen(&key_dir, host));
        }
        let host_keys =
            HostKeys::parse(hosts.iter().map(|h| (*h, vec![public_key_line(&keys[*h])]))).unwrap();
        let host_key: HostKey =
            load_or_create_host_key(&state_dir.join("ssh_host_ed25519_key")).unwrap();
        let state = Sessions::new(&state_dir, host_key, host_keys, config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let line = state.host_key().known_hosts_line("127.0.0.1", addr.port());
        let known_hosts = tmp.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("{line}\n")).unwrap();
        let pinned = state.host_key().public_openssh();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
        Fleet {
            tmp,
            state_dir,
            state,
            addr,
            known_hosts,
            pinned,
            keys,
            release_key: SecretKey::generate("publish-test").unwrap(),
            shutdown,
            server: Some(server),
        }
    }

    pub fn key(&self, host: &str) -> &Path {
        &self.keys[host]
    }

    /// A fresh key known to nobody.
    pub fn stranger_key(&self, name: &str) -> PathBuf {
        ssh_keygen(&self.tmp.path().join("keys"), name)
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.state_dir.join("publish").join(host)
    }

    /// Writes a release for `host` the way the deploy path does (temp file + rename) and
    /// returns its bytes.
    pub fn write_release(&self, host: &str, generation: u64) -> Vec<u8> {
        let dir = self.host_dir(host);
        std::fs::create_dir_all(&dir).unwrap();
        let body = self.release_bytes(host, generation);
        let tmp = dir.join(".release.tmp");
        std::fs::write(&tmp, &body).unwrap();
        std::fs::rename(&tmp, dir.join("release")).unwrap();
        body
    }

    /// A signed release of `host` at `generation`, compact JSON, as bytes.
    pub fn release_bytes(&self, host: &str, generation: u64) -> Vec<u8> {
        let path =
            format!("/nix/store/00000000000000000000000000000000-nixos-system-{host}-{generation}");
        let release = Release::sign(host, generation, &path, 1, &self.release_key).unwrap();
        let mut body = serde_json::to_vec(&release).unwrap();
        body.push(b'\n');
        body
    }

    /// Writes `publish/<host>/files/<rel>`.
    pub fn write_file(&self, host: &str, rel: &str, content: &[u8]) {
        let path = self.host_dir(host).join("files").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Names in `publish/<host>/reports`, sorted (temporaries included).
    pub fn reports_on_disk(&self, host: &str) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.host_dir(host).join("reports")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// The access map with `hosts` and their current keys.
    pub fn host_keys(&self, hosts: &[&str]) -> HostKeys {
        HostKeys::parse(
            hosts
                .iter()
                .map(|h| (*h, vec![public_key_line(self.key(h))])),
        )
        .unwrap()
    }

    /// Our Rust client, as host `host` with its own key.
    pub async fn client(&self, host: &str) -> Result<Session, ClientError> {
        self.client_with(host, self.key(host)).await
    }

    pub async fn client_with(&self, host: &str, key: &Path) -> Result<Session, ClientError> {
        bento::sftp::client::connect(self.addr, host, key, &self.pinned).await
    }

    /// Options every stock OpenSSH client gets: no user config, no agent, only our key,
    /// only our known_hosts, never a prompt.
    pub fn ssh_options(&self, key: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ]
    }

    /// Runs the stock `sftp -b` with `commands` as host `host` using `key`.
    pub async fn sftp_batch(
        &self,
        host: &str,
        key: &Path,
        commands: &str,
    ) -> Result<Output, CmdError> {
        let batch = self.tmp.path().join(format!("batch-{}", rand_suffix()));
        std::fs::write(&batch, commands).unwrap();
        Command::new("sftp")
            .arg("-b")
            .arg(&batch)
            .args(self.ssh_options(key))
            .args(["-P", &self.addr.port().to_string()])
            .arg(format!("{host}@127.0.0.1"))
            .timeout(Duration::from_secs(60))
            .run_async()
            .await
    }

    /// Runs the stock `ssh` as `host` with `key`, extra options, then the remote command.
    pub async fn ssh(
        &self,
        host: &str,
        key: &Path,
        options: &[&str],
        command: &[&str],
    ) -> Result<Output, CmdError> {
        Command::new("ssh")
            .args(self.ssh_options(key))
            .args(["-p", &self.addr.port().to_string()])
            .args(options)
            .arg(format!("{host}@127.0.0.1"))
            .args(command)
            .timeout(Duration::from_secs(60))
            .run_async()
            .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server)
                .await
                .expect("server stops within 20 s")
                .unwrap();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Stderr of a failed command (for assertions), or panics if it succeeded.
pub fn failure_text(result: Result<Output, CmdError>, what: &str) -> String {
    match result {
        Ok(out) => panic!(
            "{what} should have failed; stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => e.to_string(),
    }
}

/// The SFTP status code of a client error, if it is one.
pub fn status_of(err: &ClientError) -> Option<russh_sftp::protocol::StatusCode> {
    match err {
        ClientError::Sftp {
            source: russh_sftp::client::error::Error::Status(s),
            ..
        } => Some(s.status_code),
        _ => None,
    }
}

/// A raw russh client handler that accepts any server key (for tests that talk SSH below
/// our client, where the server's identity is not the point).
pub struct AcceptAny;

impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}
