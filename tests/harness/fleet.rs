//! A whole fleet run by the real binaries, as an administrator runs it: a configuration
//! [`Repo`], `bento deploy`, `bento serve` as a process on the test bridge, and `bento
//! agent` looping inside each simulated host; `bento status --json` tells where each host
//! stands. A [`Fleet`] derefs to its [`Repo`] (configure, deploy, status, releases).
//!
//! Dropping the fleet kills the agents and the server, then the hosts (namespaces, veth
//! pairs, anything still running inside), the bridge and the files, in that order, also
//! when the test panics.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use bento::report::Report;

use super::fake::{self, Behaviour};
use super::net::{Host, Net};
use super::ran::Ran;
use super::repo::Repo;
use super::scene::{Endpoints, write_agent_config};
use super::serve::Serve;
use super::servers::{final_only, reports_in};

pub struct Fleet {
    agents: BTreeMap<String, Child>,
    serve: Option<Serve>,
    pub hosts: BTreeMap<String, Host>,
    pub net: Net,
    serve_args: Vec<String>,
    serve_runs: u32,
    /// The cache and SFTP addresses (`ip:port`) the first `bento serve` bound.
    last_addresses: Option<(String, String)>,
    pub repo: Repo,
}

impl Deref for Fleet {
    type Target = Repo;
    fn deref(&self) -> &Repo {
        &self.repo
    }
}

impl DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut Repo {
        &mut self.repo
    }
}

