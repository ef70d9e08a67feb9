//! The SFTP operations of one session over the host's virtual tree (see `vfs`): what each
//! request may do to which node, the session's open handles, and watch reads.
//!
//! | request                  | allowed on                                       |
//! |--------------------------|--------------------------------------------------|
//! | open for reading, read   | `/release`, `/files/...` (regular files), `/watch/<gen>` |
//! | open for writing, write  | `/reports/<new name>` (create-new only), capped  |
//! | stat, lstat, fstat       | everything but `/reports/<name>` (write-only)    |
//! | opendir, readdir         | `/`, `/files/...`; `/reports` and `/watch` list empty |
//! | realpath                 | any path that does not climb above `/`           |
//! | setstat, fsetstat, remove, rename, mkdir, rmdir, symlink, readlink, extensions | nothing |
//!
//! Refusals answer `SSH_FX_PERMISSION_DENIED` with a message saying why; paths outside the
//! tree answer "no such file". Every disk access (opens, reads, writes, stats, listings, and
//! closing a report: fsync and rotation) runs as `crate::blocking` work, off the runtime that
//! also serves the cache; a session waits for its own disk work, never the others.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle as HandlePacket, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::confine;
use super::metrics::{GaugeGuard, Limit};
use super::reply::send;
use super::reports::{ReportError, Upload};
use super::sessions::Sessions;
use super::vfs::{self, Node, PathError};
use crate::blocking;

/// Directory entries one `readdir` answer carries.
const READDIR_CHUNK: usize = 128;
/// Most entries listed for one directory.
const MAX_LISTED: usize = 10_000;

const MODE_FILE_RO: u32 = 0o100_444;
const MODE_FILE_WO: u32 = 0o100_200;
const MODE_DIR_RO: u32 = 0o040_555;
const MODE_DIR_WO: u32 = 0o040_300;

/// An SFTP error answer.
#[derive(Debug)]
struct Fail {
    code: StatusCode,
    msg: String,
}

impl Fail {
    fn new(code: StatusCode, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
        }
    }
    fn denied(msg: impl Into<String>) -> Self {
        Fail::new(StatusCode::PermissionDenied, msg)
    }
    fn no_such(msg: impl Into<String>) -> Self {
        Fail::new(StatusCode::NoSuchFile, msg)
    }
    fn failure(msg: impl Into<String>) -> Self {
        Fail::new(StatusCode::Failure, msg)
    }
    fn eof() -> Self {
        Fail::new(StatusCode::Eof, "end of file")
    }
    fn bad_handle() -> Self {
        Fail::failure("invalid handle")
    }
    /// A disk error on `vpath`, said without revealing anything about the disk.
    fn fs(errno: Errno, vpath: &str) -> Self {
        match errno {
            Errno::NOENT | Errno::NOTDIR => Fail::no_such(format!("{vpath}: no such file")),
            Errno::XDEV | Errno::LOOP => {
                Fail::denied(format!("{vpath}: leads outside this host's tree"))
            }
            Errno::ACCESS | Errno::PERM => Fail::denied(format!("{vpath}: permission denied")),
            Errno::ISDIR => Fail::failure(format!("{vpath} is a directory")),
            other => {
                tracing::warn!(path = vpath, error = %other, "file system error");
                Fail::failure(format!("{vpath}: server-side error"))
            }
        }
    }
    fn path(e: PathError) -> Self {
        match e {
            PathError::Escapes(p) => Fail::denied(format!("{p}: outside this host's tree")),
            PathError::NotFound(p) => Fail::no_such(format!("{p}: no such file")),
            e @ PathError::BadName { .. } => Fail::denied(e.to_string()),
        }
    }
    fn into_packet(self, id: u32) -> Packet {
        Packet::Status(Status {
            id,
            status_code: self.code,
            error_message: self.msg,
            language_tag: "en-US".to_owned(),
        })
    }
}

fn ok(id: u32) -> Packet {
    Packet::Status(Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    })
}

