//! The systemd host in a box: one Debian 12 container per test, booted with systemd as
//! PID 1, so that what Bento does with systemd (`systemd-run`, `Restart=always`, units that
//! stop the agent) is tested against real systemd on a machine whose own PID 1 is not.
//!
//! How a box is made ([`SystemdBox::boot`]):
//! - `scripts/systemd-rootfs.sh` gives the cached root (debootstrap, made once per machine,
//!   under a lock);
//! - a private mount namespace (`unshare -m`) mounts an overlay of it with an upper
//!   directory of the test's own, so the cache stays clean and the mount vanishes with the
//!   box's processes;
//! - `systemd-nspawn --register=no --keep-unit -b` boots it in a network namespace of the
//!   test's own (see [`net`]), with a Nix store of its own on `/nix` (Debian's Nix 2.8 is
//!   installed in the root; [`SystemdBox::store_url`] lets the host copy paths in) and
//!   the host-built `bento` on `/usr/local/bin/bento`;
//! - commands run inside with `nsenter -t <container's PID 1> -m -u -i -n -p`.
//!
//! Dropping the box powers it off (killing it if it does not stop) and removes its
//! namespace, veth pair, nspawn lock and directories, also when the test panics.
//!
//! Uses the harness's root rule and process helpers; otherwise std and `tempfile`.

mod cgroup;
mod inside;
pub mod net;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cgroup::BoxCgroups;
use net::BoxNet;

use super::ran::poll;

/// Start of every box's name (machine name, network namespace, `v<name>` veth).
const NAME_PREFIX: &str = "bbx";
/// `PATH` inside the box.
const BOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a boot may take before the test fails (the machine may be loaded).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `systemctl poweroff` may take before the box is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One booted container with systemd as PID 1. See the module's documentation.
pub struct SystemdBox {
    name: String,
    net: BoxNet,
    /// The `unshare … systemd-nspawn` process (nspawn itself, after `exec`).
    nspawn: Child,
    /// The container's PID 1 (systemd), as seen from here.
    leader: u32,
    /// The lock systemd-nspawn keeps on the root's inode; it stays behind when nspawn dies.
    nspawn_lock: PathBuf,
    /// How long the boot took, until `systemctl is-system-running` answered.
    pub boot_time: Duration,
    stopped: bool,
    /// Holds `upper`, `work`, `root` (the overlay), `nix` (the box's `/nix`), `console.log`.
    /// Dropped after the box is down, like `cgroups`.
    dir: tempfile::TempDir,
    cgroups: BoxCgroups,
}

