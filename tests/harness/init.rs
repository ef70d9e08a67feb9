//! A fleet repository made by the real `bento init` (one host, the fleet key it generates),
//! as a new administrator gets one: for the tests of what `bento serve` shows and accepts
//! that need no Nix store and no root. [`super::repo`] is the richer repository of fake
//! hosts that builds and deploys.

use std::path::{Path, PathBuf};

use super::ran::{Ran, bento};

/// `dir/repo` made by `bento init`, its state directory `dir/state`.
pub struct Scaffold {
    pub root: PathBuf,
    /// Its `bento.toml`.
    pub file: PathBuf,
    pub state: PathBuf,
}

impl Scaffold {
    /// `bento init` with one host, `host`, whose SSH key is then set to `key` (any text: the
    /// fleet file is written as an operator would, valid or not).
    pub fn init(dir: &Path, host: &str, key: &str) -> Scaffold {
        let root = dir.join("repo");
        let ran = Ran::of(bento().args(["init", "--host", host]).arg(&root));
        assert!(ran.success(), "bento init: {}", ran.both());
        let file = root.join("bento.toml");
        let state = dir.join("state");
        let toml = std::fs::read_to_string(&file).unwrap();
        let line = toml
            .lines()
            .find(|l| l.starts_with("ssh_key = "))
            .unwrap()
            .to_owned();
        let toml = toml
            .replace(&line, &format!("ssh_key = \"{key}\""))
            .replace(
                "[fleet]\n",
                &format!("[fleet]\nstate_dir = \"{}\"\n", state.display()),
            );
        std::fs::write(&file, toml).unwrap();
        Scaffold { root, file, state }
    }

    /// The fleet's public key, as agents are given it.
    pub fn fleet_public_key(&self) -> String {
        std::fs::read_to_string(self.root.join("keys/bento-fleet-1.public"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The fleet's signing key.
    pub fn fleet_secret_key(&self) -> bento::nix::keys::SecretKey {
        let text = std::fs::read_to_string(self.root.join("keys/bento-fleet-1.secret")).unwrap();
        bento::nix::keys::SecretKey::parse(text.trim()).unwrap()
    }

    /// `bento serve` on loopback ports of its own choosing, with the dashboard when asked;
    /// its log in `dir`. `Err` with what it said when it did not start.
    pub fn serve(&self, dir: &Path, dashboard: bool) -> Result<super::serve::Serve, String> {
        let mut args = vec![
            "--cache-listen",
            "127.0.0.1:0",
            "--sftp-listen",
            "127.0.0.1:0",
        ];
        if dashboard {
            args.extend(["--dashboard-listen", "127.0.0.1:0"]);
        } else {
            args.push("--no-dashboard");
        }
        super::serve::Serve::try_start(&self.file, &args, &dir.join("serve.log"))
    }
}