enum OpenHandle {
    File {
        fd: Arc<OwnedFd>,
        stat: Stat,
    },
    /// A release shown from memory (`Sessions::show_releases`).
    Shown(Bytes),
    Upload(Upload),
    Watch {
        known: u64,
        wait: Duration,
    },
    Dir {
        entries: Vec<File>,
        pos: usize,
    },
}

/// The open handles and the operations of one SFTP session of one host.
pub(crate) struct Ops {
    sessions: Arc<Sessions>,
    host: String,
    out: mpsc::Sender<Bytes>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    waits: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Ops {
    pub(crate) fn new(sessions: Arc<Sessions>, host: String, out: mpsc::Sender<Bytes>) -> Self {
        let waits = Arc::new(Semaphore::new(sessions.config().max_watches_per_session));
        Ops {
            sessions,
            host,
            out,
            handles: HashMap::new(),
            next_handle: 0,
            waits,
            cancel: CancellationToken::new(),
        }
    }

    /// Ends waiting reads and drops every handle (removing unfinished uploads).
    pub(crate) fn shutdown(&mut self) {
        self.cancel.cancel();
        self.handles.clear();
    }

    /// Answers one request; `None` when the answer will be sent later (watch reads).
    pub(crate) async fn handle(&mut self, request: Packet) -> Option<Packet> {
        let id = request.get_request_id();
        let result = match request {
            Packet::Init(_) => Ok(Packet::Version(Version::new())),
            Packet::Open(p) => self.open(id, &p.filename, p.pflags).await,
            Packet::Close(p) => return self.close(id, &p.handle),
            Packet::Read(p) => return self.read(id, &p.handle, p.offset, p.len).await,
            Packet::Write(p) => self.write(id, &p.handle, p.offset, p.data).await,
            Packet::Stat(p) => self.stat(id, &p.path).await,
            Packet::Lstat(p) => self.stat(id, &p.path).await,
            Packet::Fstat(p) => self.fstat(id, &p.handle),
            Packet::OpenDir(p) => self.opendir(id, &p.path).await,
            Packet::ReadDir(p) => self.readdir(id, &p.handle),
            Packet::RealPath(p) => realpath(id, &p.path),
            Packet::SetStat(_) | Packet::FSetStat(_) => {
                Err(Fail::denied("attributes cannot be changed"))
            }
            Packet::Remove(_) => Err(Fail::denied(
                "files cannot be removed; old reports are rotated by the server",
            )),
            Packet::Rename(_) => Err(Fail::denied("files cannot be renamed")),
            Packet::MkDir(_) | Packet::RmDir(_) => {
                Err(Fail::denied("directories cannot be created or removed"))
            }
            Packet::Symlink(_) => Err(Fail::denied("links cannot be created")),
            Packet::ReadLink(_) => Err(Fail::denied("links cannot be read")),
            Packet::Extended(p) => Err(Fail::new(
                StatusCode::OpUnsupported,
                format!("extension {} is not supported", p.request),
            )),
            _ => Err(Fail::new(StatusCode::BadMessage, "not a request")),
        };
        Some(result.unwrap_or_else(|fail| {
            if fail.code == StatusCode::PermissionDenied {
                self.sessions.metrics().requests_refused.inc();
                tracing::info!(host = %self.host, why = %fail.msg, "SFTP request refused");
            }
            fail.into_packet(id)
        }))
    }

    fn add_handle(&mut self, id: u32, handle: OpenHandle) -> Result<Packet, Fail> {
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), handle);
        Ok(Packet::Handle(HandlePacket { id, handle: name }))
    }

    /// Runs `work` on the host's directory (opened, and created when `create` is set and
    /// it is missing) as blocking work; `vpath` names what was asked for in errors.
    async fn on_disk<T: Send + 'static>(
        &self,
        create: bool,
        vpath: &str,
        work: impl FnOnce(OwnedFd, &str) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, Fail> {
        let (sessions, host, vpath) = (self.sessions.clone(), self.host.clone(), vpath.to_owned());
        blocking::run("an SFTP request's disk work", move || {
            let root = sessions
                .open_host_root(&host, create)
                .map_err(|e| Fail::fs(e, &vpath))?;
            work(root, &vpath)
        })
        .await
        .map_err(|_| Fail::failure("server-side error"))?
    }

    async fn open(&mut self, id: u32, path: &str, flags: OpenFlags) -> Result<Packet, Fail> {
        let node = vfs::resolve(path).map_err(Fail::path)?;
        let vpath = node.virtual_path();
        if self.handles.len() >= self.sessions.config().max_open_handles {
            self.sessions.metrics().limit_hit(Limit::MaxOpenHandles);
            return Err(Fail::failure("too many open handles"));
        }
        let writes = flags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        );
        match node {
            Node::Release
                if !writes && let Some(shown) = self.sessions.shown_release(&self.host) =>
            {
                let data = shown.ok_or_else(|| Fail::no_such(format!("{vpath}: no such file")))?;
                self.add_handle(id, OpenHandle::Shown(data))
            }
            Node::Release | Node::Files(_) => {
                if writes {
                    return Err(Fail::denied(format!("{vpath} is read-only")));
                }
                let disk = node.disk_path().unwrap_or_default();
                let (fd, stat) = self
                    .on_disk(false, &vpath, move |root, vpath| {
                        confine::open_file(root.as_fd(), &disk).map_err(|e| Fail::fs(e, vpath))
                    })
                    .await?;
                let fd = Arc::new(fd);
                self.add_handle(id, OpenHandle::File { fd, stat })
            }
            Node::Report(name) => {
                if flags.contains(OpenFlags::READ) || !flags.contains(OpenFlags::WRITE) {
                    return Err(Fail::denied("reports are write-only"));
                }
                if !flags.contains(OpenFlags::CREATE) || flags.contains(OpenFlags::APPEND) {
                    return Err(Fail::denied(
                        "reports can only be created, never appended to",
                    ));
                }
                let cap = self.sessions.config().max_report_bytes;
                let upload = self
                    .on_disk(true, &vpath, move |root, _| {
                        Upload::begin(root.as_fd(), &name, cap).map_err(report_fail)
                    })
                    .await?;
                self.add_handle(id, OpenHandle::Upload(upload))
            }
            Node::Watch { known, wait_secs } => {
                if writes {
                    return Err(Fail::denied(format!("{vpath} is read-only")));
                }
                let max = self.sessions.config().watch_max_wait;
                let wait = wait_secs.map_or(max, |s| Duration::from_secs(s).min(max));
                self.add_handle(id, OpenHandle::Watch { known, wait })
            }
            Node::Root | Node::ReportsDir | Node::WatchDir => {
                Err(Fail::failure(format!("{vpath} is a directory")))
            }
        }
    }

    /// Closes a handle. Closing a report upload (fsync, rotation: a directory scan and
    /// unlinks) runs as `crate::blocking` work and answers when done (`None` here), so that
    /// a fleet uploading at once does not stall the runtime that also serves the cache, and
    /// the session's other requests (watch reads) go on meanwhile.
    fn close(&mut self, id: u32, handle: &str) -> Option<Packet> {
        let upload = match self.handles.remove(handle) {
            Some(OpenHandle::Upload(upload)) => upload,
            Some(_) => return Some(ok(id)),
            None => return Some(Fail::bad_handle().into_packet(id)),
        };
        let (sessions, out, host) = (self.sessions.clone(), self.out.clone(), self.host.clone());
        tokio::spawn(async move {
            let (name, bytes) = (upload.name().to_owned(), upload.len());
            let config = sessions.config();
            let (count, total) = (config.max_reports, config.max_reports_total_bytes);
            let finished =
                blocking::run("closing a report", move || upload.finish(count, total)).await;
            let answer = match finished {
                Ok(Ok(rotated)) => {
                    let m = sessions.metrics();
                    m.reports_received.inc();
                    m.reports_rotated.inc_by(rotated as u64);
                    tracing::info!(host = %host, report = %name, bytes, rotated, "report received");
                    ok(id)
                }
                Ok(Err(e)) => report_fail(e).into_packet(id),
                Err(e) => {
                    tracing::error!(host = %host, error = %e, "closing a report failed");
                    Fail::failure("server-side error closing the report").into_packet(id)
                }
            };
            send(&out, answer).await;
        });
        None
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Option<Packet> {
        let result = match self.handles.get(handle) {
            None => Err(Fail::bad_handle()),
            Some(OpenHandle::File { fd, .. }) => {
                let len = len.min(self.sessions.config().max_read_len) as usize;
                let fd = fd.clone();
                let read = blocking::run("an SFTP read", move || {
                    let mut buf = vec![0u8; len];
                    rustix::io::pread(&fd, &mut buf, offset).map(|n| {
                        buf.truncate(n);
                        buf
                    })
                })
                .await;
                match read {
                    Ok(Ok(buf)) if buf.is_empty() => Err(Fail::eof()),
                    Ok(Ok(buf)) => {
                        self.sessions.metrics().bytes_sent.inc_by(buf.len() as u64);
                        Ok(Packet::Data(Data { id, data: buf }))
                    }
                    Ok(Err(e)) => Err(Fail::fs(e, "file")),
                    Err(_) => Err(Fail::failure("server-side error")),
                }
            }
            Some(OpenHandle::Shown(data)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let len = len.min(self.sessions.config().max_read_len) as usize;
                let chunk = &data[start..(start + len).min(data.len())];
                if chunk.is_empty() {
                    Err(Fail::eof())
                } else {
                    self.sessions
                        .metrics()
                        .bytes_sent
                        .inc_by(chunk.len() as u64);
                    Ok(Packet::Data(Data {
                        id,
                        data: chunk.to_vec(),
                    }))
                }
            }
            Some(OpenHandle::Upload(_)) => Err(Fail::denied("reports are write-only")),
            Some(OpenHandle::Dir { .. }) => Err(Fail::failure("a directory cannot be read")),
            Some(OpenHandle::Watch { known, wait }) if offset == 0 => {
                let (known, wait) = (*known, *wait);
                return self.start_wait(id, known, wait);
            }
            Some(OpenHandle::Watch { .. }) => Err(Fail::eof()),
        };
        Some(result.unwrap_or_else(|f| f.into_packet(id)))
    }

    /// Answers a watch read from a task once the generation differs from `known` or `wait`
    /// has passed; the answer is the current generation in decimal and a newline.
    fn start_wait(&mut self, id: u32, known: u64, wait: Duration) -> Option<Packet> {
        let Ok(permit) = self.waits.clone().try_acquire_owned() else {
            self.sessions
                .metrics()
                .limit_hit(Limit::MaxWatchesPerSession);
            return Some(Fail::failure("too many waiting reads in this session").into_packet(id));
        };
        let (sessions, out, cancel, host) = (
            self.sessions.clone(),
            self.out.clone(),
            self.cancel.clone(),
            self.host.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _waiting = GaugeGuard::new(&sessions.metrics().watches_waiting);
            // Reads the release from disk when nobody watched the host yet (and releases
            // are not shown from memory).
            let subscriber = sessions.clone();
            let subscribed = blocking::run("reading a release's generation", move || {
                subscriber.subscribe_release(&host)
            });
            let mut rx = tokio::select! {
                r = subscribed => match r {
                    Ok(rx) => rx,
                    Err(_) => {
                        let fail = Fail::failure("server-side error reading the release");
                        send(&out, fail.into_packet(id)).await;
                        return;
                    }
                },
                () = cancel.cancelled() => return,
            };
            let changed = tokio::select! {
                r = rx.wait_for(|g| *g != known) => r.ok().map(|g| *g),
                () = tokio::time::sleep(wait) => None,
                () = cancel.cancelled() => return,
            };
            if changed.is_some() {
                sessions.metrics().watch_wakeups.inc();
            }
            let generation = changed.unwrap_or_else(|| *rx.borrow());
            let data = format!("{generation}\n").into_bytes();
            sessions.metrics().bytes_sent.inc_by(data.len() as u64);
            send(&out, Packet::Data(Data { id, data })).await;
        });
        None
    }

    async fn write(
        &mut self,
        id: u32,
        handle: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Packet, Fail> {
        let mut upload = match self.handles.remove(handle) {
            None => return Err(Fail::bad_handle()),
            Some(OpenHandle::Upload(upload)) => upload,
            Some(other) => {
                self.handles.insert(handle.to_owned(), other);
                return Err(Fail::denied("this file is read-only"));
            }
        };
        let len = data.len();
        // The upload goes to the blocking thread and comes back (the session's requests are
        // handled one at a time, so nothing else looks for it meanwhile); on an error it is
        // dropped there, which removes the partial file.
        let written = blocking::run("writing a report", move || {
            upload.write(offset, &data).map(|()| upload)
        })
        .await
        .map_err(|_| Fail::failure("server-side error writing the report"))?;
        match written {
            Ok(upload) => {
                self.handles
                    .insert(handle.to_owned(), OpenHandle::Upload(upload));
                self.sessions.metrics().bytes_received.inc_by(len as u64);
                Ok(ok(id))
            }
            Err(e) => {
                if matches!(e, ReportError::TooLarge { .. }) {
                    self.sessions.metrics().reports_too_large.inc();
                }
                tracing::info!(host = %self.host, error = %e, "report upload refused");
                Err(report_fail(e))
            }
        }
    }

    async fn stat(&mut self, id: u32, path: &str) -> Result<Packet, Fail> {
        let node = vfs::resolve(path).map_err(Fail::path)?;
        let attrs = match &node {
            Node::Root | Node::WatchDir => attrs(MODE_DIR_RO, None, None),
            Node::ReportsDir => attrs(MODE_DIR_WO, None, None),
            Node::Report(_) => {
                return Err(Fail::no_such(
                    "reports are write-only and cannot be looked up",
                ));
            }
            Node::Watch { .. } => attrs(MODE_FILE_RO, None, None),
            Node::Release if let Some(shown) = self.sessions.shown_release(&self.host) => {
                let data = shown.ok_or_else(|| Fail::no_such("/release: no such file"))?;
                attrs(MODE_FILE_RO, Some(data.len() as u64), None)
            }
            Node::Release | Node::Files(_) => {
                let vpath = node.virtual_path();
                let disk = node.disk_path().unwrap_or_default();
                let found = self
                    .on_disk(false, &vpath, move |root, vpath| {
                        confine::stat(root.as_fd(), &disk).map_err(|e| Fail::fs(e, vpath))
                    })
                    .await;
                match found {
                    Ok(st) => stat_attrs(&st).ok_or_else(|| Fail::no_such(vpath))?,
                    // `/files` exists, empty, even when the host has no files.
                    Err(f)
                        if node == Node::Files(String::new())
                            && f.code == StatusCode::NoSuchFile =>
                    {
                        attrs(MODE_DIR_RO, None, None)
                    }
                    Err(f) => return Err(f),
                }
            }
        };
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    fn fstat(&mut self, id: u32, handle: &str) -> Result<Packet, Fail> {
        let attrs = match self.handles.get(handle) {
            None => return Err(Fail::bad_handle()),
            Some(OpenHandle::File { stat, .. }) => {
                stat_attrs(stat).ok_or_else(|| Fail::failure("not a file"))?
            }
            Some(OpenHandle::Shown(data)) => attrs(MODE_FILE_RO, Some(data.len() as u64), None),
            Some(OpenHandle::Upload(u)) => attrs(MODE_FILE_WO, Some(u.len()), None),
            Some(OpenHandle::Watch { .. }) => attrs(MODE_FILE_RO, None, None),
            Some(OpenHandle::Dir { .. }) => attrs(MODE_DIR_RO, None, None),
        };
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    async fn opendir(&mut self, id: u32, path: &str) -> Result<Packet, Fail> {
        let node = vfs::resolve(path).map_err(Fail::path)?;
        if self.handles.len() >= self.sessions.config().max_open_handles {
            self.sessions.metrics().limit_hit(Limit::MaxOpenHandles);
            return Err(Fail::failure("too many open handles"));
        }
        let entries = match &node {
            Node::Root => self.root_entries().await,
            Node::ReportsDir | Node::WatchDir => Vec::new(),
            Node::Files(_) => self.files_entries(&node).await?,
            Node::Release | Node::Report(_) | Node::Watch { .. } => {
                return Err(Fail::failure(format!(
                    "{} is not a directory",
                    node.virtual_path()
                )));
            }
        };
        self.add_handle(id, OpenHandle::Dir { entries, pos: 0 })
    }

    async fn root_entries(&self) -> Vec<File> {
        let mut entries = Vec::new();
        if let Some(shown) = self.sessions.shown_release(&self.host) {
            if let Some(data) = shown {
                let a = attrs(MODE_FILE_RO, Some(data.len() as u64), None);
                entries.push(File::new("release", a));
            }
        } else if let Ok(Some(a)) = self
            .on_disk(false, "/release", |root, vpath| {
                let st = confine::stat(root.as_fd(), "release").map_err(|e| Fail::fs(e, vpath))?;
                Ok(stat_attrs(&st))
            })
            .await
        {
            entries.push(File::new("release", a));
        }
        entries.push(File::new("files", attrs(MODE_DIR_RO, None, None)));
        entries.push(File::new("reports", attrs(MODE_DIR_WO, None, None)));
        entries.push(File::new("watch", attrs(MODE_DIR_RO, None, None)));
        entries
    }

    async fn files_entries(&self, node: &Node) -> Result<Vec<File>, Fail> {
        let vpath = node.virtual_path();
        let disk = node.disk_path().unwrap_or_default();
        let top = *node == Node::Files(String::new());
        self.on_disk(false, &vpath, move |root, vpath| {
            let dir = match confine::open_dir(root.as_fd(), &disk) {
                Ok(d) => d,
                Err(Errno::NOENT) if top => return Ok(Vec::new()),
                Err(e) => return Err(Fail::fs(e, vpath)),
            };
            let names = confine::list(&dir, MAX_LISTED).map_err(|e| Fail::fs(e, vpath))?;
            Ok(names
                .into_iter()
                .filter_map(|name| {
                    let st = confine::lstat_entry(dir.as_fd(), &name).ok()?;
                    let a = match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => attrs(0o120_777, None, Some(&st)),
                        _ => stat_attrs(&st)?,
                    };
                    Some(File::new(name, a))
                })
                .collect())
        })
        .await
    }

    fn readdir(&mut self, id: u32, handle: &str) -> Result<Packet, Fail> {
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Dir { entries, pos }) => {
                if *pos >= entries.len() {
                    return Err(Fail::eof());
                }
                let end = (*pos + READDIR_CHUNK).min(entries.len());
                let files = entries[*pos..end].to_vec();
                *pos = end;
                Ok(Packet::Name(Name { id, files }))
            }
            Some(_) => Err(Fail::failure("not a directory handle")),
            None => Err(Fail::bad_handle()),
        }
    }
}

