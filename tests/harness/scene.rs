//! Simulated hosts and both servers in the test process: the binary cache and the SFTP
//! server on the test bridge's address, over one [`ServerDir`]; the agent configuration of
//! a host; and the real `bento agent` run inside a host (its namespaces, its own `/nix`).
//! [`OneHost`] is the usual scene of an agent test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bento::report::Report;

use super::fake::{self, Behaviour};
use super::net::{Host, Net};
use super::ran::wait_for;
use super::servers::{CacheServer, ServerDir, SftpServer, sftp_config};

/// Both servers on a bridge, for `hosts` (each with an SSH key).
pub struct Server {
    pub dir: Arc<ServerDir>,
    pub cache: CacheServer,
    sftp: Option<SftpServer>,
    sftp_addr: String,
    hosts: Vec<String>,
}

impl Server {
    /// Starts both servers on the bridge's address.
    pub async fn start(net: &Net, hosts: &[&str]) -> Server {
        Server::start_on(&net.server_ip(), hosts).await
    }

    /// Starts both servers on `ip`, an address of this machine on a test network (a
    /// bridge, or the host side of a systemd box's veth).
    pub async fn start_on(ip: &str, hosts: &[&str]) -> Server {
        let dir = Arc::new(ServerDir::new());
        let cache = CacheServer::start_on(ip, dir.cache_config()).await;
        let sftp = SftpServer::bind(dir.clone(), &format!("{ip}:0"), hosts, sftp_config()).await;
        Server {
            dir,
            cache,
            sftp_addr: sftp.addr.to_string(),
            sftp: Some(sftp),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    /// The running SFTP server.
    pub fn sftp(&self) -> &SftpServer {
        self.sftp.as_ref().expect("the SFTP server is stopped")
    }

    /// Stops the SFTP server and waits until it has (open sessions end); the cache keeps
    /// running.
    pub async fn stop_sftp(&mut self) {
        if let Some(s) = self.sftp.take() {
            s.stop().await;
        }
    }

    /// Starts the SFTP server again, on the same address with the same keys.
    pub async fn restart_sftp(&mut self) {
        assert!(self.sftp.is_none(), "the SFTP server runs");
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        self.sftp =
            Some(SftpServer::bind(self.dir.clone(), &self.sftp_addr, &hosts, sftp_config()).await);
    }

    /// Signs and publishes a release as `bento deploy` does, and tells both servers.
    pub async fn publish_release(&self, host: &str, generation: u64, path: &str) {
        let bytes = super::servers::signed_release(host, generation, path, &self.dir.key);
        self.write_release(host, &bytes).await;
    }

    /// Writes release bytes as they are (forged or foreign ones too), and tells both
    /// servers.
    pub async fn write_release(&self, host: &str, bytes: &[u8]) {
        self.dir.write_release(host, bytes);
        self.cache.state.refresh().await.unwrap();
        if let Some(s) = &self.sftp {
            s.state.notify_release_changed(host);
        }
    }

    /// Reports the host's agent uploaded, oldest first.
    pub fn reports(&self, host: &str) -> Vec<Report> {
        self.dir.reports(host)
    }

    /// Final reports (interim "deploying"/"unconfirmed" left out).
    pub fn final_reports(&self, host: &str) -> Vec<Report> {
        self.dir.final_reports(host)
    }

    /// Where an agent finds these servers, and whom it trusts.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            sftp: self.sftp_addr.clone(),
            pinned: self.sftp().pinned.clone(),
            cache_url: self.cache.url(),
            fleet_key: self.dir.key.public().to_string(),
        }
    }

