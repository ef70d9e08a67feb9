//! `bento deploy` keeps GC roots only for each host's newest `[fleet] keep_systems` distinct
//! systems (the current one always among them), so `nix-collect-garbage` can free older
//! ones, while `--rollback` still finds the systems it may go back to. Checked with Nix's
//! own view of the roots (`nix-store --query --roots`); nothing is collected here, since
//! other tests share the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fleet_support;

use fleet_support::{Kind, NIX_CONFIG, TestFleet};

fn deploy(fleet: &TestFleet, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let run = fleet.bento(&all);
    assert!(run.success(), "{}", run.both());
}

/// Whether Nix counts a root under the fleet's state directory for `path`.
fn rooted_by_bento(fleet: &TestFleet, path: &str) -> bool {
    let out = std::process::Command::new("nix-store")
        .args(["--query", "--roots", path])
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let state = fleet.state().canonicalize().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(&*state.to_string_lossy()))
}

#[test]
fn old_systems_lose_their_roots_and_rollback_still_works() {
    let mut fleet = TestFleet::new(&[("a", Kind::Ok)]);
    let text = std::fs::read_to_string(fleet.config()).unwrap();
    std::fs::write(
        fleet.config(),
        text.replace("[fleet]\n", "[fleet]\nkeep_systems = 2\n"),
    )
    .unwrap();

    let mut systems = Vec::new();
    for version in ["1", "2", "3"] {
        fleet.set_version("a", version);
        deploy(&fleet, &[]);
        systems.push(fleet.release("a").unwrap().store_path);
    }
    let roots_dir = fleet.state().join("gcroots/a");
    let mut names: Vec<String> = std::fs::read_dir(&roots_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("generation-"))
        .collect();
    names.sort();
    assert_eq!(names, ["generation-2", "generation-3"]);
    assert!(
        !rooted_by_bento(&fleet, &systems[0]),
        "system 1 may be collected"
    );
    assert!(rooted_by_bento(&fleet, &systems[1]));
    assert!(rooted_by_bento(&fleet, &systems[2]));

    // Rolling back publishes system 2 again (generation 4); its roots and system 3's stay.
    deploy(&fleet, &["--rollback", "a"]);
    let back = fleet.release("a").unwrap();
    assert_eq!((back.generation, &back.store_path), (4, &systems[1]));
    assert!(rooted_by_bento(&fleet, &systems[1]));
    assert!(rooted_by_bento(&fleet, &systems[2]));

    // A new system pushes system 3 out: 2 is current, 4 is the newest.
    fleet.set_version("a", "4");
    deploy(&fleet, &[]);
    let newest = fleet.release("a").unwrap().store_path;
    assert!(rooted_by_bento(&fleet, &newest));
    assert!(
        rooted_by_bento(&fleet, &systems[1]),
        "the previous system stays"
    );
    assert!(!rooted_by_bento(&fleet, &systems[2]));
}
