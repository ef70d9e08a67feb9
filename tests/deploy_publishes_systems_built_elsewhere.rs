//! `bento deploy --store-path HOST=PATH` publishes a system built elsewhere (CI, a remote
//! builder, a VM test) without evaluating: signed like any release, idempotent, and
//! refused with a reason for an unknown host, a path not in the server's store, or a path
//! that is not a NixOS system, leaving the published release as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::nix::{build, nonce};
use harness::repo::{Repo, row};

const NEEDS: &str = "the machine's Nix store, which the test builds into";

/// A fake NixOS system built outside bento, as CI would.
fn system_built_elsewhere(tag: &str) -> String {
    build(&format!(
        r#"mk "nixos-system-elsewhere-{tag}-{n}" "mkdir -p $out/bin; printf '#!/bin/sh\n' > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration""#,
        n = nonce()
    ))
}

#[test]
fn a_prebuilt_system_is_signed_published_once_and_bad_ones_are_refused() {
    if !harness::needs_root(NEEDS) {
        return;
    }
    let fleet = Repo::new("prebuilt", &["web1", "web2"]);
    let system = system_built_elsewhere("web1");
    let arg = format!("web1={system}");

    let run = fleet.bento(&["deploy", "--store-path", &arg]);
    assert!(run.success(), "{}", run.both());
    assert!(
        row(&run.stdout, "web1").contains("prebuilt"),
        "{}",
        run.both()
    );
    assert!(
        row(&run.stdout, "web1").contains("generation 1 (first)"),
        "{}",
        run.both()
    );
    // Only the host named was touched, and nothing was evaluated for the other.
    assert!(!run.stdout.contains("web2"), "{}", run.both());
    assert!(fleet.release("web2").is_none());
    // Signed by the fleet key for that host, as an agent checks it.
    let release = fleet.verify("web1", None).unwrap();
    assert_eq!(release.store_path, system);
    assert_eq!(release.generation, 1);
    assert!(
        fleet.rooted_by_bento(&system),
        "a GC root keeps the published system"
    );

    // Idempotent: the same path again publishes nothing new.
    let before = std::fs::read(fleet.state_dir().release("web1")).unwrap();
    let run = fleet.bento(&["deploy", "--store-path", &arg]);
    assert!(run.success(), "{}", run.both());
    assert!(
        row(&run.stdout, "web1").contains("unchanged (1)"),
        "{}",
        run.both()
    );
    assert_eq!(
        std::fs::read(fleet.state_dir().release("web1")).unwrap(),
        before
    );
    assert_eq!(fleet.history("web1").len(), 1);

    // Refusals, each with its reason, none of them touching the release.
    let missing = format!(
        "web1=/nix/store/{}-nixos-system-web1-never-built",
        "0".repeat(32)
    );
    let not_a_system = format!(
        "web1={}",
        build(&format!(r#"mk "just-a-file-{}" "echo hi > $out""#, nonce()))
    );
    let cases: [(&str, &str); 4] = [
        (&missing, "is not in this machine's Nix store"),
        (&not_a_system, "is not a NixOS system for web1"),
        (
            "db9=/nix/store/00000000000000000000000000000000-x",
            "db9 is not a host of",
        ),
        ("web1=/tmp/not-a-store-path", "not inside the Nix store"),
    ];
    for (arg, reason) in cases {
        let run = fleet.bento(&["deploy", "--store-path", arg]);
        assert!(!run.success(), "{arg}: {}", run.both());
        assert!(run.both().contains(reason), "{arg}: {}", run.both());
        assert_eq!(
            std::fs::read(fleet.state_dir().release("web1")).unwrap(),
            before,
            "{arg}: the release changed"
        );
    }
    assert_eq!(fleet.history("web1").len(), 1);

    // A new prebuilt system is the next generation; host selection cannot be mixed in.
    let next = system_built_elsewhere("web1-b");
    let run = fleet.bento(&["deploy", "--store-path", &format!("web1={next}")]);
    assert!(run.success(), "{}", run.both());
    assert_eq!(fleet.verify("web1", Some(1)).unwrap().store_path, next);
    let run = fleet.bento(&["deploy", "web2", "--store-path", &arg]);
    assert!(
        !run.success() && run.stderr.contains("cannot be used with"),
        "{}",
        run.both()
    );
}
