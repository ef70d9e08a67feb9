//! The server side of a simulated fleet, in the test process: the binary cache and the SFTP
//! publisher bound on the test bridge's address, a fleet key, per-host SSH keys, and helpers
//! to publish releases and read reports as `bento deploy` and `bento status` would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bento::cache::{self, Cache, CacheConfig};
use bento::nix::keys::SecretKey;
use bento::release::Release;
use bento::report::Report;
use bento::sftp::server::{self as sftp, HostKeys, Sessions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::net::{Host, Net};
use super::{public_key_line, publish_config, ssh_keygen};

pub struct Server {
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub key: SecretKey,
    pub cache: Arc<Cache>,
    pub publish: Arc<Sessions>,
    pub cache_addr: std::net::SocketAddr,
    pub sftp_addr: std::net::SocketAddr,
    pub pinned: String,
    cache_stop: CancellationToken,
    sftp_stop: Option<CancellationToken>,
}

impl Server {
    /// Starts both servers on the bridge's address, for `hosts` (each gets an SSH key).
    pub async fn start(dir: &Path, net: &Net, hosts: &[&str]) -> Server {
        Server::start_on(dir, &net.server_ip(), hosts).await
    }

    /// Starts both servers on `ip` (a test network's address on this machine).
    pub async fn start_on(dir: &Path, ip: &str, hosts: &[&str]) -> Server {
        let state_dir = dir.join("server");
        std::fs::create_dir_all(state_dir.join("keys")).unwrap();
        let key = SecretKey::generate("bento-test-fleet").unwrap();
        for h in hosts {
            ssh_keygen(dir, &format!("{h}.ssh"));
        }
        let cache = Cache::new(CacheConfig::new(&state_dir, key.clone())).unwrap();
        let cache_listener = TcpListener::bind((ip, 0)).await.unwrap();
        let cache_addr = cache_listener.local_addr().unwrap();
        let cache_stop = CancellationToken::new();
        tokio::spawn(cache::serve(
            cache_listener,
            cache.clone(),
            cache_stop.clone(),
        ));
        let host_key =
            sftp::load_or_create_host_key(&state_dir.join("ssh/host_ed25519_key")).unwrap();
        let pinned = host_key.public_openssh();
        let access = HostKeys::parse(hosts.iter().map(|h| {
            (
                h.to_string(),
                vec![public_key_line(&dir.join(format!("{h}.ssh")))],
            )
        }))
        .unwrap();
        let publish = Sessions::new(&state_dir, host_key, access, publish_config()).unwrap();
        let sftp_listener = TcpListener::bind((ip, 0)).await.unwrap();
        let sftp_addr = sftp_listener.local_addr().unwrap();
        let mut server = Server {
            dir: dir.to_owned(),
            state_dir,
            key,
            cache,
            publish,
            cache_addr,
            sftp_addr,
            pinned,
            cache_stop,
            sftp_stop: None,
        };
        server.start_sftp(sftp_listener);
        server
    }

    fn start_sftp(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        tokio::spawn(sftp::serve(listener, self.publish.clone(), stop.clone()));
        self.sftp_stop = Some(stop);
    }

    /// Stops the SFTP server (open sessions end); the cache keeps running.
    pub fn stop_sftp(&mut self) {
        if let Some(s) = self.sftp_stop.take() {
            s.cancel();
        }
    }

    /// Starts the SFTP server again on the same address.
    pub async fn restart_sftp(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.sftp_addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot re-bind {}: {e}", self.sftp_addr),
            }
        };
        self.start_sftp(listener);
    }

    /// Signs and publishes a release as `bento deploy` does, and tells both servers.
    pub async fn publish_release(&self, host: &str, generation: u64, path: &str) {
        let r = Release::sign(
            host,
            generation,
            path,
            1_790_000_000 + generation,
            &self.key,
        )
        .unwrap();
        self.write_release(host, &r.to_bytes()).await;
    }

    /// Writes release bytes as they are (for forged or foreign releases).
    pub async fn write_release(&self, host: &str, bytes: &[u8]) {
        let dir = self.state_dir.join("publish").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        bento::durable::write_atomic(&dir.join("release"), bytes, 0o644).unwrap();
        self.cache.refresh().await.unwrap();
        self.publish.notify_release_changed(host);
    }

    /// Publishes `files` (name, content, mode) for `host` with the release of `generation`,
    /// as `bento deploy` does: content-addressed blobs and the signed manifest.
    pub fn publish_files(&self, host: &str, generation: u64, files: &[(&str, &str, u32)]) {
        use bento::files::{BLOBS_DIR, MANIFEST_PATH, Manifest, ManifestEntry};
        let root = self.state_dir.join("publish").join(host);
        std::fs::create_dir_all(root.join(BLOBS_DIR)).unwrap();
        let mut entries = Vec::new();
        for (name, content, mode) in files {
            let e = ManifestEntry::of(name, content.as_bytes(), *mode).unwrap();
            std::fs::write(root.join(BLOBS_DIR).join(&e.sha256), content).unwrap();
            entries.push(e);
        }
        let m = Manifest::sign(host, generation, entries, &self.key).unwrap();
        bento::durable::write_atomic(&root.join(MANIFEST_PATH), &m.to_bytes(), 0o644).unwrap();
    }

    /// Reports the host's agent uploaded, oldest first.
    pub fn reports(&self, host: &str) -> Vec<Report> {
        reports_in(&self.state_dir, host)
    }

    /// Final reports (interim "deploying"/"unconfirmed" left out).
    pub fn final_reports(&self, host: &str) -> Vec<Report> {
        final_only(self.reports(host))
    }

    /// Writes the agent configuration of `host` and returns its path.
    pub fn agent_config(&self, host: &Host, extra: &str) -> PathBuf {
        write_agent_config(
            host,
            &Endpoints {
                sftp: self.sftp_addr.to_string(),
                pinned: self.pinned.clone(),
                cache_url: format!("http://{}", self.cache_addr),
                fleet_key: self.key.public().to_string(),
            },
            &self.dir.join(format!("{}.ssh", host.name)),
            extra,
            &host.root.join("etc/agent.toml"),
        )
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

/// Where an agent finds its server, and whom it trusts.
pub struct Endpoints {
    pub sftp: String,
    pub pinned: String,
    pub cache_url: String,
    pub fleet_key: String,
}

/// Writes `host`'s agent configuration (fast test timings) to `path` and returns it; a key
/// set in `extra` replaces its default.
pub fn write_agent_config(
    host: &Host,
    to: &Endpoints,
    ssh_key: &Path,
    extra: &str,
    path: &Path,
) -> PathBuf {
    let text = format!(
        r#"host = "{name}"
server = "{sftp}"
server_host_key = "{pinned}"
ssh_key = "{key}"
cache_url = "{cache}"
fleet_public_key = "{fleet}"
state_dir = "{state}"
poll_interval_secs = 1
poll_jitter = 0.0
confirm_timeout_secs = 6
confirm_retry_secs = 1
retry_base_secs = 2
{extra}
"#,
        name = host.name,
        sftp = to.sftp,
        pinned = to.pinned,
        key = ssh_key.display(),
        cache = to.cache_url,
        fleet = to.fleet_key,
        state = host.root.join("agent-state").display(),
    );
    let overridden: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let text: String = text
        .lines()
        .filter(|l| {
            let key = l.split_once('=').map(|(k, _)| k.trim());
            !key.is_some_and(|k| overridden.contains(&k)) || extra.lines().any(|e| e == *l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cache_stop.cancel();
        self.stop_sftp();
    }
}

/// Exit code and stderr of one `bento agent --once` inside `host`.
pub async fn agent_once(host: &Host, config: &Path) -> (i32, String) {
    let mut c = tokio::process::Command::from(host.command(
        Path::new(env!("CARGO_BIN_EXE_bento")),
        &["agent", "--once", "--config", &config.to_string_lossy()],
    ));
    c.env("RUST_LOG", "info");
    let out = c.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `bento agent --once` inside `host` without waiting for it.
pub fn spawn_agent_once(host: &Host, config: &Path) -> tokio::process::Child {
    let mut c = tokio::process::Command::from(host.command(
        Path::new(env!("CARGO_BIN_EXE_bento")),
        &["agent", "--once", "--config", &config.to_string_lossy()],
    ));
    c.env("RUST_LOG", "info")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

/// Waits up to `secs` for `cond`, polling every 100 ms; false if it never held.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

/// One simulated host with its servers, the usual scene of an agent test: systems built
/// in the server's store (the first one installed as the running system), the host in its
/// namespaces, both servers, and the agent's configuration (`extra` overrides defaults).
/// Fields drop in order: servers, host, bridge, files.
pub struct OneHost {
    pub server: Server,
    pub host: Host,
    pub net: Net,
    pub config: PathBuf,
    /// Store paths of the systems asked for, in order.
    pub systems: Vec<String>,
    pub tmp: tempfile::TempDir,
}

impl OneHost {
    /// `None` (after saying why) when namespaces cannot be made here.
    pub async fn start(
        salt: &str,
        systems: &[super::fake::Behaviour],
        extra: &str,
    ) -> Option<OneHost> {
        let sized: Vec<_> = systems.iter().map(|b| (b.clone(), 0)).collect();
        OneHost::start_sized(salt, &sized, extra).await
    }

    /// [`OneHost::start`] with systems of `(behaviour, MiB of incompressible data)`.
    pub async fn start_sized(
        salt: &str,
        systems: &[(super::fake::Behaviour, u32)],
        extra: &str,
    ) -> Option<OneHost> {
        if !super::can_use_namespaces() {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let systems: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(i, (b, mib))| {
                super::fake::build_sized(tmp.path(), "web1", i as u64 + 1, b, salt, *mib)
            })
            .collect();
        let net = Net::new();
        let host = net.host("web1", 1, &tmp.path().join("web1"));
        host.install(&systems[0]);
        let server = Server::start(tmp.path(), &net, &["web1"]).await;
        let config = server.agent_config(&host, extra);
        Some(OneHost {
            server,
            host,
            net,
            config,
            systems,
            tmp,
        })
    }
}
