//! The in-memory index the handlers answer from: every path of every published closure,
//! with its narinfo signed and rendered once, the zstd file that holds its NAR (when one is
//! verified), and which hosts' closures it belongs to.
//!
//! An [`Index`] is immutable; a refresh builds a new one and swaps it in. Building entries
//! and working out closure membership are pure functions of path infos, tested here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;

use super::access::Caller;
use super::compress::ZstFile;
use crate::nix::keys::SecretKey;
use crate::nix::narinfo::{self, Compression, FileInfo, NarInfoError};
use crate::nix::pathinfo::PathInfo;
use crate::nix::store::StorePath;

/// One servable store path.
#[derive(Debug)]
pub struct ServablePath {
    pub info: PathInfo,
    pub hash_part: [u8; 20],
    /// The narinfo pointing at the plain NAR (`Compression: none`), always servable.
    pub narinfo_plain: Bytes,
    /// The verified zstd file and the narinfo pointing at it, when there is one.
    pub zst: Option<Compressed>,
    /// Ids of the hosts whose closure holds this path, sorted (empty with open access).
    pub hosts: Box<[u32]>,
}

/// A path's NAR in a verified zstd file, and the signed narinfo that advertises it.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub file: ZstFile,
    pub narinfo: Bytes,
}

impl ServablePath {
    /// The narinfo to answer with: the zstd one if its file is verified, else the plain one.
    pub fn narinfo(&self) -> &Bytes {
        self.zst
            .as_ref()
            .map_or(&self.narinfo_plain, |c| &c.narinfo)
    }

    fn visible_to(&self, caller: &Caller, host_ids: &HashMap<String, u32>) -> bool {
        match caller {
            Caller::Anyone => true,
            Caller::Host(name) => host_ids
                .get(name)
                .is_some_and(|id| self.hosts.binary_search(id).is_ok()),
            Caller::Unauthenticated => false,
        }
    }
}

/// URL of the plain NAR of a path, relative to the cache root.
pub fn plain_url(info: &PathInfo) -> String {
    format!("nar/{}.nar", info.nar_hash.nix32_digest())
}

/// URL of a compressed NAR, relative to the cache root.
pub fn zst_url(zst: &ZstFile) -> String {
    format!("nar/{}.nar.zst", zst.file_hash.nix32_digest())
}

/// Signs and renders the plain narinfo of a path.
pub fn render_plain(info: &PathInfo, key: &SecretKey) -> Result<Bytes, NarInfoError> {
    let ni = narinfo::build(info, &plain_url(info), Compression::None, None, Some(key))?;
    Ok(Bytes::from(narinfo::render(&ni)))
}

/// Signs and renders the narinfo of a path whose NAR is in a verified zstd file.
pub fn render_zst(info: &PathInfo, zst: &ZstFile, key: &SecretKey) -> Result<Bytes, NarInfoError> {
    let file = FileInfo {
        hash: zst.file_hash,
        size: zst.size,
    };
    let ni = narinfo::build(
        info,
        &zst_url(zst),
        Compression::Zstd,
        Some(file),
        Some(key),
    )?;
    Ok(Bytes::from(narinfo::render(&ni)))
}

/// For each path, the ids of the hosts whose closure holds it: a walk over references from
/// each host's top path. Paths not reachable from any top are absent.
pub fn membership(infos: &[PathInfo], tops: &[(u32, StorePath)]) -> HashMap<StorePath, Box<[u32]>> {
    let by_path: HashMap<&StorePath, &PathInfo> = infos.iter().map(|i| (&i.path, i)).collect();
    let mut sets: HashMap<StorePath, BTreeSet<u32>> = HashMap::new();
    for (host, top) in tops {
        let mut seen: HashSet<&StorePath> = HashSet::new();
        let mut stack = vec![top];
        while let Some(path) = stack.pop() {
            if !seen.insert(path) {
                continue;
            }
            sets.entry(path.clone()).or_default().insert(*host);
            if let Some(info) = by_path.get(path) {
                stack.extend(info.references.iter().filter(|r| *r != path));
            }
        }
    }
    sets.into_iter()
        .map(|(p, s)| (p, s.into_iter().collect()))
        .collect()
}

