//! Every path an SFTP client sends is normalized lexically and classified before anything
//! touches the disk (`sftp::server::vfs`): any path must give a node or a typed refusal,
//! never a panic. A node it gives is one its own normalized path gives again; its place on
//! disk, when it has one, is relative, under `release` or `files`, and has no `..`, empty or
//! `.` component and no NUL; a report name is one the report rules accept; and a path
//! that climbs above the root is refused as such, never resolved.
#![no_main]

use bento::sftp::server::vfs::{self, Node, PathError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let normalized = vfs::normalize(&path);
    if let Ok(parts) = &normalized {
        for part in parts {
            assert!(
                !part.is_empty() && *part != "." && *part != ".." && !part.contains('/'),
                "{path:?} normalized to {parts:?}"
            );
        }
    }
    let resolved = vfs::resolve(&path);
    if matches!(normalized, Err(PathError::Escapes(_))) {
        assert!(
            matches!(resolved, Err(PathError::Escapes(_))),
            "{path:?}: {resolved:?}"
        );
    }
    let Ok(node) = resolved else {
        return;
    };
    assert_eq!(
        vfs::resolve(&node.virtual_path()).as_ref(),
        Ok(&node),
        "{path:?} is {node:?}, its own path {:?} is not",
        node.virtual_path()
    );
    if let Some(disk) = node.disk_path() {
        assert!(!disk.starts_with('/') && !disk.contains('\0'), "{disk:?}");
        assert!(
            disk == "release" || disk == "files" || disk.starts_with("files/"),
            "{path:?} reaches {disk:?}"
        );
        assert!(
            disk.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{path:?} reaches {disk:?}"
        );
    }
    if let Node::Report(name) = &node {
        assert!(bento::report::check_report_name(name).is_ok(), "{name:?}");
        assert!(!name.contains('/') && !name.starts_with('.'), "{name:?}");
    }
});
