//! `bento secret`: age-encrypted delivered files (`crate::secret`). `encrypt` seals a file
//! for a host into `secrets/<host>/<name>.age` beside bento.toml; `edit` opens one with the
//! operator's own key in `$EDITOR` and seals it again. The server only ever holds the
//! ciphertext; only the host (and the operators of `[fleet] secret_recipients`) can read it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::args::FleetFile;
use crate::config::Fleet;
use crate::durable;

/// Secrets the server cannot read: delivered files encrypted with age to the host's SSH key.
///
/// A file of `[hosts.<h>.files]` whose source ends in `.age` is published as it is (the
/// signed manifest covers the ciphertext) and decrypted by the host's agent with its SSH
/// private key (agent.toml `ssh_key`) into its files_dir. agenix files work as they are,
/// if they are encrypted to the host's key. Add your own key to `[fleet] secret_recipients`
/// to be able to `edit` them later.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    sub: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Encrypt FILE (default: standard input) for HOST into secrets/HOST/NAME.age beside
    /// bento.toml, to HOST's ssh_key and every key of [fleet] secret_recipients.
    Encrypt {
        #[command(flatten)]
        fleet: FleetFile,
        /// The host that will receive the file.
        host: String,
        /// The file's name on the host (in its files_dir).
        name: String,
        /// The plaintext to encrypt; standard input when absent.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Decrypt secrets/HOST/NAME.age with your SSH key, edit it in $VISUAL/$EDITOR (vi),
    /// and encrypt it again; a new NAME starts empty. The plaintext lives only in a private
    /// temporary file, removed afterwards.
    Edit {
        #[command(flatten)]
        fleet: FleetFile,
        host: String,
        name: String,
        /// Your SSH private key, one of [fleet] secret_recipients (default ~/.ssh/id_ed25519).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.sub {
        Sub::Encrypt {
            fleet,
            host,
            name,
            from,
        } => {
            let fleet = Fleet::load_text_only(&fleet.config)?;
            let plaintext = match &from {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read standard input")?;
                    buf
                }
            };
            seal(&fleet, &host, &name, &plaintext)?;
            Ok(ExitCode::SUCCESS)
        }
        Sub::Edit {
            fleet,
            host,
            name,
            identity,
        } => {
            let fleet = Fleet::load_text_only(&fleet.config)?;
            edit(&fleet, &host, &name, identity)
        }
    }
}

/// Where a host's sealed file lives: secrets/HOST/NAME.age beside bento.toml.
fn sealed_path(fleet: &Fleet, host: &str, name: &str) -> anyhow::Result<PathBuf> {
    if !fleet.hosts.contains_key(host) {
        anyhow::bail!("{host} is not a host of {}", fleet.file.display());
    }
    crate::files::check_name(name)?;
    let dir = fleet.file.parent().unwrap_or(Path::new("."));
    Ok(dir.join("secrets").join(host).join(format!("{name}.age")))
}

/// Encrypts `plaintext` for `host` (and the fleet's secret recipients) and writes it;
/// says how bento.toml delivers it when it does not yet.
fn seal(fleet: &Fleet, host: &str, name: &str, plaintext: &[u8]) -> anyhow::Result<()> {
    let path = sealed_path(fleet, host, name)?;
    let h = fleet
        .hosts
        .get(host)
        .with_context(|| format!("{host} is not a host"))?;
    let mut recipients = vec![h.ssh_key.to_openssh()];
    recipients.extend(fleet.secret_recipients.iter().cloned());
    let sealed = crate::secret::encrypt(plaintext, &recipients)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    durable::write_atomic(&path, &sealed, 0o644)?;
    let readers = fleet.secret_recipients.len();
    eprintln!(
        "{}: encrypted for {host}{}",
        path.display(),
        if readers == 0 {
            " only (add your key to [fleet] secret_recipients to edit it later)".to_owned()
        } else {
            format!(" and {readers} key(s) of [fleet] secret_recipients")
        }
    );
    let delivered = h.files.get(name).is_some_and(|f| f.source == path);
    if !delivered {
        let rel = path
            .strip_prefix(fleet.file.parent().unwrap_or(Path::new("/")))
            .unwrap_or(&path);
        eprintln!(
            "deliver it with, in {}:\n\n[hosts.{host}.files]\n{name:?} = {:?}\n",
            fleet.file.display(),
            rel.display().to_string()
        );
    }
    Ok(())
}

/// A private directory for the plaintext while it is edited, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt as _;
        // /dev/shm keeps the plaintext off disk where it exists.
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "bento-secret-{}-{}",
            std::process::id(),
            crate::clock::unix_now_ms()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn edit(
    fleet: &Fleet,
    host: &str,
    name: &str,
    identity: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let path = sealed_path(fleet, host, name)?;
    let identity = match identity {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh/id_ed25519"))
            .context("HOME is not set: pass --identity")?,
    };
    let before = if path.exists() {
        let sealed =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        crate::secret::decrypt(&sealed, &identity).with_context(|| {
            format!(
                "cannot open {}; only its host and the keys of [fleet] secret_recipients (when it was encrypted) can",
                path.display()
            )
        })?
    } else {
        Vec::new()
    };
    let scratch = Scratch::new()?;
    let file = scratch.0.join(name);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("cannot create {}", file.display()))?;
        f.write_all(&before)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let editor = set("VISUAL")
        .or_else(|| set("EDITOR"))
        .unwrap_or_else(|| "vi".into());
    // The editor is interactive: it gets the terminal, not the runner's captured pipes.
    // `sh -c '$EDITOR "$1"'` lets EDITOR carry arguments, as other tools allow.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("exec $BENTO_EDITOR \"$1\"")
        .arg("sh")
        .arg(&file)
        .env("BENTO_EDITOR", &editor)
        .status()
        .with_context(|| format!("cannot start the editor {}", editor.to_string_lossy()))?;
    if !status.success() {
        anyhow::bail!(
            "the editor {} exited with {status}; {} is unchanged",
            editor.to_string_lossy(),
            path.display()
        );
    }
    let after = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    drop(scratch);
    if after == before && path.exists() {
        eprintln!("{}: unchanged", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    seal(fleet, host, name, &after)?;
    Ok(ExitCode::SUCCESS)
}
