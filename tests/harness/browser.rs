//! Headless Chromium (Debian's `chromium`, installed by scripts/setup.sh), the judge of what
//! a browser makes of the dashboard's pages: the DOM after the pages' scripts ran, and
//! screenshots.

use std::path::{Path, PathBuf};

use super::ran::Ran;

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`, `--screenshot=FILE`), in
/// a profile of its own, scripts given five seconds of virtual time; returns its stdout.
pub fn chromium(args: &[&str], url: &str) -> String {
    assert!(
        which_chromium().is_some(),
        "chromium is missing: run scripts/setup.sh (it installs Debian's chromium)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    let ran = Ran::of(&mut c);
    assert!(ran.success(), "chromium on {url}: {}", ran.both());
    ran.stdout
}

/// The DOM of `url` after its scripts ran, as Chromium serializes it.
pub fn dom(url: &str) -> String {
    chromium(&["--dump-dom"], url)
}

/// A screenshot of `url` (1200×800) in `target/NAME`, whose path is returned.
pub fn screenshot(url: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join(name);
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
        ],
        url,
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "{}",
        shot.display()
    );
    shot
}

fn which_chromium() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("chromium"))
        .find(|p| p.exists())
}
