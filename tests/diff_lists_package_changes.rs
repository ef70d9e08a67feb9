//! `bento diff` compares two real system closures package by package: between the system a
//! host reports running and its newest build it lists `foo` 1.0 → 1.1, `baz` 0.1 added,
//! `qux` removed, and leaves `bar` (same version) alone. The closures are built by Nix from
//! `/bin/sh` derivations with known names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::report::{Outcome, Report};
use harness::nix::nix_system;
use harness::repo::Repo;

/// Why these tests need root.
const NEEDS: &str = "the machine's Nix store, which `bento diff` reads";

/// Writes web1's report that it applied and runs `path` at `generation`, as its agent would.
fn report_running(fleet: &Repo, generation: u64, path: &str) {
    let reports = fleet.state_dir().reports_dir("web1");
    std::fs::create_dir_all(&reports).unwrap();
    let report = Report {
        format: bento::report::FORMAT,
        host: "web1".into(),
        generation,
        wanted: Some(path.to_owned()),
        running: Some(path.to_owned()),
        outcome: Outcome::Applied,
        reason: None,
        started_ms: 1_790_000_000_000,
        finished_ms: 1_790_000_001_000,
        timings: Default::default(),
        log: String::new(),
    };
    std::fs::write(reports.join(report.file_name()), report.to_bytes()).unwrap();
}

/// Builds a fake system named `system-<tag>` depending on packages `deps` (name, content).
fn build_system(tag: &str, deps: &[(&str, &str)]) -> String {
    let system = nix_system();
    let mut lets = String::new();
    let mut refs = String::new();
    for (i, (name, content)) in deps.iter().enumerate() {
        lets.push_str(&format!(
            "  p{i} = derivation {{ name = \"{name}\"; system = \"{system}\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo {content} > $out\" ]; }};\n"
        ));
        refs.push_str(&format!(" ${{p{i}}}"));
    }
    harness::nix::build(&format!(
        "let\n{lets}in derivation {{ name = \"nixos-system-web1-{tag}\"; system = \"{system}\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo{refs} > $out\" ]; }}\n"
    ))
}

#[test]
fn diff_between_running_system_and_newest_build() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = Repo::new("diff", &["web1"]);
    let salt = format!("{:?}", std::time::SystemTime::now());
    let old = build_system(
        "1.0",
        &[("foo-1.0", &salt), ("bar-2", &salt), ("qux-3", &salt)],
    );
    let new = build_system(
        "1.1",
        &[
            ("foo-1.1", &format!("{salt} and more bytes")),
            ("bar-2", &salt),
            ("baz-0.1", &salt),
        ],
    );

    // The host reports running `old`; its newest build is `new`.
    let state = fleet.state_dir();
    report_running(&fleet, 1, &old);
    bento::build::record::write(
        &state,
        &bento::build::record::BuildRecord {
            format: bento::build::record::RECORD_FORMAT,
            host: "web1".into(),
            drv_path: "/nix/store/00000000000000000000000000000000-x.drv".into(),
            store_path: new.clone(),
            built: 1_790_000_002,
        },
    )
    .unwrap();

    let run = fleet.bento(&["diff", "web1", "--json"]);
    assert!(run.success(), "{}", run.both());
    let d: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(d["schema"], 1);
    assert_eq!(d["from"], old.as_str());
    assert_eq!(d["to"], new.as_str());
    let names = |key: &str| -> Vec<String> {
        d[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["pname"].as_str().unwrap().to_owned())
            .collect()
    };
    // The system itself changes version too (nixos-system-web1 1.0 → 1.1).
    assert_eq!(names("changed"), ["foo", "nixos-system-web1"], "{d:#}");
    assert_eq!(names("added"), ["baz"], "{d:#}");
    assert_eq!(names("removed"), ["qux"], "{d:#}");
    let foo = &d["changed"][0];
    assert_eq!(foo["from"], serde_json::json!(["1.0"]));
    assert_eq!(foo["to"], serde_json::json!(["1.1"]));
    assert!(
        foo["size_to"].as_u64().unwrap() >= foo["size_from"].as_u64().unwrap(),
        "{foo}"
    );
    assert_eq!(d["paths_from"], 4);
    assert_eq!(d["paths_to"], 4);

    // The human form names the same changes; --from/--to override the defaults.
    let run = fleet.bento(&["diff", "web1", "--from", &new, "--to", &old]);
    assert!(run.success(), "{}", run.both());
    let text = run.stdout;
    assert!(text.contains("Version changes:"), "{text}");
    assert!(text.contains("1.1 -> 1.0"), "{text}");
    assert!(text.contains("Added packages:\n  qux"), "{text}");
    assert!(text.contains("Removed packages:\n  baz"), "{text}");
    assert!(!text.contains("bar"), "bar did not change: {text}");
}

#[test]
fn deploy_diff_shows_what_changes_before_publishing() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let mut fleet = Repo::new("diff", &["web1"]);
    let run = fleet.bento(&["deploy"]);
    assert!(run.success(), "{}", run.both());
    let first = fleet.release("web1").unwrap();
    // The agent reports running generation 1.
    report_running(&fleet, first.generation, &first.store_path);
    fleet.set_version("web1", 2);
    let run = fleet.bento(&["deploy", "--diff"]);
    assert!(run.success(), "{}", run.both());
    let out = &run.stdout;
    let diff_at = out.find("== web1 ==").expect(out);
    assert!(
        out[diff_at..].contains("nixos-system-web1  1 -> 2"),
        "{out}"
    );
    assert_eq!(
        fleet.release("web1").unwrap().generation,
        first.generation + 1
    );
}
