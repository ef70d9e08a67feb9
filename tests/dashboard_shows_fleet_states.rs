//! The web dashboard of `bento serve`, loaded in headless Chromium (Debian's `chromium`):
//! the fleet table shows every host's state — all twelve states, from report files written
//! by this test with `Report::to_bytes()` exactly as agents upload them — after its script
//! has fetched `/api/status`; a host page shows the release history and report logs, with
//! agent-written markup escaped (the poison string never becomes an element). The cache
//! still answers beside it (`/nix-cache-info`), and `/metrics` carries the fleet gauges.
//! Screenshots are saved under `target/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::process::Stdio;

use bento::release::Release;
use bento::report::{Outcome, Report};
use harness::browser::{dom, screenshot};
use harness::http::{curl, curl_status};
use harness::ran::KillOnDrop;
use harness::repo::Repo;
use harness::serve::Serve;

/// The newest report of a host: outcome, generation, seconds ago.
type Newest = Option<(Outcome, u64, u64)>;

/// (host, its newest report, the state shown)
const CASES: [(&str, Newest, &str); 12] = [
    ("h-ok", Some((Outcome::Applied, 2, 10)), "up-to-date"),
    ("h-pending", Some((Outcome::Applied, 1, 10)), "pending"),
    (
        "h-deploying",
        Some((Outcome::Deploying, 2, 10)),
        "deploying",
    ),
    (
        "h-unconfirmed",
        Some((Outcome::Unconfirmed, 2, 10)),
        "unconfirmed",
    ),
    (
        "h-actfail",
        Some((Outcome::ActivationFailed, 2, 10)),
        "activation-failed",
    ),
    (
        "h-rolledback",
        Some((Outcome::RolledBack, 2, 10)),
        "rolled-back",
    ),
    ("h-retry", Some((Outcome::RetryLater, 2, 10)), "retry-later"),
    (
        "h-copyfail",
        Some((Outcome::CopyFailed, 2, 10)),
        "copy-failed",
    ),
    ("h-refused", Some((Outcome::Refused, 2, 10)), "refused"),
    ("h-stale", Some((Outcome::Applied, 2, 3600)), "stale"),
    ("h-never", None, "never-seen"),
    ("h-undeployed", None, "not-deployed"),
];

const POISON: &str = "<img src=x id=poison-from-agent>";

fn now() -> u64 {
    bento::clock::unix_now()
}

fn path_of(host: &str, generation: u64) -> String {
    // A syntactically valid store path per host and generation (it need not exist).
    let hash: String = format!("{host}{generation}")
        .bytes()
        .map(|b| b"0123456789abcdfghijklmnpqrsvwxyz"[usize::from(b) % 32] as char)
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    format!("/nix/store/{hash}-nixos-system-{host}-{generation}")
}

/// A fleet of the [`CASES`] hosts, with releases, histories and reports on disk that give
/// each its state.
fn fleet_of_every_state() -> Repo {
    let hosts: Vec<&str> = CASES.iter().map(|(h, _, _)| *h).collect();
    let fleet = Repo::new("dashboard", &hosts);
    write_fleet(&fleet);
    fleet
}

fn write_fleet(fleet: &Repo) {
    let state = fleet.state_dir();
    let key = &fleet.fleet_key;
    let t = now();
    for (host, report, _) in CASES {
        if host == "h-undeployed" {
            continue;
        }
        std::fs::create_dir_all(state.publish_dir(host)).unwrap();
        let release = Release::sign(host, 2, &path_of(host, 2), t - 100, key).unwrap();
        std::fs::write(state.release(host), release.to_bytes()).unwrap();
        std::fs::create_dir_all(state.history(host).parent().unwrap()).unwrap();
        let history: String = (1..=2)
            .map(|g| {
                format!(
                    "{{\"format\":1,\"generation\":{g},\"store_path\":\"{}\",\"created\":{}}}\n",
                    path_of(host, g),
                    t - 1000 + g * 100
                )
            })
            .collect();
        std::fs::write(state.history(host), history).unwrap();
        let Some((outcome, generation, ago)) = report else {
            continue;
        };
        let reports = state.reports_dir(host);
        std::fs::create_dir_all(&reports).unwrap();
        let finished_ms = (t - ago) * 1000;
        let r = Report {
            format: bento::report::FORMAT,
            host: host.into(),
            generation,
            wanted: Some(path_of(host, generation)),
            running: Some(path_of(
                host,
                if outcome.is_success() { generation } else { 1 },
            )),
            outcome,
            reason: (!outcome.is_success() && !outcome.is_interim())
                .then(|| format!("{} on purpose {POISON}", outcome.as_str())),
            started_ms: finished_ms - 2000,
            finished_ms,
            timings: Default::default(),
            log: format!("fetching release\ncopying closure\nlog line of {host} {POISON}\n"),
        };
        std::fs::write(reports.join(r.file_name()), r.to_bytes()).unwrap();
    }
}

/// The `<td class="state ...">` texts of the fleet table, by host, from a dumped DOM.
fn states_in(dom: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for row in dom.split("<tr data-host=\"").skip(1) {
        let host = row.split('"').next().unwrap().to_owned();
        let state = row
            .split("class=\"state s-")
            .nth(1)
            .and_then(|s| s.split('>').nth(1))
            .and_then(|s| s.split('<').next())
            .unwrap_or("")
            .to_owned();
        out.push((host, state));
    }
    out
}

