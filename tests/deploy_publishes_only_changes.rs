//! `bento deploy` publishes a new signed release only for hosts whose system changed;
//! `--rollback` republishes the previous system as a newer generation; generations never
//! go backwards, even when history or the release is lost; every release verifies with the
//! fleet key as an agent checks it, and is refused for another host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::release::ReleaseError;
use harness::repo::{Repo, row};

/// Why these tests need root.
const NEEDS: &str = "the machine's Nix store, which `bento deploy` builds into";

fn three_hosts() -> Repo {
    Repo::new("deploy", &["a", "b", "c"])
}

fn generations(fleet: &Repo) -> Vec<u64> {
    ["a", "b", "c"]
        .iter()
        .map(|h| fleet.release(h).map_or(0, |r| r.generation))
        .collect()
}

fn deploy(fleet: &Repo, args: &[&str]) -> String {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let run = fleet.bento(&all);
    assert!(run.success(), "{}", run.both());
    run.stdout
}

#[test]
fn unchanged_hosts_get_nothing_and_a_change_bumps_only_its_host() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let mut fleet = three_hosts();
    let out = deploy(&fleet, &[]);
    assert!(row(&out, "a").contains("generation 1 (first)"), "{out}");
    assert_eq!(generations(&fleet), vec![1, 1, 1]);
    let before: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|h| std::fs::read(fleet.state_dir().release(h)).unwrap())
        .collect();

    let out = deploy(&fleet, &[]);
    for h in ["a", "b", "c"] {
        assert!(row(&out, h).contains("unchanged (1)"), "{out}");
        assert_eq!(fleet.history(h).len(), 1, "{h}");
    }
    let after: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|h| std::fs::read(fleet.state_dir().release(h)).unwrap())
        .collect();
    assert_eq!(before, after, "an unchanged deploy rewrote a release");

    fleet.set_version("b", 2);
    let out = deploy(&fleet, &[]);
    assert!(
        row(&out, "b").contains("generation 2 (changed, was 1)"),
        "{out}"
    );
    assert_eq!(generations(&fleet), vec![1, 2, 1]);
    let b = fleet.verify("b", Some(1)).unwrap();
    assert!(b.store_path.ends_with("-nixos-system-b-2"), "{b:?}");
    assert_eq!(
        fleet
            .history("b")
            .iter()
            .map(|e| e.generation)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    // Every published system is kept from garbage collection.
    for generation in [1, 2] {
        let root = fleet.state_dir().release_root("b", generation);
        let target = std::fs::read_link(&root).unwrap();
        let roots = harness::ran::run(
            harness::nix::command("nix-store")
                .args(["--query", "--roots"])
                .arg(&target),
        );
        assert!(roots.contains(&root.display().to_string()), "{roots}");
    }

    // --force publishes unchanged hosts too.
    let out = deploy(&fleet, &["--force", "a"]);
    assert!(
        row(&out, "a").contains("generation 2 (forced, was 1)"),
        "{out}"
    );
    assert_eq!(generations(&fleet), vec![2, 2, 1]);
}

#[test]
fn rollback_republishes_the_previous_system_as_a_newer_generation() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let mut fleet = three_hosts();
    deploy(&fleet, &[]);
    let v1 = fleet.release("b").unwrap().store_path;
    fleet.set_version("b", 2);
    deploy(&fleet, &["b"]);
    let v2 = fleet.release("b").unwrap().store_path;
    assert_ne!(v1, v2);

    let run = fleet.bento(&["deploy", "--rollback", "b"]);
    assert!(run.success(), "{}", run.both());
    assert!(
        run.stdout.contains(&format!(
            "b: rolled back: generation 3 publishes {v1} (was generation 2)"
        )),
        "{}",
        run.both()
    );
    // An agent that applied generation 2 accepts generation 3, which runs the old system.
    let r = fleet.verify("b", Some(2)).unwrap();
    assert_eq!((r.generation, r.store_path.as_str()), (3, v1.as_str()));
    let last = fleet.history("b").pop().unwrap();
    assert_eq!((last.generation, last.rollback_of), (3, Some(1)));
    assert_eq!(
        generations(&fleet),
        vec![1, 3, 1],
        "rollback touched another host"
    );

    // Nothing older than generation 1: a second rollback is refused and changes nothing.
    let run = fleet.bento(&["deploy", "--rollback", "b"]);
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("host b has no earlier system to roll back to"),
        "{}",
        run.both()
    );
    assert_eq!(fleet.release("b").unwrap().generation, 3);

    // The next deploy publishes the configuration's system again, newer still.
    let out = deploy(&fleet, &[]);
    assert!(
        row(&out, "b").contains("generation 4 (changed, was 3)"),
        "{out}"
    );
    assert_eq!(fleet.release("b").unwrap().store_path, v2);

    let run = fleet.bento(&["deploy", "--rollback", "nosuchhost"]);
    assert!(
        !run.success() && run.stderr.contains("unknown host \"nosuchhost\""),
        "{}",
        run.both()
    );
}

