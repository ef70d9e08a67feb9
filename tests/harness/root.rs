//! The rule for tests that need root (the machine's Nix store, network and mount
//! namespaces) or a tool the machine lacks: run as anyone else, or without the tool, such
//! a test fails and says why, so that a run can never pass by skipping. `BENTO_ALLOW_SKIP=1`
//! turns the failure into a loud skip, for a developer who knows what is left out.
//! `make test` and CI run as root with every tool installed (scripts/setup.sh).

use std::io::Write as _;

/// The variable that allows skipping.
pub const ALLOW_SKIP: &str = "BENTO_ALLOW_SKIP";

/// Whether the calling test may go on. True as root. Otherwise the test cannot do what it
/// is about (`needs` says what it would need root for): it fails, naming the reason,
/// unless `BENTO_ALLOW_SKIP=1`, when it prints `SKIPPED` and returns false, and the test
/// returns at once (and passes):
///
/// ```ignore
/// if !harness::needs_root("network namespaces") {
///     return;
/// }
/// ```
pub fn needs_root(needs: &str) -> bool {
    let uid = rustix::process::getuid();
    uid.is_root()
        || cannot_run(&format!(
            "it needs root ({needs}) and runs as uid {}; run the tests as root (`make test`)",
            uid.as_raw()
        ))
}

/// The calling test cannot run here, for `reason`: fails it, or with `BENTO_ALLOW_SKIP=1`
/// prints `SKIPPED` and returns false (the test then returns at once).
pub fn cannot_run(reason: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        // Straight to the stderr handle: libtest captures `eprintln!`, not this.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED {test}: {reason}; {ALLOW_SKIP}=1 allows skipping, CI runs it \
             !!!!!!!!\n"
        );
        return false;
    }
    panic!("{test} cannot run: {reason}; or set {ALLOW_SKIP}=1 to skip such tests on purpose");
}
