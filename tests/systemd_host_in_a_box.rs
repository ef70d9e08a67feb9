//! The systemd host in a box is a real systemd host: each test boots its own Debian 12
//! container (tests/harness/systemd) and checks one thing the agent's tests will rely on:
//! systemd is PID 1 and up, `systemd-run --wait --pipe` passes output and exit status
//! through and ends when its unit is stopped from outside, `Restart=always` restarts,
//! Nix and the host-built `bento` run inside, the box reaches a server on the host side of
//! its veth, two boxes run at once, and a box leaves nothing behind.
//!
//! Needs root (fails unless `BENTO_ALLOW_SKIP=1`), `systemd-nspawn` and `debootstrap`
//! (scripts/setup.sh); the first test on a machine builds the cached root (minutes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::nix::NIX_CONFIG;
use harness::ran::poll;
use harness::systemd::SystemdBox;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn the_box_runs_systemd_as_pid_1_and_it_reports_running() {
    let Some(b) = SystemdBox::boot() else { return };
    // `running`, not `degraded`: no unit failed.
    let state = b.run("systemctl", &["is-system-running"]);
    let failed = b.run("systemctl", &["--failed", "--no-pager"]);
    assert_eq!(
        state.stdout.trim(),
        "running",
        "{}\n{}\n{}",
        failed.stdout,
        b.run("journalctl", &["-b", "-p", "warning", "--no-pager"])
            .stdout,
        b.console()
    );
    assert_eq!(b.ok("cat", &["/proc/1/comm"]), "systemd");
    assert_eq!(
        b.ok("readlink", &["/proc/1/exe"]),
        "/usr/lib/systemd/systemd"
    );
    // Its own UTS namespace, named after the box, not this machine.
    assert_eq!(b.ok("hostname", &[]), b.name());
    b.poweroff();
}