#[test]
fn dashboard_shows_every_state_in_a_real_browser() {
    let fleet = fleet_of_every_state();

    let server = Serve::start_with_dashboard(&fleet.fleet_file(), &fleet.dir().join("serve.log"));
    let base = server.dashboard.clone().expect("a dashboard URL");
    let cache = server.cache.clone();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    // The dashboard is not on the port the hosts reach.
    assert_ne!(base, cache);
    for page in ["/", "/api/status", "/hosts/h-ok"] {
        assert_eq!(curl_status(&format!("{cache}{page}")), 404, "{cache}{page}");
    }

    // The fleet table, as the browser shows it after the script ran.
    let dom = dom(&format!("{base}/"));
    let mut got = states_in(&dom);
    got.sort();
    let mut want: Vec<(String, String)> = CASES
        .iter()
        .map(|(h, _, s)| ((*h).to_owned(), (*s).to_owned()))
        .collect();
    want.sort();
    assert_eq!(got, want, "{dom}");
    assert!(
        dom.contains("updated "),
        "the script refreshed the table: {dom}"
    );
    assert!(!dom.contains("id=\"poison-from-agent\""), "{dom}");
    assert!(
        dom.contains("&lt;img src=x"),
        "the reason is shown as text: {dom}"
    );
    let shot = screenshot(&format!("{base}/"), "dashboard-fleet.png");
    eprintln!("dashboard screenshot: {}", shot.display());

    // A host page: history and the report with its log, escaped.
    let dom = harness::browser::dom(&format!("{base}/hosts/h-rolledback"));
    assert!(dom.contains("rolled-back"), "{dom}");
    assert!(dom.contains(&path_of("h-rolledback", 1)), "history: {dom}");
    assert!(dom.contains(&path_of("h-rolledback", 2)), "history: {dom}");
    assert!(
        dom.contains("log line of h-rolledback"),
        "report log: {dom}"
    );
    assert!(!dom.contains("id=\"poison-from-agent\""), "{dom}");
    let shot = screenshot(&format!("{base}/hosts/h-rolledback"), "dashboard-host.png");
    eprintln!("host page screenshot: {}", shot.display());

    // The JSON API; the cache and its fleet gauges on the cache's own port.
    let api: serde_json::Value =
        serde_json::from_str(&curl(&format!("{base}/api/status"))).unwrap();
    assert_eq!(api["schema"], 1);
    assert_eq!(api["hosts"].as_array().unwrap().len(), CASES.len());
    assert!(curl(&format!("{cache}/nix-cache-info")).contains("StoreDir: /nix/store"));
    let metrics = curl(&format!("{cache}/metrics"));
    assert!(
        metrics.contains("bento_hosts{state=\"rolled-back\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bento_host_desired_generation{host=\"h-ok\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bento_host_current_generation{host=\"h-ok\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bento_host_seconds_since_report{host=\"h-stale\"} 36"),
        "{metrics}"
    );
    assert_eq!(curl_status(&format!("{base}/hosts/nobody")), 404);
}

#[test]
fn status_cli_prints_the_same_states_and_exits_by_them() {
    let fleet = fleet_of_every_state();
    let run = fleet.bento(&["status", "--json"]);
    assert_eq!(run.code, 3, "{}", run.both());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["schema"], 1);
    for (host, _, state) in CASES {
        let h = json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap();
        assert_eq!(h["state"], state, "{host}");
    }
    let run = fleet.bento(&["status"]);
    assert_eq!(run.code, 3, "{}", run.both());
    assert!(
        run.stdout.contains("1 of 12 hosts up to date"),
        "{}",
        run.stdout
    );
    eprintln!("{}", run.stdout);
    assert!(
        run.stdout.contains("activation-failed on purpose"),
        "{}",
        run.stdout
    );
    // Only the up-to-date host selected: exit 0.
    let run = fleet.bento(&["status", "h-ok"]);
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(run.stdout.contains("h-ok"), "{}", run.stdout);
    assert!(!run.stdout.contains("h-stale"), "{}", run.stdout);
}

#[test]
fn status_watch_redraws_when_a_report_arrives() {
    let fleet = fleet_of_every_state();
    let mut child = fleet.command(&["status", "--watch", "h-pending"]);
    let mut child = child.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let _watch = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) => seen.push_str(&more),
                Err(_) => panic!("no {needle:?} in:\n{seen}"),
            }
        }
        seen.clear();
    };
    wait_for("pending");
    // The host reports generation 2 applied: the next frame says so.
    let t = now();
    let r = Report {
        format: bento::report::FORMAT,
        host: "h-pending".into(),
        generation: 2,
        wanted: Some(path_of("h-pending", 2)),
        running: Some(path_of("h-pending", 2)),
        outcome: Outcome::Applied,
        reason: None,
        started_ms: t * 1000,
        finished_ms: t * 1000,
        timings: Default::default(),
        log: String::new(),
    };
    let dir = fleet.state_dir().reports_dir("h-pending");
    std::fs::write(dir.join(r.file_name()), r.to_bytes()).unwrap();
    wait_for("up-to-date");
}
