//! The server side, in the test process: a server state directory with a fleet key into
//! which tests publish releases, files and reports as `bento deploy` and agents would; the
//! binary cache and the SFTP server, each run in-process on a listener the test binds (never
//! "pick a free port, drop it, re-bind it"), stopped when dropped; and the stock OpenSSH
//! clients (`sftp`, `ssh`) and our Rust client pointed at the SFTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bento::cache::{self, Cache, CacheConfig};
use bento::nix::cmd::{CmdError, Command, Output};
use bento::nix::keys::SecretKey;
use bento::release::Release;
use bento::report::Report;
use bento::sftp::client::{ClientError, Session};
use bento::sftp::server::{HostKeys, Sessions, SftpConfig, load_or_create_host_key};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{Resp, http};
use super::keys::{public_key_line, ssh_keygen};
use super::ran::retry;

/// A server's state directory (`<tmp>/state`) with the fleet key, and scratch space beside
/// it (`<tmp>`) for keys and files a test makes. Removed when dropped.
pub struct ServerDir {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub key: SecretKey,
}

impl ServerDir {
    pub fn new() -> ServerDir {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        ServerDir {
            tmp,
            state,
            key: SecretKey::generate("bento-test-fleet-1").unwrap(),
        }
    }

    /// Scratch space beside the state directory.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    /// `publish/<host>` in the state directory.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.state.join("publish").join(host)
    }

    /// Signs a release of `path` with the fleet key and writes it as `bento deploy` does;
    /// returns its bytes.
    pub fn publish(&self, host: &str, generation: u64, path: &str) -> Vec<u8> {
        self.publish_signed(host, generation, path, &self.key)
    }

    /// [`ServerDir::publish`], signed by `key`.
    pub fn publish_signed(
        &self,
        host: &str,
        generation: u64,
        path: &str,
        key: &SecretKey,
    ) -> Vec<u8> {
        let bytes = signed_release(host, generation, path, key);
        self.write_release(host, &bytes);
        bytes
    }

    /// A signed release of a system that need not exist (SFTP tests never copy it).
    pub fn made_up_release(&self, host: &str, generation: u64) -> Vec<u8> {
        let path =
            format!("/nix/store/00000000000000000000000000000000-nixos-system-{host}-{generation}");
        signed_release(host, generation, &path, &self.key)
    }

    /// Publishes [`ServerDir::made_up_release`]; returns its bytes.
    pub fn publish_made_up(&self, host: &str, generation: u64) -> Vec<u8> {
        let bytes = self.made_up_release(host, generation);
        self.write_release(host, &bytes);
        bytes
    }

    /// Writes release bytes as they are (forged or foreign ones too), atomically.
    pub fn write_release(&self, host: &str, bytes: &[u8]) {
        let dir = self.host_dir(host);
        std::fs::create_dir_all(&dir).unwrap();
        bento::durable::write_atomic(&dir.join("release"), bytes, 0o644).unwrap();
    }

    /// Writes `publish/<host>/files/<rel>`.
    pub fn write_file(&self, host: &str, rel: &str, content: &[u8]) {
        let path = self.host_dir(host).join("files").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Publishes `files` (name, content, mode) for `host` with the release of `generation`,
    /// as `bento deploy` does: content-addressed blobs and the signed manifest.
    pub fn publish_files(&self, host: &str, generation: u64, files: &[(&str, &str, u32)]) {
        use bento::files::{BLOBS_DIR, MANIFEST_PATH, Manifest, ManifestEntry};
        let mut entries = Vec::new();
        for (name, content, mode) in files {
            let e = ManifestEntry::of(name, content.as_bytes(), *mode).unwrap();
            let blob = format!("{}/{}", BLOBS_DIR.trim_start_matches("files/"), e.sha256);
            self.write_file(host, &blob, content.as_bytes());
            entries.push(e);
        }
        let m = Manifest::sign(host, generation, entries, &self.key).unwrap();
        let manifest = MANIFEST_PATH.trim_start_matches("files/");
        self.write_file(host, manifest, &m.to_bytes());
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

    /// The reports the host's agent uploaded, oldest first.
    pub fn reports(&self, host: &str) -> Vec<Report> {
        reports_in(&self.state, host)
    }

    /// Final reports (interim "deploying"/"unconfirmed" left out).
    pub fn final_reports(&self, host: &str) -> Vec<Report> {
        final_only(self.reports(host))
    }

    /// A cache configuration on this directory, polling the publish tree every 200 ms.
    pub fn cache_config(&self) -> CacheConfig {
        let mut c = CacheConfig::new(&self.state, self.key.clone());
        c.poll_interval = Duration::from_millis(200);
        c
    }
}

impl Default for ServerDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A release of `path` for `host` signed by `key`, as bytes (created at a fixed time).
pub fn signed_release(host: &str, generation: u64, path: &str, key: &SecretKey) -> Vec<u8> {
    Release::sign(host, generation, path, 1_790_000_000 + generation, key)
        .unwrap()
        .to_bytes()
}

/// A report of `host` that applied `generation` (system `path`), finished 20 s before `now`
/// (Unix seconds), as its agent writes one.
pub fn applied_report(host: &str, generation: u64, path: &str, now: u64) -> Report {
    Report {
        format: bento::report::FORMAT,
        host: host.into(),
        generation,
        wanted: Some(path.into()),
        running: Some(path.into()),
        outcome: bento::report::Outcome::Applied,
        reason: None,
        started_ms: (now - 30) * 1000,
        finished_ms: (now - 20) * 1000,
        timings: Default::default(),
        log: String::new(),
    }
}

/// The reports a host's agent uploaded into the publish tree of `state_dir`, oldest first.
pub fn reports_in(state_dir: &Path, host: &str) -> Vec<Report> {
    let dir = state_dir.join("publish").join(host).join("reports");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| Report::parse(&std::fs::read(p).ok()?).ok())
        .collect()
}

