//! Pure decisions of a deploy: should a host get a new release, which generation it gets,
//! and what a rollback republishes. No files, no processes: tested table-driven.

use serde::Serialize;

use super::history::HistoryEntry;

/// What the publish tree says about a host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current<'a> {
    pub generation: u64,
    pub store_path: &'a str,
    /// Whether the release's signature verifies with today's fleet key.
    pub signed_by_fleet_key: bool,
    /// Whether the published files (`files/manifest.json`) are the ones configured now.
    pub files_up_to_date: bool,
}

/// Why a release is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The host had no release.
    First,
    /// The built system differs from the published one.
    Changed,
    /// Same system, but the release was signed by another key (the fleet key was rotated):
    /// agents trusting the new key would refuse it.
    Resigned,
    /// Same system, but the host's delivered files changed.
    FilesChanged,
    /// `--force`.
    Forced,
    /// `--rollback`.
    Rollback,
}

/// The decision for one built host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Publish { generation: u64, reason: Reason },
    Unchanged { generation: u64 },
}

/// The generation after everything ever published: the current release and the history
/// both count, so losing either never makes generations go backwards. `None` on overflow.
pub fn next_generation(current: Option<u64>, history_max: Option<u64>) -> Option<u64> {
    current.max(history_max).unwrap_or(0).checked_add(1)
}

/// Whether a host whose build produced `built` gets a new release. `None` when the
/// generation counter would overflow.
pub fn decide(
    current: Option<Current<'_>>,
    history_max: Option<u64>,
    built: &str,
    force: bool,
) -> Option<Decision> {
    let reason = match current {
        None => Some(Reason::First),
        Some(c) if c.store_path != built => Some(Reason::Changed),
        Some(c) if !c.signed_by_fleet_key => Some(Reason::Resigned),
        Some(c) if !c.files_up_to_date => Some(Reason::FilesChanged),
        Some(_) if force => Some(Reason::Forced),
        Some(_) => None,
    };
    let Some(reason) = reason else {
        return current.map(|c| Decision::Unchanged {
            generation: c.generation,
        });
    };
    let generation = next_generation(current.map(|c| c.generation), history_max)?;
    Some(Decision::Publish { generation, reason })
}

/// What `--rollback` republishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    pub store_path: String,
    /// The generation that first published that path.
    pub of_generation: u64,
}

/// The system before the current one. When the current release is itself a rollback, the
/// search starts below the generation it restored, so rolling back twice goes two steps
/// back instead of toggling between two systems.
pub fn rollback_target(
    history: &[HistoryEntry],
    current_generation: u64,
    current_path: &str,
) -> Option<RollbackTarget> {
    let origin = history
        .iter()
        .rev()
        .find(|e| e.generation == current_generation && e.store_path == current_path)
        .map_or(current_generation, |e| {
            e.rollback_of.unwrap_or(e.generation)
        });
    history
        .iter()
        .rev()
        .filter(|e| e.generation < origin && e.store_path != current_path)
        .max_by_key(|e| e.generation)
        .map(|e| RollbackTarget {
            store_path: e.store_path.clone(),
            of_generation: e.rollback_of.unwrap_or(e.generation),
        })
}

