//! Store queries: path info (NarHash, NarSize, references, deriver, signatures, CA) for many
//! paths in one `nix path-info --json` call, and whole closures. Accepts Nix 2.8's JSON list
//! and the object keyed by path that newer Nix prints.

use std::collections::BTreeSet;

use serde_json::Value;
use thiserror::Error;

use super::cmd::{self, CmdError};
use super::hash::{HashError, Sha256Hash};
use super::store::{self, StoreError, StorePath};

/// Paths per `nix path-info` call; keeps argv well under the kernel's limit.
const BATCH: usize = 2000;

#[derive(Debug, Error)]
pub enum PathInfoError {
    #[error("querying the Nix store failed: {0}")]
    Nix(#[from] CmdError),
    #[error("cannot read `nix path-info --json` output: {0}")]
    Json(String),
    #[error("store path {0} is not valid (not in the store); build or copy it first")]
    NotValid(String),
    #[error("path info for {path}: {source}")]
    Hash {
        path: String,
        #[source]
        source: HashError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the store knows about one valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

/// Parses `nix path-info --json` output of any supported Nix version.
pub fn parse_json(bytes: &[u8]) -> Result<Vec<PathInfo>, PathInfoError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| PathInfoError::Json(e.to_string()))?;
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let path = item
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| PathInfoError::Json("an entry has no \"path\"".into()))?;
                parse_entry(path, item)
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(path, item)| parse_entry(path, item))
            .collect(),
        _ => Err(PathInfoError::Json("expected a list or an object".into())),
    }
}

fn parse_any_path(s: &str) -> Result<StorePath, StoreError> {
    if s.starts_with('/') {
        store::parse(s)
    } else {
        store::parse(&format!("{}/{s}", store::STORE_DIR))
    }
}

