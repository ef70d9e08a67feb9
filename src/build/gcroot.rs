//! Garbage-collector roots under the state directory: a symlink there, registered by Nix as
//! an indirect root, keeps a built or published system (and its closure) from
//! `nix-collect-garbage`. Removing the symlink releases it.

use std::path::Path;

use crate::nix::cmd::{CmdError, Command};

/// The command that makes `link` a GC root of `store_path` (and fails if the path is not in
/// the store, which is how a rollback learns its target is gone).
pub fn add_root_command(store_path: &str, link: &Path) -> Command {
    Command::new("nix-store")
        .args(["--realise", store_path, "--add-root"])
        .arg(link)
}

/// Makes `link` a GC root of `store_path`, creating its directory.
pub fn add_root(store_path: &str, link: &Path) -> Result<(), CmdError> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CmdError::Io {
            argv: format!("mkdir -p {}", dir.display()),
            source,
        })?;
    }
    add_root_command(store_path, link).run().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        assert_eq!(
            add_root_command(
                "/nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-x",
                Path::new("/s/gcroots/web1/generation-3")
            )
            .argv(),
            "nix-store --realise /nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-x --add-root /s/gcroots/web1/generation-3"
        );
    }
}
