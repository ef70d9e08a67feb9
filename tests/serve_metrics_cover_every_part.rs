//! `bento serve`'s `/metrics`, scraped from the running server and parsed line by line as
//! the Prometheus text format: every family that `docs/cache.md`, `docs/sftp.md` and
//! `docs/status.md` list is there, each sample is typed, and the SFTP counters move when a
//! host fails to log in (and, as the positive control, when one logs in). A second test
//! provokes each SFTP counter a client can reach (policy refusals, reports taken and too
//! large, bytes both ways, the per-address limit on connections not logged in, the
//! authentication timeout, the request-rate flood, the per-host session limit) and checks
//! that each one moved on `/metrics`, the one registry of the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;

use bento::release::Release;

use harness::http::curl as get;
use harness::init::Scaffold;
use harness::keys::ssh_keygen_of;

/// One sample: its name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: the declared type of each family and every sample.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the Prometheus text format (0.0.4), refusing anything out of shape.
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge"].contains(&kind),
                    "unexpected type: {line}"
                );
                let before = scrape.types.insert(name.to_owned(), kind.to_owned());
                assert!(before.is_none(), "{name} typed twice");
                continue;
            }
            if line.starts_with("# HELP ") || line.is_empty() {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "name of {line}"
            );
            assert!(
                scrape.types.contains_key(name),
                "{name} has no TYPE line before its sample"
            );
            scrape.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        scrape
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// `k="v",k2="v2"` with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '\\' => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