/// `reports` without the interim ones ("deploying", "unconfirmed").
pub fn final_only(reports: Vec<Report>) -> Vec<Report> {
    reports
        .into_iter()
        .filter(|r| !r.outcome.is_interim())
        .collect()
}

/// The binary cache, served in-process until dropped.
pub struct CacheServer {
    pub addr: SocketAddr,
    pub state: Arc<Cache>,
    shutdown: CancellationToken,
}

impl CacheServer {
    /// Loads the publish tree (waiting for compression), then serves on 127.0.0.1.
    pub async fn start(config: CacheConfig) -> Self {
        CacheServer::start_on("127.0.0.1", config).await
    }

    /// [`CacheServer::start`] on address `ip`, a fresh port.
    pub async fn start_on(ip: &str, config: CacheConfig) -> Self {
        let state = Cache::new(config).unwrap();
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // The server's own first refresh (always made, compression included) is the load:
        // a test never races a refresh it did not ask for.
        let mut refreshed = state.refreshes();
        tokio::spawn(cache::serve(listener, state.clone(), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(120), refreshed.wait_for(|n| *n >= 1))
            .await
            .expect("the cache's first refresh did not finish within 120 s")
            .unwrap();
        CacheServer {
            addr,
            state,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[]).await.unwrap()
    }

    /// Waits until `check` passes on GET `path`, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        check: impl Fn(&Resp) -> bool,
    ) -> Resp {
        let start = Instant::now();
        loop {
            let r = self.get(path).await;
            if check(&r) {
                return r;
            }
            assert!(
                start.elapsed() < timeout,
                "GET {path} still answers {} after {timeout:?}: {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for CacheServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// SFTP server limits for tests: fast rejections and release polls.
pub fn sftp_config() -> SftpConfig {
    SftpConfig {
        auth_rejection_time: Duration::from_millis(10),
        release_poll_interval: Duration::from_millis(200),
        ..SftpConfig::default()
    }
}

/// The SFTP server, served in-process for the hosts it was started with (each with an SSH
/// key made by `ssh-keygen` under `<scratch>/keys/`) until stopped or dropped.
pub struct SftpServer {
    pub dir: Arc<ServerDir>,
    pub state: Arc<Sessions>,
    pub addr: SocketAddr,
    /// A known_hosts file holding the server's key for its address.
    pub known_hosts: PathBuf,
    /// The server's public key, as an agent pins it.
    pub pinned: String,
    keys: BTreeMap<String, PathBuf>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl SftpServer {
    /// A server of its own state directory, on 127.0.0.1, with the test limits.
    pub async fn start(hosts: &[&str]) -> SftpServer {
        SftpServer::start_with(hosts, sftp_config()).await
    }

    /// [`SftpServer::start`] with other limits.
    pub async fn start_with(hosts: &[&str], config: SftpConfig) -> SftpServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        SftpServer::bind(Arc::new(ServerDir::new()), "127.0.0.1:0", hosts, config).await
    }

    /// Serves `dir` on `addr` (`ip:port`; port 0 for a fresh one, or the port of a server
    /// that was stopped, retried while the old socket closes). Host keys are made once per
    /// directory, so a server started again knows the same hosts by the same keys.
    pub async fn bind(
        dir: Arc<ServerDir>,
        addr: &str,
        hosts: &[&str],
        config: SftpConfig,
    ) -> SftpServer {
        let key_dir = dir.scratch().join("keys");
        let keys: BTreeMap<String, PathBuf> = hosts
            .iter()
            .map(|h| {
                let path = key_dir.join(h);
                if !path.exists() {
                    ssh_keygen(&key_dir, h);
                }
                ((*h).to_owned(), path)
            })
            .collect();
        let access = HostKeys::parse(
            keys.iter()
                .map(|(h, k)| (h.clone(), vec![public_key_line(k)])),
        )
        .unwrap();
        let host_key = load_or_create_host_key(&dir.state.join("ssh/host_ed25519_key")).unwrap();
        let state = Sessions::new(&dir.state, host_key, access, config).unwrap();
        let listener = retry(&format!("cannot bind {addr}"), || TcpListener::bind(addr)).await;
        let addr = listener.local_addr().unwrap();
        let line = state
            .host_key()
            .known_hosts_line(&addr.ip().to_string(), addr.port());
        let known_hosts = dir.scratch().join(format!("known_hosts-{}", addr.port()));
        std::fs::write(&known_hosts, format!("{line}\n")).unwrap();
        let pinned = state.host_key().public_openssh();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(bento::sftp::server::serve(
            listener,
            state.clone(),
            shutdown.clone(),
        ));
        SftpServer {
            dir,
            state,
            addr,
            known_hosts,
            pinned,
            keys,
            shutdown,
            server: Some(server),
        }
    }

    /// The private SSH key of `host`.
    pub fn key(&self, host: &str) -> &Path {
        &self.keys[host]
    }

    /// A fresh key known to nobody.
    pub fn stranger_key(&self, name: &str) -> PathBuf {
        ssh_keygen(&self.dir.scratch().join("keys"), name)
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

    /// The options of [`openssh_options`] for this server.
    pub fn ssh_options(&self, key: &Path) -> Vec<String> {
        openssh_options(key, &self.known_hosts)
    }

    /// Runs the stock `sftp -b` with `commands` as host `host` using `key`.
    pub async fn sftp_batch(
        &self,
        host: &str,
        key: &Path,
        commands: &str,
    ) -> Result<Output, CmdError> {
        let batch = self
            .dir
            .scratch()
            .join(format!("batch-{}", super::nix::nonce()));
        std::fs::write(&batch, commands).unwrap();
        Command::new("sftp")
            .arg("-b")
            .arg(&batch)
            .args(self.ssh_options(key))
            .args(["-P", &self.addr.port().to_string()])
            .arg(format!("{host}@{}", self.addr.ip()))
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
            .arg(format!("{host}@{}", self.addr.ip()))
            .args(command)
            .timeout(Duration::from_secs(60))
            .run_async()
            .await
    }

    /// Stops the server and waits until it has (open sessions end).
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

impl Drop for SftpServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Options every stock OpenSSH client (`ssh`, `sftp`) gets: no user config, no agent, only
/// `key`, only the server keys in `known_hosts`, never a prompt.
pub fn openssh_options(key: &Path, known_hosts: &Path) -> Vec<String> {
    let mut o: Vec<String> = vec!["-F".into(), "/dev/null".into(), "-i".into()];
    o.push(key.display().to_string());
    for option in [
        "IdentitiesOnly=yes".to_owned(),
        "IdentityAgent=none".to_owned(),
        "BatchMode=yes".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "ConnectTimeout=10".to_owned(),
    ] {
        o.push("-o".into());
        o.push(option);
    }
    o
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