#[test]
fn generations_never_go_backwards_when_history_or_release_is_lost() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = three_hosts();
    deploy(&fleet, &[]);
    deploy(&fleet, &["--force"]);
    deploy(&fleet, &["--force"]);
    assert_eq!(generations(&fleet), vec![3, 3, 3]);
    let state = fleet.state_dir();

    // History lost: the release still says 3.
    std::fs::remove_file(state.history("a")).unwrap();
    // Release lost: the history still says 3.
    std::fs::remove_file(state.release("b")).unwrap();
    // Torn last history line (a crash mid-append): ignored, then repaired.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(state.history("c"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"format\":1,\"generation\":9").unwrap();
    drop(f);

    let out = deploy(&fleet, &["--force"]);
    assert!(row(&out, "a").contains("generation 4"), "{out}");
    assert!(row(&out, "b").contains("generation 4 (first)"), "{out}");
    assert!(row(&out, "c").contains("generation 4"), "{out}");
    assert_eq!(
        fleet
            .history("c")
            .iter()
            .map(|e| e.generation)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn published_releases_verify_with_the_fleet_key_and_refuse_another_host() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = three_hosts();
    deploy(&fleet, &[]);
    let key = fleet.public_key();
    for host in ["a", "b", "c"] {
        let bytes = std::fs::read(fleet.state_dir().release(host)).unwrap();
        let r = fleet.verify(host, None).unwrap();
        assert_eq!((r.host.as_str(), r.generation), (host, 1));
        assert!(r.store_path.ends_with(&format!("-nixos-system-{host}-1")));
        assert!(
            std::path::Path::new(&r.store_path)
                .join("nixos-version")
                .exists()
        );

        // Host c must not accept a's release, nor a replay of generation 1.
        let other = bento::release::verify(
            &bytes,
            bento::release::Expectation {
                key: &key,
                host: "zz",
                last_applied: None,
            },
        );
        assert!(
            matches!(other, Err(ReleaseError::WrongHost { .. })),
            "{other:?}"
        );
        let replay = fleet.verify(host, Some(1));
        assert!(
            matches!(replay, Err(ReleaseError::NotNewer { .. })),
            "{replay:?}"
        );
        // Another fleet's key with the same name is refused.
        let impostor = bento::nix::keys::SecretKey::generate(fleet.fleet_key.name())
            .unwrap()
            .public();
        let wrong = bento::release::verify(
            &bytes,
            bento::release::Expectation {
                key: &impostor,
                host,
                last_applied: None,
            },
        );
        assert!(
            matches!(wrong, Err(ReleaseError::BadSignature { .. })),
            "{wrong:?}"
        );
    }
}

#[test]
fn no_build_publishes_the_recorded_build_and_lists_json() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let mut fleet = three_hosts();
    let run = fleet.bento(&["deploy", "--no-build", "a"]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("a (build failed)")
            && run
                .stdout
                .contains("has no recorded build; run `bento build a` first"),
        "{}",
        run.both()
    );
    assert!(fleet.release("a").is_none());

    assert!(fleet.bento(&["build"]).success());
    let built = bento::build::record::read(&fleet.state_dir(), "a")
        .unwrap()
        .unwrap()
        .store_path;
    // The configuration changes after the build: --no-build still publishes the build.
    fleet.set_version("a", 2);
    let run = fleet.bento(&["deploy", "--no-build", "--json"]);
    assert!(run.success(), "{}", run.both());
    let reports: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(reports.len(), 3);
    let a = reports.iter().find(|r| r["host"] == "a").unwrap();
    assert_eq!(a["build"], "reused");
    assert_eq!(a["release"]["action"], "published");
    assert_eq!(a["release"]["generation"], 1);
    assert_eq!(a["release"]["store_path"].as_str(), Some(built.as_str()));
    assert_eq!(fleet.release("a").unwrap().store_path, built);
}

#[test]
fn a_second_deploy_is_refused_while_one_holds_the_lock() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = three_hosts();
    let _held = bento::deploy::DeployLock::acquire(&fleet.state_dir()).unwrap();
    let run = fleet.bento(&["deploy"]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("another deploy is running"),
        "{}",
        run.both()
    );
    assert!(
        run.stderr.contains(&std::process::id().to_string()),
        "{}",
        run.both()
    );
    assert!(fleet.release("a").is_none());
}
