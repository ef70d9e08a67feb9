//! `bento serve --check-config` checks the fleet file and the flags where only the fleet
//! file exists (the NixOS module runs it in the build sandbox): no state directory, no
//! fleet key, no flake, no delivered files' sources. It creates nothing, and says what is
//! wrong with a bad file or bad flags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;

use harness::keys::made_up_public_key;
use harness::ran::{Ran, bento};

fn fleet_file(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(
        &file,
        format!(
            r#"[fleet]
flake = "./not-there"
state_dir = "{state}"
signing_key = "{state}/keys/fleet.sec"

[hosts.web1]
ssh_key = "{k1}"
tags = ["web"]

[hosts.web1.files]
"app.env" = "./secrets/web1/app.env"

[hosts.db1]
ssh_key = "{k2}"
{extra}"#,
            state = dir.join("state").display(),
            k1 = made_up_public_key(1),
            k2 = made_up_public_key(2),
        ),
    )
    .unwrap();
    file
}

fn check(file: &Path, flags: &[&str]) -> Ran {
    let mut c = bento();
    c.args(["serve", "--check-config", "--config"])
        .arg(file)
        .args(flags);
    Ran::of(&mut c)
}

#[test]
fn a_sound_fleet_file_passes_without_its_state_keys_or_flake() {
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_file(dir.path(), "bento.toml", "");
    let run = check(&file, &["--cache-listen", "127.0.0.1:1"]);
    assert!(run.success(), "{}", run.both());
    assert!(run.stdout.contains("2 hosts (db1, web1)"), "{}", run.both());
    assert!(run.stdout.contains("http://127.0.0.1:1"), "{}", run.both());
    assert!(run.stdout.contains("configuration OK"), "{}", run.both());
    assert!(
        !dir.path().join("state").exists(),
        "--check-config made the state directory"
    );
    // Positive control: serving for real needs what the check did without, and says so.
    let mut c = bento();
    c.args(["serve", "--config"]).arg(&file).args([
        "--cache-listen",
        "127.0.0.1:0",
        "--sftp-listen",
        "127.0.0.1:0",
        "--no-dashboard",
    ]);
    let run = Ran::of(&mut c);
    assert!(!run.success(), "{}", run.both());
    assert!(run.stderr.contains("fleet.sec"), "{}", run.both());
}

#[test]
fn bad_files_and_bad_flags_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sound = fleet_file(dir.path(), "bento.toml", "");
    let cases: [(&str, &str, &[&str], &str); 5] = [
        ("unknown field", "colour = \"red\"\n", &[], "colour"),
        (
            "no NAR streams",
            "",
            &["--max-nar-streams", "0"],
            "--max-nar-streams must be at least 1",
        ),
        (
            "same port twice",
            "",
            &[
                "--cache-listen",
                "127.0.0.1:9000",
                "--sftp-listen",
                "127.0.0.1:9000",
            ],
            "--cache-listen and --sftp-listen are both 127.0.0.1:9000",
        ),
        (
            "threads",
            "",
            &["--threads", "0"],
            "--threads must be at least 1",
        ),
        (
            "not an address",
            "",
            &["--dashboard-listen", "localhost:8081"],
            "--dashboard-listen",
        ),
    ];
    for (name, extra, flags, says) in cases {
        let file = if extra.is_empty() {
            sound.clone()
        } else {
            fleet_file(dir.path(), "faulty.toml", extra)
        };
        let run = check(&file, flags);
        assert!(!run.success(), "{name}: {}", run.both());
        assert!(run.stderr.contains(says), "{name}: {}", run.both());
        assert!(!dir.path().join("state").exists(), "{name}");
    }
    // Following git needs [fleet] git, and its hook a secret.
    let run = check(&sound, &["--follow"]);
    assert!(
        !run.success() && run.stderr.contains("has no [fleet] git"),
        "{}",
        run.both()
    );
    let followed = dir.path().join("followed.toml");
    let text = std::fs::read_to_string(&sound).unwrap().replacen(
        "[fleet]\n",
        "[fleet]\ngit = { url = \"/srv/fleet.git\", branch = \"main\" }\n",
        1,
    );
    std::fs::write(&followed, text).unwrap();
    let run = check(&followed, &["--follow", "--hook-listen", "127.0.0.1:9001"]);
    assert!(
        !run.success() && run.stderr.contains("no hook_secret_file"),
        "{}",
        run.both()
    );
    let run = check(&followed, &["--follow"]);
    assert!(
        run.success()
            && run
                .stdout
                .contains("follows    /srv/fleet.git (branch main)"),
        "{}",
        run.both()
    );
    // The same flags without the faults pass (the refusals above are the faults').
    let run = check(&sound, &["--cache-listen", "127.0.0.1:9000"]);
    assert!(run.success(), "{}", run.both());
    let run = check(&dir.path().join("missing.toml"), &[]);
    assert!(
        !run.success() && run.stderr.contains("bento init"),
        "{}",
        run.both()
    );
}
