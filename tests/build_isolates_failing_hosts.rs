//! `bento build` over 8 hosts where one fails evaluation and one fails its build: the other
//! six still build, get a GC root and a build record, and the summary and exit status name
//! exactly the two that failed, each with its phase and Nix's own error text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::repo::{Builds, Repo, Spec, row};

const OK: [&str; 6] = ["db1", "db2", "web1", "web2", "web3", "web4"];

/// Why these tests need root.
const NEEDS: &str = "the machine's Nix store, which `bento build` builds into";

fn eight_hosts() -> Repo {
    let mut hosts: Vec<&str> = OK.to_vec();
    hosts.extend(["broken-eval", "broken-build"]);
    let mut fleet = Repo::new("build", &hosts);
    fleet.configure("broken-eval", Spec::good(1).building(Builds::EvalFails));
    fleet.configure("broken-build", Spec::good(1).building(Builds::BuildFails));
    fleet
}

#[test]
fn six_hosts_build_and_the_two_failures_are_named_with_their_reason() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = eight_hosts();
    let run = fleet.bento(&["build", "--jobs", "4"]);
    assert!(!run.success(), "{}", run.both());
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(
        run.stderr
            .contains("2 of 8 hosts failed: broken-build (build), broken-eval (evaluation)"),
        "{}",
        run.both()
    );

    let eval_row = row(&run.stdout, "broken-eval");
    assert!(eval_row.contains("FAILED (evaluation)"), "{}", run.both());
    assert!(
        eval_row.contains("deliberate evaluation failure of broken-eval"),
        "{}",
        run.both()
    );
    let build_row_at = run.stdout.find("broken-build").unwrap();
    let build_rows = &run.stdout[build_row_at..];
    assert!(
        row(build_rows, "broken-build").contains("FAILED (build)"),
        "{}",
        run.both()
    );
    assert!(
        row(build_rows, "broken-build").contains("builder for"),
        "{}",
        run.both()
    );
    // Nix's "last log lines" of the failed builder reach the summary.
    assert!(
        build_rows.contains("deliberate build failure of broken-build"),
        "{}",
        run.both()
    );

    let state = fleet.state_dir();
    for host in OK {
        let line = row(&run.stdout, host);
        assert!(line.contains(" built "), "{host}: {}", run.both());
        let record = bento::build::record::read(&state, host)
            .unwrap()
            .expect("a build record");
        assert!(
            record
                .store_path
                .ends_with(&format!("-nixos-system-{host}-1")),
            "{record:?}"
        );
        assert!(line.contains(&record.store_path), "{host}: {}", run.both());
        // The GC root points at the built system, which is in the store.
        let root = std::fs::read_link(state.build_root(host)).unwrap();
        assert_eq!(root.to_string_lossy(), record.store_path);
        assert!(
            std::path::Path::new(&record.store_path)
                .join("bin/switch-to-configuration")
                .exists()
        );
        // Nix itself counts that link as a root: garbage collection keeps the system.
        let roots = harness::ran::run(harness::nix::command("nix-store").args([
            "--query",
            "--roots",
            &record.store_path,
        ]));
        let link = state.build_root(host).display().to_string();
        assert!(roots.contains(&link), "{host}: {roots}");
    }
    // Positive control for the absence checks below: the record directory exists.
    assert!(state.builds_dir().is_dir());
    for host in ["broken-eval", "broken-build"] {
        assert!(
            bento::build::record::read(&state, host).unwrap().is_none(),
            "{host}"
        );
        assert!(
            std::fs::symlink_metadata(state.build_root(host)).is_err(),
            "{host}"
        );
    }
}

#[test]
fn json_output_has_one_entry_per_host() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = eight_hosts();
    let run = fleet.bento(&["build", "--json", "--jobs", "3"]);
    assert_eq!(run.code, 1, "{}", run.both());
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.both()));
    assert_eq!(results.len(), 8);
    let status = |host: &str| {
        let r = results.iter().find(|r| r["host"] == host).unwrap();
        (r["status"].as_str().unwrap().to_owned(), r.clone())
    };
    for host in OK {
        let (s, r) = status(host);
        assert_eq!(s, "built", "{r}");
        assert!(
            r["store_path"].as_str().unwrap().starts_with("/nix/store/"),
            "{r}"
        );
    }
    let (s, r) = status("broken-eval");
    assert_eq!(
        (s.as_str(), r["phase"].as_str()),
        ("failed", Some("evaluate")),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("deliberate evaluation failure"),
        "{r}"
    );
    let (s, r) = status("broken-build");
    assert_eq!(
        (s.as_str(), r["phase"].as_str()),
        ("failed", Some("build")),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("deliberate build failure"),
        "{r}"
    );
}

#[test]
fn dry_run_evaluates_only() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = eight_hosts();
    let run = fleet.bento(&["build", "--dry-run", "web1", "broken-build", "broken-eval"]);
    assert_eq!(run.code, 1, "{}", run.both());
    assert!(
        run.stderr
            .contains("1 of 3 hosts failed: broken-eval (evaluation)"),
        "{}",
        run.both()
    );
    // The host whose builder fails evaluates fine: nothing was built.
    assert!(
        row(&run.stdout, "broken-build").contains("evaluated"),
        "{}",
        run.both()
    );
    assert!(row(&run.stdout, "web1").contains(".drv"), "{}", run.both());
    assert!(!fleet.state_dir().build_record("web1").exists());
    assert!(std::fs::symlink_metadata(fleet.state_dir().build_root("web1")).is_err());
}

#[test]
fn selection_by_tag_builds_only_those_hosts() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let specs = [("web1", "web"), ("web2", "web"), ("db1", "db")]
        .map(|(name, tag)| (name.to_owned(), Spec::good(1).tagged(&[tag])));
    let fleet = Repo::with_specs("build", specs.to_vec());
    let run = fleet.bento(&["build", "@web"]);
    assert!(run.success(), "{}", run.both());
    assert!(fleet.state_dir().build_record("web1").exists());
    assert!(fleet.state_dir().build_record("web2").exists());
    assert!(!fleet.state_dir().build_record("db1").exists());

    let run = fleet.bento(&["build", "@nope"]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("unknown tag @nope; the tags in") && run.stderr.contains("@db, @web"),
        "{}",
        run.both()
    );
}
