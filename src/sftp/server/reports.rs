//! Reports uploaded by a host into `/reports/`: new files only, size-capped, rotated by the
//! server.
//!
//! An upload is written to a temporary `.upload-<name>-<random>` file in the host's
//! `reports/` directory and renamed to `<name>` with `RENAME_NOREPLACE` when the client closes
//! it, so an existing report is never overwritten and readers (`bento status`) never see a
//! partial report. An upload that goes past `max_report_bytes` is refused and its temporary
//! file removed at once; one abandoned by a disconnect is removed when its handle drops.
//! After each completed upload the oldest reports (by mtime, then name) are deleted until at
//! most `max_reports` remain and they total at most `max_reports_total_bytes`. Clients can
//! neither delete nor rename nor list reports. Temporaries left by a crash are removed by the
//! next rotation once an hour old.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rand::RngCore as _;
use rustix::fs::{AtFlags, FileType, RenameFlags};
use rustix::io::Errno;
use thiserror::Error;

use super::confine;

/// Prefix of in-progress uploads.
const TEMP_PREFIX: &str = ".upload-";
/// Age after which an orphaned temporary is removed.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Most directory entries looked at by one rotation.
const MAX_LISTED: usize = 100_000;

#[derive(Debug, Error)]
pub(crate) enum ReportError {
    #[error("report {name} already exists; reports are never overwritten")]
    Exists { name: String },
    #[error("report {name} is larger than the {cap}-byte limit; the upload was discarded")]
    TooLarge { name: String, cap: u64 },
    #[error("cannot {op} report {name}: {errno}")]
    Io {
        op: &'static str,
        name: String,
        errno: Errno,
    },
}

/// One stored report, as rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReportInfo {
    pub name: String,
    pub size: u64,
    pub mtime: (i64, i64),
}

/// Which reports to delete, oldest first, so that at most `max_count` remain and their sizes
/// total at most `max_total`. `keep` (the report just written) is never chosen.
pub(crate) fn plan_rotation(
    reports: &[ReportInfo],
    keep: &str,
    max_count: usize,
    max_total: u64,
) -> Vec<String> {
    let mut sorted: Vec<&ReportInfo> = reports.iter().collect();
    sorted.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.name.cmp(&b.name)));
    let mut count = sorted.len();
    let mut total: u64 = sorted.iter().map(|r| r.size).sum();
    let mut delete = Vec::new();
    for r in sorted {
        if count <= max_count && total <= max_total {
            break;
        }
        if r.name == keep {
            continue;
        }
        count -= 1;
        total = total.saturating_sub(r.size);
        delete.push(r.name.clone());
    }
    delete
}

/// An upload in progress.
pub(crate) struct Upload {
    dir: OwnedFd,
    file: OwnedFd,
    temp: String,
    name: String,
    cap: u64,
    end: u64,
    done: bool,
}

impl Upload {
    /// Starts writing report `name` (already checked by `vfs::check_report_name`).
    pub(crate) fn begin(root: BorrowedFd<'_>, name: &str, cap: u64) -> Result<Self, ReportError> {
        let io = |op| {
            move |errno| ReportError::Io {
                op,
                name: name.to_owned(),
                errno,
            }
        };
        let dir = confine::reports_dir(root).map_err(io("open the directory of"))?;
        match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {
                return Err(ReportError::Exists {
                    name: name.to_owned(),
                });
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io("check")(e)),
        }
        let temp = format!("{TEMP_PREFIX}{name}-{:016x}", rand::rngs::OsRng.next_u64());
        let file = confine::create_new(dir.as_fd(), &temp).map_err(io("create"))?;
        Ok(Upload {
            dir,
            file,
            temp,
            name: name.to_owned(),
            cap,
            end: 0,
            done: false,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Bytes up to the furthest write so far.
    pub(crate) fn len(&self) -> u64 {
        self.end
    }

    /// Writes `data` at `offset`. Past the cap, the upload is refused; the caller drops it,
    /// which removes the partial file.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ReportError> {
        let end = offset.saturating_add(data.len() as u64);
        if end > self.cap {
            return Err(ReportError::TooLarge {
                name: self.name.clone(),
                cap: self.cap,
            });
        }
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pwrite(&self.file, &data[done..], offset + done as u64).map_err(
                |errno| ReportError::Io {
                    op: "write",
                    name: self.name.clone(),
                    errno,
                },
            )?;
            if n == 0 {
                return Err(ReportError::Io {
                    op: "write",
                    name: self.name.clone(),
                    errno: Errno::NOSPC,
                });
            }
            done += n;
        }
        self.end = self.end.max(end);
        Ok(())
    }

