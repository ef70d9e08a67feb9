//! One OpenSSH key, one verdict: `bento init --ssh-key`, the fleet file as `bento serve`
//! loads it, the SFTP server's access map, the agent's pinned server key (`bento agent
//! check-config`) and the agent's own private key either all accept a key, and then a host
//! logs in with it (with OpenSSH's `sftp` and with the agent's client), or all refuse it with
//! the same words.
//!
//! The keys that split them before: an RSA key passed `bento.toml` validation and stopped
//! `bento serve` at start ("type ssh-rsa, which Bento does not accept"); an ECDSA key whose
//! point is off its curve (one altered byte) passed both and no login could ever succeed.
//! Keys are made by `ssh-keygen`; the ones it cannot make here (DSA, a security key, which
//! needs a device) are assembled from their wire format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bento::openssh::SshPublicKey;
use bento::sftp::server::HostKeys;
use harness::init::Scaffold;
use harness::keys::ssh_keygen_of;
use harness::ran::{Ran, bento};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn wire_line(label: &str, parts: &[&[u8]]) -> String {
    let mut blob = Vec::new();
    for p in parts {
        blob.extend((p.len() as u32).to_be_bytes());
        blob.extend(*p);
    }
    format!("{label} {} made-by-hand", B64.encode(blob))
}

/// A P-256 key from ssh-keygen with the last byte of its point changed: it decodes, and is
/// no point of the curve.
fn off_curve(p256_line: &str) -> String {
    let mut fields = p256_line.split(' ');
    let (label, b64) = (fields.next().unwrap(), fields.next().unwrap());
    let mut blob = B64.decode(b64).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    format!("{label} {} altered", B64.encode(blob))
}

/// A key under test: its public line, and its private key when `ssh-keygen` made one.
struct Case {
    name: &'static str,
    public: String,
    private: Option<PathBuf>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, kind, bits) in [
        ("ed25519", "ed25519", None),
        ("ecdsa-p256", "ecdsa", Some("256")),
        ("ecdsa-p384", "ecdsa", Some("384")),
        ("ecdsa-p521", "ecdsa", Some("521")),
        ("rsa", "rsa", Some("2048")),
    ] {
        let (private, public) = ssh_keygen_of(dir, name, kind, bits);
        out.push(Case {
            name,
            public,
            private: Some(private),
        });
    }
    let p256 = out[1].public.clone();
    out.push(Case {
        name: "ecdsa-off-curve",
        public: off_curve(&p256),
        private: None,
    });
    out.push(Case {
        name: "dsa",
        public: wire_line(
            "ssh-dss",
            &[b"ssh-dss", &[1; 129], &[2; 21], &[3; 128], &[4; 128]],
        ),
        private: None,
    });
    out.push(Case {
        name: "security-key",
        public: wire_line(
            "sk-ssh-ed25519@openssh.com",
            &[b"sk-ssh-ed25519@openssh.com", &[5; 32], b"ssh:"],
        ),
        private: None,
    });
    out
}

/// `bento agent check-config` of an agent of `repo`'s fleet that pins `server_key` and logs
/// in with `private`.
fn agent_check(
    dir: &Path,
    repo: &Scaffold,
    server_key: &str,
    private: &Path,
) -> Result<(), String> {
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "host = \"web1\"\nserver = \"127.0.0.1:2222\"\nserver_host_key = \"{server_key}\"\nssh_key = \"{}\"\ncache_url = \"http://127.0.0.1:8080\"\nfleet_public_key = \"{}\"\n",
            private.display(),
            repo.fleet_public_key()
        ),
    )
    .unwrap();
    let out = Ran::of(bento().args(["agent", "check-config"]).arg(&file));
    if out.success() {
        Ok(())
    } else {
        Err(out.both())
    }
}

/// The agent's client, connecting to `addr` as web1 with `private`, pinning `pinned`.
fn agent_connect(addr: &str, private: &Path, pinned: &str) -> Result<Option<Vec<u8>>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let session = bento::sftp::client::connect(addr, "web1", private, pinned)
            .await
            .map_err(|e| e.to_string())?;
        let release = session.read_release().await.map_err(|e| e.to_string())?;
        Ok(release.map(|r| r.to_vec()))
    })
}

#[test]
fn every_part_of_bento_accepts_or_refuses_a_key_alike() {
    let keys = tempfile::tempdir().unwrap();
    let cases = cases(keys.path());
    let ed25519 = cases[0].public.clone();
    let mut accepted = Vec::new();
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let verdict = SshPublicKey::parse(&case.public).map_err(|e| e.to_string());
        eprintln!("{}: {verdict:?}", case.name);

        let init = Ran::of(
            bento()
                .args(["init", "--host", "web1", "--ssh-key", &case.public])
                .arg(dir.path().join("init")),
        );
        let map =
            HostKeys::parse([("web1", vec![case.public.as_str()])]).map_err(|e| e.to_string());
        let repo = Scaffold::init(dir.path(), "web1", &case.public);
        let served = repo.serve(dir.path(), false);
        let id = case
            .private
            .clone()
            .unwrap_or_else(|| dir.path().join("id"));
        let agent = agent_check(dir.path(), &repo, &case.public, &id);

        match &verdict {
            Ok(_) => {
                assert!(init.success(), "{}: init {}", case.name, init.both());
                assert!(map.is_ok(), "{}: {map:?}", case.name);
                assert!(agent.is_ok(), "{}: check-config {agent:?}", case.name);
                let Ok(server) = served else {
                    panic!("{}: serve refused an accepted key", case.name);
                };
                let private = case
                    .private
                    .as_ref()
                    .expect("accepted keys come from ssh-keygen");
                let login = server.stock_sftp(dir.path(), &[], "web1", private, "ls /\n");
                assert!(
                    login.success() && login.stdout.contains("reports"),
                    "{}: OpenSSH login: {}",
                    case.name,
                    login.both()
                );
                let release = agent_connect(&server.sftp, private, &server.pinned);
                assert_eq!(release, Ok(None), "{}: the agent's client", case.name);
                accepted.push(case.name);
            }
            Err(why) => {
                assert!(
                    !init.success() && init.both().contains(why.as_str()),
                    "{}: init should say {why:?}: {}",
                    case.name,
                    init.both()
                );
                let map_says = map.err().unwrap_or_default();
                assert!(
                    map_says.contains("host web1") && map_says.contains(why.as_str()),
                    "{}: the access map says {map_says:?}",
                    case.name
                );
                let Err(serve_says) = served else {
                    panic!("{}: serve started with a refused key", case.name);
                };
                assert!(
                    serve_says.contains("host web1, field ssh_key")
                        && serve_says.contains(why.as_str()),
                    "{}: serve says {serve_says}",
                    case.name
                );
                let agent_says = agent.err().unwrap_or_default();
                assert!(
                    agent_says.contains("server_host_key") && agent_says.contains(why.as_str()),
                    "{}: check-config says {agent_says}",
                    case.name
                );
                if let Some(private) = &case.private {
                    // Its private half is refused by the agent's client before it connects
                    // (port 9 would refuse the connection: the key is read first).
                    let err = agent_connect("127.0.0.1:9", private, &ed25519).unwrap_err();
                    assert!(
                        err.contains(&private.display().to_string()) && err.contains(why.as_str()),
                        "{}: the agent's client says {err:?}",
                        case.name
                    );
                }
            }
        }
    }
    // Positive control: the keys a host's sshd makes besides RSA all logged in.
    assert_eq!(
        accepted,
        ["ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"]
    );
}
