//! The rule for tests that need root (the machine's Nix store, network and mount
//! namespaces): run as anyone else, such a test fails and says why, so that a run without
//! root can never pass by skipping. `BENTO_ALLOW_SKIP=1` turns the failure into a loud
//! skip, for a developer who knows what is left out. `make test` and CI run as root.

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
    if rustix::process::getuid().is_root() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        // Straight to the stderr handle: libtest captures `eprintln!`, not this.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED {test}: it needs root ({needs}), and {ALLOW_SKIP}=1 allows \
             skipping; CI runs it as root !!!!!!!!\n"
        );
        return false;
    }
    panic!(
        "{test} needs root ({needs}) and runs as uid {}: run the tests as root (`make test`), \
         or set {ALLOW_SKIP}=1 to skip such tests on purpose",
        rustix::process::getuid().as_raw()
    );
}
