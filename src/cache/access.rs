//! Per-host access to the cache: which host a request comes from, by HTTP basic auth
//! (user = host name, password = the host's token, which Nix reads from a netrc file).
//!
//! [`Access::Open`] (the default) serves every published closure to anyone who can reach
//! the cache. With tokens, a host may fetch only paths of its own closure; the index
//! answers another host's path exactly as it answers an unknown one (404).
//!
//! Tokens live in `<state_dir>/cache-tokens/<host>` (mode 0600, one line) or are given
//! directly. Parsing the header and comparing tokens are pure and tested here: the header by
//! hand (ten lines on `base64`, where axum's typed headers would add a crate family for one
//! header), the comparison by `subtle`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use thiserror::Error;

use crate::release::check_host_name;

/// Directory under the state directory holding one token file per host.
pub const TOKENS_DIR: &str = "cache-tokens";

#[derive(Debug, Error)]
pub enum AccessError {
    #[error("cannot read cache token {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write cache token {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::durable::WriteError,
    },
    #[error("cache token file {path} is empty")]
    Empty { path: PathBuf },
}

/// Who may fetch what.
#[derive(Clone, Default)]
pub enum Access {
    /// Every published path, to anyone.
    #[default]
    Open,
    /// Each host its own closure, with these tokens (host name → token).
    Tokens(HashMap<String, String>),
    /// Each host its own closure, with tokens read from `<state_dir>/cache-tokens/`; a
    /// published host without a token file gets a fresh one at the next refresh.
    TokenDir,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Open => f.write_str("Open"),
            Access::Tokens(map) => {
                let mut hosts: Vec<_> = map.keys().collect();
                hosts.sort();
                write!(f, "Tokens(<redacted for {hosts:?}>)")
            }
            Access::TokenDir => f.write_str("TokenDir"),
        }
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Access control is off: everything published is visible.
    Anyone,
    /// A host that proved its token.
    Host(String),
    /// Access control is on and the request carries no valid credentials.
    Unauthenticated,
}

/// The credentials of `Authorization: Basic`: the host name and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

/// Parses `Authorization: Basic base64(user:password)`.
pub fn parse_basic(header: &[u8]) -> Option<BasicAuth> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, value) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(BasicAuth {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// Compares two tokens in time independent of where they first differ (`subtle`; only the
/// length, the same for every token Bento makes, can show).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Decides who is calling, given the token table (None when access control is off).
pub fn identify(tokens: Option<&HashMap<String, String>>, header: Option<&[u8]>) -> Caller {
    let Some(tokens) = tokens else {
        return Caller::Anyone;
    };
    let Some(BasicAuth { user, password }) = header.and_then(parse_basic) else {
        return Caller::Unauthenticated;
    };
    match tokens.get(&user) {
        Some(token) if tokens_equal(token, &password) => Caller::Host(user),
        _ => Caller::Unauthenticated,
    }
}

/// A fresh random token: 32 bytes as lowercase hex.
pub fn generate_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Reads the tokens of `hosts` from `<state_dir>/cache-tokens/`, creating (mode 0600) the
/// token of any host that has none.
pub fn load_or_create(
    state_dir: &Path,
    hosts: &[String],
) -> Result<HashMap<String, String>, AccessError> {
    let dir = state_dir.join(TOKENS_DIR);
    let mut out = HashMap::with_capacity(hosts.len());
    for host in hosts {
        if check_host_name(host).is_err() {
            continue;
        }
        let path = dir.join(host);
        let token = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(AccessError::Empty { path });
                }
                token
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|source| AccessError::Read {
                    path: dir.clone(),
                    source,
                })?;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                let token = generate_token();
                crate::durable::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
                    .map_err(|source| AccessError::Write {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(host = %host, path = %path.display(), "created cache token");
                token
            }
            Err(source) => return Err(AccessError::Read { path, source }),
        };
        out.insert(host.clone(), token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn callers_are_identified() {
        let tokens: HashMap<String, String> = [("web1".to_owned(), "s3cret".to_owned())].into();
        let cases: &[(Option<Vec<u8>>, Caller)] = &[
            (Some(basic("web1:s3cret")), Caller::Host("web1".into())),
            (Some(basic("web1:s3cre")), Caller::Unauthenticated),
            (Some(basic("web1:s3cret2")), Caller::Unauthenticated),
            (Some(basic("web2:s3cret")), Caller::Unauthenticated),
            (Some(basic("web1")), Caller::Unauthenticated),
            (Some(b"Bearer s3cret".to_vec()), Caller::Unauthenticated),
            (Some(b"Basic !!!".to_vec()), Caller::Unauthenticated),
            (Some(b"\xff\xfe".to_vec()), Caller::Unauthenticated),
            (None, Caller::Unauthenticated),
        ];
        for (header, want) in cases {
            assert_eq!(
                identify(Some(&tokens), header.as_deref()),
                *want,
                "{header:?}"
            );
        }
        assert_eq!(identify(None, None), Caller::Anyone);
        assert_eq!(identify(None, Some(&basic("x:y"))), Caller::Anyone);
    }

    #[test]
    fn basic_auth_parsing() {
        let auth = |user: &str, password: &str| {
            Some(BasicAuth {
                user: user.into(),
                password: password.into(),
            })
        };
        assert_eq!(parse_basic(&basic("a:b:c")), auth("a", "b:c"));
        assert_eq!(parse_basic(b"basic YTpi"), auth("a", "b"));
        assert_eq!(parse_basic(b"Basic"), None);
    }

    #[test]
    fn token_files_are_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["web1".to_owned(), "../evil".to_owned()];
        let first = load_or_create(dir.path(), &hosts).unwrap();
        assert_eq!(first.len(), 1, "invalid host names get no token file");
        let path = dir.path().join(TOKENS_DIR).join("web1");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), &hosts).unwrap();
        assert_eq!(first, again);
        assert_eq!(first["web1"].len(), 64);
        assert!(!format!("{:?}", Access::Tokens(first)).contains(&again["web1"]));
    }
}
