//! `bento deploy` keeps GC roots only for each host's newest `[fleet] keep_systems` distinct
//! systems (the current one always among them), so `nix-collect-garbage` can free older
//! ones, while `--rollback` still finds the systems it may go back to. Checked with Nix's
//! own view of the roots (`nix-store --query --roots`); nothing is collected here, since
//! other tests share the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::repo::Repo;

#[test]
fn old_systems_lose_their_roots_and_rollback_still_works() {
    if !harness::needs_root("the machine's Nix store, which `bento deploy` builds into") {
        return;
    }
    let mut fleet = Repo::new("roots", &["a"]);
    fleet.add_fleet_option("keep_systems = 2");

    let mut systems = Vec::new();
    for version in [1, 2, 3] {
        fleet.set_version("a", version);
        fleet.deploy(&[]);
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
        !fleet.rooted_by_bento(&systems[0]),
        "system 1 may be collected"
    );
    assert!(fleet.rooted_by_bento(&systems[1]));
    assert!(fleet.rooted_by_bento(&systems[2]));

    // Rolling back publishes system 2 again (generation 4); its roots and system 3's stay.
    fleet.deploy(&["--rollback", "a"]);
    let back = fleet.release("a").unwrap();
    assert_eq!((back.generation, &back.store_path), (4, &systems[1]));
    assert!(fleet.rooted_by_bento(&systems[1]));
    assert!(fleet.rooted_by_bento(&systems[2]));

    // A new system pushes system 3 out: 2 is current, 4 is the newest.
    fleet.set_version("a", 4);
    fleet.deploy(&[]);
    let newest = fleet.release("a").unwrap().store_path;
    assert!(fleet.rooted_by_bento(&newest));
    assert!(
        fleet.rooted_by_bento(&systems[1]),
        "the previous system stays"
    );
    assert!(!fleet.rooted_by_bento(&systems[2]));
}