fn realpath(id: u32, path: &str) -> Result<Packet, Fail> {
    let parts = vfs::normalize(path).map_err(Fail::path)?;
    let full = format!("/{}", parts.join("/"));
    Ok(Packet::Name(Name {
        id,
        files: vec![File::dummy(full)],
    }))
}

fn report_fail(e: ReportError) -> Fail {
    match e {
        ReportError::Exists { .. } | ReportError::TooLarge { .. } => Fail::denied(e.to_string()),
        ReportError::Io { .. } => {
            tracing::warn!(error = %e, "report storage failed");
            Fail::failure(e.to_string())
        }
    }
}

/// Attributes shown to clients: the mode Bento grants (not the one on disk), size and times;
/// owners are not shown.
fn attrs(mode: u32, size: Option<u64>, st: Option<&Stat>) -> FileAttributes {
    let time = |t: i64| u32::try_from(t).ok();
    FileAttributes {
        size,
        permissions: Some(mode),
        atime: st.and_then(|s| time(s.st_atime)),
        mtime: st.and_then(|s| time(s.st_mtime)),
        ..FileAttributes::empty()
    }
}

/// Attributes of a regular file or directory of the read-only tree; `None` for anything else.
fn stat_attrs(st: &Stat) -> Option<FileAttributes> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Some(attrs(
            MODE_FILE_RO,
            Some(u64::try_from(st.st_size).unwrap_or(0)),
            Some(st),
        )),
        FileType::Directory => Some(attrs(MODE_DIR_RO, None, Some(st))),
        _ => None,
    }
}
