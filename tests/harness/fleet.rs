//! A whole fleet run by the real binaries, as an administrator runs it: a configuration
//! repository (a flake of fake NixOS hosts and `bento.toml`), `bento deploy`, `bento serve`
//! as a process on the test bridge, and `bento agent` looping inside each simulated host;
//! `bento status --json` tells where each host stands.
//!
//! Dropping the [`Fleet`] kills the agents and the server, then the hosts (namespaces,
//! veth pairs, anything still running inside), the bridge and the files, in that order,
//! also when the test panics.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bento::nix::keys::{self, SecretKey};
use bento::report::Report;

use super::fake::{self, Behaviour};
use super::net::{Host, Net};
use super::server::{Endpoints, final_only, reports_in, write_agent_config};
use super::{NIX_CONFIG, Ran, public_key_line, run, ssh_keygen};

/// What a host's configuration builds to: a fake system at `version`.
#[derive(Debug, Clone)]
pub struct Spec {
    pub version: u64,
    pub behaviour: Behaviour,
    /// An incompressible file of this many MiB in the closure (0: none).
    pub blob_mib: u32,
}

impl Spec {
    pub fn good(version: u64) -> Spec {
        Spec {
            version,
            behaviour: Behaviour::Good,
            blob_mib: 0,
        }
    }
}

/// `bento serve` as a child process, with the addresses and host key it printed.
pub struct Serve {
    child: Child,
    pub cache: String,
    pub sftp: String,
    pub pinned: String,
}

impl Serve {
    /// Kills the server at once (SIGKILL: no graceful shutdown, sessions cut mid-transfer).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Fleet {
    agents: BTreeMap<String, Child>,
    serve: Option<Serve>,
    pub hosts: BTreeMap<String, Host>,
    pub net: Net,
    specs: BTreeMap<String, Spec>,
    /// Which hosts `bento.toml` lists (a host may be removed while its namespace lives on).
    listed: Vec<String>,
    /// `[hosts.<h>.files]`: host → (file name → (source, mode)).
    files: BTreeMap<String, BTreeMap<String, (PathBuf, u32)>>,
    serve_args: Vec<String>,
    serve_runs: u32,
    /// The cache and SFTP addresses (`ip:port`) the first `bento serve` bound.
    last_addresses: Option<(String, String)>,
    pub fleet_key: SecretKey,
    salt: String,
    tmp: tempfile::TempDir,
}

