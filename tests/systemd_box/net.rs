//! The network of one box: a network namespace of its own (`/run/netns/<name>`) with `eth0`,
//! the other end of a veth pair in the root namespace, on a `10.78.<subnet>.0/24` no
//! interface uses yet (`.1` on this side, `.2` in the box). Removed on drop.
//!
//! Also removes the namespaces, veth pairs and processes of boxes whose test process died
//! without running their `Drop` (SIGKILL, a timeout).
//!
//! Imports only std (and the parent module's helpers).

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::must;

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

        let subnet = free_subnet();
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
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
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
        let mut child = Command::new("flock")
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

/// A `10.78.X.0/24` that no address or route of the root namespace uses, starting from a
/// spot of this process's own so that parallel test processes rarely look at the same ones.
fn free_subnet() -> u8 {
    let show = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let used = show(&["-o", "-4", "addr", "show"]) + &show(&["-4", "route", "show"]);
    let start = std::process::id() % 250;
    (0..250)
        .map(|i| ((start + i) % 250 + 2) as u8)
        .find(|s| !used.contains(&format!("10.78.{s}.")))
        .expect("a free 10.78.X.0/24 subnet (all 250 in use?)")
}

/// Kills what still runs in a namespace, then deletes it (and with it its end of the veth).
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Removes the namespaces (and what runs in them), veth pairs, nspawn leftovers and
/// directories of the boxes `stale` names.
pub fn reap_stale(stale: impl Fn(&str) -> bool) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !stale(name) {
            continue;
        }
        eprintln!("systemd_box: removing box {name}, left by a test process that died");
        remove_namespace(name);
        let _ = Command::new("ip")
            .args(["link", "del", &format!("v{name}")])
            .output();
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
