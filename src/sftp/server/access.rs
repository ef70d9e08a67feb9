//! Who may log in: host name → the OpenSSH public keys authorized for it.
//!
//! The server hands the fleet file's keys to [`HostKeys::new`]; tests and tools hand plain
//! `(host, ["ssh-ed25519 AAAA... c"])` pairs to [`HostKeys::parse`], which reads them with
//! the fleet file's own parser (`openssh`), so both accept the same keys with the same words.
//! This module checks names and answers "is this key one of this host's?". A host logs in
//! with its name as SSH user name. Keys are compared by their key data; comments do not
//! matter.

use std::collections::BTreeMap;

use russh::keys::ssh_key::PublicKey;
use thiserror::Error;

use crate::openssh::{SshKeyError, SshPublicKey};
use crate::release::{HOST_NAME_RULE, check_host_name};

#[derive(Debug, Error)]
pub enum HostKeysError {
    #[error("host name {host:?} is not usable for SFTP: {HOST_NAME_RULE}")]
    InvalidHostName { host: String },
    #[error("host {host} is listed twice")]
    DuplicateHost { host: String },
    #[error("host {host}: SSH key {index} ({snippet}) {source}")]
    InvalidKey {
        host: String,
        index: usize,
        snippet: String,
        #[source]
        source: SshKeyError,
    },
}

/// The access map: host name → authorized public keys. Cheap to clone behind an `Arc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostKeys {
    hosts: BTreeMap<String, Vec<PublicKey>>,
}

/// What changed between two access maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Hosts present in both whose set of keys changed.
    pub changed: Vec<String>,
}

impl HostKeys {
    /// Parses `(host, keys)` pairs, keys in OpenSSH one-line form (`type base64 [comment]`).
    /// A host with no keys is allowed and simply cannot log in.
    pub fn parse<I, H, K, S>(hosts: I) -> Result<Self, HostKeysError>
    where
        I: IntoIterator<Item = (H, K)>,
        H: Into<String>,
        K: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for (host, keys) in hosts {
            let host = host.into();
            let mut host_keys = Vec::new();
            for (i, key) in keys.into_iter().enumerate() {
                host_keys.push(parse_key(&host, i + 1, key.as_ref())?);
            }
            parsed.push((host, host_keys));
        }
        Self::new(parsed)
    }

    /// The map of `(host, keys)` pairs whose keys are already parsed (the fleet file's).
    pub fn new<I, H>(hosts: I) -> Result<Self, HostKeysError>
    where
        I: IntoIterator<Item = (H, Vec<SshPublicKey>)>,
        H: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (host, keys) in hosts {
            let host = host.into();
            if check_host_name(&host).is_err() {
                return Err(HostKeysError::InvalidHostName { host });
            }
            if map.contains_key(&host) {
                return Err(HostKeysError::DuplicateHost { host });
            }
            map.insert(host, keys.into_iter().map(|k| k.key().clone()).collect());
        }
        Ok(HostKeys { hosts: map })
    }

    /// True when `key` is one of `host`'s keys.
    pub fn is_authorized(&self, host: &str, key: &PublicKey) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|keys| keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    pub fn contains(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// Host names, sorted.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// What changes when `self` is replaced by `new`.
    pub fn diff(&self, new: &HostKeys) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        for (host, keys) in &new.hosts {
            match self.hosts.get(host) {
                None => summary.added.push(host.clone()),
                Some(old) if !same_keys(old, keys) => summary.changed.push(host.clone()),
                Some(_) => {}
            }
        }
        for host in self.hosts.keys() {
            if !new.hosts.contains_key(host) {
                summary.removed.push(host.clone());
            }
        }
        summary
    }
}

fn same_keys(a: &[PublicKey], b: &[PublicKey]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|k| b.iter().any(|o| o.key_data() == k.key_data()))
}

fn parse_key(host: &str, index: usize, text: &str) -> Result<SshPublicKey, HostKeysError> {
    let text = text.trim();
    SshPublicKey::parse(text).map_err(|source| HostKeysError::InvalidKey {
        host: host.to_owned(),
        index,
        snippet: if text.chars().count() > 24 {
            format!("{}...", text.chars().take(24).collect::<String>())
        } else {
            text.to_owned()
        },
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLRv7c/XLDHLq2O0hmUOy7+vKW9kLIOYrwurXb9jCs8 web1";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMx5bTv1jyxkwGXcDo3A8vHKJHEu9s1OWy4TKsy8Qzsz web2";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn keys_belong_to_their_host_only() {
        let hk = HostKeys::parse([("web1", vec![K1]), ("web2", vec![K2])]).unwrap();
        assert!(hk.is_authorized("web1", &key(K1)));
        assert!(!hk.is_authorized("web1", &key(K2)));
        assert!(!hk.is_authorized("web3", &key(K1)));
        // the comment does not matter
        let no_comment = K1.rsplit_once(' ').unwrap().0;
        assert!(hk.is_authorized("web1", &key(no_comment)));
    }

    #[test]
    fn bad_input_names_the_host() {
        let err = HostKeys::parse([("web1", vec!["ssh-ed25519 AAAAnotbase64!"])]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("host web1") && msg.contains("key 1"), "{msg}");

        let err = HostKeys::parse([("../etc", vec![K1])]).unwrap_err();
        assert!(err.to_string().contains("\"../etc\""), "{err}");

        let err = HostKeys::parse([("a", vec![K1]), ("a", vec![K2])]).unwrap_err();
        assert!(matches!(err, HostKeysError::DuplicateHost { .. }), "{err}");

        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 web1";
        let err = HostKeys::parse([("web1", vec![rsa])]).unwrap_err();
        assert!(
            matches!(&err, HostKeysError::InvalidKey { host, source: SshKeyError::Rsa, .. } if host == "web1"),
            "{err}"
        );
    }

    #[test]
    fn diff_reports_added_removed_changed() {
        let old = HostKeys::parse([("a", vec![K1]), ("b", vec![K1]), ("c", vec![K1])]).unwrap();
        let new = HostKeys::parse([("b", vec![K1]), ("c", vec![K2]), ("d", vec![K2])]).unwrap();
        let d = old.diff(&new);
        assert_eq!(d.added, vec!["d"]);
        assert_eq!(d.removed, vec!["a"]);
        assert_eq!(d.changed, vec!["c"]);
    }
}