impl Fleet {
    /// A fleet of `names`, each host in its own namespaces running an installer system
    /// (not built by Bento), each configured in the flake as `Spec::good(1)`; nothing is
    /// deployed or served yet. `None` (after saying why) when this test may not run here
    /// (see `harness::root`).
    pub fn new(salt: &str, names: &[&str]) -> Option<Fleet> {
        if !super::needs_root("network and mount namespaces, the machine's Nix store") {
            return None;
        }
        let repo = Repo::new(salt, names);
        std::fs::create_dir_all(repo.dir().join("logs")).unwrap();
        let net = Net::new();
        let mut hosts = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let host = net.host(name, i as u8 + 1, &repo.dir().join("hosts").join(name));
            host.install(&fake::build(name, 0, &Behaviour::Good, salt));
            hosts.insert((*name).to_owned(), host);
        }
        Some(Fleet {
            agents: BTreeMap::new(),
            serve: None,
            hosts,
            net,
            serve_args: Vec::new(),
            serve_runs: 0,
            last_addresses: None,
            repo,
        })
    }

    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[name]
    }

    /// Waits up to `secs` until `bento status` shows each `(host, state)` of `want`; panics
    /// with the status table and the logs when it does not.
    pub async fn wait_for_states(&self, secs: u64, want: &[(&str, &str)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let states = self.states();
            if want
                .iter()
                .all(|(h, s)| states.get(*h).map(String::as_str) == Some(*s))
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "after {secs} s, wanted {want:?}, bento status says {states:?}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts `bento serve` on the bridge's address (`extra` added to its arguments, e.g.
    /// `--host-tokens`); later starts reuse the first start's ports and arguments.
    pub async fn start_serve(&mut self, extra: &[&str]) {
        assert!(self.serve.is_none(), "bento serve already runs");
        if self.serve_runs == 0 {
            self.serve_args = extra.iter().map(|s| (*s).to_owned()).collect();
        }
        let (cache, sftp) = match &self.last_addresses {
            None => (
                format!("{}:0", self.net.server_ip()),
                format!("{}:0", self.net.server_ip()),
            ),
            Some(a) => a.clone(),
        };
        self.serve_runs += 1;
        let log = self
            .dir()
            .join("logs")
            .join(format!("serve-{}.log", self.serve_runs));
        let mut args = vec![
            "--cache-listen",
            &cache,
            "--sftp-listen",
            &sftp,
            "--no-dashboard",
        ];
        args.extend(self.serve_args.iter().map(String::as_str));
        let file = self.fleet_file();
        let serve = tokio::task::block_in_place(|| Serve::start(&file, &args, &log));
        self.last_addresses = Some((
            serve.cache.trim_start_matches("http://").to_owned(),
            serve.sftp.clone(),
        ));
        self.serve = Some(serve);
    }

    /// The running `bento serve`.
    pub fn serve(&self) -> &Serve {
        self.serve.as_ref().expect("bento serve is not running")
    }

    /// Kills `bento serve` (SIGKILL).
    pub fn kill_serve(&mut self) {
        if let Some(s) = self.serve.take() {
            s.kill();
        }
    }

    /// What agents are told: the running server's addresses and keys.
    pub fn endpoints(&self) -> Endpoints {
        let s = self.serve();
        Endpoints {
            sftp: s.sftp.clone(),
            pinned: s.pinned.clone(),
            cache_url: s.cache.clone(),
            fleet_key: self.fleet_key.public().to_string(),
        }
    }

    /// Writes `host`'s agent configuration (`extra` overrides defaults) to
    /// `<host root>/etc/<file>` and returns its path.
    pub fn agent_config(&self, host: &str, extra: &str, file: &str) -> PathBuf {
        let h = &self.hosts[host];
        write_agent_config(
            h,
            &self.endpoints(),
            &self.ssh_key(host),
            extra,
            &h.root.join("etc").join(file),
        )
    }

    /// Starts the agent loop (`bento agent`) inside `host`, logging to `logs/<host>.log`.
    pub fn start_agent(&mut self, host: &str, extra: &str) {
        let config = self.agent_config(host, extra, "agent.toml");
        let log = std::fs::File::create(self.agent_log(host)).unwrap();
        let child = self.hosts[host]
            .command(
                Path::new(env!("CARGO_BIN_EXE_bento")),
                &["agent", "--config", &config.to_string_lossy()],
            )
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(host.to_owned(), child);
    }

    /// Starts every host's agent with the same `extra` configuration.
    pub fn start_agents(&mut self, extra: &str) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for h in names {
            self.start_agent(&h, extra);
        }
    }

    /// Where the agent of `host` logs.
    pub fn agent_log(&self, host: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{host}.log"))
    }

    /// How many attempts the agent loop of `host` has finished so far (from its log).
    pub fn attempts(&self, host: &str) -> usize {
        std::fs::read_to_string(self.agent_log(host))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("attempt finished") || l.contains("attempt failed"))
            .count()
    }

    /// The reports `host`'s agent uploaded, oldest first.
    pub fn reports(&self, host: &str) -> Vec<Report> {
        reports_in(&self.state(), host)
    }

    /// [`Fleet::reports`] without interim ones.
    pub fn final_reports(&self, host: &str) -> Vec<Report> {
        final_only(self.reports(host))
    }

    /// The last lines of a file under the fleet's directory.
    pub fn log_tail(&self, relative: &str) -> String {
        let text = std::fs::read_to_string(self.dir().join(relative)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// The status table and the tail of every log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("--- bento status\n{}", self.bento(&["status"]).stdout);
        for n in 1..=self.serve_runs {
            let name = format!("logs/serve-{n}.log");
            out.push_str(&format!("--- {name}\n{}\n", self.log_tail(&name)));
        }
        for h in self.agents.keys() {
            let name = format!("logs/{h}.log");
            out.push_str(&format!("--- {name}\n{}\n", self.log_tail(&name)));
        }
        out
    }

    /// Runs the stock OpenSSH `sftp -b` from inside `from` (its network namespace), logging
    /// in as `user` with `key`, the server's host key pinned; returns the outcome.
    pub fn stock_sftp(&self, from: &str, user: &str, key: &Path, commands: &str) -> Ran {
        let ns = &self.hosts[from].ns;
        self.serve().stock_sftp(
            self.dir(),
            &["ip", "netns", "exec", ns],
            user,
            key,
            commands,
        )
    }

    /// Runs `program args` inside `host` (its namespaces, its own `/nix`).
    pub fn in_host(&self, host: &str, program: &str, args: &[&str]) -> Ran {
        Ran::of(&mut self.hosts[host].command(Path::new(program), args))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.agents.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_serve();
        // The hosts, the bridge and the files go with the fields, in that order.
    }
}
