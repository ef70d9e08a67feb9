//! `bento serve` as a process, from a fleet file: it prints the host key agents pin, serves
//! each host's release over SFTP and the closure over HTTP, and when bento.toml changes it
//! revokes a removed host while another host's open session keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::nix::keys::{self, SecretKey};
use bento::sftp::client;
use harness::keys::{public_key_line, ssh_keygen};
use harness::ran::wait_for;
use harness::serve::Serve;
use harness::servers::signed_release;

fn fleet_toml(state: &std::path::Path, key: &std::path::Path, hosts: &[(&str, String)]) -> String {
    let mut t = format!(
        "[fleet]\nstate_dir = \"{}\"\nsigning_key = \"{}\"\n",
        state.display(),
        key.display()
    );
    for (name, pubkey) in hosts {
        t.push_str(&format!("\n[hosts.{name}]\nssh_key = \"{pubkey}\"\n"));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_fleet_file_revokes_a_removed_host_only() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let fleet_key = SecretKey::generate("serve-test").unwrap();
    let files = keys::write_key_pair(&tmp.path().join("keys"), &fleet_key).unwrap();
    let a_key = ssh_keygen(tmp.path(), "a.ssh");
    let b_key = ssh_keygen(tmp.path(), "b.ssh");
    let toml = tmp.path().join("bento.toml");
    let both = [
        ("a", public_key_line(&a_key)),
        ("b", public_key_line(&b_key)),
    ];
    std::fs::write(&toml, fleet_toml(&state, &files.secret, &both)).unwrap();
    std::fs::write(tmp.path().join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
    // Releases as `bento deploy` writes them (the path need not exist for SFTP).
    let path = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top";
    for h in ["a", "b"] {
        let dir = state.join("publish").join(h);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("release"), signed_release(h, 1, path, &fleet_key)).unwrap();
    }

    let server = tokio::task::block_in_place(|| {
        Serve::start(
            &toml,
            &[
                "--cache-listen",
                "127.0.0.1:0",
                "--sftp-listen",
                "127.0.0.1:0",
                "--no-dashboard",
            ],
            &tmp.path().join("serve.log"),
        )
    });
    let (sftp, pinned) = (server.sftp.clone(), server.pinned.clone());
    assert!(pinned.starts_with("ssh-ed25519 "), "{pinned}");
    assert!(sftp.starts_with("127.0.0.1:"), "{sftp}");

    let a = client::connect(sftp.as_str(), "a", &a_key, &pinned)
        .await
        .unwrap();
    let b = client::connect(sftp.as_str(), "b", &b_key, &pinned)
        .await
        .unwrap();
    assert!(a.read_release().await.unwrap().is_some());
    assert!(b.read_release().await.unwrap().is_some());

    // Remove host b from the fleet file; serve notices the change by itself.
    std::fs::write(&toml, fleet_toml(&state, &files.secret, &both[..1])).unwrap();
    let revoked = wait_for(20, || b.is_closed()).await;
    assert!(revoked, "b's session should be cut after the reload");
    assert!(
        client::connect(sftp.as_str(), "b", &b_key, &pinned)
            .await
            .is_err(),
        "b can no longer log in"
    );
    // a's open session was never interrupted.
    assert!(!a.is_closed());
    let release = a.read_release().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&release).contains("\"host\": \"a\""));

    // A broken fleet file is refused and the access map kept. Rather than waiting a while
    // and finding nothing changed, wait until serve says it read the file and refused it
    // (the revocation above shows what a reload it accepts does).
    let refused = "fleet file not reloaded; keeping the hosts as they were";
    assert!(
        !server.log_text().contains(refused),
        "{}",
        server.log_text()
    );
    std::fs::write(&toml, "[fleet]\nthis is not toml").unwrap();
    assert!(
        wait_for(20, || server.log_text().contains(refused)).await,
        "serve never read the broken file:\n{}",
        server.log_text()
    );
    assert!(!a.is_closed(), "a's session survives the refused reload");
    assert!(
        client::connect(sftp.as_str(), "a", &a_key, &pinned)
            .await
            .is_ok()
    );
    drop(server);
}
