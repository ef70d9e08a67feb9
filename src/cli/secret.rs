//! `bento secret encrypt|edit`: write `secrets/<host>/<name>.age` beside `bento.toml`,
//! age-encrypted to the host's SSH key from `bento.toml` (and to any operator's keys given),
//! so that the server only ever holds ciphertext. The agent decrypts it (`agent::secrets`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::args::FleetFile;
use crate::config::Fleet;

/// Encrypt a file for one host, or edit one, with age (agenix-compatible).
///
/// The file is secrets/HOST/NAME.age next to bento.toml, encrypted to HOST's ssh_key in
/// bento.toml and to every --recipient. Deliver it with
/// `[hosts.HOST.files] NAME = { source = "secrets/HOST/NAME.age", mode = 0o400 }`: the
/// server publishes the ciphertext as it is, the host's agent decrypts it with its SSH key
/// into its files_dir. The server cannot read it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Encrypt standard input (or --input FILE) to secrets/HOST/NAME.age.
    Encrypt {
        #[command(flatten)]
        target: Target,
        /// Read the plaintext from FILE instead of standard input.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Decrypt secrets/HOST/NAME.age with --identity, open it in $VISUAL or $EDITOR (default
    /// vi), and encrypt what was saved again (to the host, --identity's FILE.pub and every
    /// --recipient). A file that does not exist yet starts empty.
    Edit {
        #[command(flatten)]
        target: Target,
        /// Your SSH private key, one the file is encrypted to; its public half (FILE.pub)
        /// is kept as a recipient so that you can edit it again.
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    #[command(flatten)]
    fleet: FleetFile,
    /// The host the file is for (a host of bento.toml).
    host: String,
    /// The file's name on the host (in its files_dir).
    name: String,
    /// Also encrypt to this OpenSSH public key (`ssh-ed25519 AAAA...`), e.g. an operator's,
    /// so that it can be edited later; repeatable.
    #[arg(long, value_name = "KEY")]
    recipient: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Encrypt { target, input } => {
            let plaintext = match &input {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut bytes = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("cannot read the plaintext from standard input")?;
                    bytes
                }
            };
            let (fleet, path) = target.open()?;
            let recipients = target.recipients(&fleet, None)?;
            write(&path, &encrypt(&recipients, &plaintext)?)?;
            done(&target, &path);
        }
        Action::Edit { target, identity } => {
            let (fleet, path) = target.open()?;
            let mine = PathBuf::from(format!("{}.pub", identity.display()));
            let recipients = target.recipients(&fleet, Some(&mine))?;
            let before = match std::fs::read(&path) {
                Ok(ciphertext) => decrypt(&identity, &ciphertext)
                    .with_context(|| format!("cannot decrypt {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).context(format!("cannot read {}", path.display())),
            };
            let after = edit(&target.name, &before)?;
            if after == before && path.exists() {
                println!("{}: unchanged", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            write(&path, &encrypt(&recipients, &after)?)?;
            done(&target, &path);
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl Target {
    /// The fleet, and the path of the age file after checking the host and the name.
    fn open(&self) -> anyhow::Result<(Fleet, PathBuf)> {
        let fleet = self.fleet.load()?;
        if !fleet.hosts.contains_key(&self.host) {
            anyhow::bail!("{} is not a host of {}", self.host, fleet.file.display());
        }
        crate::files::check_name(&self.name)?;
        let dir = fleet.file.parent().unwrap_or(Path::new("."));
        let path = dir
            .join("secrets")
            .join(&self.host)
            .join(format!("{}.age", self.name));
        Ok((fleet, path))
    }

    /// The host's key, `extra_file`'s key when given, and every --recipient.
    fn recipients(
        &self,
        fleet: &Fleet,
        extra_file: Option<&Path>,
    ) -> anyhow::Result<Vec<age::ssh::Recipient>> {
        let mut lines = Vec::new();
        if let Some(host) = fleet.hosts.get(&self.host) {
            lines.push((
                format!("hosts.{}.ssh_key", self.host),
                host.ssh_key.to_openssh(),
            ));
        }
        if let Some(file) = extra_file {
            let text = std::fs::read_to_string(file).with_context(|| {
                format!(
                    "cannot read {} (the public half of --identity, kept as a recipient)",
                    file.display()
                )
            })?;
            lines.push((file.display().to_string(), text.trim().to_owned()));
        }
        for (i, r) in self.recipient.iter().enumerate() {
            lines.push((format!("--recipient #{}", i + 1), r.trim().to_owned()));
        }
        lines
            .into_iter()
            .map(|(what, line)| {
                if !line.starts_with("ssh-ed25519 ") {
                    anyhow::bail!(
                        "{what} is not an ssh-ed25519 public key: Bento encrypts secrets to ed25519 keys only"
                    );
                }
                line.parse::<age::ssh::Recipient>().map_err(|e| {
                    anyhow::anyhow!("{what} is not an SSH public key age can encrypt to: {e:?}")
                })
            })
            .collect()
    }
}

fn encrypt(recipients: &[age::ssh::Recipient], plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(plaintext)?;
    writer.finish()?.finish()?;
    Ok(out)
}

fn decrypt(identity: &Path, ciphertext: &[u8]) -> anyhow::Result<Vec<u8>> {
    let identity = crate::agent::secrets::identity(identity)?;
    Ok(age::decrypt(&identity, ciphertext)?)
}

/// Lets the operator edit `plaintext` in their editor, in a directory only they can read,
/// removed afterwards.
fn edit(name: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = std::env::temp_dir().join(format!(
        "bento-secret-{}-{}",
        std::process::id(),
        crate::clock::unix_now_ms()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(name);
    let edited = (|| {
        crate::durable::write_atomic(&file, plaintext, 0o600)?;
        let set = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        let editor = set("VISUAL")
            .or_else(|| set("EDITOR"))
            .unwrap_or_else(|| "vi".to_owned());
        let mut words = editor.split_whitespace();
        let program = words.next().unwrap_or("vi");
        crate::nix::cmd::Command::new(program)
            .args(words)
            .arg(&file)
            .run_interactive()?;
        std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))
    })();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
    edited
}

fn write(path: &Path, ciphertext: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::durable::write_atomic(path, ciphertext, 0o644)?;
    Ok(())
}

fn done(target: &Target, path: &Path) {
    println!("{}: encrypted for {}", path.display(), target.host);
    println!(
        "deliver it with: [hosts.{}.files] {} = {{ source = \"secrets/{}/{}.age\", mode = 0o400 }}",
        target.host, target.name, target.host, target.name
    );
}
