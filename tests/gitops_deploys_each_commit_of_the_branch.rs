//! GitOps in the fleet in a box: `bento serve --follow` fetches the branch of `[fleet] git`
//! (a local repository), builds each new commit and deploys it; `POST /hooks/git` with the
//! shared secret makes it fetch at once, a bad secret is refused; a commit that breaks one
//! host deploys the others; releases, history and `bento status` record the commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use bento::gitops::FollowRecord;
use harness::fleet::Fleet;
use harness::http::http;
use harness::ran::wait_for;
use harness::repo::{Builds, Spec};

const CONVERGE_SECS: u64 = 180;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Commits everything in the fleet's repository on `main`; returns the commit id.
fn commit(fleet: &Fleet, message: &str) -> String {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args)
            .current_dir(fleet.repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["symbolic-ref", "HEAD", "refs/heads/main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", message]);
    git(&["rev-parse", "HEAD"])
}

fn follow_record(fleet: &Fleet) -> Option<FollowRecord> {
    bento::gitops::record::load(&fleet.state_dir())
}

/// Waits until each host of `want` has a release built from `commit` and is up to date.
async fn wait_deployed(fleet: &Fleet, want: &[&str], commit: &str) {
    let done = wait_for(CONVERGE_SECS, || {
        let status = fleet.status();
        want.iter().all(|h| {
            let s = &status[*h];
            s["state"] == "up-to-date" && s["desired"]["commit"] == commit[..8]
        })
    })
    .await;
    assert!(
        done,
        "{want:?} never ran commit {commit}: {:#?}\n{}",
        follow_record(fleet),
        fleet.diagnostics()
    );
}

async fn hook(fleet: &Fleet, secret: &str) -> u16 {
    let url = fleet
        .serve()
        .hook
        .clone()
        .expect("serve prints its hook URL");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/hooks/git")
        .parse()
        .unwrap();
    let auth = format!("Bearer {secret}");
    http(addr, "POST", "/hooks/git", &[("Authorization", &auth)])
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_follows_the_branch_and_a_broken_host_does_not_stop_the_others() {
    let hosts = ["g1", "g2", "g3"];
    let Some(mut fleet) = Fleet::new("gitops", &hosts) else {
        return;
    };
    let secret_file = fleet.dir().join("hook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    // A long interval: after the first fetch, only the hook makes the server fetch again.
    let line = format!(
        "git = {{ url = \"{}\", branch = \"main\", interval_secs = 3600, hook_secret_file = \"{}\" }}",
        fleet.repo().display(),
        secret_file.display()
    );
    fleet.add_fleet_option(&line);
    let first = commit(&fleet, "one");
    let ip = fleet.net.server_ip();
    let hook_listen = format!("{ip}:0");
    fleet
        .start_serve(&["--follow", "--hook-listen", &hook_listen])
        .await;
    fleet.start_agents("");

    // The first commit is deployed without any `bento deploy`.
    wait_deployed(&fleet, &hosts, &first).await;
    for h in hosts {
        let history = fleet.history(h);
        assert_eq!(history.len(), 1, "{h}");
        assert_eq!(history[0].commit.as_deref(), Some(first.as_str()), "{h}");
        assert!(!history[0].dirty, "{h}");
    }

    // A second commit; a hook with a bad secret is refused and fetches nothing.
    for h in hosts {
        fleet.set_version(h, 2);
    }
    let second = commit(&fleet, "two");
    assert_eq!(hook(&fleet, "not-the-secret-0123456789").await, 401);
    assert_eq!(hook(&fleet, &SECRET[1..]).await, 401);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let record = follow_record(&fleet).unwrap();
    assert_eq!(record.head.as_deref(), Some(first.as_str()), "{record:#?}");
    // The positive control: with the secret, the server fetches and deploys the commit.
    assert_eq!(hook(&fleet, SECRET).await, 202);
    wait_deployed(&fleet, &hosts, &second).await;
    for h in hosts {
        assert_eq!(fleet.released(h).unwrap().0, 2, "{h}");
    }
    let table = fleet.bento(&["status"]);
    assert!(
        table.stdout.contains(&format!("@{}", &second[..8])),
        "{}",
        table.stdout
    );

    // A commit that breaks g3's build: g1 and g2 get it, g3 keeps the second commit.
    fleet.set_version("g1", 3);
    fleet.set_version("g2", 3);
    fleet.configure("g3", Spec::good(3).building(Builds::BuildFails));
    let third = commit(&fleet, "three breaks g3");
    assert_eq!(hook(&fleet, SECRET).await, 202);
    wait_deployed(&fleet, &["g1", "g2"], &third).await;
    let record = follow_record(&fleet).unwrap();
    assert_eq!(record.deployed.as_deref(), Some(third.as_str()));
    assert!(
        record
            .failures
            .get("g3")
            .is_some_and(|f| f.contains("build")),
        "{record:#?}"
    );
    let status = fleet.status();
    assert_eq!(status["g3"]["state"], "up-to-date");
    assert_eq!(status["g3"]["desired"]["commit"], second[..8]);
    assert_eq!(fleet.released("g3").unwrap().0, 2);
}
