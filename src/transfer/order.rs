//! Dependency order: every path after the paths it refers to (those in the same set), so
//! a transfer cut short leaves complete entries whose references are complete too.
//! Pure; deterministic for the same set (ties broken by store path).

use std::collections::{BTreeSet, HashMap};

use crate::nix::store::StorePath;

/// `items` reordered so that each comes after the items its references name. References
/// outside the set, and self-references, are ignored; a cycle (impossible in a Nix store)
/// is broken where it is met.
pub fn dependency_order<T>(
    mut items: Vec<T>,
    path: impl Fn(&T) -> &StorePath,
    references: impl Fn(&T) -> &BTreeSet<StorePath>,
) -> Vec<T> {
    items.sort_by(|a, b| path(a).cmp(path(b)));
    let index: HashMap<&StorePath, usize> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (path(t), i))
        .collect();
    // 0 = not seen, 1 = on the stack, 2 = placed.
    let mut mark = vec![0u8; items.len()];
    let mut order = Vec::with_capacity(items.len());
    for start in 0..items.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
        let deps = |i: usize| -> Vec<usize> {
            let mut d: Vec<usize> = references(&items[i])
                .iter()
                .filter_map(|r| index.get(r).copied())
                .filter(|j| *j != i)
                .collect();
            d.sort_unstable_by(|a, b| b.cmp(a));
            d
        };
        mark[start] = 1;
        stack.push((start, deps(start)));
        while let Some((node, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) if mark[next] == 0 => {
                    mark[next] = 1;
                    let d = deps(next);
                    stack.push((next, d));
                }
                Some(_) => {}
                None => {
                    mark[*node] = 2;
                    order.push(*node);
                    stack.pop();
                }
            }
        }
    }
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::transfer::test_path as p;

    #[test]
    fn references_come_first() {
        // top → a, b; a → shared, a; b → shared, outside; c alone.
        let graph: Vec<(&str, &[&str])> = vec![
            ("top", &["a", "b"]),
            ("a", &["shared", "a"]),
            ("b", &["shared", "outside"]),
            ("shared", &[]),
            ("c", &[]),
        ];
        let items: Vec<(StorePath, BTreeSet<StorePath>)> = graph
            .iter()
            .map(|(n, refs)| (p(n), refs.iter().map(|r| p(r)).collect()))
            .collect();
        let mut reversed = items.clone();
        reversed.reverse();
        let a = dependency_order(items, |t| &t.0, |t| &t.1);
        let b = dependency_order(reversed, |t| &t.0, |t| &t.1);
        assert_eq!(a, b, "the order does not depend on the input's");
        let at = |n: &str| a.iter().position(|t| t.0 == p(n)).unwrap();
        assert_eq!(a.len(), 5);
        for (before, after) in [("shared", "a"), ("shared", "b"), ("a", "top"), ("b", "top")] {
            assert!(at(before) < at(after), "{before} before {after}");
        }
        // A cycle is broken, nothing is lost.
        let cyc = vec![
            (p("x"), [p("y")].into_iter().collect::<BTreeSet<_>>()),
            (p("y"), [p("x")].into_iter().collect()),
        ];
        assert_eq!(dependency_order(cyc, |t| &t.0, |t| &t.1).len(), 2);
    }
}