impl Fleet {
    /// A fleet of `names`, each host in its own namespaces running an installer system
    /// (not built by Bento), each configured in the flake as `Spec::good(1)`; nothing is
    /// deployed or served yet. `None` (after saying why) when namespaces cannot be made.
    pub fn new(salt: &str, names: &[&str]) -> Option<Fleet> {
        if !super::can_use_namespaces() {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for d in ["repo", "keys", "hosts", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let fleet_key = SecretKey::generate(&format!("bento-e2e-{salt}")).unwrap();
        keys::write_key_pair(&dir.join("keys"), &fleet_key).unwrap();
        let net = Net::new();
        let mut hosts = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            ssh_keygen(&dir.join("keys"), name);
            let host = net.host(name, i as u8 + 1, &dir.join("hosts").join(name));
            let installer = fake::build(dir, name, 0, &Behaviour::Good, salt);
            host.install(&installer);
            hosts.insert((*name).to_owned(), host);
        }
        let fleet = Fleet {
            agents: BTreeMap::new(),
            serve: None,
            hosts,
            net,
            specs: names
                .iter()
                .map(|n| ((*n).to_owned(), Spec::good(1)))
                .collect(),
            listed: names.iter().map(|n| (*n).to_owned()).collect(),
            files: BTreeMap::new(),
            serve_args: Vec::new(),
            serve_runs: 0,
            last_addresses: None,
            fleet_key,
            salt: salt.to_owned(),
            tmp,
        };
        fleet.write_flake();
        fleet.write_fleet_file();
        run(Command::new("git")
            .args(["init", "-q"])
            .current_dir(fleet.repo()));
        fleet.git_add();
        Some(fleet)
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.dir().join("repo")
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn fleet_file(&self) -> PathBuf {
        self.repo().join("bento.toml")
    }

    /// The private SSH key of `host`.
    pub fn ssh_key(&self, host: &str) -> PathBuf {
        self.dir().join("keys").join(host)
    }

    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[name]
    }

    fn git_add(&self) {
        run(Command::new("git")
            .args(["add", "-A"])
            .current_dir(self.repo()));
    }

    fn write_flake(&self) {
        let mut hosts = String::new();
        for (name, spec) in &self.specs {
            let expr = fake::expression_sized(
                name,
                spec.version,
                &spec.behaviour,
                &self.salt,
                spec.blob_mib,
            );
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
        for name in &self.listed {
            text.push_str(&format!(
                "\n[hosts.\"{name}\"]\nssh_key = \"{}\"\n",
                public_key_line(&self.ssh_key(name))
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
        // Written whole and renamed, as an editor saves: `bento serve` never reads half.
        let file = self.fleet_file();
        bento::durable::write_atomic(&file, text.as_bytes(), 0o644).unwrap();
    }

    /// Changes one host's configuration in the repository (not deployed yet).
    pub fn configure(&mut self, host: &str, spec: Spec) {
        self.specs.insert(host.to_owned(), spec);
        self.write_flake();
        self.git_add();
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
        self.write_fleet_file();
    }

    /// Removes `host` from `bento.toml` (its namespace and agent keep running).
    pub fn remove_from_fleet_file(&mut self, host: &str) {
        self.listed.retain(|h| h != host);
        self.specs.remove(host);
        self.write_flake();
        self.write_fleet_file();
        self.git_add();
    }

    /// Runs the real `bento` with `args` and `-c bento.toml`, from the repository.
    pub fn bento(&self, args: &[&str]) -> Ran {
        let out = Command::new(env!("CARGO_BIN_EXE_bento"))
            .args(args)
            .arg("-c")
            .arg(self.fleet_file())
            .current_dir(self.repo())
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        Ran::from(out)
    }

    /// `bento deploy HOSTS...` (every host when empty); panics when it fails.
    pub fn deploy(&self, hosts: &[&str]) -> Ran {
        let mut args = vec!["deploy"];
        args.extend_from_slice(hosts);
        let ran = self.bento(&args);
        assert_eq!(ran.code, 0, "bento deploy failed: {ran:#?}");
        ran
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
        let log = std::fs::File::create(
            self.dir()
                .join("logs")
                .join(format!("serve-{}.log", self.serve_runs)),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_bento"))
            .args(["serve", "--config"])
            .arg(self.fleet_file())
            .args([
                "--cache-listen",
                &cache,
                "--sftp-listen",
                &sftp,
                "--no-dashboard",
            ])
            .args(&self.serve_args)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let (mut cache, mut sftp) = (String::new(), String::new());
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(a) = line.trim().strip_prefix("cache") {
                    cache = a.trim().to_owned();
                }
                if let Some(a) = line.trim().strip_prefix("sftp") {
                    sftp = a.trim().to_owned();
                }
                if let Some(p) = line.strip_prefix("Agents pin the host key: server_host_key = ") {
                    let _ = tx.send((cache.clone(), sftp.clone(), p.trim_matches('"').to_owned()));
                    break;
                }
            }
            // Keep draining: a closed pipe would make the server's next print fail.
            for _ in lines {}
        });
        let started = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        let Ok((cache, sftp, pinned)) = started else {
            let _ = child.kill();
            panic!(
                "bento serve did not start:\n{}",
                self.log_tail(&format!("logs/serve-{}.log", self.serve_runs))
            );
        };
        self.last_addresses = Some((cache.trim_start_matches("http://").to_owned(), sftp.clone()));
        self.serve = Some(Serve {
            child,
            cache,
            sftp,
            pinned,
        });
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
        let log =
            std::fs::File::create(self.dir().join("logs").join(format!("{host}.log"))).unwrap();
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

    /// The reports `host`'s agent uploaded, oldest first.
    pub fn reports(&self, host: &str) -> Vec<Report> {
        reports_in(&self.state(), host)
    }

    /// [`Fleet::reports`] without interim ones.
    pub fn final_reports(&self, host: &str) -> Vec<Report> {
        final_only(self.reports(host))
    }

    /// The store path `host`'s current release names.
    pub fn released(&self, host: &str) -> Option<(u64, String)> {
        let bytes = std::fs::read(self.state().join("publish").join(host).join("release")).ok()?;
        let r = bento::release::Release::parse_untrusted(&bytes).unwrap();
        Some((r.generation, r.store_path))
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
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.agents.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_serve();
        // The hosts, the bridge and the directory go with the fields, in that order.
    }
}

impl Fleet {
    /// Runs the stock OpenSSH `sftp -b` from inside `from` (its network namespace), logging
    /// in as `user` with `key`, the server's host key pinned; returns the outcome.
    pub fn stock_sftp(&self, from: &str, user: &str, key: &Path, commands: &str) -> Ran {
        let s = self.serve();
        let (ip, port) = s.sftp.rsplit_once(':').unwrap();
        let known = self.dir().join("known_hosts");
        std::fs::write(&known, format!("[{ip}]:{port} {}\n", s.pinned)).unwrap();
        let batch = self.dir().join("sftp-batch");
        std::fs::write(&batch, commands).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[from].ns, "sftp", "-b"])
            .arg(&batch)
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(["-P", port])
            .arg(format!("{user}@{ip}"))
            .output()
            .unwrap();
        Ran::from(out)
    }

    /// Runs `program args` inside `host` (its namespaces, its own `/nix`).
    pub fn in_host(&self, host: &str, program: &str, args: &[&str]) -> Ran {
        let out = self.hosts[host]
            .command(Path::new(program), args)
            .output()
            .unwrap();
        Ran::from(out)
    }
}
