//! The per-host virtual tree, as pure functions over SFTP path strings.
//!
//! Every path a client sends is normalized lexically here before anything touches the disk:
//! `.` and empty components are dropped, `..` pops a component and is refused when it would
//! climb above the virtual root, and an absolute path is read relative to that root (the
//! client's working directory is always `/`). What remains is classified into one of the few
//! nodes that exist; everything else is "no such file". The disk side (`confine`) then opens
//! the node with `openat2(RESOLVE_BENEATH)`, so a symlink cannot undo what this module decided.
//! Public so that the fuzz target `sftp_path` reaches it.
//!
//! ```text
//! /                     directory (virtual)
//! /release              read-only file   <host>/release
//! /files/...            read-only tree   <host>/files/...
//! /reports/             write-only dir   <host>/reports/ (create-new files only)
//! /watch/<gen>[/<secs>] read blocks until the release generation differs from <gen>
//! ```
//!
//! Hand-written: path crates normalize `..` (or clamp it at the root); this must refuse it,
//! and classify what is left into the few nodes of the tree, which no crate knows.

use thiserror::Error;

use crate::report::check_report_name;

/// Why a path names nothing a client may reach.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path {0:?} climbs above the root")]
    Escapes(String),
    #[error("no such file: {0:?}")]
    NotFound(String),
    #[error("invalid name in {path:?}: {reason}")]
    BadName { path: String, reason: &'static str },
}

/// What a normalized path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    Release,
    /// `files/<rel>`; `rel` is empty for `/files` itself, else components joined by `/`.
    Files(String),
    ReportsDir,
    Report(String),
    WatchDir,
    /// `/watch/<known>[/<secs>]`: wait until the generation differs from `known`.
    Watch {
        known: u64,
        wait_secs: Option<u64>,
    },
}

impl Node {
    /// The path of this node as a client sees it (absolute, normalized).
    pub fn virtual_path(&self) -> String {
        match self {
            Node::Root => "/".to_owned(),
            Node::Release => "/release".to_owned(),
            Node::Files(rel) if rel.is_empty() => "/files".to_owned(),
            Node::Files(rel) => format!("/files/{rel}"),
            Node::ReportsDir => "/reports".to_owned(),
            Node::Report(name) => format!("/reports/{name}"),
            Node::WatchDir => "/watch".to_owned(),
            Node::Watch {
                known,
                wait_secs: None,
            } => format!("/watch/{known}"),
            Node::Watch {
                known,
                wait_secs: Some(s),
            } => format!("/watch/{known}/{s}"),
        }
    }

    /// The path of this node relative to the host's directory on disk, when it has one.
    pub fn disk_path(&self) -> Option<String> {
        match self {
            Node::Release => Some("release".to_owned()),
            Node::Files(rel) if rel.is_empty() => Some("files".to_owned()),
            Node::Files(rel) => Some(format!("files/{rel}")),
            _ => None,
        }
    }
}

/// Splits `path` into normalized components, refusing `..` above the root and NUL bytes.
pub fn normalize(path: &str) -> Result<Vec<&str>, PathError> {
    if path.contains('\0') {
        return Err(PathError::BadName {
            path: path.to_owned(),
            reason: "contains a NUL byte",
        });
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::Escapes(path.to_owned()));
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts)
}

/// Normalizes and classifies an SFTP path.
pub fn resolve(path: &str) -> Result<Node, PathError> {
    let parts = normalize(path)?;
    let not_found = || PathError::NotFound(path.to_owned());
    match parts.as_slice() {
        [] => Ok(Node::Root),
        ["release"] => Ok(Node::Release),
        ["files", rest @ ..] => Ok(Node::Files(rest.join("/"))),
        ["reports"] => Ok(Node::ReportsDir),
        ["reports", name] => {
            check_report_name(name).map_err(|reason| PathError::BadName {
                path: path.to_owned(),
                reason,
            })?;
            Ok(Node::Report((*name).to_owned()))
        }
        ["watch"] => Ok(Node::WatchDir),
        ["watch", known] => Ok(Node::Watch {
            known: known.parse().map_err(|_| not_found())?,
            wait_secs: None,
        }),
        ["watch", known, secs] => Ok(Node::Watch {
            known: known.parse().map_err(|_| not_found())?,
            wait_secs: Some(secs.parse().map_err(|_| not_found())?),
        }),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_nodes() {
        let cases: &[(&str, Node)] = &[
            ("/", Node::Root),
            ("", Node::Root),
            (".", Node::Root),
            ("/release", Node::Release),
            ("release", Node::Release),
            ("//release/", Node::Release),
            ("/files/./a/../b", Node::Files("b".to_owned())),
            ("/files", Node::Files(String::new())),
            ("files/x/y", Node::Files("x/y".to_owned())),
            ("/reports/", Node::ReportsDir),
            ("/reports/gen-7.json", Node::Report("gen-7.json".to_owned())),
            ("/watch", Node::WatchDir),
            (
                "/watch/12",
                Node::Watch {
                    known: 12,
                    wait_secs: None,
                },
            ),
            (
                "watch/0/30",
                Node::Watch {
                    known: 0,
                    wait_secs: Some(30),
                },
            ),
            ("/files/../release", Node::Release),
        ];
        for (path, want) in cases {
            assert_eq!(resolve(path).as_ref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn escapes_and_unknown_paths_are_refused() {
        for path in [
            "..",
            "/..",
            "/../etc/passwd",
            "files/../../x",
            "/release/../../",
        ] {
            assert!(
                matches!(resolve(path), Err(PathError::Escapes(_))),
                "{path}"
            );
        }
        for path in [
            "/etc/passwd",
            "/release/x",
            "/reports/a/b",
            "/watch/abc",
            "/watch/1/x",
            "/watch/1/2/3",
            "/publish",
        ] {
            assert!(
                matches!(resolve(path), Err(PathError::NotFound(_))),
                "{path}"
            );
        }
        assert!(matches!(
            resolve("/files/a\0b"),
            Err(PathError::BadName { .. })
        ));
    }

    #[test]
    fn hidden_report_names_are_refused() {
        assert!(matches!(
            resolve("/reports/.hidden"),
            Err(PathError::BadName { .. })
        ));
    }

    #[test]
    fn virtual_and_disk_paths() {
        assert_eq!(Node::Files("a/b".into()).virtual_path(), "/files/a/b");
        assert_eq!(
            Node::Files("a/b".into()).disk_path().as_deref(),
            Some("files/a/b")
        );
        assert_eq!(Node::Release.disk_path().as_deref(), Some("release"));
        assert_eq!(Node::ReportsDir.disk_path(), None);
    }
}
