//! `bento init DIR` makes a repository that loads as a fleet, with a fleet key whose secret
//! half git ignores, prints the next steps, and never overwrites anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::PermissionsExt as _;

use bento::config::Fleet;
use bento::nix::cmd::Command;
use bento::nix::keys::{PublicKey, SecretKey};
use harness::keys::made_up_public_key;
use harness::ran::{bento, run};

#[test]
fn scaffold_loads_and_keeps_the_secret_out_of_git() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("fleet");
    let key = made_up_public_key(7);
    let out = bento()
        .args(["init", "--host", "web1", "--ssh-key", &key])
        .arg(&repo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Next steps:")
            && stdout.contains("bento build")
            && stdout.contains("git init"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("SSH public key"),
        "the key was given, no step should ask for it: {stdout}"
    );

    let fleet = Fleet::load(&repo.join("bento.toml")).unwrap();
    assert_eq!(fleet.hosts.keys().collect::<Vec<_>>(), vec!["web1"]);
    assert_eq!(fleet.hosts["web1"].ssh_key.to_openssh(), key);
    // The signing key named by bento.toml is a working Nix key pair; the public half is
    // printed for the hosts to trust.
    let secret = fleet.load_signing_key().unwrap();
    let public = PublicKey::load(&repo.join("keys/bento-fleet-1.public")).unwrap();
    assert_eq!(secret.public().to_string(), public.to_string());
    assert!(stdout.contains(&public.to_string()), "{stdout}");
    let mode = std::fs::metadata(&fleet.signing_key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let flake = std::fs::read_to_string(repo.join("flake.nix")).unwrap();
    assert!(
        flake.contains("nixosConfigurations.web1 = nixpkgs.lib.nixosSystem"),
        "{flake}"
    );
    assert!(flake.contains("./hosts/web1/configuration.nix"), "{flake}");
    let conf = std::fs::read_to_string(repo.join("hosts/web1/configuration.nix")).unwrap();
    assert!(conf.contains("networking.hostName = \"web1\""), "{conf}");

    // Git ignores the secret key and nothing else of the scaffold.
    let git = |args: &[&str]| run(Command::new("git").args(args).current_dir(&repo));
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    let tracked = git(&["ls-files"]);
    assert!(
        tracked.contains("keys/bento-fleet-1.public") && tracked.contains("bento.toml"),
        "{tracked}"
    );
    assert!(
        !tracked.contains(".secret"),
        "the secret key would be committed:\n{tracked}"
    );
}

#[test]
fn refuses_to_overwrite_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), "my own flake").unwrap();
    let out = bento().arg("init").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to overwrite existing files") && stderr.contains("flake.nix"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("flake.nix")).unwrap(),
        "my own flake"
    );
    assert!(
        !dir.path().join("bento.toml").exists(),
        "nothing may be written"
    );
    assert!(!dir.path().join("keys").exists(), "nothing may be written");

    // A second init over a complete scaffold is refused too, and the key survives.
    let fresh = tempfile::tempdir().unwrap();
    assert!(
        bento()
            .arg("init")
            .arg(fresh.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let secret = fresh.path().join("keys/bento-fleet-1.secret");
    let before = SecretKey::load(&secret).unwrap().to_secret_string();
    let again = bento().arg("init").arg(fresh.path()).output().unwrap();
    assert!(!again.status.success());
    assert_eq!(SecretKey::load(&secret).unwrap().to_secret_string(), before);
}

#[test]
fn without_an_ssh_key_the_first_step_says_where_to_find_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = bento().arg("init").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("1. Put host example's SSH public key"),
        "{stdout}"
    );
    // Until then, loading the fleet says exactly which host and field to fix.
    let msg = Fleet::load(&dir.path().join("bento.toml"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("host example, field ssh_key"), "{msg}");
}
