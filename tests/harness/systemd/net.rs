//! The network of one box: a network namespace of its own (`/run/netns/<name>`) with `eth0`,
//! the other end of a veth pair in the root namespace, on a `10.78.<subnet>.0/24` no
//! interface uses yet (`.1` on this side, `.2` in the box). Removed on drop.
//!
//! Also removes the namespaces, veth pairs and processes of boxes whose test process died
//! without running their `Drop` (SIGKILL, a timeout).
//!
//! Shares namespace removal and subnet choice with `harness::net`.

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Stdio};

use bento::nix::cmd::Command;

use super::super::net::{free_subnet, remove_namespace};
use super::super::ran::run as must;

/// A box's network namespace and veth pair.
pub struct BoxNet {
    /// The namespace's name, also the box's machine name.
    pub name: String,
    /// The root namespace's end of the veth pair.
    pub veth: String,
    pub subnet: u8,
}

impl BoxNet {
    /// Makes the namespace and the veth pair, and gives both ends their addresses. The
    /// subnet is chosen and taken under a lock shared by every test process, so that two
    /// boxes never get the same one.
    pub fn new(name: &str) -> BoxNet {
        let lock = MachineLock::take("/run/bento-tests/systemd-box-net.lock");

        let subnet = free_subnet("10.78", 2..252);
        let net = BoxNet {
            name: name.to_owned(),
            veth: format!("v{name}"),
            subnet,
        };
        must(Command::new("ip").args(["netns", "add", name]));
        must(Command::new("ip").args([
            "link", "add", &net.veth, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]));
        let host = format!("{}/24", net.host_ip());
        must(Command::new("ip").args(["addr", "add", &host, "dev", &net.veth]));
        must(Command::new("ip").args(["link", "set", &net.veth, "up"]));
        let inside = format!("{}/24", net.box_ip());
        must(Command::new("ip").args(["-n", name, "addr", "add", &inside, "dev", "eth0"]));
        must(Command::new("ip").args(["-n", name, "link", "set", "eth0", "up"]));
        must(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        drop(lock);
        net
    }

    /// The address on the root namespace's side, where a test's servers listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 1)
    }

    /// The box's address on its `eth0`.
    pub fn box_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 2)
    }

    /// The path `systemd-nspawn --network-namespace-path=` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for BoxNet {
    fn drop(&mut self) {
        remove_namespace(&self.name);
        let _ = Command::new("ip").args(["link", "del", &self.veth]).run();
    }
}

/// An exclusive lock on a file, shared by every process of the machine, held by a
/// `flock` child until dropped (or until this process dies and its pipe closes).
/// (`std::fs::File::lock` is newer than the crate's minimum Rust.)
struct MachineLock(Child);

impl MachineLock {
    fn take(path: &str) -> MachineLock {
        if let Some(dir) = Path::new(path).parent() {
            std::fs::create_dir_all(dir).expect("create the lock's directory");
        }
        let mut child = std::process::Command::new("flock")
            .args([path, "sh", "-c", "echo locked && exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start flock");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("flock's stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read flock");
        assert_eq!(line.trim(), "locked", "flock {path} failed");
        MachineLock(child)
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Removes the namespaces (and what runs in them), veth pairs, nspawn leftovers and
/// directories of the boxes `stale` names.
pub fn reap_stale(stale: impl Fn(&str) -> bool) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).run() else {
        return;
    };
    for line in out.stdout_text().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !stale(name) {
            continue;
        }
        eprintln!("systemd box: removing box {name}, left by a test process that died");
        remove_namespace(name);
        let _ = Command::new("ip")
            .args(["link", "del", &format!("v{name}")])
            .run();
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{name}"));
        // Its directory: the overlay was mounted only in the box's own mount namespace, so
        // here these are plain directories.
        let tmp = std::env::temp_dir();
        let prefix = format!("bento-box-{name}-");
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