impl SystemdBox {
    /// Boots a box and waits until systemd says the system is up (`running` or `degraded`).
    /// Returns `None` when the test may not boot one (see [`can_boot`]).
    pub fn boot() -> Option<SystemdBox> {
        if !can_boot() {
            return None;
        }
        reap_stale();
        let rootfs = cached_rootfs();
        let started = Instant::now();
        let name = format!(
            "{NAME_PREFIX}{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("bento-box-{name}-"))
            .tempdir()
            .expect("temp dir for the box");
        for d in ["upper", "work", "root", "nix"] {
            std::fs::create_dir(dir.path().join(d)).expect("box directories");
        }
        let net = BoxNet::new(&name);
        let cgroups = BoxCgroups::new(&name);
        let cgroup_dirs: Vec<String> = cgroups
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let console = std::fs::File::create(dir.path().join("console.log")).expect("console log");
        // Into the box's own cgroups first (see [`cgroup`]). `slave`: the overlay stays in
        // this namespace, while namespaces that other tests delete (`/run/netns/*`,
        // shared) are released here too.
        let script = r#"for c in $BOX_CGROUPS; do echo $$ > "$c/cgroup.procs" || exit 1; done
            mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/root" &&
            shift 2 && exec systemd-nspawn "$@""#;
        let nspawn = Command::new("unshare")
            .args(["-m", "--propagation", "slave", "sh", "-c", script, "sh"])
            .arg(&rootfs)
            .arg(dir.path())
            .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .arg(format!("--machine={name}"))
            .arg(format!("--directory={}", dir.path().join("root").display()))
            .arg(format!("--network-namespace-path={}", net.path()))
            .arg(format!("--bind={}:/nix", dir.path().join("nix").display()))
            .arg(format!(
                "--bind-ro={}:/usr/local/bin/bento",
                env!("CARGO_BIN_EXE_bento")
            ))
            .arg("--console=read-only")
            .env("BOX_CGROUPS", cgroup_dirs.join(" "))
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        let mut b = SystemdBox {
            name,
            net,
            nspawn,
            leader: 0,
            nspawn_lock: PathBuf::new(),
            boot_time: Duration::ZERO,
            stopped: false,
            dir,
            cgroups,
        };
        b.leader = poll("the container's PID 1", BOOT_TIMEOUT, || {
            b.assert_nspawn_alive("starting");
            container_init(b.nspawn.id())
        });
        b.nspawn_lock = nspawn_lock_of(b.leader);
        b.wait_until_up();
        b.boot_time = started.elapsed();
        eprintln!(
            "systemd box: {} booted in {} ms (rootfs {})",
            b.name,
            b.boot_time.as_millis(),
            rootfs.display()
        );
        Some(b)
    }

    /// The box's name: its machine name, hostname and network namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root namespace's address on the box's veth: where a test's servers listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.net.host_ip()
    }

    /// The box's own address (its `eth0`).
    pub fn box_ip(&self) -> Ipv4Addr {
        self.net.box_ip()
    }

    /// The container's PID 1 as seen from the host.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The `systemd-nspawn` process.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }

    /// The box's network namespace (`/run/netns/<name>`) and the root side of its veth.
    pub fn netns_and_veth(&self) -> (String, String) {
        (self.net.name.clone(), self.net.veth.clone())
    }

    /// The box's cgroups on this machine (one per hierarchy systemd uses).
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups.dirs
    }

    /// The lock file systemd-nspawn holds while the box runs.
    pub fn nspawn_lock(&self) -> &Path {
        &self.nspawn_lock
    }

    /// The box's directory on the host (overlay layers, its `/nix`, the console log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The box's Nix store as a store URL of the host's Nix:
    /// `nix copy --no-check-sigs --to <url> PATH` makes PATH valid inside the box.
    pub fn store_url(&self) -> String {
        format!("local?root={}", self.dir.path().display())
    }

    /// What systemd printed on the console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Powers the box off with `systemctl poweroff` and waits for systemd-nspawn to end;
    /// panics unless it ends by itself and successfully. Everything is removed after.
    pub fn poweroff(mut self) {
        let status = self.shut_down();
        assert!(
            status.is_some_and(|s| s.success()),
            "box {} did not power off cleanly (systemd-nspawn: {status:?}); console:\n{}",
            self.name,
            tail(&self.console(), 30)
        );
    }

    fn assert_nspawn_alive(&mut self, doing: &str) {
        if let Ok(Some(status)) = self.nspawn.try_wait() {
            panic!(
                "systemd-nspawn of box {} ended while {doing} ({status}); console:\n{}",
                self.name,
                tail(&self.console(), 40)
            );
        }
    }

    /// Waits until `systemctl is-system-running` says `running` or `degraded`.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let last = loop {
            self.assert_nspawn_alive("booting");
            let out = self.run("systemctl", &["is-system-running"]);
            if matches!(out.stdout.trim(), "running" | "degraded") {
                return;
            }
            if Instant::now() > deadline {
                break format!("{}{}", out.stdout.trim(), out.stderr.trim());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let failed = self.run("systemctl", &["--failed", "--no-pager"]);
        let jobs = self.run("systemctl", &["list-jobs", "--no-pager"]);
        panic!(
            "box {} not up after {BOOT_TIMEOUT:?}: is-system-running says {last:?}\n\
             systemctl --failed:\n{}\nsystemctl list-jobs:\n{}\nconsole:\n{}",
            self.name,
            failed.both(),
            jobs.both(),
            tail(&self.console(), 30)
        );
    }

    /// Stops the box: `systemctl poweroff`, then SIGKILL if it does not end in time; then
    /// removes its leftovers. Returns nspawn's exit status when it ended by itself.
    fn shut_down(&mut self) -> Option<ExitStatus> {
        let mut ended = None;
        if !self.stopped && self.leader != 0 {
            let started = Instant::now();
            let _ = self.command("systemctl", &["poweroff"]).output();
            let deadline = started + POWEROFF_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.nspawn.try_wait() {
                    eprintln!(
                        "systemd box: {} powered off in {} ms",
                        self.name,
                        started.elapsed().as_millis()
                    );
                    ended = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.stopped = true;
        if ended.is_none() && matches!(self.nspawn.try_wait(), Ok(None)) {
            eprintln!("systemd box: {} did not power off; killing it", self.name);
        }
        // Whatever still runs: the container (killing its PID 1 ends its whole PID
        // namespace, also when nspawn is already gone), then nspawn.
        if self.leader != 0 && in_other_pid_namespace(self.leader) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.leader.to_string()])
                .output();
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        if self.leader != 0 {
            let _ = std::fs::remove_file(&self.nspawn_lock);
        }
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
        ended
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            eprintln!(
                "systemd box: console of {} (last 30 lines):\n{}",
                self.name,
                tail(&self.console(), 30)
            );
        }
        self.shut_down();
        // Then `net` and `dir` drop: the namespace, veth and directories go.
    }
}