#[test]
fn systemd_run_wait_pipe_passes_output_and_exit_status_through() {
    let Some(b) = SystemdBox::boot() else { return };
    let unit = "bento-smoke-exit";
    let out = b.run(
        "systemd-run",
        &[
            &format!("--unit={unit}"),
            "--wait",
            "--collect",
            "--pipe",
            "--quiet",
            "--",
            "sh",
            "-c",
            "echo hi; cat /proc/self/cgroup; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.code, 3, "{}", out.both());
    assert!(out.stdout.starts_with("hi\n"), "{}", out.both());
    // It ran as the transient unit, not as a child of systemd-run.
    assert!(
        out.stdout
            .contains(&format!("/system.slice/{unit}.service")),
        "{}",
        out.both()
    );
    assert_eq!(out.stderr.trim(), "oops", "{}", out.both());
    // --collect: the failed unit is gone, not left loaded.
    assert_eq!(
        b.unit_property(&format!("{unit}.service"), "LoadState"),
        "not-found"
    );
    b.poweroff();
}

#[test]
fn restart_always_starts_a_killed_service_again() {
    let Some(b) = SystemdBox::boot() else { return };
    let unit = "bento-smoke-restart.service";
    // `$$$$` is the shell's `$$` once systemd has unescaped it.
    b.install_unit(
        unit,
        "[Service]\nExecStart=/bin/sh -c 'echo \"started $$$$\"; exec sleep infinity'\n\
         Restart=always\nRestartSec=1\n",
    );
    b.ok("systemctl", &["start", unit]);
    let first = poll("the service's first main PID", WAIT, || {
        Some(b.unit_property(unit, "MainPID")).filter(|p| p != "0")
    });
    assert_eq!(b.unit_property(unit, "NRestarts"), "0");
    // The shell's `kill`: minbase has no procps.
    b.ok("sh", &["-c", "kill -KILL \"$1\"", "sh", &first]);
    let second = poll("the service to be started again", WAIT, || {
        let pid = b.unit_property(unit, "MainPID");
        let active = b.unit_property(unit, "ActiveState") == "active";
        (active && pid != "0" && pid != first).then_some(pid)
    });
    assert_eq!(b.unit_property(unit, "NRestarts"), "1");
    let journal = poll("both starts in the journal", WAIT, || {
        let j = b.journal(unit);
        j.contains(&format!("started {second}")).then_some(j)
    });
    assert!(journal.contains(&format!("started {first}")), "{journal}");
    b.poweroff();
}

#[test]
fn a_transient_unit_stopped_from_outside_ends_the_waiting_systemd_run() {
    let Some(b) = SystemdBox::boot() else { return };
    let unit = "bento-smoke-stop.service";
    let mut waiting = b
        .command(
            "systemd-run",
            &[
                "--unit=bento-smoke-stop",
                "--wait",
                "--collect",
                "--pipe",
                "--",
                "sleep",
                "600",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-run");
    // MainPID is set at the fork, before the exec: wait for the sleep itself.
    let pid = poll("the transient unit's sleep to run", WAIT, || {
        let pid = b.unit_property(unit, "MainPID");
        let cmdline = b.run("cat", &[&format!("/proc/{pid}/cmdline")]).stdout;
        (pid != "0" && cmdline.ends_with("sleep\u{0}600\u{0}")).then_some(pid)
    });
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "systemd-run did not wait"
    );

    b.ok("systemctl", &["stop", unit]);
    let status = poll("systemd-run to return after the stop", WAIT, || {
        waiting.try_wait().unwrap()
    });
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What a caller of `systemd-run --wait` must know: a unit stopped from outside ends
    // with exit status 0 (SIGTERM counts as a clean exit for a service); only the summary
    // says the process was killed.
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("Main processes terminated with: code=killed/status=TERM"),
        "{stderr}"
    );
    assert!(
        !b.run("test", &["-e", &format!("/proc/{pid}")]).success(),
        "the unit's sleep still runs"
    );
    assert_eq!(b.unit_property(unit, "LoadState"), "not-found");
    b.poweroff();
}

#[test]
fn nix_runs_in_the_box_on_a_store_of_its_own() {
    let Some(b) = SystemdBox::boot() else { return };
    let host_nix = host(Command::new("nix").arg("--version"));
    assert_eq!(b.ok("nix", &["--version"]), host_nix);

    // Two closures built by the host's Nix; only the first is copied into the box.
    let expr = |tag: &str| {
        format!(
            "let mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; args = [ \"-c\" script ]; }}; \
             dep = mk \"box-dep-{tag}\" \"echo {tag} > $out\"; \
             in mk \"box-top-{tag}\" \"mkdir $out; echo ${{dep}} > $out/ref\""
        )
    };
    let copied = host(Command::new("nix-build").args([
        "--no-out-link",
        "-E",
        &expr(&format!("{}-in", b.name())),
    ]));
    let other = host(Command::new("nix-build").args([
        "--no-out-link",
        "-E",
        &expr(&format!("{}-out", b.name())),
    ]));
    host(Command::new("nix").args(["copy", "--no-check-sigs", "--to", &b.store_url(), &copied]));

    b.ok("nix-store", &["--verify-path", &copied]);
    let dep = b.ok("cat", &[&format!("{copied}/ref")]);
    assert_eq!(b.ok("nix-store", &["-q", "--references", &copied]), dep);
    b.ok("nix-store", &["--verify-path", &dep]);
    b.ok("nix", &["path-info", "--recursive", &copied]);
    // The box's store is its own: a path valid on the host but not copied is not there.
    assert!(Path::new(&other).exists());
    let out = b.run("nix-store", &["--verify-path", &other]);
    assert!(!out.success(), "{}", out.both());
    assert!(!b.run("test", &["-e", &other]).success());
    b.poweroff();
}

#[test]
fn the_host_built_bento_runs_in_the_box() {
    let Some(b) = SystemdBox::boot() else { return };
    let ours = host(Command::new(env!("CARGO_BIN_EXE_bento")).arg("--version"));
    assert_eq!(b.ok("bento", &["--version"]), ours);
    assert_eq!(
        b.ok("sh", &["-c", "command -v bento"]),
        "/usr/local/bin/bento"
    );
    b.poweroff();
}

#[test]
fn the_box_reaches_a_listener_on_the_host_side_of_its_veth() {
    let Some(b) = SystemdBox::boot() else { return };
    let listener = TcpListener::bind((b.host_ip(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        writeln!(conn, "pong {} from {}", line.trim(), peer.ip()).unwrap();
        peer
    });
    let nonce = format!("ping-{}", b.name());
    let out = b.run(
        "bash",
        &[
            "-c",
            r#"exec 3<>"/dev/tcp/$1/$2" && echo "$3" >&3 && read -r reply <&3 && echo "$reply""#,
            "bash",
            &b.host_ip().to_string(),
            &port.to_string(),
            &nonce,
        ],
    );
    assert!(out.success(), "{}", out.both());
    assert_eq!(
        out.stdout.trim(),
        format!("pong {nonce} from {}", b.box_ip())
    );
    assert_eq!(server.join().unwrap().ip(), b.box_ip());
    b.poweroff();
}

#[test]
fn two_boxes_run_at_once_with_their_own_names_networks_and_files() {
    let (a, c) = std::thread::scope(|s| {
        let a = s.spawn(SystemdBox::boot);
        let c = s.spawn(SystemdBox::boot);
        (a.join().unwrap(), c.join().unwrap())
    });
    let (Some(a), Some(c)) = (a, c) else { return };
    assert_ne!(a.name(), c.name());
    assert_ne!(a.host_ip(), c.host_ip());
    for x in [&a, &c] {
        // Each box's systemd runs in cgroups of its own: two sharing one would create and
        // remove each other's unit cgroups.
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", x.leader())).unwrap();
        assert!(
            cgroup.contains(&format!("/bento-boxes/{}/payload", x.name())),
            "{cgroup}"
        );
        assert_eq!(x.ok("systemctl", &["is-system-running"]), "running");
        assert_eq!(x.ok("hostname", &[]), x.name());
        let addr = x.ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!(" {}/24 ", x.box_ip())), "{addr}");
    }
    // Each box writes on its own overlay: a file made in one is not in the other.
    a.write_file("/etc/bento-box-marker", "a\n", 0o600);
    assert_eq!(a.ok("cat", &["/etc/bento-box-marker"]), "a");
    assert!(!c.run("test", &["-e", "/etc/bento-box-marker"]).success());
    a.poweroff();
    c.poweroff();
}

/// What a running box holds on this machine, to check that all of it goes.
struct Traces {
    netns: String,
    veth: String,
    leader: u32,
    nspawn: u32,
    /// The nspawn lock, the box's directory, its cgroups.
    paths: Vec<String>,
    /// Where the overlay is mounted (only in the box's own mount namespace).
    overlay: String,
}

impl Traces {
    fn of(b: &SystemdBox) -> Traces {
        let (netns, veth) = b.netns_and_veth();
        let mut paths = vec![
            b.nspawn_lock().display().to_string(),
            b.dir().display().to_string(),
        ];
        paths.extend(b.cgroups().iter().map(|c| c.display().to_string()));
        Traces {
            netns,
            veth,
            leader: b.leader(),
            nspawn: b.nspawn_pid(),
            paths,
            overlay: b.dir().join("root").display().to_string(),
        }
    }

    /// Every trace, named.
    fn all(&self) -> Vec<String> {
        let mut all = vec![
            format!("netns {}", self.netns),
            format!("veth {}", self.veth),
            format!("container PID 1 {}", self.leader),
            format!("systemd-nspawn {}", self.nspawn),
        ];
        all.extend(self.paths.iter().cloned());
        all.push(format!("overlay on {}", self.overlay));
        all
    }

    /// The traces that are there, named as in [`Traces::all`].
    fn present(&self) -> Vec<String> {
        let netns = host(Command::new("ip").args(["netns", "list"]));
        let links = host(Command::new("ip").args(["-o", "link", "show"]));
        let mut found = Vec::new();
        if netns
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&self.netns))
        {
            found.push(format!("netns {}", self.netns));
        }
        if links.contains(&format!(" {}@", self.veth)) {
            found.push(format!("veth {}", self.veth));
        }
        for (what, pid) in [
            ("container PID 1", self.leader),
            ("systemd-nspawn", self.nspawn),
        ] {
            if Path::new(&format!("/proc/{pid}")).exists() {
                found.push(format!("{what} {pid}"));
            }
        }
        found.extend(self.paths.iter().filter(|p| Path::new(p).exists()).cloned());
        // No process of this machine may still see the overlay.
        let seen = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read_to_string(entry.path().join("mountinfo"))
                .is_ok_and(|m| m.contains(&format!(" {} ", self.overlay)))
        });
        if seen {
            found.push(format!("overlay on {}", self.overlay));
        }
        found
    }

    fn assert_all_gone(&self) {
        poll("the box's traces to go", Duration::from_secs(10), || {
            self.present().is_empty().then_some(())
        });
    }
}

