//! Package-level difference between two system closures, like nvd: packages added,
//! removed, and changed in version, with closure sizes. Store path names are split into
//! (pname, version) as `builtins.parseDrvName` does: the version starts at the first `-`
//! followed by a digit. The comparison is pure; [`closure_diff`] reads the two closures
//! from the local store.
//!
//! Hand-written: `parseDrvName`'s rule is Nix's own, two lines of it, and the crates that
//! read store paths (`nix-derivation`) stop at the name.

use std::collections::BTreeMap;

use serde::Serialize;

use super::StatusError;
use crate::nix::pathinfo::Store;
use crate::nix::store;

/// Version of the `bento diff --json` schema.
pub const DIFF_SCHEMA: u32 = 1;

/// `(pname, version)` of a store path name (`foo-1.2.3` → `("foo", "1.2.3")`, `bar` →
/// `("bar", "")`), as `builtins.parseDrvName`.
pub fn parse_name(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// One package whose presence or versions differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub pname: String,
    /// Versions in the old closure (empty when added; `""` is a path without a version).
    pub from: Vec<String>,
    /// Versions in the new closure (empty when removed).
    pub to: Vec<String>,
    /// NAR bytes of the package's paths in each closure.
    pub size_from: u64,
    pub size_to: u64,
}

impl PackageChange {
    pub fn size_delta(&self) -> i128 {
        i128::from(self.size_to) - i128::from(self.size_from)
    }
}

/// What `bento diff` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosureDiff {
    pub schema: u32,
    pub from: String,
    pub to: String,
    pub added: Vec<PackageChange>,
    pub removed: Vec<PackageChange>,
    /// Present in both with different version sets.
    pub changed: Vec<PackageChange>,
    pub paths_from: usize,
    pub paths_to: usize,
    pub size_from: u64,
    pub size_to: u64,
}

impl ClosureDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Default)]
struct Pkg {
    versions: Vec<String>,
    size: u64,
}

fn group(paths: &[(String, u64)]) -> BTreeMap<String, Pkg> {
    let mut out: BTreeMap<String, Pkg> = BTreeMap::new();
    for (name, size) in paths {
        if name.ends_with(".drv") {
            continue;
        }
        let (pname, version) = parse_name(name);
        let p = out.entry(pname.to_owned()).or_default();
        p.versions.push(version.to_owned());
        p.size += size;
    }
    for p in out.values_mut() {
        p.versions.sort();
        p.versions.dedup();
    }
    out
}

/// Compares two closures given as `(store path name, NAR size)` lists.
pub fn diff(
    from: &[(String, u64)],
    to: &[(String, u64)],
) -> (Vec<PackageChange>, Vec<PackageChange>, Vec<PackageChange>) {
    let old = group(from);
    let new = group(to);
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let empty = Pkg::default();
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for pname in names {
        let o = old.get(pname);
        let n = new.get(pname);
        let (a, b) = (o.unwrap_or(&empty), n.unwrap_or(&empty));
        let change = PackageChange {
            pname: pname.clone(),
            from: a.versions.clone(),
            to: b.versions.clone(),
            size_from: a.size,
            size_to: b.size,
        };
        match (o, n) {
            (None, Some(_)) => added.push(change),
            (Some(_), None) => removed.push(change),
            (Some(a), Some(b)) if a.versions != b.versions => changed.push(change),
            _ => {}
        }
    }
    (added, removed, changed)
}

fn closure_of(path: &str) -> Result<Vec<(String, u64)>, StatusError> {
    let bad = |problem: String| StatusError::Closure {
        path: path.to_owned(),
        problem,
    };
    let parsed = store::parse(path).map_err(|e| bad(e.to_string()))?;
    let infos = Store::local()
        .closure(&[parsed])
        .map_err(|e| bad(e.to_string()))?;
    Ok(infos
        .iter()
        .map(|i| (i.path.name().to_string(), i.nar_size))
        .collect())
}

/// Compares the closures of two store paths in the local store.
pub fn closure_diff(from: &str, to: &str) -> Result<ClosureDiff, StatusError> {
    let old = closure_of(from)?;
    let new = closure_of(to)?;
    let (added, removed, changed) = diff(&old, &new);
    tracing::debug!(
        from,
        to,
        added = added.len(),
        removed = removed.len(),
        changed = changed.len(),
        "closures compared"
    );
    Ok(ClosureDiff {
        schema: DIFF_SCHEMA,
        from: from.to_owned(),
        to: to.to_owned(),
        added,
        removed,
        changed,
        paths_from: old.len(),
        paths_to: new.len(),
        size_from: old.iter().map(|(_, s)| s).sum(),
        size_to: new.iter().map(|(_, s)| s).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_like_parse_drv_name() {
        let cases = [
            ("foo-1.0", ("foo", "1.0")),
            ("bar-2", ("bar", "2")),
            (
                "nixos-system-web1-23.11pre",
                ("nixos-system-web1", "23.11pre"),
            ),
            (
                "python3.11-requests-2.31.0",
                ("python3.11-requests", "2.31.0"),
            ),
            ("etc", ("etc", "")),
            ("unit-script-x-start", ("unit-script-x-start", "")),
            ("foo-", ("foo-", "")),
            ("glibc-2.37-8-bin", ("glibc", "2.37-8-bin")),
        ];
        for (name, want) in cases {
            assert_eq!(parse_name(name), want, "{name}");
        }
    }

    #[test]
    fn added_removed_and_changed() {
        let l = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(n, s)| (n.to_string(), *s))
                .collect::<Vec<_>>()
        };
        let from = l(&[("foo-1.0", 100), ("bar-2", 50), ("qux-3", 10), ("x.drv", 1)]);
        let to = l(&[("foo-1.1", 120), ("bar-2", 60), ("baz-0.1", 30)]);
        let (added, removed, changed) = diff(&from, &to);
        let names = |v: &[PackageChange]| v.iter().map(|c| c.pname.clone()).collect::<Vec<_>>();
        assert_eq!(names(&added), ["baz"]);
        assert_eq!(names(&removed), ["qux"]);
        assert_eq!(names(&changed), ["foo"], "bar only changed in size");
        assert_eq!(changed[0].from, ["1.0"]);
        assert_eq!(changed[0].to, ["1.1"]);
        assert_eq!(changed[0].size_delta(), 20);
        assert_eq!(added[0].to, ["0.1"]);
        assert_eq!(removed[0].size_delta(), -10);
    }
}