    /// Writes the agent configuration of `host` (`extra` overrides defaults) to
    /// `<host root>/etc/agent.toml` and returns its path.
    pub fn agent_config(&self, host: &Host, extra: &str) -> PathBuf {
        write_agent_config(
            host,
            &self.endpoints(),
            self.sftp().key(&host.name),
            extra,
            &host.root.join("etc/agent.toml"),
        )
    }
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
    let defaults = format!(
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
"#,
        name = host.name,
        sftp = to.sftp,
        pinned = to.pinned,
        key = ssh_key.display(),
        cache = to.cache_url,
        fleet = to.fleet_key,
        state = host.root.join("agent-state").display(),
    );
    let key_of = |line: &str| line.split_once('=').map(|(k, _)| k.trim().to_owned());
    let overridden: Vec<String> = extra.lines().filter_map(key_of).collect();
    let mut text: String = defaults
        .lines()
        .filter(|l| !key_of(l).is_some_and(|k| overridden.contains(&k)))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(extra);
    text.push('\n');
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// `bento agent ARGS` inside `host`, not started; killed when its handle drops.
pub fn agent_command(host: &Host, args: &[&str]) -> tokio::process::Command {
    let mut c =
        tokio::process::Command::from(host.command(Path::new(env!("CARGO_BIN_EXE_bento")), args));
    c.env("RUST_LOG", "info").kill_on_drop(true);
    c
}

/// Exit code and stderr of one `bento agent --once` inside `host`.
pub async fn agent_once(host: &Host, config: &Path) -> (i32, String) {
    let out = agent_command(
        host,
        &["agent", "--once", "--config", &config.to_string_lossy()],
    )
    .output()
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `bento agent --once` inside `host` without waiting for it.
pub fn spawn_agent_once(host: &Host, config: &Path) -> tokio::process::Child {
    agent_command(
        host,
        &["agent", "--once", "--config", &config.to_string_lossy()],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until `host` runs `system` under `agent` (at most 60 s) and gives the agent back;
/// otherwise kills it and panics with what it said.
pub async fn wait_running(
    host: &Host,
    system: &str,
    mut agent: tokio::process::Child,
) -> tokio::process::Child {
    if wait_for(60, || host.running().as_deref() == Some(system)).await {
        return agent;
    }
    let _ = agent.start_kill();
    let out = agent.wait_with_output().await.unwrap();
    panic!(
        "{} never ran {system}; its agent said:\n{}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One simulated host `web1` with its servers: systems built in the server's store (the
/// first one installed as the running system), the host in its namespaces, both servers,
/// and the agent's configuration (`extra` overrides defaults). Fields drop in order:
/// servers, host, bridge, files.
pub struct OneHost {
    pub server: Server,
    pub host: Host,
    pub net: Net,
    pub config: PathBuf,
    /// Store paths of the systems asked for, in order (generations 1, 2, ...).
    pub systems: Vec<String>,
}

impl OneHost {
    /// Publishes system `n` (`systems[n - 1]`) as release generation `n`, tells both
    /// servers, and returns its store path.
    pub async fn publish(&self, n: u64) -> String {
        let system = self.systems[n as usize - 1].clone();
        self.server.publish_release("web1", n, &system).await;
        system
    }

    /// One `bento agent --once` inside the host with its configuration: exit code and
    /// stderr.
    pub async fn agent_once(&self) -> (i32, String) {
        agent_once(&self.host, &self.config).await
    }

    /// Publishes system 2, which the agent must roll back: one `bento agent --once` exits
    /// with `code`, the host activated system 2 then system 1 and runs system 1 again, and
    /// its one final report says `outcome` (`reason` containing `why`). Returns the report
    /// and how long the attempt took.
    pub async fn expect_rolled_back(
        &self,
        code: i32,
        outcome: &str,
        why: &str,
    ) -> (Report, std::time::Duration) {
        let (old, bad) = (self.systems[0].clone(), self.systems[1].clone());
        self.server.publish_release("web1", 2, &bad).await;
        let started = std::time::Instant::now();
        let (got, log) = self.agent_once().await;
        let took = started.elapsed();
        assert_eq!(got, code, "{log}");
        assert_eq!(self.host.running().as_deref(), Some(old.as_str()));
        assert_eq!(
            self.host.activations(),
            fake::switched(&[&bad, &old]),
            "the previous system itself is re-activated"
        );
        let mut reports = self.server.final_reports("web1");
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = reports.remove(0);
        assert_eq!(r.outcome.as_str(), outcome, "{r:?}");
        assert!(
            r.reason.as_deref().unwrap_or_default().contains(why),
            "{r:?}"
        );
        (r, took)
    }

    /// `None` (after saying why) when this test may not run here (see `harness::root`).
    pub async fn start(salt: &str, systems: &[Behaviour], extra: &str) -> Option<OneHost> {
        let sized: Vec<_> = systems.iter().map(|b| (b.clone(), 0)).collect();
        OneHost::start_sized(salt, &sized, extra).await
    }

    /// [`OneHost::start`] with systems of `(behaviour, MiB of incompressible data)`.
    pub async fn start_sized(
        salt: &str,
        systems: &[(Behaviour, u32)],
        extra: &str,
    ) -> Option<OneHost> {
        if !super::needs_root("network and mount namespaces, the machine's Nix store") {
            return None;
        }
        let leaves: Vec<(Behaviour, u32, u32)> = systems
            .iter()
            .map(|(b, mib)| (b.clone(), *mib, 0))
            .collect();
        OneHost::start_leaves(salt, &leaves, extra).await
    }

    /// [`OneHost::start_sized`] with systems of `(behaviour, blob MiB, leaves)`: each leaf
    /// one more store path of 128 KiB (`fake::expression_with_leaves`).
    pub async fn start_leaves(
        salt: &str,
        systems: &[(Behaviour, u32, u32)],
        extra: &str,
    ) -> Option<OneHost> {
        if !super::needs_root("network and mount namespaces, the machine's Nix store") {
            return None;
        }
        let systems: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(i, (b, mib, leaves))| {
                fake::build_expression(&fake::expression_with_leaves(
                    "web1",
                    i as u64 + 1,
                    b,
                    salt,
                    *mib,
                    *leaves,
                ))
            })
            .collect();
        let net = Net::new();
        let server = Server::start(&net, &["web1"]).await;
        let host = net.host("web1", 1, &server.dir.scratch().join("web1"));
        host.install(&systems[0]);
        let config = server.agent_config(&host, extra);
        Some(OneHost {
            server,
            host,
            net,
            config,
            systems,
        })
    }
}