/// The sample names a doc lists in the code block of its `## Metrics` section (the agent's
/// textfile, which `docs/status.md` describes after it, is not on `/metrics`).
fn documented(doc: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(format!("{}/docs/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let section = text
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let names: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("    bento_"))
        .map(|l| {
            let first = l.split_whitespace().next().unwrap();
            first.split('{').next().unwrap().to_owned()
        })
        .collect();
    assert!(names.len() >= 4, "{doc} lists {names:?}");
    names
}

/// A release of web1 (generation 3) and its agent's report that it applied it, so that the
/// per-host fleet gauges have values.
fn publish_and_report(repo: &Scaffold) {
    let path = "/nix/store/00000000000000000000000000000000-nixos-system-web1";
    let now = bento::clock::unix_now();
    let publish = repo.state.join("publish/web1");
    std::fs::create_dir_all(publish.join("reports")).unwrap();
    let release = Release::sign("web1", 3, path, now - 60, &repo.fleet_secret_key()).unwrap();
    std::fs::write(publish.join("release"), release.to_bytes()).unwrap();
    let report = harness::servers::applied_report("web1", 3, path, now);
    std::fs::write(
        publish.join("reports").join(report.file_name()),
        report.to_bytes(),
    )
    .unwrap();
}

#[test]
fn metrics_list_every_documented_family_and_count_a_failed_login() {
    let dir = tempfile::tempdir().unwrap();
    let (web1_key, web1_public) = ssh_keygen_of(dir.path(), "web1", "ed25519", None);
    let (stranger_key, _) = ssh_keygen_of(dir.path(), "stranger", "ed25519", None);
    let repo = Scaffold::init(dir.path(), "web1", &web1_public);
    publish_and_report(&repo);
    let server = repo.serve(dir.path(), false).unwrap();
    let metrics = format!("{}/metrics", server.cache);

    // A first scrape, so that the requests family has a sample in the second.
    get(&metrics);
    let before = Scrape::parse(&get(&metrics));
    let mut missing = Vec::new();
    for doc in ["cache.md", "sftp.md", "status.md"] {
        for name in documented(doc) {
            if !before.samples.iter().any(|s| s.name == name) {
                missing.push(format!("{name} ({doc})"));
            }
        }
    }
    assert!(missing.is_empty(), "not on /metrics: {missing:?}");
    assert_eq!(
        before.value(
            "bento_cache_requests_total",
            &[("endpoint", "metrics"), ("status", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        before.value("bento_hosts", &[("state", "up-to-date")]),
        Some(1.0)
    );
    assert_eq!(
        before.value("bento_host_current_generation", &[("host", "web1")]),
        Some(3.0)
    );
    assert_eq!(
        before.value(
            "bento_sftp_limits_hit_total",
            &[("limit", "max_sessions_per_host")]
        ),
        Some(0.0)
    );

    // A stranger's key, offered as web1: refused, and counted.
    let refused = server.stock_sftp(dir.path(), &[], "web1", &stranger_key, "ls /\n");
    assert!(!refused.success(), "a stranger logged in");
    let after_failure = Scrape::parse(&get(&metrics));
    let failures = |s: &Scrape| s.value("bento_sftp_auth_failures_total", &[]).unwrap();
    let successes = |s: &Scrape| s.value("bento_sftp_auth_successes_total", &[]).unwrap();
    let accepted = |s: &Scrape| {
        s.value("bento_sftp_connections_accepted_total", &[])
            .unwrap()
    };
    assert!(
        failures(&after_failure) >= failures(&before) + 1.0,
        "auth failures {} -> {}",
        failures(&before),
        failures(&after_failure)
    );
    assert_eq!(accepted(&after_failure), accepted(&before) + 1.0);
    assert_eq!(successes(&after_failure), successes(&before));

    // Positive control: web1's own key logs in, and that is counted as a success.
    let login = server.stock_sftp(dir.path(), &[], "web1", &web1_key, "ls /\n");
    assert!(login.success(), "{}", login.both());
    let after_login = Scrape::parse(&get(&metrics));
    assert_eq!(successes(&after_login), successes(&before) + 1.0);
    assert!(after_login.value("bento_sftp_requests_total", &[]).unwrap() > 0.0);
}

/// Holds stock `sftp` sessions of a host open (their batch waits on stdin) until dropped.
struct HeldSessions(Vec<std::process::Child>);

impl Drop for HeldSessions {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn every_sftp_counter_moves_when_provoked() {
    use std::io::Read as _;
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let (web1_key, web1_public) = ssh_keygen_of(dir.path(), "web1", "ed25519", None);
    let repo = Scaffold::init(dir.path(), "web1", &web1_public);
    publish_and_report(&repo);
    let server = repo.serve(dir.path(), false).unwrap();
    let metrics = format!("{}/metrics", server.cache);
    let scrape = || Scrape::parse(&get(&metrics));
    let value = |s: &Scrape, name: &str| s.value(name, &[]).unwrap_or_else(|| panic!("{name}"));
    let limit = |s: &Scrape, l: &str| {
        s.value("bento_sftp_limits_hit_total", &[("limit", l)])
            .unwrap_or_else(|| panic!("{l}"))
    };
    let before = scrape();

    // One session: reads the release, is refused a removal, uploads a report, and is
    // refused one over the 4 MiB cap.
    let report = dir.path().join("report.json");
    std::fs::write(&report, b"{\"not\":\"checked by the server\"}\n").unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b'x'; 5 << 20]).unwrap();
    let ran = server.stock_sftp(
        dir.path(),
        &[],
        "web1",
        &web1_key,
        &format!(
            "get /release {}\n-rm /release\nput {} /reports/provoked-1.json\n-put {} /reports/provoked-2.json\n",
            dir.path().join("release").display(),
            report.display(),
            huge.display()
        ),
    );
    assert!(ran.success(), "{}", ran.both());
    let after = scrape();
    for name in [
        "bento_sftp_auth_successes_total",
        "bento_sftp_requests_total",
        "bento_sftp_requests_refused_total",
        "bento_sftp_bytes_sent_total",
        "bento_sftp_bytes_received_total",
        "bento_sftp_reports_received_total",
        "bento_sftp_reports_too_large_total",
        "bento_sftp_connections_accepted_total",
    ] {
        assert!(
            value(&after, name) > value(&before, name),
            "{name} did not move: {} -> {}",
            value(&before, name),
            value(&after, name)
        );
    }

    // 40 connections from one address that never log in: the 33rd on are refused at once
    // (max_unauthenticated_per_ip 32); the others stay open, counted, until the 20 s
    // authentication timeout closes them.
    let (ip, port) = server.sftp.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect((ip, port)).unwrap())
        .collect();
    let start = Instant::now();
    let mut held = scrape();
    while limit(&held, "max_unauthenticated_per_ip")
        < limit(&before, "max_unauthenticated_per_ip") + 8.0
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
        held = scrape();
    }
    assert_eq!(
        limit(&held, "max_unauthenticated_per_ip"),
        limit(&before, "max_unauthenticated_per_ip") + 8.0
    );
    assert!(
        value(&held, "bento_sftp_connections_refused_total")
            >= value(&before, "bento_sftp_connections_refused_total") + 8.0
    );
    assert!(value(&held, "bento_sftp_connections_open") >= 32.0);
    for mut conn in silent {
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut buf = [0u8; 4096];
        // The server's banner (not for the refused ones), then the close.
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    }
    let timed_out = scrape();
    assert!(
        value(&timed_out, "bento_sftp_auth_timeouts_total")
            >= value(&before, "bento_sftp_auth_timeouts_total") + 32.0,
        "auth timeouts: {}",
        value(&timed_out, "bento_sftp_auth_timeouts_total")
    );

    // The per-host session limit (4): four sessions held open, a fifth refused.
    let (ip, port) = server.sftp.rsplit_once(':').unwrap();
    let known = server.known_hosts(dir.path());
    let mut sessions = HeldSessions(Vec::new());
    for _ in 0..4 {
        sessions.0.push(
            Command::new("sftp")
                .args(harness::servers::openssh_options(&web1_key, &known))
                .args(["-P", port])
                .arg(format!("web1@{ip}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let start = Instant::now();
    while value(&scrape(), "bento_sftp_sessions_open") < 4.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "4 sessions never opened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fifth = server.stock_sftp(dir.path(), &[], "web1", &web1_key, "ls /\n");
    assert!(!fifth.success(), "a fifth session of web1 opened");
    let limited = scrape();
    assert!(limit(&limited, "max_sessions_per_host") > limit(&before, "max_sessions_per_host"));
    drop(sessions);
    let start = Instant::now();
    while value(&scrape(), "bento_sftp_sessions_open") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the held sessions never closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A flood: far more requests than the bucket holds (burst 1000, 200/s), as fast as the
    // client goes; the session is cut, and counted.
    let flood = "ls /\n".repeat(3000);
    let flooded = server.stock_sftp(dir.path(), &[], "web1", &web1_key, &flood);
    assert!(!flooded.success(), "3000 listings in a row were allowed");
    let cut = scrape();
    assert!(
        value(&cut, "bento_sftp_flood_disconnects_total")
            > value(&before, "bento_sftp_flood_disconnects_total")
    );
    assert!(limit(&cut, "request_rate") > limit(&before, "request_rate"));
}