#[test]
fn a_powered_off_box_leaves_nothing_behind() {
    let Some(b) = SystemdBox::boot() else { return };
    let traces = Traces::of(&b);
    // Positive control: everything looked for is there while the box runs.
    assert_eq!(traces.present(), traces.all());
    b.poweroff();
    traces.assert_all_gone();
}

#[test]
fn a_box_whose_test_panics_leaves_nothing_behind() {
    let Some(b) = SystemdBox::boot() else { return };
    let traces = Traces::of(&b);
    assert_eq!(traces.present(), traces.all());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _b = b;
        panic!("a test failing on purpose while its box runs");
    }));
    assert!(result.is_err());
    traces.assert_all_gone();
}

#[test]
fn the_debian_mirror_is_read_from_apt_sources_in_both_formats() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-rootfs.sh");
    let mirror = |files: &[(&str, &str)]| {
        let etc = tempfile::tempdir().unwrap();
        std::fs::create_dir(etc.path().join("sources.list.d")).unwrap();
        for (name, text) in files {
            std::fs::write(etc.path().join(name), text).unwrap();
        }
        let out = Command::new(script)
            .arg("--mirror")
            .env("BENTO_APT_ETC", etc.path())
            .env_remove("BENTO_DEBIAN_MIRROR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success().then_some(stdout)
    };
    let one_line = "# a comment\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://updates.example/debian bookworm-updates main\n\
                    deb [ arch=amd64 ] http://one-line.example/debian bookworm main contrib\n";
    assert_eq!(
        mirror(&[("sources.list", one_line)]).as_deref(),
        Some("http://one-line.example/debian")
    );
    let deb822 = "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n\
                  Components: main\nEnabled: no\n\n\
                  Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                  Types: deb\nURIs: http://security.example/debian-security\n\
                  Suites: bookworm-security\n\n\
                  Types: deb deb-src\n\
                  # http://snapshot.example/archive/debian/20250520T000000Z\n\
                  URIs: http://deb822.example/debian\n\
                  Suites: bookworm bookworm-updates\nComponents: main\n\
                  Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n URIs: http://key.example/\n";
    assert_eq!(
        mirror(&[("sources.list.d/debian.sources", deb822)]).as_deref(),
        Some("http://deb822.example/debian")
    );
    // Files apt ignores are ignored; with no source at all the script says so and fails.
    assert_eq!(
        mirror(&[("sources.list.d/debian.sources.disabled", deb822)]),
        None
    );
}

/// Runs a command on this machine (host Nix settings); panics unless it succeeds.
fn host(c: &mut Command) -> String {
    let out = c.env("NIX_CONFIG", NIX_CONFIG).output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