    /// Puts the report in place and rotates old ones; returns how many were deleted.
    pub(crate) fn finish(mut self, max_count: usize, max_total: u64) -> Result<usize, ReportError> {
        let io = |op, errno| ReportError::Io {
            op,
            name: self.name.clone(),
            errno,
        };
        rustix::fs::fsync(&self.file).map_err(|e| io("sync", e))?;
        match rustix::fs::renameat_with(
            self.dir.as_fd(),
            self.temp.as_str(),
            self.dir.as_fd(),
            self.name.as_str(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(ReportError::Exists {
                    name: self.name.clone(),
                });
            }
            Err(e) => return Err(io("store", e)),
        }
        self.done = true;
        Ok(rotate(self.dir.as_fd(), &self.name, max_count, max_total))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), self.temp.as_str(), AtFlags::empty());
        }
    }
}

/// Deletes the reports `plan_rotation` picks and stale temporaries; returns how many reports
/// were deleted. Failures are logged, not returned: the upload itself succeeded.
fn rotate(dir: BorrowedFd<'_>, keep: &str, max_count: usize, max_total: u64) -> usize {
    let names = match rustix::fs::openat(
        dir,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|d| confine::list(&d, MAX_LISTED))
    {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list reports for rotation");
            return 0;
        }
    };
    let now = i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX);
    let mut reports = Vec::new();
    for name in names {
        let Ok(st) = confine::lstat_entry(dir, &name) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            continue;
        }
        if name.starts_with('.') {
            if name.starts_with(TEMP_PREFIX) && now - st.st_mtime > STALE_TEMP.as_secs() as i64 {
                let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
            }
            continue;
        }
        reports.push(ReportInfo {
            name,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        });
    }
    let mut deleted = 0;
    for name in plan_rotation(&reports, keep, max_count, max_total) {
        match rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => deleted += 1,
            Err(e) => tracing::warn!(report = %name, error = %e, "cannot delete old report"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, size: u64, t: i64) -> ReportInfo {
        ReportInfo {
            name: name.to_owned(),
            size,
            mtime: (t, 0),
        }
    }

    #[test]
    fn rotation_deletes_oldest_first() {
        let reports = [r("c", 10, 3), r("a", 10, 1), r("b", 10, 2), r("d", 10, 4)];
        // count cap
        assert_eq!(plan_rotation(&reports, "d", 2, 1000), vec!["a", "b"]);
        // total cap
        assert_eq!(plan_rotation(&reports, "d", 10, 25), vec!["a", "b"]);
        // within both caps
        assert!(plan_rotation(&reports, "d", 4, 40).is_empty());
        // the kept report is skipped even when oldest
        assert_eq!(plan_rotation(&reports, "a", 3, 1000), vec!["b"]);
        // same mtime: name decides
        let same = [r("y", 1, 5), r("x", 1, 5), r("z", 1, 6)];
        assert_eq!(plan_rotation(&same, "z", 1, 1000), vec!["x", "y"]);
    }

    #[test]
    fn upload_is_create_new_capped_and_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(
            tmp.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let mut up = Upload::begin(root.as_fd(), "r1", 10).unwrap();
        up.write(0, b"hello").unwrap();
        assert_eq!(up.finish(10, 100).unwrap(), 0);
        assert_eq!(
            std::fs::read(tmp.path().join("reports/r1")).unwrap(),
            b"hello"
        );
        assert!(matches!(
            Upload::begin(root.as_fd(), "r1", 10),
            Err(ReportError::Exists { .. })
        ));

        let mut big = Upload::begin(root.as_fd(), "r2", 10).unwrap();
        big.write(0, b"12345").unwrap();
        assert!(matches!(
            big.write(5, b"678901"),
            Err(ReportError::TooLarge { cap: 10, .. })
        ));
        drop(big);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("reports"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["r1"], "partial upload removed");

        // Two uploads racing for one name: the second to finish loses, nothing is overwritten.
        let mut a = Upload::begin(root.as_fd(), "r3", 10).unwrap();
        let mut b = Upload::begin(root.as_fd(), "r3", 10).unwrap();
        a.write(0, b"a").unwrap();
        b.write(0, b"b").unwrap();
        a.finish(10, 100).unwrap();
        assert!(matches!(b.finish(10, 100), Err(ReportError::Exists { .. })));
        assert_eq!(std::fs::read(tmp.path().join("reports/r3")).unwrap(), b"a");
    }
}
