//! The agent as a real systemd unit, in the systemd host in a box (tests/harness/systemd): a
//! Debian 12 container with systemd as PID 1, Nix and the host-built `bento`, against the
//! real servers running in this test on the host side of the box's veth.
//!
//! - A new system whose switch stops `bento-agent.service` halfway (what a new system that
//!   changes or removes the agent's unit does) still completes its switch, because the
//!   switch runs in its own transient unit; the agent started again confirms it.
//! - A switch that hangs: its transient unit is stopped at `activation_timeout_secs` and
//!   the previous system is put back.
//! - A system that names another agent configuration: the agent exits 9 after its report
//!   and `Restart=always` starts it again, exactly once.
//!
//! Needs root (fails unless `BENTO_ALLOW_SKIP=1`), `systemd-nspawn` and `debootstrap`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, Instant};

use harness::fake::{self, Behaviour};
use harness::ran::processes_with;
use harness::scene::Server;
use harness::systemd::SystemdBox;

const UNIT: &str = "bento-agent.service";

/// The agent's unit, as the NixOS module makes it (minus what Debian lacks).
const UNIT_FILE: &str = "[Unit]\nDescription=Bento agent\nStartLimitIntervalSec=0\n\n\
    [Service]\nExecStart=/usr/local/bin/bento agent --config /etc/bento/agent.toml\n\
    Restart=always\nRestartSec=1\nEnvironment=RUST_LOG=info\n";

/// A box with the agent installed (not started), its first system running, and the
/// servers on the host side.
struct Scene {
    server: Server,
    systems: Vec<String>,
    b: SystemdBox,
}

