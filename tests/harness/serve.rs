//! `bento serve` as a child process, as an administrator runs it: started on a fleet file,
//! its log (stderr, `RUST_LOG=info`) in a file, and the addresses and host key it prints
//! read from its stdout. Killed when dropped. The stock OpenSSH `sftp` logs in to it as a
//! host would.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::nix::NIX_CONFIG;
use super::ran::Ran;
use super::servers::openssh_options;

pub struct Serve {
    child: Child,
    /// The cache's URL (`http://ip:port`).
    pub cache: String,
    /// The SFTP server's address (`ip:port`).
    pub sftp: String,
    /// The dashboard's URL without the trailing `/`, when it serves one.
    pub dashboard: Option<String>,
    /// The git push hook's URL (`http://ip:port/hooks/git`), with `--hook-listen`.
    pub hook: Option<String>,
    /// The host key agents pin.
    pub pinned: String,
    pub log: PathBuf,
}

impl Serve {
    /// Runs `bento serve --config FLEET_FILE ARGS`, logging to `log`, and waits (at most
    /// 30 s, blocking) until it has said where it listens.
    pub fn start(fleet_file: &Path, args: &[&str], log: &Path) -> Serve {
        Serve::try_start(fleet_file, args, log)
            .unwrap_or_else(|said| panic!("bento serve did not start:\n{said}"))
    }

    /// [`Serve::start`] with the cache, SFTP and the dashboard each on a free loopback port.
    pub fn start_with_dashboard(fleet_file: &Path, log: &Path) -> Serve {
        let any = "127.0.0.1:0";
        let listen = [
            "--cache-listen",
            any,
            "--sftp-listen",
            any,
            "--dashboard-listen",
            any,
        ];
        Serve::start(fleet_file, &listen, log)
    }

    /// [`Serve::start`], or `Err` with what the server printed and logged when it stopped
    /// (or did not say where it listens within 30 s) instead.
    pub fn try_start(fleet_file: &Path, args: &[&str], log: &Path) -> Result<Serve, String> {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bento"))
            .args(["serve", "--config"])
            .arg(fleet_file)
            .args(args)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("RUST_LOG", "info")
            .env_remove("BENTO_CONFIG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut said: Vec<(String, String)> = Vec::new();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix("Agents pin the host key: server_host_key = ") {
                    said.push(("pinned".into(), p.trim_matches('"').to_owned()));
                    let _ = tx.send(Ok(said.clone()));
                    break;
                }
                if let Some((what, value)) = line.trim().split_once(char::is_whitespace) {
                    said.push((what.to_owned(), value.trim().to_owned()));
                }
                said.push(("line".into(), line));
            }
            // Stdout closed before the last line: it stopped. What it printed goes along.
            let printed: Vec<String> = said
                .iter()
                .filter(|(w, _)| w == "line")
                .map(|(_, l)| l.clone())
                .collect();
            let _ = tx.send(Err(printed.join("\n")));
            // Keep draining: a closed pipe would make the server's next print fail.
            for _ in lines {}
        });
        let said = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(said)) => said,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let printed = match outcome {
                    Ok(Err(printed)) => printed,
                    _ => "(nothing within 30 s)".to_owned(),
                };
                return Err(format!(
                    "{printed}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
        };
        let get = |what: &str| said.iter().find(|(w, _)| w == what).map(|(_, v)| v.clone());
        Ok(Serve {
            child,
            cache: get("cache").expect("serve prints its cache URL"),
            sftp: get("sftp").expect("serve prints its SFTP address"),
            dashboard: get("dashboard").map(|d| d.trim_end_matches('/').to_owned()),
            hook: get("hook"),
            pinned: get("pinned").unwrap(),
            log: log.to_owned(),
        })
    }

    /// A known-hosts file in `dir` that trusts only this server's pinned key.
    pub fn known_hosts(&self, dir: &Path) -> PathBuf {
        let (ip, port) = self.sftp.rsplit_once(':').unwrap();
        let known = dir.join("known_hosts");
        std::fs::write(&known, format!("[{ip}]:{port} {}\n", self.pinned)).unwrap();
        known
    }

    /// The stock OpenSSH `sftp` (`-b`, batch file and known hosts in `dir`), logging in as
    /// `user` with `key` from `prefix` (e.g. `ip netns exec NS`, or nothing); runs `commands`.
    pub fn stock_sftp(
        &self,
        dir: &Path,
        prefix: &[&str],
        user: &str,
        key: &Path,
        commands: &str,
    ) -> Ran {
        let (ip, port) = self.sftp.rsplit_once(':').unwrap();
        let known = self.known_hosts(dir);
        let batch = dir.join("sftp-batch");
        std::fs::write(&batch, commands).unwrap();
        let (program, before) = match prefix.split_first() {
            Some((first, rest)) => (*first, rest.to_vec()),
            None => ("sftp", Vec::new()),
        };
        let mut c = std::process::Command::new(program);
        c.args(before);
        if !prefix.is_empty() {
            c.arg("sftp");
        }
        Ran::of(
            c.arg("-b")
                .arg(&batch)
                .args(openssh_options(key, &known))
                .args(["-P", port])
                .arg(format!("{user}@{ip}")),
        )
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

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
