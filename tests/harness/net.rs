//! Simulated hosts on one machine: each a network namespace (its own `eth0` on a bridge
//! of the test's own) plus, for each command run inside, a mount namespace in which the
//! host's directory is bound on `/nix` and `/run`, so it has its own Nix store, profiles
//! and `/run/current-system`. Namespaces, veth pairs and bridges are removed on drop (also
//! on panic), with anything still running inside.

use std::path::{Path, PathBuf};
use std::process::Child;

use bento::nix::cmd::Command;

use super::nix::{self, NIX_CONFIG};
use super::ran::run;

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A bridge in the root namespace carrying the server's address `10.77.<subnet>.1/24`.
pub struct Net {
    pub id: String,
    pub subnet: u8,
    pub bridge: String,
}

impl Net {
    /// A fresh bridge. Interface names have at most 15 bytes, so ids are short; they are
    /// unique per test process and call.
    pub fn new() -> Net {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id() % 10000;
        let id = format!("b{pid}n{n}");
        // One bridge at a time in this process, so that two tests never both find the same
        // subnet free.
        static CHOOSING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _choosing = CHOOSING.lock().unwrap_or_else(|e| e.into_inner());
        let subnet = free_subnet("10.77", 20..220);
        let bridge = format!("br{id}");
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        let net = Net { id, subnet, bridge };
        let addr = format!("{}/24", net.server_ip());
        run(Command::new("ip").args(["addr", "add", &addr, "dev", &net.bridge]));
        run(Command::new("ip").args(["link", "set", &net.bridge, "up"]));
        net
    }

    /// The server's address on this bridge.
    pub fn server_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Adds host number `index` (1-based) with its own namespace and root directory.
    pub fn host(&self, name: &str, index: u8, root: &Path) -> Host {
        let ns = format!("{}h{index}", self.id);
        let veth = format!("v{}h{index}", self.id);
        run(Command::new("ip").args(["netns", "add", &ns]));
        let host = Host {
            name: name.to_owned(),
            ns: ns.clone(),
            ip: format!("10.77.{}.{}", self.subnet, 10 + u32::from(index)),
            root: root.to_owned(),
            peer: veth.clone(),
        };
        run(Command::new("ip").args([
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]));
        run(Command::new("ip").args(["link", "set", &veth, "master", &self.bridge]));
        run(Command::new("ip").args(["link", "set", &veth, "up"]));
        let addr = format!("{}/24", host.ip);
        host.ip_cmd(&["addr", "add", &addr, "dev", "eth0"]);
        host.ip_cmd(&["link", "set", "eth0", "up"]);
        host.ip_cmd(&["link", "set", "lo", "up"]);
        for d in ["run", "nix", "cache", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        run(nix::nix().args(["store", "ping", "--store", &host.store_url()]));
        host
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).run();
    }
}

/// One simulated host.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub root: PathBuf,
    /// The bridge's end of the host's veth pair (what the host receives leaves by it).
    pub peer: String,
}

impl Host {
    pub fn store_url(&self) -> String {
        format!("local?root={}", self.root.display())
    }

    fn ip_cmd(&self, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns, "ip"])
            .args(args));
    }

    /// Brings the host's network down or up from outside.
    pub fn set_link(&self, up: bool) {
        self.ip_cmd(&["link", "set", "eth0", if up { "up" } else { "down" }]);
    }

    /// Limits what the host receives to `rate` (a `tc` rate such as `40mbit`), so that a
    /// download lasts long enough to be interrupted.
    pub fn throttle(&self, rate: &str) {
        run(Command::new("tc").args([
            "qdisc", "replace", "dev", &self.peer, "root", "tbf", "rate", rate, "burst", "32kb",
            "latency", "1s",
        ]));
    }

    /// Lifts [`Host::throttle`].
    pub fn unthrottle(&self) {
        // Already lifted is fine.
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.peer, "root"])
            .run();
    }

    /// Copies `path`'s closure into the host's store (no signatures needed: this is the
    /// host's installation, not a deployment) and makes it the running system.
    pub fn install(&self, path: &str) {
        run(nix::nix().args(["copy", "--no-check-sigs", "--to", &self.store_url(), path]));
        let link = self.root.join("run/current-system");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(path, &link).unwrap();
        let profile = self.root.join("nix/var/nix/profiles/system");
        std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&profile);
        std::os::unix::fs::symlink(path, &profile).unwrap();
    }

    /// The system the host runs now.
    pub fn running(&self) -> Option<String> {
        std::fs::read_link(self.root.join("run/current-system"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Lines of `/run/activations`: `<path>/bin/switch-to-configuration <action>`.
    pub fn activations(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("run/activations"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lets a system of [`super::fake::Behaviour::Hold`] finish its activation.
    pub fn release_hold(&self) {
        std::fs::write(self.root.join("run").join(super::fake::HOLD_FILE), "go\n").unwrap();
    }

    /// A command run inside the host: its network namespace, with its own `/nix` and
    /// `/run` bound in a private mount namespace.
    pub fn command(&self, program: &Path, args: &[&str]) -> std::process::Command {
        let script = r#"mount --bind "$1" /nix && mount --bind "$2" /run && shift 2 && exec "$@""#;
        let mut c = std::process::Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", script, "sh"])
        .arg(self.root.join("nix"))
        .arg(self.root.join("run"))
        .arg(program)
        .args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", self.root.join("cache"));
        c
    }

    pub fn spawn(&self, program: &Path, args: &[&str]) -> Child {
        self.command(program, args).spawn().unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Whatever still runs inside (an agent, an activation script) goes with the host;
        // otherwise the namespace and its veth pair outlive the test.
        remove_namespace(&self.ns);
    }
}

/// Kills what still runs in network namespace `name`, then deletes it (and with it its end
/// of any veth pair).
pub fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).run() {
        for pid in out.stdout_text().split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).run();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).run();
}

/// A `<prefix>.X.0/24`, X in `range`, that no address or route of the root namespace uses
/// (another test process, a demo), looked for from a spot of this process's own so that
/// parallel test processes rarely look at the same ones.
pub fn free_subnet(prefix: &str, range: std::ops::Range<u32>) -> u8 {
    let show = |args: &[&str]| run(Command::new("ip").args(args));
    let used = show(&["-o", "-4", "addr", "show"]) + "\n" + &show(&["-4", "route", "show"]);
    let width = range.end - range.start;
    let start = std::process::id() % width;
    (0..width)
        .map(|i| ((start + i) % width + range.start) as u8)
        .find(|s| {
            let taken = format!("{prefix}.{s}.");
            !used.split_whitespace().any(|word| word.starts_with(&taken))
        })
        .unwrap_or_else(|| panic!("a free {prefix}.X.0/24 subnet (all {width} in use?)"))
}
