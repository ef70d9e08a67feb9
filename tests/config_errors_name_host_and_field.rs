//! A broken `bento.toml` stops `bento build` before any Nix process runs, with one message
//! that names the file, the host and the field at fault: one test per kind of mistake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::keys::made_up_public_key as ssh_key;
use harness::ran::bento;

/// Writes `text` as bento.toml (with a flake.nix beside it) and runs `bento build` on it.
fn build_with(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { }; }").unwrap();
    let config = dir.path().join("bento.toml");
    std::fs::write(&config, text).unwrap();
    let out = bento()
        .args(["build", "--dry-run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

fn assert_refused(text: &str, wants: &[&str]) {
    let (ok, stderr) = build_with(text);
    assert!(!ok, "accepted:\n{text}");
    assert!(
        stderr.contains("bento.toml"),
        "the file is not named: {stderr}"
    );
    for want in wants {
        assert!(stderr.contains(want), "{stderr:?} lacks {want:?}");
    }
    assert!(!stderr.contains("evaluating"), "a build started: {stderr}");
}

#[test]
fn positive_control_a_valid_file_gets_past_the_config() {
    let (ok, stderr) = build_with(&format!("[hosts.web1]\nssh_key = \"{}\"\n", ssh_key(1)));
    // The flake has no such host, so evaluation fails: but the config was accepted.
    assert!(!ok);
    assert!(stderr.contains("web1: evaluating"), "{stderr}");
}

#[test]
fn unknown_field() {
    assert_refused(
        &format!(
            "[hosts.web1]\nssh_key = \"{}\"\ntag = [\"web\"]\n",
            ssh_key(1)
        ),
        &[
            "line 3",
            "host web1, field tag",
            "unknown field `tag`",
            "expected one of",
        ],
    );
}

#[test]
fn unknown_fleet_field() {
    assert_refused(
        "[fleet]\nstate-dir = \"/x\"\n",
        &["[fleet] field state-dir", "unknown field"],
    );
}

#[test]
fn duplicate_host() {
    assert_refused(
        &format!(
            "[hosts.web1]\nssh_key = \"{}\"\n\n[hosts.web1]\nssh_key = \"{}\"\n",
            ssh_key(1),
            ssh_key(2)
        ),
        &["line 4", "host web1 is defined twice"],
    );
}

#[test]
fn missing_ssh_key() {
    assert_refused(
        "[hosts.web1]\ntags = [\"web\"]\n",
        &["host web1, field ssh_key", "is missing"],
    );
}

#[test]
fn invalid_ssh_key() {
    assert_refused(
        "[hosts.web1]\nssh_key = \"ssh-ed25519 not-base64!\"\n",
        &["host web1, field ssh_key", "not valid base64"],
    );
}

#[test]
fn ssh_key_type_does_not_match_its_content() {
    let ecdsa_label = ssh_key(1).replacen("ssh-ed25519", "ecdsa-sha2-nistp256", 1);
    assert_refused(
        &format!("[hosts.web1]\nssh_key = \"{ecdsa_label}\"\n"),
        &[
            "host web1, field ssh_key",
            "says \"ecdsa-sha2-nistp256\" but the key inside is \"ssh-ed25519\"",
        ],
    );
}

#[test]
fn two_hosts_share_a_key() {
    assert_refused(
        &format!(
            "[hosts.web1]\nssh_key = \"{0}\"\n[hosts.web2]\nssh_key = \"{0}\"\n",
            ssh_key(1)
        ),
        &["host web2, field ssh_key", "same key as host web1"],
    );
}

#[test]
fn missing_configuration_file() {
    assert_refused(
        &format!(
            "[hosts.router]\nssh_key = \"{}\"\nconfiguration = \"hosts/router.nix\"\n",
            ssh_key(1)
        ),
        &[
            "host router, field configuration",
            "hosts/router.nix does not exist",
        ],
    );
}

#[test]
fn attr_and_configuration_together() {
    assert_refused(
        &format!(
            "[hosts.router]\nssh_key = \"{}\"\nattr = \"x\"\nconfiguration = \"c.nix\"\n",
            ssh_key(1)
        ),
        &["host router, field configuration", "together with attr"],
    );
}

#[test]
fn invalid_host_name() {
    assert_refused(
        &format!("[hosts.\"web 1\"]\nssh_key = \"{}\"\n", ssh_key(1)),
        &["host web 1, field name", "not valid"],
    );
}

#[test]
fn wrong_value_type() {
    assert_refused(
        &format!(
            "[hosts.web1]\nssh_key = \"{}\"\ntags = \"web\"\n",
            ssh_key(1)
        ),
        &["host web1, field tags", "invalid type"],
    );
}

#[test]
fn missing_fleet_file() {
    let out = bento()
        .args(["build", "-c", "/nonexistent/bento.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no fleet file at /nonexistent/bento.toml"),
        "{stderr}"
    );
}

#[test]
fn unknown_host_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = _: { }; }").unwrap();
    let config = dir.path().join("bento.toml");
    std::fs::write(
        &config,
        format!(
            "[hosts.web1]\nssh_key = \"{}\"\n[hosts.db1]\nssh_key = \"{}\"\n",
            ssh_key(1),
            ssh_key(2)
        ),
    )
    .unwrap();
    let out = bento()
        .args(["build", "web3", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown host \"web3\"; the hosts in") && stderr.contains("db1, web1"),
        "{stderr}"
    );
}