/// An immutable snapshot of everything servable.
#[derive(Debug, Default)]
pub struct Index {
    by_hash: HashMap<[u8; 20], Arc<ServablePath>>,
    by_nar_hash: HashMap<[u8; 32], Vec<Arc<ServablePath>>>,
    by_file_hash: HashMap<[u8; 32], Vec<Arc<ServablePath>>>,
    host_ids: HashMap<String, u32>,
    /// Host name → token when access control is on.
    tokens: Option<HashMap<String, String>>,
}

/// What a lookup found, for the caller asking.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<ServablePath>),
    /// Unknown, or another host's: the two are answered the same way.
    NotFound,
    /// Access control is on and the caller did not authenticate.
    Unauthenticated,
}

impl Index {
    pub fn new(
        entries: Vec<Arc<ServablePath>>,
        host_ids: HashMap<String, u32>,
        tokens: Option<HashMap<String, String>>,
    ) -> Self {
        let mut index = Index {
            by_hash: HashMap::with_capacity(entries.len()),
            by_nar_hash: HashMap::with_capacity(entries.len()),
            by_file_hash: HashMap::with_capacity(entries.len()),
            host_ids,
            tokens,
        };
        for e in entries {
            index
                .by_nar_hash
                .entry(e.info.nar_hash.0)
                .or_default()
                .push(e.clone());
            if let Some(zst) = &e.zst {
                index
                    .by_file_hash
                    .entry(zst.file.file_hash.0)
                    .or_default()
                    .push(e.clone());
            }
            index.by_hash.insert(e.hash_part, e);
        }
        index
    }

