//! `bento serve 2>&1 | head -1`, then SIGTERM: the server stops (exit 0) within 5 s although
//! every write to its output now fails (the pipe's reader is gone). Started with a low soft
//! open-files limit, it raised it to the hard limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bento::nix::keys::{self, SecretKey};
use harness::keys::{public_key_line, ssh_keygen};

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut fields = line.split_whitespace().skip(3);
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[test]
fn sigterm_stops_serve_whose_output_pipe_was_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::generate("serve-test").unwrap();
    let files = keys::write_key_pair(&tmp.path().join("keys"), &key).unwrap();
    let ssh = ssh_keygen(tmp.path(), "web1.ssh");
    let toml = tmp.path().join("bento.toml");
    std::fs::write(
        &toml,
        format!(
            "[fleet]\nstate_dir = \"{}\"\nsigning_key = \"{}\"\n\n[hosts.web1]\nssh_key = \"{}\"\n",
            tmp.path().join("state").display(),
            files.secret.display(),
            public_key_line(&ssh)
        ),
    )
    .unwrap();
    std::fs::write(tmp.path().join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();

    let hard = open_files_limits(std::process::id()).1;
    let (reader, writer) = std::io::pipe().unwrap();
    let mut serve = Command::new("prlimit")
        .arg(format!("--nofile=256:{hard}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_bento"))
        .args(["serve", "--config", &toml.to_string_lossy()])
        .args([
            "--cache-listen",
            "127.0.0.1:0",
            "--sftp-listen",
            "127.0.0.1:0",
        ])
        .args(["--dashboard-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    // `head -1`: one line, then the reader is gone.
    let mut first = String::new();
    BufReader::new(reader).read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "serve wrote nothing");

    // Give it time to write (and fail to write) more: the rest of its banner, its logs.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve must keep running when its output is gone"
    );
    assert_eq!(
        open_files_limits(serve.id()),
        (hard.clone(), hard),
        "the soft open-files limit was raised to the hard one"
    );

    let term = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(5) {
            let _ = serve.kill();
            panic!("bento serve did not stop within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "a requested stop exits 0: {status:?}"
    );
}
