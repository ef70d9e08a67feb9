//! `bento serve` raises its soft open-files limit to the hard one and warns, with the
//! numbers, when that is below what its fleet holds at once: started under a hard limit of
//! 200 files (ulimit -n), a fleet of one host needs 323 (3 for the host, 64 NAR streams,
//! 256 spare), and the warning says both. Under a hard limit that covers the fleet
//! (the positive control that the warning depends on the limit: the test's own hard limit)
//! it says nothing of the kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use harness::init::Scaffold;
use harness::keys::made_up_public_key;

/// What `bento serve` logged until it said where agents pin its key, run under
/// `ulimit -n FILES` (a number, or `$(ulimit -Hn)`).
fn started_under(files: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let repo = Scaffold::init(dir.path(), "web1", &made_up_public_key(1));
    let log = dir.path().join("serve.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_bento"))
        .args(["serve", "--config"])
        .arg(&repo.file)
        .args([
            "--cache-listen",
            "127.0.0.1:0",
            "--sftp-listen",
            "127.0.0.1:0",
            "--no-dashboard",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut started = false;
    for line in stdout.lines() {
        if line.unwrap().contains("server_host_key = ") {
            started = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        started,
        "bento serve did not start under {files} files:\n{text}"
    );
    text
}

#[test]
fn a_short_open_files_limit_is_named_with_what_the_fleet_needs() {
    let short = started_under("200");
    assert!(
        short.contains("the open files limit is 200, below the 323 files a fleet of 1 hosts"),
        "{short}"
    );
    // The hard limit this test runs under (20,000 on the machines of the project, which
    // cannot be raised there): enough for the fleet, so that warning is not given.
    let ample = started_under("$(ulimit -Hn)");
    assert!(!ample.contains("files a fleet of"), "{ample}");
}