fn parse_entry(path: &str, item: &Value) -> Result<PathInfo, PathInfoError> {
    if item.is_null() || item.get("valid").and_then(Value::as_bool) == Some(false) {
        return Err(PathInfoError::NotValid(path.to_owned()));
    }
    let json_err = |what: &str| PathInfoError::Json(format!("{path}: {what}"));
    let nar_hash = match item.get("narHash") {
        Some(Value::String(s)) => Sha256Hash::parse(s),
        // Newer Nix may spell hashes as {"algorithm": "sha256", "format": ..., "hash": ...}.
        Some(Value::Object(o)) => {
            let algo = o
                .get("algorithm")
                .and_then(Value::as_str)
                .unwrap_or("sha256");
            let h = o.get("hash").and_then(Value::as_str).unwrap_or_default();
            Sha256Hash::parse(&format!("{algo}:{h}"))
        }
        _ => return Err(json_err("no narHash")),
    }
    .map_err(|source| PathInfoError::Hash {
        path: path.to_owned(),
        source,
    })?;
    let nar_size = item
        .get("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| json_err("no narSize"))?;
    let references = item
        .get("references")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .map(|r| {
                    r.as_str()
                        .ok_or_else(|| json_err("a reference is not a string"))
                        .and_then(|s| parse_any_path(s).map_err(PathInfoError::from))
                })
                .collect::<Result<BTreeSet<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let deriver = item
        .get("deriver")
        .and_then(Value::as_str)
        .map(parse_any_path)
        .transpose()?;
    let signatures = item
        .get("signatures")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let ca = item.get("ca").and_then(Value::as_str).map(str::to_owned);
    Ok(PathInfo {
        path: parse_any_path(path)?,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures,
        ca,
    })
}

/// Where to query: the machine's default store, or another one (`local?root=/tmp/h1`,
/// `file:///...`).
///
/// A query never substitutes: Nix 2.8's `path-info` otherwise asks every configured
/// substituter (the network) about each path that is not valid.
#[derive(Clone, Default)]
pub struct Store {
    pub url: Option<String>,
    /// Extra environment for the `nix` processes of queries (e.g. `NIX_CONFIG`).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for Store {
    /// Shows the names of the extra variables only: `NIX_CONFIG` may carry access tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl Store {
    pub fn local() -> Self {
        Store::default()
    }

    pub fn at(url: impl Into<String>) -> Self {
        Store {
            url: Some(url.into()),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the `nix` processes of this store's queries.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn path_info(&self, recursive: bool) -> cmd::Command {
        let mut c = cmd::nix().args(["path-info", "--json", "--option", "substitute", "false"]);
        for (key, value) in &self.env {
            c = c.env(key, value);
        }
        if let Some(url) = &self.url {
            c = c.args(["--store", url]);
        }
        if recursive {
            c = c.arg("--recursive");
        }
        c
    }

    /// Path info for each of `paths`, each for itself (a `.drv` for the derivation, not its
    /// outputs), in one process per 2000 paths of each kind.
    pub fn query(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        self.query_inner(paths, false)
    }

    /// Path info for every path in the closure of `paths`, each path once.
    pub fn closure(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        let mut all = self.query_inner(paths, true)?;
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all.dedup_by(|a, b| a.path == b.path);
        Ok(all)
    }

    fn query_inner(
        &self,
        paths: &[StorePath],
        recursive: bool,
    ) -> Result<Vec<PathInfo>, PathInfoError> {
        let mut out = Vec::with_capacity(paths.len());
        // Given a `.drv` path, `nix path-info` answers for the derivation's outputs unless
        // told `--derivation`; given any other path with that flag, it answers for its
        // deriver. So each kind gets its own call.
        let (drvs, others): (Vec<_>, Vec<_>) = paths
            .iter()
            .cloned()
            .partition(|p| p.name().ends_with(".drv"));
        let groups = [(others, false), (drvs, true)];
        for (chunk, derivation) in groups
            .iter()
            .flat_map(|(group, drv)| group.chunks(BATCH).map(move |c| (c, *drv)))
        {
            let mut cmd = self.path_info(recursive);
            if derivation {
                cmd = cmd.arg("--derivation");
            }
            let cmd = cmd.args(chunk.iter().map(store::render));
            let result = cmd.run();
            let output = match result {
                Ok(o) => o,
                Err(e) => {
                    // Name the missing path rather than only quoting Nix. (Nix 2.8 says
                    // "is not a valid store path" for a missing `.drv`, newer Nix "is not
                    // valid".)
                    if let Some(p) = chunk.iter().map(store::render).find(|p| {
                        let tail = e.stderr_tail();
                        tail.contains(&format!("'{p}' is not valid"))
                            || tail.contains(&format!("'{p}' is not a valid store path"))
                    }) {
                        return Err(PathInfoError::NotValid(p));
                    }
                    return Err(e.into());
                }
            };
            out.extend(parse_json(&output.stdout)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Output of Nix 2.8 `nix path-info --json -r` for a two-path closure.
    const NIX_28: &str = r#"[{"path":"/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep","narHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","narSize":120,"references":[],"deriver":"/nix/store/zziy6gya6m4f40mnjayx1vwxifjvrnkz-dep.drv","registrationTime":1795319078,"ultimate":true},{"path":"/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top","narHash":"sha256-8yWyV5QBCQy1VvwMSlX6kzrEYq46x5popSQYBox8O/g=","narSize":328,"references":["/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep"],"deriver":"/nix/store/scvdsmqlvcmik3p9q9pcjpxj8lbffvn9-top.drv","registrationTime":1795319078,"ultimate":true}]"#;

    #[test]
    fn list_and_object_shapes_agree() {
        let list = parse_json(NIX_28.as_bytes()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].nar_size, 328);
        assert_eq!(list[1].references.len(), 1);
        // The same data in the newer shape: an object keyed by path.
        let items: Vec<Value> = serde_json::from_str(NIX_28).unwrap();
        let mut obj = serde_json::Map::new();
        for mut item in items {
            let path = item["path"].as_str().unwrap().to_owned();
            item.as_object_mut().unwrap().remove("path");
            obj.insert(path, item);
        }
        let object = parse_json(serde_json::to_string(&obj).unwrap().as_bytes()).unwrap();
        assert_eq!(object, list);
    }

    #[test]
    fn debug_output_does_not_show_environment_values() {
        let s = Store::at("local?root=/tmp/h1").env("NIX_CONFIG", "access-tokens = x=hunter2");
        let shown = format!("{s:?}");
        assert!(
            shown.contains("NIX_CONFIG") && shown.contains("/tmp/h1"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn invalid_entries_and_garbage_are_errors() {
        let null_entry = r#"{"/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep": null}"#;
        assert!(matches!(
            parse_json(null_entry.as_bytes()),
            Err(PathInfoError::NotValid(_))
        ));
        assert!(matches!(
            parse_json(b"not json"),
            Err(PathInfoError::Json(_))
        ));
        assert!(matches!(parse_json(b"42"), Err(PathInfoError::Json(_))));
        let bad_hash = NIX_28.replace("sha256-HDfQ", "md5-HDfQ");
        assert!(matches!(
            parse_json(bad_hash.as_bytes()),
            Err(PathInfoError::Hash { .. })
        ));
        let outside = NIX_28.replace(
            "\"/nix/store/62zx2hw8gp9dzf022s6cibdx2pl0v9dx-dep\"]",
            "\"/tmp/x\"]",
        );
        assert!(matches!(
            parse_json(outside.as_bytes()),
            Err(PathInfoError::Store(StoreError::OutsideStore { .. }))
        ));
    }
}