/// Which of a host's generation roots to remove, given each root's generation and the store
/// path it keeps: every root whose system is not among the `keep` most recently published
/// distinct systems. The current release's system always counts as one of them, whatever
/// its age, and a `keep` of 0 is taken as 1. Returned sorted.
pub fn roots_to_prune(roots: &[(u64, String)], current: &str, keep: usize) -> Vec<u64> {
    let mut newest_first: Vec<&(u64, String)> = roots.iter().collect();
    newest_first.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut kept: Vec<&str> = vec![current];
    for (_, path) in newest_first {
        if kept.len() >= keep.max(1) {
            break;
        }
        if !kept.contains(&path.as_str()) {
            kept.push(path);
        }
    }
    let mut prune: Vec<u64> = roots
        .iter()
        .filter(|(_, path)| !kept.contains(&path.as_str()))
        .map(|(generation, _)| *generation)
        .collect();
    prune.sort_unstable();
    prune
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
    const B: &str = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
    const C: &str = "/nix/store/cccccccccccccccccccccccccccccccc-c";

    fn cur(generation: u64, store_path: &str) -> Option<Current<'_>> {
        Some(Current {
            generation,
            store_path,
            signed_by_fleet_key: true,
            files_up_to_date: true,
        })
    }

    #[test]
    fn next_generation_never_goes_backwards() {
        let cases = [
            (None, None, Some(1)),
            (Some(3), None, Some(4)),
            (None, Some(7), Some(8)),
            (Some(3), Some(7), Some(8)),
            (Some(9), Some(7), Some(10)),
            (Some(u64::MAX), None, None),
        ];
        for (current, history, want) in cases {
            assert_eq!(
                next_generation(current, history),
                want,
                "{current:?} {history:?}"
            );
        }
    }

    #[test]
    fn publish_only_what_changed() {
        let unsigned = Some(Current {
            generation: 4,
            store_path: A,
            signed_by_fleet_key: false,
            files_up_to_date: true,
        });
        let new_files = Some(Current {
            generation: 4,
            store_path: A,
            signed_by_fleet_key: true,
            files_up_to_date: false,
        });
        let publish = |generation, reason| Some(Decision::Publish { generation, reason });
        let cases = [
            (
                "first release",
                None,
                None,
                A,
                false,
                publish(1, Reason::First),
            ),
            (
                "first, history survived",
                None,
                Some(5),
                A,
                false,
                publish(6, Reason::First),
            ),
            (
                "unchanged",
                cur(4, A),
                Some(4),
                A,
                false,
                Some(Decision::Unchanged { generation: 4 }),
            ),
            (
                "changed",
                cur(4, A),
                Some(4),
                B,
                false,
                publish(5, Reason::Changed),
            ),
            (
                "changed, history lost",
                cur(4, A),
                None,
                B,
                false,
                publish(5, Reason::Changed),
            ),
            (
                "changed, history ahead",
                cur(4, A),
                Some(6),
                B,
                false,
                publish(7, Reason::Changed),
            ),
            (
                "forced",
                cur(4, A),
                Some(4),
                A,
                true,
                publish(5, Reason::Forced),
            ),
            (
                "forced and changed",
                cur(4, A),
                Some(4),
                B,
                true,
                publish(5, Reason::Changed),
            ),
            (
                "other key",
                unsigned,
                Some(4),
                A,
                false,
                publish(5, Reason::Resigned),
            ),
            (
                "files changed",
                new_files,
                Some(4),
                A,
                false,
                publish(5, Reason::FilesChanged),
            ),
            (
                "files and system changed",
                new_files,
                Some(4),
                B,
                false,
                publish(5, Reason::Changed),
            ),
            ("overflow", cur(u64::MAX, A), None, B, false, None),
        ];
        for (name, current, history, built, force, want) in cases {
            assert_eq!(decide(current, history, built, force), want, "{name}");
        }
    }

    fn entry(generation: u64, store_path: &str, rollback_of: Option<u64>) -> HistoryEntry {
        HistoryEntry {
            format: super::super::history::HISTORY_FORMAT,
            generation,
            store_path: store_path.to_owned(),
            created: 1_790_000_000 + generation,
            rollback_of,
            commit: None,
            dirty: false,
        }
    }

    #[test]
    fn rollback_targets() {
        let target = |p: &str, g| {
            Some(RollbackTarget {
                store_path: p.to_owned(),
                of_generation: g,
            })
        };
        let linear = vec![entry(1, A, None), entry(2, B, None), entry(3, C, None)];
        let rolled = vec![
            entry(1, A, None),
            entry(2, B, None),
            entry(3, C, None),
            entry(4, B, Some(2)),
        ];
        let rolled_twice = [rolled.clone(), vec![entry(5, A, Some(1))]].concat();
        let redeployed = [rolled.clone(), vec![entry(5, C, None)]].concat();
        let forced = vec![entry(1, A, None), entry(2, B, None), entry(3, B, None)];
        type Case<'a> = (
            &'a str,
            Vec<HistoryEntry>,
            u64,
            &'a str,
            Option<RollbackTarget>,
        );
        let cases: Vec<Case> = vec![
            ("to the previous system", linear.clone(), 3, C, target(B, 2)),
            (
                "rolling back again goes further back",
                rolled.clone(),
                4,
                B,
                target(A, 1),
            ),
            ("nothing older left", rolled_twice, 5, A, None),
            (
                "after a new deploy, back to the rollback",
                redeployed,
                5,
                C,
                target(B, 2),
            ),
            (
                "forced republish of the same path is skipped",
                forced,
                3,
                B,
                target(A, 1),
            ),
            (
                "history lost its last line",
                linear[..2].to_vec(),
                3,
                C,
                target(B, 2),
            ),
            ("single release", vec![entry(1, A, None)], 1, A, None),
            ("no history", vec![], 3, C, None),
        ];
        for (name, history, generation, path, want) in cases {
            assert_eq!(rollback_target(&history, generation, path), want, "{name}");
        }
    }

    #[test]
    fn old_systems_lose_their_roots_and_recent_ones_keep_them() {
        const D: &str = "/nix/store/dddddddddddddddddddddddddddddddd-d";
        let roots = |list: &[(u64, &str)]| -> Vec<(u64, String)> {
            list.iter().map(|(g, p)| (*g, (*p).to_owned())).collect()
        };
        // (case, roots, current system, keep, generations pruned)
        type Case<'a> = (&'a str, Vec<(u64, String)>, &'a str, usize, Vec<u64>);
        let cases: &[Case] = &[
            ("nothing yet", vec![], A, 3, vec![]),
            (
                "fewer systems than kept",
                roots(&[(1, A), (2, B)]),
                B,
                3,
                vec![],
            ),
            (
                "the oldest system goes",
                roots(&[(1, A), (2, B), (3, C), (4, D)]),
                D,
                3,
                vec![1],
            ),
            (
                "a system published twice keeps both roots while recent",
                roots(&[(1, A), (2, B), (3, C), (4, B)]),
                B,
                2,
                vec![1],
            ),
            (
                "keep 1: only the current system",
                roots(&[(1, A), (2, B), (3, C)]),
                C,
                1,
                vec![1, 2],
            ),
            ("keep 0 is keep 1", roots(&[(1, A), (2, B)]), B, 0, vec![1]),
            (
                "the current system is kept even when its root is old",
                roots(&[(1, A), (2, B), (3, C), (4, D)]),
                A,
                2,
                vec![2, 3],
            ),
            (
                "the current system without a root of its own still counts",
                roots(&[(1, A), (2, B), (3, C)]),
                D,
                2,
                vec![1, 2],
            ),
        ];
        for (name, roots, current, keep, want) in cases {
            assert_eq!(roots_to_prune(roots, current, *keep), *want, "{name}");
        }
    }
}
