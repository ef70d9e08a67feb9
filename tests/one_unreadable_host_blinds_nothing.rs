//! A fleet of ten hosts served by a real `bento serve`: one host's release is torn (cut in
//! the middle, as a crashed copy leaves it) and another host's newest report is a directory
//! where a file should be (what no permission bit can show a root-run test). `bento status`
//! (table and `--json`), the dashboard (its page and `/api/status`) and the `/metrics` fleet
//! gauges all show the nine others as usual and the torn one as `unreadable` with the reason;
//! the host with the unreadable report is shown from its readable one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::release::Release;
use bento::report::{Outcome, Report};
use harness::http::curl;
use harness::repo::Repo;
use harness::serve::Serve;

const HOSTS: [&str; 10] = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"];
const TORN: &str = "h3";
const BAD_REPORT: &str = "h5";

fn path_of(host: &str) -> String {
    format!(
        "/nix/store/{:0>32}-nixos-system-{host}",
        host.trim_start_matches('h')
    )
}

/// Every host released at generation 2 and reported applied; then `TORN`'s release cut in
/// half and a directory named as a newer report of `BAD_REPORT`.
fn write_fleet(fleet: &Repo) {
    let state = fleet.state_dir();
    let now = bento::clock::unix_now();
    for host in HOSTS {
        std::fs::create_dir_all(state.reports_dir(host)).unwrap();
        let release = Release::sign(host, 2, &path_of(host), now - 100, &fleet.fleet_key).unwrap();
        std::fs::write(state.release(host), release.to_bytes()).unwrap();
        let report = harness::servers::applied_report(host, 2, &path_of(host), now);
        std::fs::write(
            state.reports_dir(host).join(report.file_name()),
            report.to_bytes(),
        )
        .unwrap();
        if host == BAD_REPORT {
            let newer = Report {
                generation: 2,
                outcome: Outcome::ActivationFailed,
                started_ms: (now - 10) * 1000,
                finished_ms: (now - 5) * 1000,
                ..report
            };
            std::fs::create_dir_all(state.reports_dir(host).join(newer.file_name())).unwrap();
        }
    }
    let whole = std::fs::read(state.release(TORN)).unwrap();
    std::fs::write(state.release(TORN), &whole[..whole.len() / 2]).unwrap();
}

/// (host, state) of `bento status --json` or `/api/status`, and the torn host's error.
fn states(json: &str) -> (Vec<(String, String)>, String) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let hosts = v["hosts"].as_array().unwrap_or_else(|| panic!("{json}"));
    let mut states: Vec<(String, String)> = hosts
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    states.sort();
    let error = hosts
        .iter()
        .find(|h| h["host"] == TORN)
        .and_then(|h| h["last_error"].as_str())
        .unwrap_or("")
        .to_owned();
    (states, error)
}

fn want() -> Vec<(String, String)> {
    HOSTS
        .iter()
        .map(|h| {
            let state = if *h == TORN {
                "unreadable"
            } else {
                "up-to-date"
            };
            ((*h).to_owned(), state.to_owned())
        })
        .collect()
}

fn gauge(metrics: &str, state: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("bento_hosts{{state=\"{state}\"}} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn nine_hosts_shown_as_usual_and_the_torn_one_unreadable_everywhere() {
    let fleet = Repo::new("unreadable", &HOSTS);
    write_fleet(&fleet);
    let server = Serve::start_with_dashboard(&fleet.fleet_file(), &fleet.dir().join("serve.log"));

    // bento status, as JSON and as the table an operator reads.
    let json = fleet.bento(&["status", "--json"]);
    let (got, error) = states(&json.stdout);
    assert_eq!(got, want(), "{}", json.both());
    assert!(
        error.contains("release") && error.contains(TORN),
        "the reason names the host's release: {error}"
    );
    let table = fleet.bento(&["status"]);
    let line_of = |host: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))
            .unwrap_or_else(|| panic!("{host} missing: {}", table.both()))
            .to_owned()
    };
    assert!(line_of(TORN).contains("unreadable"), "{}", table.stdout);
    for host in HOSTS.iter().filter(|h| **h != TORN) {
        assert!(line_of(host).contains("up-to-date"), "{}", table.stdout);
    }

    // The dashboard: its JSON and its page as served (before any script runs).
    let base = server.dashboard.clone().expect("a dashboard URL");
    let (got, web_error) = states(&curl(&format!("{base}/api/status")));
    assert_eq!(got, want());
    assert_eq!(web_error, error);
    let page = curl(&format!("{base}/"));
    for host in HOSTS {
        assert!(page.contains(&format!("data-host=\"{host}\"")), "{page}");
    }
    let torn_row = page
        .split(&format!("data-host=\"{TORN}\""))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap();
    assert!(torn_row.contains("unreadable"), "{torn_row}");

    // /metrics: the fleet gauges count nine up to date and one unreadable.
    let metrics = curl(&format!("{}/metrics", server.cache));
    assert_eq!(gauge(&metrics, "unreadable"), Some(1.0), "{metrics}");
    assert_eq!(gauge(&metrics, "up-to-date"), Some(9.0), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "bento_host_desired_generation{{host=\"{BAD_REPORT}\"}} 2"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&format!("bento_host_desired_generation{{host=\"{TORN}\"}}")),
        "{metrics}"
    );
}