impl Scene {
    async fn new(salt: &str, systems: &[Behaviour], extra: &str) -> Option<Scene> {
        let b = tokio::task::spawn_blocking(SystemdBox::boot)
            .await
            .unwrap()?;
        let salt = format!("{salt}-{}", b.name());
        let systems: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| fake::build("web1", i as u64 + 1, s, &salt))
            .collect();
        let server = Server::start_on(&b.host_ip().to_string(), &["web1"]).await;
        // The box was installed with the first system.
        harness::ran::run(harness::nix::nix().args([
            "copy",
            "--no-check-sigs",
            "--to",
            &b.store_url(),
            &systems[0],
        ]));
        b.ok("mkdir", &["-p", "/nix/var/nix/profiles", "/etc/bento"]);
        b.ok("ln", &["-sfn", &systems[0], "/nix/var/nix/profiles/system"]);
        b.ok("ln", &["-sfn", &systems[0], "/run/current-system"]);
        let key = std::fs::read_to_string(server.sftp().key("web1")).unwrap();
        b.write_file("/etc/bento/id_ed25519", &key, 0o600);
        let to = server.endpoints();
        let config = format!(
            "host = \"web1\"\nserver = \"{sftp}\"\nserver_host_key = \"{pinned}\"\n\
             ssh_key = \"/etc/bento/id_ed25519\"\ncache_url = \"{cache}\"\n\
             fleet_public_key = \"{fleet}\"\nstate_dir = \"/var/lib/bento-agent\"\n\
             poll_interval_secs = 1\npoll_jitter = 0.0\nconfirm_timeout_secs = 30\n\
             confirm_retry_secs = 1\nretry_base_secs = 2\n{extra}\n",
            sftp = to.sftp,
            pinned = to.pinned,
            cache = to.cache_url,
            fleet = to.fleet_key,
        );
        b.write_file("/etc/bento/agent.toml", &config, 0o644);
        b.install_unit(UNIT, UNIT_FILE);
        Some(Scene { server, systems, b })
    }

    /// Publishes `system` as generation 2 and starts the agent's unit; returns when, and
    /// the agent's first pid.
    async fn release_and_start(&self, system: &str) -> (Instant, String) {
        self.server.publish_release("web1", 2, system).await;
        let started = Instant::now();
        self.b.ok("systemctl", &["start", UNIT]);
        (started, self.property(UNIT, "MainPID"))
    }

    /// Waits for the agent's final report on `generation`.
    async fn final_report(&self, generation: u64) -> bento::report::Report {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(r) = self
                .server
                .final_reports("web1")
                .into_iter()
                .find(|r| r.generation == generation)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no final report for generation {generation}; the agent's journal:\n{}",
                self.b.journal(UNIT)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Lines of the box's `/run/activations`.
    fn activations(&self) -> Vec<String> {
        self.b
            .run("cat", &["/run/activations"])
            .stdout
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn running(&self) -> String {
        self.b.ok("readlink", &["/run/current-system"])
    }

    fn property(&self, unit: &str, property: &str) -> String {
        self.b.unit_property(unit, property)
    }

    /// Waits up to a minute for `cond`; fails with the agent's journal.
    async fn until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within a minute; the agent's journal:\n{}",
                self.b.journal(UNIT)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_stops_the_agent_completes_and_the_restarted_agent_confirms_it() {
    let Some(s) = Scene::new("stopsagent", &[Behaviour::Good, Behaviour::StopsAgent], "").await
    else {
        return;
    };
    let new = s.systems[1].clone();
    let (started, first_pid) = s.release_and_start(&new).await;

    let r = s.final_report(2).await;
    eprintln!(
        "switch that stops the agent, to confirmed: {:?}",
        started.elapsed()
    );
    assert_eq!(r.outcome.as_str(), "applied", "{}", r.log);
    // The agent that confirmed is not the one that started the switch.
    assert!(r.log.contains("recovering generation 2"), "{}", r.log);
    assert_ne!(s.property(UNIT, "MainPID"), first_pid);
    // The switch ran once and to its end, although it stopped the agent that started it.
    assert_eq!(s.activations(), fake::switched(&[&new]));
    assert!(s.b.run("test", &["-e", "/run/switch-finished"]).success());
    assert_eq!(s.running(), new);
    assert_eq!(
        s.property("bento-switch-2.service", "LoadState"),
        "not-found"
    );
    let journal = s.b.journal(UNIT);
    assert!(
        journal.contains("stopping in the middle of an attempt"),
        "{journal}"
    );
    assert_eq!(s.property(UNIT, "ActiveState"), "active");
    s.b.poweroff();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_switch_unit_is_stopped_at_its_deadline() {
    let timeout = 5;
    let Some(s) = Scene::new(
        "hangunit",
        &[Behaviour::Good, Behaviour::Hang],
        &format!("activation_timeout_secs = {timeout}"),
    )
    .await
    else {
        return;
    };
    let (old, bad) = (s.systems[0].clone(), s.systems[1].clone());
    s.server.publish_release("web1", 2, &bad).await;
    s.b.ok("systemctl", &["start", UNIT]);
    // Positive control: the switch runs in its own unit, and hangs there.
    let tag = format!("hang-{bad}");
    s.until("the switch hanging in its unit", || {
        s.property("bento-switch-2.service", "ActiveState") == "active"
            && !processes_with(&tag).is_empty()
    })
    .await;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", processes_with(&tag)[0]))
        .unwrap_or_default();
    assert!(cgroup.contains("bento-switch-2.service"), "{cgroup}");
    let hanging = Instant::now();

    let r = s.final_report(2).await;
    eprintln!(
        "hanging switch unit to restored system: {:?} (activation_timeout_secs = {timeout})",
        hanging.elapsed()
    );
    assert_eq!(r.outcome.as_str(), "activation-failed", "{}", r.log);
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("timed out after {timeout}s")),
        "{reason}"
    );
    assert!(reason.contains("hanging on purpose"), "{reason}");
    assert!(
        r.log.contains("stopping bento-switch-2.service"),
        "{}",
        r.log
    );
    assert_eq!(
        s.property("bento-switch-2.service", "LoadState"),
        "not-found"
    );
    assert!(
        processes_with(&tag).is_empty(),
        "the hung switch still runs"
    );
    assert_eq!(s.activations(), fake::switched(&[&bad, &old]));
    assert_eq!(s.running(), old);
    s.b.poweroff();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_configuration_restarts_the_agent_exactly_once() {
    let systems = [
        Behaviour::NamesAgent("/nix/store/aaaa-bento-agent.toml".into()),
        Behaviour::NamesAgent("/nix/store/bbbb-bento-agent.toml".into()),
    ];
    let Some(s) = Scene::new("selfupdate", &systems, "").await else {
        return;
    };
    let new = s.systems[1].clone();
    let (started, first_pid) = s.release_and_start(&new).await;

    let r = s.final_report(2).await;
    assert_eq!(r.outcome.as_str(), "applied", "{}", r.log);
    s.until("the agent restarted", || {
        s.property(UNIT, "NRestarts") == "1" && s.property(UNIT, "ActiveState") == "active"
    })
    .await;
    let second_pid = s.property(UNIT, "MainPID");
    eprintln!(
        "release naming a new agent to the new agent running: {:?}",
        started.elapsed()
    );
    assert_ne!(second_pid, first_pid);
    // The new agent has nothing to do: it neither activates nor restarts again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.property(UNIT, "NRestarts"), "1");
    assert_eq!(s.property(UNIT, "MainPID"), second_pid);
    assert_eq!(s.activations(), fake::switched(&[&new]));
    assert_eq!(s.server.final_reports("web1").len(), 1);
    let journal = s.b.journal(UNIT);
    assert!(journal.contains("status=9"), "{journal}");
    assert!(journal.contains("bbbb-bento-agent.toml"), "{journal}");
    s.b.poweroff();
}