    pub fn tokens(&self) -> Option<&HashMap<String, String>> {
        self.tokens.as_ref()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<ServablePath>> {
        self.by_hash.values()
    }

    pub fn get(&self, hash_part: &[u8; 20]) -> Option<&Arc<ServablePath>> {
        self.by_hash.get(hash_part)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn hosts(&self) -> usize {
        self.host_ids.len()
    }

    pub fn compressed(&self) -> usize {
        self.by_hash.values().filter(|e| e.zst.is_some()).count()
    }

    fn pick<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a Arc<ServablePath>>,
        caller: &Caller,
    ) -> Lookup {
        if *caller == Caller::Unauthenticated {
            return Lookup::Unauthenticated;
        }
        candidates
            .into_iter()
            .find(|e| e.visible_to(caller, &self.host_ids))
            .map_or(Lookup::NotFound, |e| Lookup::Found(e.clone()))
    }

    pub fn narinfo(&self, hash_part: &[u8; 20], caller: &Caller) -> Lookup {
        self.pick(self.by_hash.get(hash_part), caller)
    }

    pub fn nar(&self, nar_hash: &[u8; 32], caller: &Caller) -> Lookup {
        self.pick(self.by_nar_hash.get(nar_hash).into_iter().flatten(), caller)
    }

    pub fn nar_zst(&self, file_hash: &[u8; 32], caller: &Caller) -> Lookup {
        self.pick(
            self.by_file_hash.get(file_hash).into_iter().flatten(),
            caller,
        )
    }
}

/// Builds the entries of `infos`, reusing those of `previous` whose path info is unchanged
/// (no signing again) and signing the rest in parallel.
pub fn build_entries(
    infos: Vec<PathInfo>,
    previous: &Index,
    members: &HashMap<StorePath, Box<[u32]>>,
    key: &SecretKey,
    keep_zst: impl Fn(&ZstFile) -> bool + Sync,
) -> Vec<Result<Arc<ServablePath>, NarInfoError>> {
    infos
        .into_par_iter()
        .map(|info| {
            let hash_part = *info.path.digest();
            let hosts = members.get(&info.path).cloned().unwrap_or_default();
            let old = previous.get(&hash_part).filter(|e| e.info == info);
            let (narinfo_plain, zst) = match old {
                Some(e) => (
                    e.narinfo_plain.clone(),
                    e.zst.clone().filter(|c| keep_zst(&c.file)),
                ),
                None => (render_plain(&info, key)?, None),
            };
            Ok(Arc::new(ServablePath {
                info,
                hash_part,
                narinfo_plain,
                zst,
                hosts,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::Sha256Hash;
    use crate::nix::store;

    fn path(name: &str) -> StorePath {
        let hash = crate::nix::hash::nixbase32::encode(&Sha256Hash::of(name.as_bytes()).0[..20]);
        store::parse(&format!("/nix/store/{hash}-{name}")).unwrap()
    }

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: path(name),
            nar_hash: Sha256Hash::of(name.as_bytes()),
            nar_size: 100,
            references: refs.iter().map(|r| path(r)).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn membership_follows_references_per_host() {
        // web1 → a → shared; web2 → b → shared; a refers to itself.
        let infos = vec![
            info("web1-top", &["a"]),
            info("a", &["a", "shared"]),
            info("shared", &[]),
            info("web2-top", &["b"]),
            info("b", &["shared"]),
            info("orphan", &[]),
        ];
        let m = membership(&infos, &[(0, path("web1-top")), (1, path("web2-top"))]);
        let cases: &[(&str, &[u32])] = &[
            ("web1-top", &[0]),
            ("a", &[0]),
            ("shared", &[0, 1]),
            ("web2-top", &[1]),
            ("b", &[1]),
        ];
        for (name, hosts) in cases {
            assert_eq!(m.get(&path(name)).map(|h| &h[..]), Some(*hosts), "{name}");
        }
        assert!(!m.contains_key(&path("orphan")));
    }

    #[test]
    fn lookups_hide_other_hosts_paths_as_absent() {
        let key = SecretKey::generate("fleet").unwrap();
        let infos = vec![info("web1-top", &[]), info("web2-top", &[])];
        let members = membership(&infos, &[(0, path("web1-top")), (1, path("web2-top"))]);
        let entries: Vec<_> = build_entries(infos, &Index::default(), &members, &key, |_| true)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let ids: HashMap<String, u32> = [("web1".into(), 0), ("web2".into(), 1)].into();
        let index = Index::new(entries, ids, Some(HashMap::new()));
        let h1 = *path("web1-top").digest();
        let web1 = Caller::Host("web1".into());
        let web2 = Caller::Host("web2".into());
        assert!(matches!(index.narinfo(&h1, &web1), Lookup::Found(_)));
        assert!(matches!(index.narinfo(&h1, &web2), Lookup::NotFound));
        assert!(matches!(index.narinfo(&[7; 20], &web1), Lookup::NotFound));
        assert!(matches!(
            index.narinfo(&h1, &Caller::Unauthenticated),
            Lookup::Unauthenticated
        ));
        assert!(matches!(
            index.narinfo(&h1, &Caller::Host("stranger".into())),
            Lookup::NotFound
        ));
        let nar = Sha256Hash::of(b"web1-top").0;
        assert!(matches!(index.nar(&nar, &web1), Lookup::Found(_)));
        assert!(matches!(index.nar(&nar, &web2), Lookup::NotFound));
        let Lookup::Found(e) = index.narinfo(&h1, &web1) else {
            panic!("found above")
        };
        let text = String::from_utf8(e.narinfo().to_vec()).unwrap();
        assert!(text.contains("Compression: none\n"), "{text}");
        assert!(
            text.contains(&format!("URL: {}\n", plain_url(&e.info))),
            "{text}"
        );
    }
}
