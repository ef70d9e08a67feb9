//! A deploy killed at the worst instant — the new release written and synced to its temp
//! file, not yet renamed over the old one — leaves every host's release readable and
//! verifiable (old or new, never torn), no temp file posing as a release, and the next
//! deploy continues with higher generations and cleans up. The same holds for SIGKILL at
//! arbitrary moments of a deploy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::repo::Repo;

/// Why these tests need root.
const NEEDS: &str = "the machine's Nix store, which `bento deploy` builds into";

const HOSTS: [&str; 3] = ["a", "b", "c"];

fn fleet() -> Repo {
    Repo::new("killdeploy", &HOSTS)
}

/// Every host has exactly one file named `release` that verifies; returns generations.
fn all_releases_verify(fleet: &Repo) -> Vec<u64> {
    HOSTS
        .iter()
        .map(|h| {
            let r = fleet
                .verify(h, None)
                .unwrap_or_else(|e| panic!("release of {h} does not verify: {e}"));
            r.generation
        })
        .collect()
}

fn temp_files(fleet: &Repo, host: &str) -> Vec<String> {
    std::fs::read_dir(fleet.state_dir().publish_dir(host))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "release")
        .collect()
}

#[test]
fn abort_between_write_and_rename_leaves_old_releases_intact() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = fleet();
    assert!(fleet.bento(&["deploy"]).success());
    assert_eq!(all_releases_verify(&fleet), vec![1, 1, 1]);

    // Abort while renaming the second release into place (host b).
    let run = fleet.bento_env(
        &["deploy", "--force"],
        &[("BENTO_FAILPOINT", "before-rename:release@2")],
    );
    assert_eq!(run.signal, Some(libc::SIGABRT), "{}", run.both());
    assert!(
        run.stderr
            .contains("BENTO_FAILPOINT: aborting before renaming into"),
        "{}",
        run.both()
    );

    // a was published before the crash; b kept its old release; c was never reached.
    assert_eq!(all_releases_verify(&fleet), vec![2, 1, 1]);
    let left = temp_files(&fleet, "b");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".release.tmp-"), "{left:?}");
    // The temp file is a whole release (fsynced before the rename): not torn either.
    let tmp = std::fs::read(fleet.state_dir().publish_dir("b").join(&left[0])).unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&tmp)
            .unwrap()
            .generation,
        2
    );
    assert_eq!(
        fleet.history("b").len(),
        1,
        "history of b must not mention the unpublished generation"
    );

    // The next deploy cleans up even where nothing changed...
    let run = fleet.bento(&["deploy"]);
    assert!(run.success(), "{}", run.both());
    assert_eq!(all_releases_verify(&fleet), vec![2, 1, 1]);
    assert!(
        temp_files(&fleet, "b").is_empty(),
        "{:?}",
        temp_files(&fleet, "b")
    );

    // ...and later ones continue with higher generations.
    let run = fleet.bento(&["deploy", "--force"]);
    assert!(run.success(), "{}", run.both());
    assert_eq!(all_releases_verify(&fleet), vec![3, 2, 2]);
    for h in HOSTS {
        assert!(
            temp_files(&fleet, h).is_empty(),
            "{h}: {:?}",
            temp_files(&fleet, h)
        );
        let gens: Vec<u64> = fleet.history(h).iter().map(|e| e.generation).collect();
        assert!(gens.windows(2).all(|w| w[0] < w[1]), "{h}: {gens:?}");
    }
}

#[test]
fn sigkill_at_any_moment_leaves_every_release_verifiable() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = fleet();
    assert!(fleet.bento(&["build"]).success());
    // How long a whole deploy takes: the kills below are spread over that time.
    let start = std::time::Instant::now();
    assert!(fleet.bento(&["deploy", "--no-build"]).success());
    let full = start.elapsed();
    let mut last = all_releases_verify(&fleet);
    let mut killed = 0;
    const RUNS: u32 = 24;
    for i in 0..RUNS {
        let mut child = fleet
            .command(&["deploy", "--force", "--no-build"])
            .spawn()
            .unwrap();
        std::thread::sleep(full * i / RUNS);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        let now = all_releases_verify(&fleet);
        for (h, (before, after)) in HOSTS.iter().zip(last.iter().zip(&now)) {
            assert!(
                after >= before,
                "{h}: generation went from {before} to {after}"
            );
        }
        last = now;
    }
    eprintln!(
        "killed {killed} of {RUNS} deploys (a deploy takes {full:?}); generations now {last:?}"
    );
    assert!(
        killed > 0,
        "no deploy was killed mid-way; the test proved nothing"
    );
    // A clean deploy afterwards moves every host forward and leaves no temp file.
    assert!(fleet.bento(&["deploy", "--force", "--no-build"]).success());
    let end = all_releases_verify(&fleet);
    for (h, (before, after)) in HOSTS.iter().zip(last.iter().zip(&end)) {
        assert!(after > before, "{h}: {before} -> {after}");
        assert!(temp_files(&fleet, h).is_empty());
    }
}
