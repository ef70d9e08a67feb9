//! Fleet in a box: the real `bento deploy`, `bento serve` and `bento agent` binaries, every
//! host in its own network and mount namespace with its own Nix store, each scenario named
//! after what it proves. `bento status` is the judge of where hosts stand, the hosts'
//! `/run/current-system` and activation records are the judge of what they run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use bento::report::Outcome;
use harness::fake::{self, Behaviour};
use harness::fleet::Fleet;
use harness::ran::wait_for;
use harness::repo::Spec;

/// Generous: a loaded CI machine builds, copies and confirms much slower than a quiet one.
const CONVERGE_SECS: u64 = 120;

fn all(hosts: &[&'static str], state: &'static str) -> Vec<(&'static str, &'static str)> {
    hosts.iter().map(|h| (*h, state)).collect()
}

/// The activations of `path` recorded on `host`.
fn activations_of(fleet: &Fleet, host: &str, path: &str) -> Vec<String> {
    fleet
        .host(host)
        .activations()
        .into_iter()
        .filter(|l| l.starts_with(path))
        .collect()
}

/// Waits until the agent loop of each of `hosts` has finished `more` attempts beyond those
/// it had finished when called: they had every chance to act.
async fn wait_for_attempts(fleet: &Fleet, hosts: &[&str], more: usize) {
    let start: Vec<usize> = hosts.iter().map(|h| fleet.attempts(h)).collect();
    let made = wait_for(60, || {
        hosts
            .iter()
            .zip(&start)
            .all(|(h, n)| fleet.attempts(h) >= n + more)
    })
    .await;
    assert!(
        made,
        "the agents of {hosts:?} made no {more} more attempts in 60 s\n{}",
        fleet.diagnostics()
    );
}

/// A fleet already converged on its first deployment.
async fn converged(salt: &str, hosts: &[&'static str], serve_args: &[&str]) -> Option<Fleet> {
    let mut fleet = Fleet::new(salt, hosts)?;
    fleet.start_serve(serve_args).await;
    fleet.start_agents("");
    fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &all(hosts, "up-to-date"))
        .await;
    Some(fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_five_converges_from_nothing() {
    let hosts = ["web1", "web2", "web3", "web4", "web5"];
    let Some(mut fleet) = Fleet::new("five", &hosts) else {
        return;
    };
    fleet.start_serve(&[]).await;
    fleet.start_agents("");
    let before = fleet.states();
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(
        before.values().all(|s| s == "not-deployed"),
        "nothing is deployed yet: {before:?}"
    );

    fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;
    for h in hosts {
        let (generation, path) = fleet.released(h).unwrap();
        assert_eq!(generation, 1, "{h}");
        assert_eq!(
            fleet.host(h).running().as_deref(),
            Some(path.as_str()),
            "{h} runs its release"
        );
        assert_eq!(
            activations_of(&fleet, h, &path),
            fake::switched(&[&path]),
            "{h} activated its system exactly once"
        );
        let last = fleet.final_reports(h).pop().unwrap();
        assert_eq!(
            (last.generation, last.outcome),
            (1, Outcome::Applied),
            "{h}"
        );
        assert_eq!(last.running.as_deref(), Some(path.as_str()), "{h}");
    }
    let table = fleet.bento(&["status"]);
    assert_eq!(table.code, 0, "every host is up to date: {table:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_host_updates_only_that_host() {
    let hosts = ["web1", "web2", "web3"];
    let Some(mut fleet) = converged("onechange", &hosts, &[]).await else {
        return;
    };
    let before: BTreeMap<&str, _> = hosts
        .iter()
        .map(|h| {
            (
                *h,
                (
                    fleet.released(h).unwrap(),
                    fleet.host(h).activations(),
                    fleet.final_reports(h).len(),
                ),
            )
        })
        .collect();

    fleet.configure("web2", Spec::good(2));
    let deployed = fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;
    let (generation, path) = fleet.released("web2").unwrap();
    assert_eq!(generation, 2, "{deployed:#?}");
    assert_eq!(fleet.host("web2").running().as_deref(), Some(path.as_str()));
    assert_eq!(activations_of(&fleet, "web2", &path).len(), 1);

    // Give the other agents two more attempts each in which they could (wrongly) act; that
    // they made them is the positive control of the checks below.
    wait_for_attempts(&fleet, &["web1", "web3"], 2).await;
    for h in ["web1", "web3"] {
        let (release, activations, reports) = &before[h];
        assert_eq!(
            fleet.released(h).as_ref(),
            Some(release),
            "{h}'s release is untouched"
        );
        assert_eq!(
            &fleet.host(h).activations(),
            activations,
            "{h} activated nothing"
        );
        assert_eq!(
            fleet.final_reports(h).len(),
            *reports,
            "{h} had nothing to report"
        );
        assert_eq!(fleet.host(h).running().as_deref(), Some(release.1.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cuts_the_network_is_rolled_back_and_status_says_so() {
    let hosts = ["web1", "web2"];
    let Some(mut fleet) = converged("cutnet", &hosts, &[]).await else {
        return;
    };
    let (_, good) = fleet.released("web2").unwrap();
    let web1_before = fleet.host("web1").activations();

    fleet.configure("web2", Spec::good(2).behaving(Behaviour::BreakNetwork));
    fleet.deploy(&[]);
    let (_, bad) = fleet.released("web2").unwrap();
    fleet
        .wait_for_states(
            CONVERGE_SECS,
            &[("web2", "rolled-back"), ("web1", "up-to-date")],
        )
        .await;

    // The host put its previous system back by itself, network included.
    assert_eq!(fleet.host("web2").running().as_deref(), Some(good.as_str()));
    let activations = fleet.host("web2").activations();
    let bad_at = activations
        .iter()
        .position(|l| l.starts_with(&bad))
        .unwrap();
    assert!(
        activations[bad_at..].iter().any(|l| l.starts_with(&good)),
        "the good system is re-activated after the bad one: {activations:#?}"
    );
    let link = fleet.in_host("web2", "ip", &["-o", "link", "show", "eth0"]);
    assert!(
        link.stdout.contains("state UP"),
        "eth0 is up again: {link:?}"
    );

    let status = fleet.status();
    let web2 = &status["web2"];
    assert_eq!(web2["desired"]["generation"], 2);
    assert_eq!(web2["running"], good.as_str());
    let error = web2["last_error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "status says why: {web2:#}");
    let table = fleet.bento(&["status"]);
    assert_eq!(table.code, 3, "not every host is up to date: {table:#?}");
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("web2"))
        .unwrap();
    assert!(row.contains("rolled-back"), "{}", table.stdout);

    let report = fleet.final_reports("web2").pop().unwrap();
    assert_eq!(
        (report.generation, report.outcome),
        (2, Outcome::RolledBack)
    );
    assert!(
        report.log.contains(&bad) && report.log.contains(&good),
        "{}",
        report.log
    );

    // The bad generation is not tried again, and web1 never noticed: both agents make two
    // more attempts (the positive control), and activate nothing.
    let count = activations.len();
    wait_for_attempts(&fleet, &["web1", "web2"], 2).await;
    assert_eq!(fleet.host("web2").activations().len(), count);
    assert_eq!(fleet.host("web1").activations(), web1_before);
}

/// The cache's count of NAR streams in flight, or 0 when it does not answer.
fn nar_streams_in_flight(fleet: &Fleet) -> i64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/metrics", fleet.serve().cache)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("bento_cache_nar_streams_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_completes_after_serve_is_restarted_during_downloads() {
    let hosts = ["web1", "web2", "web3"];
    let Some(mut fleet) = converged("restart", &hosts, &[]).await else {
        return;
    };
    for h in hosts {
        fleet.configure(h, Spec::good(2).with_blob(24));
        // 24 MiB at 40 Mbit/s: about 5 s per download.
        fleet.host(h).throttle("40mbit");
    }
    fleet.deploy(&[]);

    let mut in_flight = 0;
    let downloading = wait_for(60, || {
        in_flight = nar_streams_in_flight(&fleet);
        in_flight >= 2
    })
    .await;
    assert!(
        downloading,
        "downloads never started\n{}",
        fleet.diagnostics()
    );
    fleet.kill_serve();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.start_serve(&[]).await;

    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;
    let mut cut = Vec::new();
    for h in hosts {
        let (generation, path) = fleet.released(h).unwrap();
        assert_eq!(generation, 2);
        assert_eq!(
            fleet.host(h).running().as_deref(),
            Some(path.as_str()),
            "{h}"
        );
        assert_eq!(
            activations_of(&fleet, h, &path).len(),
            1,
            "{h} activated its new system once"
        );
        let verify = fleet.in_host(h, "nix", &["store", "verify", "--no-trust", &path]);
        assert_eq!(verify.code, 0, "{h}'s copy is whole: {verify:?}");
        // Nix itself retries a broken download a few times, resuming it with a range
        // request ("retrying from offset N"): the cut shows either as a failed copy (the
        // agent's own retry then finished the job) or as Nix's retry warning in the log of
        // the attempt that applied.
        if fleet.final_reports(h).iter().any(|r| {
            r.generation == 2 && (r.outcome == Outcome::CopyFailed || r.log.contains("; retrying"))
        }) {
            cut.push(h);
        }
    }
    assert!(
        !cut.is_empty(),
        "{in_flight} downloads were in flight when serve was killed, yet no host saw its \
         download cut\n{}\n{:#?}",
        fleet.diagnostics(),
        hosts.map(|h| fleet.final_reports(h).pop().map(|r| r.log))
    );
}

/// `curl` from inside `host`: the HTTP status of `url` (with `user:password` when given).
fn http_status(fleet: &Fleet, host: &str, url: &str, auth: Option<&str>) -> String {
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    if let Some(a) = auth {
        args.extend(["-u", a]);
    }
    args.push(url);
    fleet.in_host(host, "curl", &args).stdout
}

/// The narinfo URL of a store path on the running cache.
fn narinfo_url(fleet: &Fleet, path: &str) -> String {
    let hash = &path.trim_start_matches("/nix/store/")[..32];
    format!("{}/{hash}.narinfo", fleet.serve().cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_removed_from_the_fleet_file_can_no_longer_fetch_and_the_others_are_unaffected() {
    let hosts = ["web1", "web2", "web3"];
    let Some(mut fleet) = converged("removed", &hosts, &[]).await else {
        return;
    };
    let (_, web3_path) = fleet.released("web3").unwrap();
    let key3 = fleet.ssh_key("web3");
    let fetched = fleet.dir().join("web3-release");
    let get = format!("get release {}\n", fetched.display());
    let before = fleet.stock_sftp("web3", "web3", &key3, &get);
    assert_eq!(before.code, 0, "web3 may fetch while listed: {before:?}");
    assert_eq!(
        http_status(&fleet, "web3", &narinfo_url(&fleet, &web3_path), None),
        "200"
    );

    fleet.remove_from_fleet_file("web3");
    // `bento serve` notices the saved file by itself.
    let refused = wait_for(30, || {
        fleet.stock_sftp("web3", "web3", &key3, &get).code != 0
    })
    .await;
    assert!(refused, "web3 can still log in\n{}", fleet.diagnostics());
    let after = fleet.stock_sftp("web3", "web3", &key3, &get);
    assert!(after.stderr.contains("Permission denied"), "{after:?}");
    let gone = wait_for(10, || {
        http_status(&fleet, "web3", &narinfo_url(&fleet, &web3_path), None) == "404"
    })
    .await;
    assert!(gone, "the cache still serves the removed host's closure");

    let web3_activations = fleet.host("web3").activations();
    fleet.configure("web1", Spec::good(2));
    fleet.configure("web2", Spec::good(2));
    fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&["web1", "web2"], "up-to-date"))
        .await;
    for h in ["web1", "web2"] {
        let (generation, path) = fleet.released(h).unwrap();
        assert_eq!(generation, 2);
        assert_eq!(fleet.host(h).running().as_deref(), Some(path.as_str()));
    }
    let states = fleet.states();
    assert_eq!(
        states.keys().collect::<Vec<_>>(),
        ["web1", "web2"],
        "status lists the fleet file's hosts"
    );
    assert_eq!(
        fleet.host("web3").running().as_deref(),
        Some(web3_path.as_str())
    );
    assert_eq!(fleet.host("web3").activations(), web3_activations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_asking_for_another_hosts_release_or_closure_is_refused() {
    let hosts = ["web1", "web2"];
    let Some(mut fleet) = Fleet::new("crosshost", &hosts) else {
        return;
    };
    fleet.start_serve(&["--host-tokens"]).await;
    fleet.deploy(&[]);
    let tokens = fleet.state().join("cache-tokens");
    let token_of = |h: &str| tokens.join(h);
    let made = wait_for(30, || hosts.iter().all(|h| token_of(h).exists())).await;
    assert!(made, "the cache made no tokens\n{}", fleet.diagnostics());
    let ip = fleet.net.server_ip();
    let mut netrc = BTreeMap::new();
    for h in hosts {
        let token = std::fs::read_to_string(token_of(h))
            .unwrap()
            .trim()
            .to_owned();
        let file = fleet.host(h).root.join("etc/netrc");
        std::fs::write(&file, format!("machine {ip} login {h} password {token}\n")).unwrap();
        netrc.insert(h, (file, token));
        fleet.start_agent(h, &format!("cache_netrc = \"{}\"", netrc[h].0.display()));
    }
    // With tokens on, each agent still gets its own closure.
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;
    let (_, web1_path) = fleet.released("web1").unwrap();
    let (_, web2_path) = fleet.released("web2").unwrap();
    let key1 = fleet.ssh_key("web1");
    let stolen = fleet.dir().join("stolen");

    // SFTP: web1's key cannot log in as web2, and web1's tree has no way to web2's.
    let as_web2 = fleet.stock_sftp(
        "web1",
        "web2",
        &key1,
        &format!("get release {}\n", stolen.display()),
    );
    assert_ne!(as_web2.code, 0, "{as_web2:?}");
    assert!(as_web2.stderr.contains("Permission denied"), "{as_web2:?}");
    for path in [
        "../web2/release",
        "/web2/release",
        "/../web2/release",
        "/../../web2/release",
    ] {
        let r = fleet.stock_sftp(
            "web1",
            "web1",
            &key1,
            &format!("get {path} {}\n", stolen.display()),
        );
        assert_ne!(r.code, 0, "web1 fetched {path}: {r:?}");
        assert!(!stolen.exists(), "{path} was written locally");
    }
    let listing = fleet.stock_sftp("web1", "web1", &key1, "ls -1 /\n");
    assert_eq!(listing.code, 0, "{listing:?}");
    assert!(!listing.stdout.contains("web2"), "{}", listing.stdout);

    // HTTP: web2's closure is absent for web1's token, present for web2's.
    let url = narinfo_url(&fleet, &web2_path);
    let web1_auth = format!("web1:{}", netrc["web1"].1);
    let web2_auth = format!("web2:{}", netrc["web2"].1);
    assert_eq!(http_status(&fleet, "web1", &url, Some(&web1_auth)), "404");
    assert_eq!(http_status(&fleet, "web1", &url, None), "401");
    assert_eq!(http_status(&fleet, "web1", &url, Some(&web2_auth)), "200");
    let copy = fleet.in_host(
        "web1",
        "nix",
        &[
            "copy",
            "--from",
            &fleet.serve().cache,
            "--option",
            "netrc-file",
            &netrc["web1"].0.to_string_lossy(),
            "--option",
            "trusted-public-keys",
            &fleet.fleet_key.public().to_string(),
            &web2_path,
        ],
    );
    assert_ne!(copy.code, 0, "web1 copied web2's closure: {copy:?}");
    let present = fleet.in_host("web1", "nix", &["path-info", &web2_path]);
    assert_ne!(present.code, 0, "web2's system is not in web1's store");

    // An agent on web1 claiming to be web2 is turned away at login; web1 is untouched.
    let impostor = fleet.agent_config(
        "web1",
        &format!(
            "host = \"web2\"\nstate_dir = \"{}\"\ncache_netrc = \"{}\"",
            fleet.host("web1").root.join("impostor-state").display(),
            netrc["web1"].0.display()
        ),
        "impostor.toml",
    );
    let before = fleet.host("web1").activations();
    let web2_reports = fleet.reports("web2").len();
    let ran = fleet.in_host(
        "web1",
        env!("CARGO_BIN_EXE_bento"),
        &["agent", "--once", "--config", &impostor.to_string_lossy()],
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("refused the key of host web2"),
        "the error says the login was refused: {}",
        ran.stderr
    );
    assert_eq!(fleet.host("web1").activations(), before);
    assert_eq!(
        fleet.host("web1").running().as_deref(),
        Some(web1_path.as_str())
    );
    assert_eq!(fleet.reports("web2").len(), web2_reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_logs_arrive_intact_and_status_shows_each_state() {
    let hosts = [
        "chatty",
        "failing",
        "silent",
        "undeployed",
        "distrustful",
        "cacheless",
    ];
    let Some(mut fleet) = Fleet::new("states", &hosts) else {
        return;
    };
    const LINES: u32 = 3000;
    fleet.configure("chatty", Spec::good(1).behaving(Behaviour::Chatty(LINES)));
    fleet.configure("failing", Spec::good(1).behaving(Behaviour::FailActivation));
    fleet.start_serve(&[]).await;
    fleet.deploy(&["chatty", "failing", "silent", "distrustful", "cacheless"]);
    fleet.start_agent("chatty", "");
    fleet.start_agent("failing", "");
    let stranger = bento::nix::keys::SecretKey::generate("bento-e2e-states").unwrap();
    fleet.start_agent(
        "distrustful",
        &format!("fleet_public_key = \"{}\"", stranger.public()),
    );
    // Nothing listens on port 9 of the server's address.
    fleet.start_agent(
        "cacheless",
        &format!("cache_url = \"http://{}:9\"", fleet.net.server_ip()),
    );

    let want = [
        ("chatty", "up-to-date"),
        ("failing", "activation-failed"),
        ("silent", "never-seen"),
        ("undeployed", "not-deployed"),
        ("distrustful", "refused"),
        ("cacheless", "copy-failed"),
    ];
    fleet.wait_for_states(CONVERGE_SECS, &want).await;
    let table = fleet.bento(&["status"]);
    assert_eq!(table.code, 3, "{table:#?}");
    for (host, state) in want {
        let row = table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{}", table.stdout));
        assert!(row.contains(state), "{host}: {row}");
    }

    // The chatty activation's every line arrived, in order, in the uploaded report.
    let report = fleet.final_reports("chatty").pop().unwrap();
    assert_eq!(report.outcome, Outcome::Applied);
    let mut lines = report
        .log
        .lines()
        .filter(|l| l.starts_with("activation line "));
    for i in 1..=LINES {
        assert_eq!(
            lines.next(),
            Some(format!("activation line {i} of {LINES}").as_str()),
            "line {i} of the activation output"
        );
    }
    assert_eq!(lines.next(), None);

    let status = fleet.status();
    let failing = fleet.final_reports("failing").pop().unwrap();
    assert_eq!(failing.outcome, Outcome::ActivationFailed);
    assert!(
        failing.log.contains("activation failed on purpose"),
        "the script's stderr is in the log: {}",
        failing.log
    );
    assert!(
        status["failing"]["last_error"].as_str().is_some(),
        "{:#}",
        status["failing"]
    );

    let refused = fleet.final_reports("distrustful").pop().unwrap();
    assert_eq!(refused.outcome, Outcome::Refused);
    let reason = refused.reason.unwrap_or_default();
    assert!(
        reason.contains("signature") || reason.contains("key"),
        "{reason}"
    );
    assert!(fleet.host("distrustful").activations().is_empty());

    let copy = fleet.final_reports("cacheless").pop().unwrap();
    assert_eq!(copy.outcome, Outcome::CopyFailed);
    assert!(
        copy.log.contains(":9"),
        "the log names the cache: {}",
        copy.log
    );
    assert!(fleet.host("cacheless").activations().is_empty());

    assert!(status["silent"]["last_seen"].is_null());
    assert!(status["undeployed"]["desired"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_reach_only_their_host_outside_the_store_and_tampering_is_refused() {
    let hosts = ["web1", "web2"];
    let Some(mut fleet) = Fleet::new("files", &hosts) else {
        return;
    };
    fleet.give_file("web1", "db-password", "s3cret-one\n", 0o400);
    fleet.give_file("web1", "ca.pem", "not really a CA\n", 0o444);
    fleet.start_serve(&[]).await;
    fleet.start_agents("");
    fleet.deploy(&[]);
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;

    // Installed on web1, in its own /run (the agent's files_dir), with the modes asked for.
    let dir = fleet.host("web1").root.join("run/bento/files");
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::read_to_string(dir.join("db-password")).unwrap(),
        "s3cret-one\n"
    );
    assert_eq!((mode("db-password"), mode("ca.pem")), (0o400, 0o444));
    // Never through the host's Nix store, which every local user can read.
    let grep = std::process::Command::new("grep")
        .args(["-rlF", "s3cret-one"])
        .arg(fleet.host("web1").root.join("nix/store"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
    // web2 gets nothing, and cannot reach web1's files.
    assert!(!fleet.host("web2").root.join("run/bento/files").exists());
    let stolen = fleet.dir().join("stolen");
    for path in ["/../web1/files/manifest.json", "/files/manifest.json"] {
        let r = fleet.stock_sftp(
            "web2",
            "web2",
            &fleet.ssh_key("web2"),
            &format!("get {path} {}\n", stolen.display()),
        );
        assert_ne!(r.code, 0, "web2 fetched {path}: {r:?}");
        assert!(!stolen.exists());
    }

    // A changed secret alone is a new generation for web1 only; the system is not
    // re-activated, the file is replaced.
    let activations = fleet.host("web1").activations();
    fleet.give_file("web1", "db-password", "s3cret-two\n", 0o400);
    let deployed = fleet.deploy(&[]);
    assert!(deployed.stdout.contains("files changed"), "{deployed:#?}");
    assert_eq!(fleet.released("web1").unwrap().0, 2);
    assert_eq!(fleet.released("web2").unwrap().0, 1);
    let replaced = wait_for(CONVERGE_SECS, || {
        std::fs::read_to_string(dir.join("db-password"))
            .ok()
            .as_deref()
            == Some("s3cret-two\n")
    })
    .await;
    assert!(replaced, "{}", fleet.diagnostics());
    fleet
        .wait_for_states(CONVERGE_SECS, &all(&hosts, "up-to-date"))
        .await;
    assert_eq!(fleet.host("web1").activations(), activations);

    // A blob altered on the server (same length, other bytes) is refused; the host keeps
    // the file it had.
    let blobs = fleet.state().join("publish/web1/files/blobs");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let path = e.unwrap().path();
        if std::fs::read_to_string(&path).unwrap() == "s3cret-two\n" {
            std::fs::write(&path, "s3cret-bad\n").unwrap();
        }
    }
    let forced = fleet.bento(&["deploy", "--force", "web1"]);
    assert_eq!(forced.code, 0, "{forced:#?}");
    fleet
        .wait_for_states(CONVERGE_SECS, &[("web1", "refused")])
        .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("db-password")).unwrap(),
        "s3cret-two\n"
    );
    let refused = fleet.final_reports("web1").pop().unwrap();
    let reason = refused.reason.unwrap_or_default();
    assert!(
        reason.contains("db-password") && reason.contains("hashes to"),
        "{reason}"
    );
}
