//! Which staged paths `nix copy` may import next while the stream is still arriving (pure).
//!
//! A path may be imported once its entry is complete in the staging directory and each of
//! its references is valid in the store, already imported, or imported in the same batch
//! (`nix copy --no-recursive` registers a batch in one go, dependencies first). The stream
//! comes in dependency order, so what has arrived is mostly importable at once.
//!
//! May import: `nix::store`.

use std::collections::{HashMap, HashSet};

use crate::nix::store::StorePath;

/// The import's progress: what the store holds, what is staged and not imported yet, and
/// what remains.
#[derive(Debug, Clone, Default)]
pub struct Imports {
    /// Paths valid in the store: there before, or imported.
    have: HashSet<StorePath>,
    /// Paths to import, dependencies first, not imported yet.
    pending: Vec<StorePath>,
    /// Complete staged entries not imported yet, with their references.
    complete: HashMap<StorePath, Vec<StorePath>>,
    /// Whether `pending` grows as entries arrive (the paths to import are not known
    /// beforehand: a delivery, `super::deliver`).
    growing: bool,
}

impl Imports {
    /// `copy` (dependencies first) is to be imported; `have` is already in the store.
    pub fn new(have: HashSet<StorePath>, copy: &[StorePath]) -> Self {
        Imports {
            have,
            pending: copy.to_vec(),
            complete: HashMap::new(),
            growing: false,
        }
    }

    /// Every entry that arrives is to be imported, in whatever order they come; `have` is
    /// already in the store.
    pub fn growing(have: HashSet<StorePath>) -> Self {
        Imports {
            growing: true,
            ..Imports::new(have, &[])
        }
    }

    /// The entry of `path`, referring to `references`, is complete in the staging directory.
    pub fn staged(&mut self, path: StorePath, references: Vec<StorePath>) {
        if self.growing && !self.have.contains(&path) && !self.complete.contains_key(&path) {
            self.pending.push(path.clone());
        }
        self.complete.insert(path, references);
    }

    /// Whether `path` is in the store (there before, or imported).
    pub fn holds(&self, path: &StorePath) -> bool {
        self.have.contains(path)
    }

    /// What may be imported now, dependencies first; empty when nothing may.
    pub fn next_batch(&self) -> Vec<StorePath> {
        let mut chosen: HashSet<&StorePath> = HashSet::new();
        let mut batch = Vec::new();
        // Passes until nothing more may join: one when `pending` is in dependency order.
        loop {
            let before = batch.len();
            for p in &self.pending {
                let Some(refs) = self.complete.get(p) else {
                    continue;
                };
                if !chosen.contains(p)
                    && refs
                        .iter()
                        .all(|r| r == p || self.have.contains(r) || chosen.contains(r))
                {
                    chosen.insert(p);
                    batch.push(p.clone());
                }
            }
            if batch.len() == before {
                return batch;
            }
        }
    }

    /// `batch` is now in the store.
    pub fn imported(&mut self, batch: &[StorePath]) {
        let done: HashSet<&StorePath> = batch.iter().collect();
        self.pending.retain(|p| !done.contains(p));
        for p in batch {
            self.complete.remove(p);
            self.have.insert(p.clone());
        }
    }

    /// Paths not imported yet.
    pub fn left(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::test_path as p;

    /// The references of the test's paths: top → b → a → x, top → c, b → itself.
    fn refs(n: &str) -> Vec<StorePath> {
        match n {
            "a" => vec![p("x")],
            "b" => vec![p("a"), p("b")],
            "top" => vec![p("b"), p("c")],
            _ => vec![],
        }
    }

    #[test]
    fn a_batch_takes_what_is_staged_and_whose_references_are_there() {
        // top → b → a, top → c; d stands alone. "x" is in the store already.
        let order = ["a", "b", "c", "d", "top"];
        type Names<'a> = &'a [&'a str];
        let cases: &[(Names, Names, Names)] = &[
            // imported before, staged → next batch
            (&[], &[], &[]),
            (&[], &["b"], &[]),
            (&[], &["a", "b"], &["a", "b"]),
            (&[], &["a", "b", "top"], &["a", "b"]),
            (&[], &["a", "b", "c", "top"], &["a", "b", "c", "top"]),
            (&["a"], &["b", "d"], &["b", "d"]),
            (&["a", "b"], &["top"], &[]),
            (&["a", "b", "c"], &["top"], &["top"]),
        ];
        for (imported, staged, want) in cases {
            let have: HashSet<StorePath> = [p("x")].into_iter().collect();
            let copy: Vec<StorePath> = order.iter().map(|n| p(n)).collect();
            let mut imports = Imports::new(have, &copy);
            let first: Vec<StorePath> = imported.iter().map(|n| p(n)).collect();
            for n in *imported {
                imports.staged(p(n), refs(n));
            }
            assert_eq!(imports.next_batch(), first, "{imported:?}");
            imports.imported(&first);
            for n in *staged {
                imports.staged(p(n), refs(n));
            }
            let got = imports.next_batch();
            assert_eq!(
                got,
                want.iter().map(|n| p(n)).collect::<Vec<_>>(),
                "{imported:?} {staged:?}"
            );
            imports.imported(&got);
            assert_eq!(imports.left(), order.len() - imported.len() - want.len());
        }
    }

    #[test]
    fn a_growing_import_takes_entries_in_any_order() {
        // top → b → a; c stands alone; "x" is in the store already.
        type Names<'a> = &'a [&'a str];
        let cases: &[(Names, Names, usize)] = &[
            // arrived (in this order) → next batch, paths left
            (&[], &[], 0),
            (&["top"], &[], 1),
            (&["top", "b", "a"], &["a", "b"], 1),
            (&["top", "c", "b", "a"], &["c", "a", "b", "top"], 0),
            (&["b", "x"], &[], 1),
        ];
        for (arrived, want, left) in cases {
            let mut imports = Imports::growing([p("x")].into_iter().collect());
            for n in *arrived {
                imports.staged(p(n), refs(n));
            }
            let got = imports.next_batch();
            assert_eq!(
                got,
                want.iter().map(|n| p(n)).collect::<Vec<_>>(),
                "{arrived:?}"
            );
            imports.imported(&got);
            assert_eq!(imports.left(), *left, "{arrived:?}");
            assert!(imports.holds(&p("x")));
            assert_eq!(imports.holds(&p("top")), want.contains(&"top"));
        }
    }
}