/// Whether this test can boot a box. When it cannot (not root, a tool missing) the test
/// fails with the reason, unless `BENTO_ALLOW_SKIP=1` (see `harness::root`).
pub fn can_boot() -> bool {
    if !super::needs_root("namespaces, mounts, systemd-nspawn") {
        return false;
    }
    match ["systemd-nspawn", "nsenter", "unshare", "ip"]
        .into_iter()
        .find(|tool| !on_path(tool))
    {
        Some(tool) => {
            super::root::cannot_run(&format!("`{tool}` is missing; run scripts/setup.sh"))
        }
        None => true,
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin";
    path.split(':').any(|d| Path::new(d).join(tool).is_file())
}

/// The cached root filesystem, made by `scripts/systemd-rootfs.sh` if needed (its progress
/// goes to this process's stderr).
pub fn cached_rootfs() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-rootfs.sh");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed ({})", out.status);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        Path::new(&path).join("usr/lib/systemd/systemd").exists(),
        "{script} printed {path:?}, which holds no systemd"
    );
    PathBuf::from(path)
}

/// Removes what boxes of test processes that died without their `Drop` (SIGKILL, a
/// timeout) left behind.
fn reap_stale() {
    // Processes first (all in the box's cgroups), then the network and directories.
    cgroup::reap_stale(owner_is_gone);
    net::reap_stale(owner_is_gone);
}

/// Whether `name` is a box's (`<prefix><pid>n<count>`) whose test process is gone.
fn owner_is_gone(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split('n').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// The child of `nspawn` that lives in another PID namespace: the container's PID 1.
fn container_init(nspawn: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|&p| {
            in_other_pid_namespace(p)
                && std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|exe| exe.ends_with("systemd"))
        })
}

/// Whether `pid` runs, in a PID namespace other than this process's (a box's, not a
/// process of this machine that got the number again).
fn in_other_pid_namespace(pid: u32) -> bool {
    let ours = std::fs::read_link("/proc/self/ns/pid");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a != b)
}

/// The file systemd-nspawn locks for the root directory (`inode-<dev>:<ino>`).
fn nspawn_lock_of(leader: u32) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata(format!("/proc/{leader}/root")).expect("stat the box's root");
    PathBuf::from(format!(
        "/run/systemd/nspawn/locks/inode-{}:{}",
        root.dev(),
        root.ino()
    ))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
