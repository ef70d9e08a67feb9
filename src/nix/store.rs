//! Store paths and the store directory (`/nix/store`): parsing with errors that say what is
//! wrong, and the hash part that names narinfos.

use nix_derivation::nixbase32;
use thiserror::Error;

pub use nix_derivation::StorePath;

/// The only store directory Bento supports: NixOS hosts and binary caches use it.
pub const STORE_DIR: &str = "/nix/store";

/// Length of the nix32 hash part of a store path's base name.
pub const HASH_PART_LEN: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{path:?} is not inside the Nix store {STORE_DIR}")]
    OutsideStore { path: String },
    #[error("{path:?} is not a valid store path: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{input:?} is not a store path hash: expected {HASH_PART_LEN} characters of nix32")]
    BadHashPart { input: String },
}

/// The `nix_derivation` store directory value for [`STORE_DIR`].
pub fn store_dir() -> nix_derivation::StoreDir {
    nix_derivation::StoreDir::default()
}

/// Parses an absolute store path such as `/nix/store/<hash>-<name>`.
/// A path below a store path (`.../bin/foo`) is refused; see [`parse_prefix`].
pub fn parse(path: &str) -> Result<StorePath, StoreError> {
    let Some(base) = path
        .strip_prefix(STORE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Err(StoreError::OutsideStore {
            path: path.to_owned(),
        });
    };
    StorePath::from_basename(base.as_bytes()).map_err(|e| StoreError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses the store path that `path` is in or below (`/nix/store/<hash>-<name>/bin/x`).
pub fn parse_prefix(path: &str) -> Result<StorePath, StoreError> {
    let Some(rest) = path
        .strip_prefix(STORE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Err(StoreError::OutsideStore {
            path: path.to_owned(),
        });
    };
    let base = rest.split('/').next().unwrap_or_default();
    parse(&format!("{STORE_DIR}/{base}")).map_err(|e| match e {
        StoreError::Invalid { reason, .. } => StoreError::Invalid {
            path: path.to_owned(),
            reason,
        },
        other => other,
    })
}

/// The absolute path of a store path.
pub fn render(path: &StorePath) -> String {
    path.to_absolute_path()
}

/// The nix32 hash part of a store path (the narinfo's file name without `.narinfo`).
pub fn hash_part(path: &StorePath) -> String {
    nixbase32::encode(path.digest())
}

/// Validates a hash part taken from outside (a URL): exactly 32 nix32 characters.
pub fn parse_hash_part(input: &str) -> Result<[u8; 20], StoreError> {
    let bad = || StoreError::BadHashPart {
        input: input.chars().take(80).collect(),
    };
    if input.len() != HASH_PART_LEN {
        return Err(bad());
    }
    let bytes = nixbase32::decode(input.as_bytes()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep";

    #[test]
    fn parses_and_renders() {
        let p = parse(GOOD);
        assert_eq!(p.as_ref().map(render).ok().as_deref(), Some(GOOD));
        assert_eq!(
            p.as_ref().map(hash_part).ok().as_deref(),
            Some("62zx2hw8gp9dzf022s6cibdx2pl0v9dx")
        );
        assert_eq!(
            p.as_ref().map(|p| p.name().to_owned()).ok().as_deref(),
            Some("dep")
        );
    }

    #[test]
    fn refusals() {
        let cases = [
            ("/tmp/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep", "outside"),
            ("/nix/store", "outside"),
            (
                "/nix/storex/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep",
                "outside",
            ),
            (
                "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep/bin/sh",
                "invalid",
            ),
            ("/nix/store/short-dep", "invalid"),
            ("/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-", "invalid"),
            (
                "/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-a/../b",
                "invalid",
            ),
            ("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", "invalid"),
        ];
        for (input, want) in cases {
            let got = parse(input);
            let kind = match &got {
                Err(StoreError::OutsideStore { .. }) => "outside",
                Err(StoreError::Invalid { .. }) => "invalid",
                Err(StoreError::BadHashPart { .. }) => "hash",
                Ok(_) => "ok",
            };
            assert_eq!(kind, want, "{input}: {got:?}");
        }
    }

    #[test]
    fn prefix_finds_the_store_path_of_a_file_inside_it() {
        let p = parse_prefix(&format!("{GOOD}/bin/switch-to-configuration"));
        assert_eq!(p.map(|p| render(&p)).ok().as_deref(), Some(GOOD));
        assert!(parse_prefix("/etc/passwd").is_err());
    }

    #[test]
    fn hash_parts_from_urls() {
        assert!(parse_hash_part("62zx2hw8gp9dzf022s6cibdx2pl0v9dx").is_ok());
        for bad in [
            "",
            "62zx2hw8gp9dzf022s6cibdx2pl0v9d",
            "62zx2hw8gp9dzf022s6cibdx2pl0v9dxx",
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            "../../../../../../../etc/passwd..",
        ] {
            assert!(parse_hash_part(bad).is_err(), "{bad}");
        }
    }
}
