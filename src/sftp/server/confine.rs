//! Opening files of a host's tree so that nothing outside it can be reached.
//!
//! Every open is `openat2` relative to a directory fd:
//! - the host's directory is opened beneath `<state_dir>/publish` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS`, so `publish/web1` cannot be a symlink to another host's directory;
//! - files inside it are opened with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so a symlink
//!   planted in the tree may point within the host's directory but never outside it (`/etc`,
//!   `../web2`, `/proc/self/root`): the kernel answers `EXDEV`/`ELOOP` instead of following;
//! - files are opened non-blocking and must be regular files (no FIFO can stall a session).
//!
//! These are thin wrappers over syscalls; their callers map `Errno`s to SFTP statuses.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

const IN_TREE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
const NO_LINKS: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

/// The name of the reports directory inside a host's directory.
pub(crate) const REPORTS_DIR: &str = "reports";

/// Opens `<publish>/<host>` as a directory; the host's name is a single component and the
/// directory itself may not be a symlink.
pub(crate) fn open_host_dir(publish: BorrowedFd<'_>, host: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        publish,
        host,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        NO_LINKS,
    )
}

/// Opens a regular file of the tree for reading; returns it with its `stat`.
pub(crate) fn open_file(root: BorrowedFd<'_>, rel: &str) -> Result<(OwnedFd, Stat), Errno> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        IN_TREE,
    )?;
    let st = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok((fd, st)),
        FileType::Directory => Err(Errno::ISDIR),
        _ => Err(Errno::ACCESS),
    }
}

/// Opens a directory of the tree for listing.
pub(crate) fn open_dir(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_TREE,
    )
}

/// `stat` of a path of the tree (following symlinks that stay inside it).
pub(crate) fn stat(root: BorrowedFd<'_>, rel: &str) -> Result<Stat, Errno> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        IN_TREE,
    )?;
    rustix::fs::fstat(&fd)
}

/// `lstat` of one entry of a directory (no following).
pub(crate) fn lstat_entry(dir: BorrowedFd<'_>, name: &str) -> Result<Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Opens (creating it when missing) the host's reports directory; it must be a real
/// directory, not a symlink.
pub(crate) fn reports_dir(root: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    match rustix::fs::mkdirat(root, REPORTS_DIR, Mode::from_raw_mode(0o750)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    rustix::fs::openat2(
        root,
        REPORTS_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        NO_LINKS,
    )
}

/// Creates a new file in `dir` (never an existing one, never through a symlink).
pub(crate) fn create_new(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o640),
        NO_LINKS,
    )
}

/// Names in a directory, without `.` and `..`.
pub(crate) fn list(dir: &OwnedFd, max: usize) -> Result<Vec<String>, Errno> {
    let mut out = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir.as_fd())?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        out.push(name.into_owned());
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_tree_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let publish = tmp.path().join("publish");
        std::fs::create_dir_all(publish.join("web1/files/sub")).unwrap();
        std::fs::create_dir_all(publish.join("web2")).unwrap();
        std::fs::write(publish.join("web1/release"), "r1").unwrap();
        std::fs::write(publish.join("web2/release"), "r2").unwrap();
        symlink("/etc/passwd", publish.join("web1/files/passwd")).unwrap();
        symlink("../../web2/release", publish.join("web1/files/other")).unwrap();
        symlink("../release", publish.join("web1/files/own")).unwrap();
        symlink(
            "/proc/self/root/etc/passwd",
            publish.join("web1/files/magic"),
        )
        .unwrap();
        symlink("../web2", publish.join("web3")).unwrap();

        let pfd =
            rustix::fs::open(&publish, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let root = open_host_dir(pfd.as_fd(), "web1").unwrap();
        for evil in [
            "files/passwd",
            "files/other",
            "files/magic",
            "../web2/release",
        ] {
            let err = open_file(root.as_fd(), evil).err();
            assert!(
                matches!(err, Some(Errno::XDEV | Errno::LOOP)),
                "{evil}: {err:?}"
            );
        }
        let (fd, st) = open_file(root.as_fd(), "files/own").unwrap();
        assert_eq!(st.st_size, 2);
        drop(fd);
        assert_eq!(
            open_file(root.as_fd(), "files/sub").err(),
            Some(Errno::ISDIR)
        );
        // The host directory itself may not be a symlink.
        assert!(open_host_dir(pfd.as_fd(), "web3").is_err());
        assert!(open_host_dir(pfd.as_fd(), "../publish/web1").is_err());
    }

    #[test]
    fn reports_dir_may_not_be_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), tmp.path().join(REPORTS_DIR)).unwrap();
        let root = rustix::fs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(reports_dir(root.as_fd()).err(), Some(Errno::LOOP));
    }
}
