//! Copying a release's closure with the whole-closure transfer (`crate::transfer`): a few
//! round trips whatever the number of paths, where `nix copy` over HTTP makes two per path.
//!
//! 1. Ask the cache for the closure of the release (one request).
//! 2. Ask this host's store which of those paths it lacks (one `nix-store` call).
//! 3. Leave out what an earlier, interrupted transfer already staged; check that the disk
//!    has room for the rest (sizes from the closure answer); ask for all of it at once.
//! 4. Write the entries as they arrive into a `file://` binary cache in the state directory
//!    (`transfer/`), or for a small delivery in memory ([`Stagings`]), each NAR first, its
//!    narinfo (written aside and renamed) last. The
//!    closure request's connection carries this one (no new handshake, a warm window).
//! 5. Meanwhile, `nix copy --from file://<state_dir>/transfer --no-recursive` of the paths
//!    staged so far whose references are there (`batch`), batch after batch while the
//!    stream arrives, with `require-sigs` and only the fleet key trusted, judged as any copy
//!    is (`system::copy_judged`): Nix verifies every signature and hash.
//!
//! Which caches are copied from by the transfer, and what happens when the server is not
//! `bento serve`, is `agent::copy`'s decision ([`Failed`] tells it why). A stream
//! cut short keeps its complete entries: the next attempt asks only for the rest. A refused
//! copy empties the staging directory, so nothing refused is kept.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::children;
use super::config::Agent;
use super::system::{self, SystemError, cache_nix, push_line};
use crate::nix::cmd::Command;
use crate::nix::narinfo;
use crate::nix::store::{self, StorePath};
use crate::transfer::client::{ClientError, Response, Target};
use crate::transfer::wire::{self, ClosureEntry, Event};
use crate::transfer::{CLOSURE_PATH, NARS_PATH};

/// The staging cache, under the state directory.
pub const STAGING_DIR: &str = "transfer";
/// Where a transfer stages entries: the state directory, and for a small delivery a
/// directory on a memory file system (`memory_staging_dir`), so that its bytes reach the
/// disk once, written by Nix into the store, and a slow disk delays only Nix's import.
pub struct Stagings {
    pub disk: PathBuf,
    /// The memory directory and the largest delivery staged there, in bytes.
    pub memory: Option<(PathBuf, u64)>,
}

/// One of the [`Stagings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Memory,
    Disk,
}

impl Stagings {
    pub fn of(agent: &Agent) -> Stagings {
        Stagings {
            disk: agent.state_dir.join(STAGING_DIR),
            memory: agent.memory_staging.clone(),
        }
    }

    pub fn dir(&self, place: Place) -> &Path {
        match (&self.memory, place) {
            (Some((dir, _)), Place::Memory) => dir,
            _ => &self.disk,
        }
    }

    /// Removes everything staged, in both places.
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.disk);
        if let Some((dir, _)) = &self.memory {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Pure: where a delivery whose files take `file_bytes` is staged. Entries an earlier
/// attempt left on the disk keep it there (the import reads one directory); otherwise in
/// memory when the delivery is at most the memory staging's largest and takes at most half
/// of that file system's free bytes (`memory`: `(largest, free)`, `None` when there is no
/// memory staging or its directory cannot be made).
pub fn staging_place(earlier: Option<Place>, file_bytes: u64, memory: Option<(u64, u64)>) -> Place {
    if earlier == Some(Place::Disk) {
        return Place::Disk;
    }
    match memory {
        Some((largest, free)) if file_bytes <= largest && file_bytes <= free / 2 => Place::Memory,
        _ => Place::Disk,
    }
}

/// Makes `staging` a `file://` binary cache (its `nar/` directory and `nix-cache-info`),
/// readable by root alone; the directories above it keep the modes they are made with.
fn prepare(staging: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    staging
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(staging.join("nar"))
        })
        .and_then(|()| {
            std::fs::write(
                staging.join("nix-cache-info"),
                format!("StoreDir: {}\n", store::STORE_DIR),
            )
        })
        .map_err(|e| format!("cannot prepare {}: {e}", staging.display()))
}

/// Most paths one `nix copy` is given on its command line.
const PATHS_PER_COPY: usize = 4000;
/// Room left free on a disk beyond what the transfer needs.
const SPARE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest closure answer read (about 100 bytes a path).
const MAX_CLOSURE_ANSWER: usize = 64 * 1024 * 1024;
/// While the stream runs, entries arriving closer together than this join the next import
/// batch (a burst of the stream, one TCP window, is one batch on a far link).
const BATCH_QUIET: Duration = Duration::from_millis(30);
/// The longest a batch waits for more entries while the stream keeps arriving: on a LAN,
/// or a link of 20 ms where bursts come closer than [`BATCH_QUIET`], Nix imports what came
/// so far every this often instead of after the whole stream.
const BATCH_GATHER: Duration = Duration::from_millis(100);

mod batch;
mod deliver;
use batch::Imports;
pub use deliver::SHARDS;

/// What to fetch and what to copy, decided from the closure, the store and the staging
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Paths the host lacks, dependencies first: what `nix copy` imports.
    pub copy: Vec<StorePath>,
    /// Of those, the ones not staged yet: what the cache is asked for.
    pub fetch: Vec<ClosureEntry>,
    /// Bytes the fetched files take in the staging directory.
    pub fetch_bytes: u64,
    /// Bytes the copied paths take in the store (NAR sizes).
    pub store_bytes: u64,
}

/// Pure: the plan for `closure` (dependency order), given the paths the store lacks and
/// the paths already staged.
pub fn plan(
    closure: &[ClosureEntry],
    invalid: &HashSet<StorePath>,
    staged: &HashSet<StorePath>,
) -> Plan {
    let missing: Vec<&ClosureEntry> = closure
        .iter()
        .filter(|e| invalid.contains(&e.path))
        .collect();
    let fetch: Vec<ClosureEntry> = missing
        .iter()
        .filter(|e| !staged.contains(&e.path))
        .map(|e| (*e).clone())
        .collect();
    Plan {
        copy: missing.iter().map(|e| e.path.clone()).collect(),
        fetch_bytes: fetch.iter().map(|e| e.file_size).sum(),
        store_bytes: missing.iter().map(|e| e.nar_size).sum(),
        fetch,
    }
}

/// Free space of the staging disk and the store's, and whether they are one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub staging_free: u64,
    pub store_free: u64,
    pub same_disk: bool,
}

/// Pure: `None` when the plan fits, else what is short (`(needed, free, which)`).
pub fn short_of_space(plan: &Plan, space: Space) -> Option<(u64, u64, &'static str)> {
    let staging = plan.fetch_bytes.saturating_add(SPARE_BYTES);
    let store = plan.store_bytes.saturating_add(SPARE_BYTES);
    if space.same_disk {
        let need = staging.saturating_add(plan.store_bytes);
        return (need > space.staging_free).then_some((need, space.staging_free, "the disk"));
    }
    if staging > space.staging_free {
        return Some((staging, space.staging_free, "the staging directory's disk"));
    }
    (store > space.store_free).then_some((store, space.store_free, "the Nix store's disk"))
}

fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    let dev = std::fs::metadata(dir)?.dev();
    Ok((st.f_bavail.saturating_mul(st.f_frsize), dev))
}

/// Why the transfer did not end in a copy (`agent::copy` decides what follows).
pub enum Failed {
    /// The server answered the closure request as a server without the transfer's routes
    /// does (`agent::copy::not_a_bento_server`): why.
    NotBento(String),
    /// The transfer cannot make this copy (a URL it cannot speak, a transfer refused): why.
    Fallback(String),
    Copy(SystemError),
}

/// Copies `path`'s closure into this host's store by the transfer.
pub async fn transfer(agent: &Agent, path: &str, log: &mut String) -> Result<(), Failed> {
    let target = Target::new(&agent.cache_url, agent.cache_netrc.as_deref())
        .map_err(|e| Failed::Fallback(e.to_string()))?;
    let top = store::parse(path).map_err(|e| Failed::Fallback(e.to_string()))?;
    let idle = agent.copy_timeout.min(Duration::from_secs(60));
    let transfer_failed = |why: String| {
        Failed::Copy(SystemError::Transfer {
            path: path.to_owned(),
            cache: agent.cache_url.to_string(),
            why,
        })
    };

    let stagings = Stagings::of(agent);
    let staging = match deliver::deliver(agent, &target, &top, &stagings, log).await? {
        (deliver::Delivered::Done, _) => {
            stagings.clear();
            return Ok(());
        }
        (deliver::Delivered::Incomplete(why), staging) => {
            push_line(log, &why);
            staging
        }
    };
    prepare(&staging).map_err(transfer_failed)?;

    let started = std::time::Instant::now();
    let ms = || started.elapsed().as_millis();
    let (kept, closure) = async {
        let mut r = target
            .post(CLOSURE_PATH, &wire::encode_paths([&top]), idle, true)
            .await?
            .ok()
            .await?;
        let body = r.body(MAX_CLOSURE_ANSWER).await?;
        Ok::<_, ClientError>((r, body))
    }
    .await
    .map_err(|e| {
        let why = format!("the closure request failed: {e}");
        if super::copy::not_a_bento_server(&e) {
            Failed::NotBento(format!("the cache offers no closure transfer ({e})"))
        } else {
            transfer_failed(why)
        }
    })?;
    let closure = wire::parse_closure(&closure).map_err(|e| Failed::Fallback(format!("{e}")))?;

    let invalid = invalid_paths(agent, &closure, log)
        .await
        .map_err(transfer_failed)?;
    let staged = staged_entries(&staging, &closure, &invalid);
    let plan = plan(&closure, &invalid, &staged.keys().cloned().collect());
    push_line(
        log,
        &format!(
            "closure of {} paths: {} missing here, {} of them staged by an earlier attempt; fetching {} ({} bytes) in one request ({} ms)",
            closure.len(),
            plan.copy.len(),
            plan.copy.len() - plan.fetch.len(),
            plan.fetch.len(),
            plan.fetch_bytes,
            ms()
        ),
    );
    if plan.copy.is_empty() {
        return Ok(());
    }
    check_space(&staging, &plan).map_err(transfer_failed)?;

    // The stream and the imports run together: `nix copy` takes each batch of staged paths
    // whose references are there while the rest arrives.
    let have = closure
        .iter()
        .filter(|e| !invalid.contains(&e.path))
        .map(|e| e.path.clone())
        .collect();
    let mut imports = Imports::new(have, &plan.copy);
    for (p, refs) in staged {
        imports.staged(p, refs);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let fetched = async {
        let result = if plan.fetch.is_empty() {
            Ok(())
        } else {
            fetch(kept, &staging, &plan.fetch, tx, agent.copy_timeout).await
        };
        Ok::<_, Failed>((result, ms()))
    };
    let mut import_log = String::new();
    let source = format!("file://{}", staging.display());
    let imported = import(agent, path, &source, &mut imports, rx, &mut import_log);
    let joined = tokio::try_join!(fetched, imported);
    log.push_str(&import_log);
    let ((fetched, fetched_ms), batches) = match joined {
        Ok(done) => done,
        Err(e) => {
            if let Failed::Copy(
                SystemError::CopyRefused { .. } | SystemError::CopyTampered { .. },
            ) = &e
            {
                // Nothing refused is kept for the next attempt.
                let _ = std::fs::remove_dir_all(&staging);
            }
            return Err(e);
        }
    };
    fetched.map_err(|e| match e {
        FetchError::Refused(why) => {
            Failed::Fallback(format!("the cache refused the transfer: {why}"))
        }
        FetchError::Broken(why) => transfer_failed(why),
    })?;
    if imports.left() > 0 {
        return Err(transfer_failed(format!(
            "{} paths arrived but could not be imported: their references are missing",
            imports.left()
        )));
    }
    stagings.clear();
    push_line(
        log,
        &format!(
            "fetched ({fetched_ms} ms) and copied into the store in {batches} batches ({} ms)",
            ms()
        ),
    );
    Ok(())
}

/// `nix copy --from <staging> --no-recursive <paths>` with the cache's trust options.
pub fn copy_command(agent: &Agent, source: &str, paths: &[StorePath]) -> Command {
    cache_nix(agent)
        .args(["copy", "--from", source, "--no-recursive"])
        .args(paths.iter().map(store::render))
        .timeout(agent.copy_timeout)
}

/// What the importer is told of as the stream arrives.
enum Arrived {
    /// A complete entry in the staging directory, with its references.
    Staged(StorePath, Vec<StorePath>),
    /// A path Nix imported as it arrived (`deliver::piped`).
    Imported(StorePath),
}

impl Arrived {
    fn note(self, imports: &mut Imports) {
        match self {
            Arrived::Staged(p, refs) => imports.staged(p, refs),
            Arrived::Imported(p) => imports.imported(&[p]),
        }
    }
}

/// Imports staged paths batch after batch as `rx` says entries are complete, until the
/// stream has ended and nothing more can be imported. Returns how many batches ran.
async fn import(
    agent: &Agent,
    path: &str,
    source: &str,
    imports: &mut Imports,
    mut rx: mpsc::UnboundedReceiver<Arrived>,
    log: &mut String,
) -> Result<usize, Failed> {
    let mut open = true;
    let mut batches = 0;
    loop {
        while let Ok(a) = rx.try_recv() {
            a.note(imports);
        }
        if open && imports.next_batch().is_empty() {
            match rx.recv().await {
                Some(a) => a.note(imports),
                None => open = false,
            }
            continue;
        }
        // A burst of the stream makes one batch: wait until it pauses.
        let gathering = tokio::time::Instant::now();
        while open && gathering.elapsed() < BATCH_GATHER {
            match tokio::time::timeout(BATCH_QUIET, rx.recv()).await {
                Ok(Some(a)) => a.note(imports),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        let batch = imports.next_batch();
        if batch.is_empty() {
            if open {
                continue;
            }
            return Ok(batches);
        }
        for part in batch.chunks(PATHS_PER_COPY) {
            let copy = copy_command(agent, source, part);
            system::copy_judged(agent, copy, path, log)
                .await
                .map_err(Failed::Copy)?;
            imports.imported(part);
        }
        batches += 1;
    }
}

/// The paths of `closure` this host's store does not hold (one `nix-store` call per
/// [`PATHS_PER_COPY`] paths).
async fn invalid_paths(
    agent: &Agent,
    closure: &[ClosureEntry],
    log: &mut String,
) -> Result<HashSet<StorePath>, String> {
    let mut invalid = HashSet::new();
    for part in closure.chunks(PATHS_PER_COPY) {
        let c = Command::new("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .args(part.iter().map(|e| store::render(&e.path)))
            .timeout(agent.copy_timeout);
        let out = children::run(&agent.state_dir, c, |l| push_line(log, l))
            .await
            .map_err(|e| format!("cannot ask the store which paths it holds: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let p = store::parse(line.trim())
                .map_err(|e| format!("nix-store printed {line:?}: {e}"))?;
            invalid.insert(p);
        }
    }
    Ok(invalid)
}

fn narinfo_file(staging: &Path, path: &StorePath) -> PathBuf {
    staging.join(format!("{}.narinfo", store::hash_part(path)))
}

/// The missing paths whose entries an earlier transfer completed, with their references:
/// a narinfo that parses, names the path, points at a NAR file there of the announced size.
/// Anything else staged for a missing path is removed.
fn staged_entries(
    staging: &Path,
    closure: &[ClosureEntry],
    invalid: &HashSet<StorePath>,
) -> HashMap<StorePath, Vec<StorePath>> {
    let mut staged = HashMap::new();
    for e in closure.iter().filter(|e| invalid.contains(&e.path)) {
        let file = narinfo_file(staging, &e.path);
        if !file.exists() {
            continue;
        }
        let complete = staged_whole(staging, &file)
            .filter(|(ni, size)| *ni.store_path() == e.path && *size <= largest(e))
            .map(|(ni, _)| ni.references().iter().cloned().collect::<Vec<_>>());
        match complete {
            Some(refs) => {
                staged.insert(e.path.clone(), refs);
            }
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    staged
}

/// The entry whose narinfo is `file` in `staging`, when it is complete: the narinfo parses,
/// is filed under its own path's name, and points at a NAR file there of the size and hash
/// it declares. With the NAR file's size.
fn staged_whole(staging: &Path, file: &Path) -> Option<(narinfo::NarInfo, u64)> {
    let ni = narinfo::parse(&std::fs::read(file).ok()?).ok()?;
    let nar = staging.join("nar").join(wire::nar_file_name(ni.url())?);
    let size = std::fs::metadata(&nar).ok()?.len();
    (narinfo_file(staging, ni.store_path()) == file
        && Some(size) == declared_size(&ni)
        && hash_matches(&ni, &nar))
    .then_some((ni, size))
}

/// The size of the file a narinfo describes: its `FileSize`, or its `NarSize` for a plain
/// NAR.
fn declared_size(ni: &narinfo::NarInfo) -> Option<u64> {
    if ni.url().ends_with(".nar") {
        Some(ni.nar_size())
    } else {
        ni.file_size()
    }
}

/// The most bytes the cache may send for `e`. The closure answer gives the file it had
/// then; by the time of the stream the cache may have compressed the path (zstd makes
/// incompressible data a little larger), or lost its compressed file and sends the NAR.
fn largest(e: &ClosureEntry) -> u64 {
    let zstd_bound = e.nar_size + e.nar_size / 128 + 64 * 1024;
    e.file_size.max(zstd_bound)
}

/// Whether the staged file of `ni` has the hash its narinfo gives (`FileHash`, or `NarHash`
/// for a plain NAR). Staged files are not fsynced: after a crash one may have its full size
/// and wrong bytes. Nix would refuse it, which is a refusal, not a retry.
fn hash_matches(ni: &narinfo::NarInfo, file: &Path) -> bool {
    use crate::nix::hash::{HashingWriter, Sha256Hash};
    let want = match ni.file_hash() {
        Some(h) => h,
        None if ni.url().ends_with(".nar") => ni.nar_hash(),
        None => return false,
    };
    let Ok(want) = Sha256Hash::from_nix_hash(want) else {
        return false;
    };
    let mut hasher = HashingWriter::new(std::io::sink());
    let copied = std::fs::File::open(file).and_then(|mut f| std::io::copy(&mut f, &mut hasher));
    copied.is_ok() && hasher.finish().0 == want
}

fn check_space(staging: &Path, plan: &Plan) -> Result<(), String> {
    let (staging_free, staging_dev) = free_space(staging)
        .map_err(|e| format!("cannot read the free space of {}: {e}", staging.display()))?;
    let store_dir = Path::new(store::STORE_DIR);
    let (store_free, store_dev) = free_space(store_dir)
        .map_err(|e| format!("cannot read the free space of {}: {e}", store_dir.display()))?;
    let space = Space {
        staging_free,
        store_free,
        same_disk: staging_dev == store_dev,
    };
    match short_of_space(plan, space) {
        None => Ok(()),
        Some((need, free, which)) => Err(format!(
            "not enough free space on {which}: the closure needs {need} bytes, {free} are free; free some space (e.g. nix-collect-garbage) and the agent tries again"
        )),
    }
}

enum FetchError {
    /// The cache answered the request with an error status.
    Refused(String),
    /// The stream broke or was malformed; complete entries stay staged.
    Broken(String),
}

/// Asks for `wanted` in one request, on the connection of `kept` (the closure answer) when
/// it can carry one, writes the entries into `staging` and tells `done` of each complete one.
async fn fetch(
    kept: Response,
    staging: &Path,
    wanted: &[ClosureEntry],
    done: mpsc::UnboundedSender<Arrived>,
    deadline: Duration,
) -> Result<(), FetchError> {
    let sizes: HashMap<&StorePath, u64> = wanted.iter().map(|e| (&e.path, largest(e))).collect();
    let max_file = sizes.values().copied().max().unwrap_or(0);
    let body = wire::encode_paths(wanted.iter().map(|e| &e.path));
    let work = async {
        let response = kept
            .post_next(NARS_PATH, &body, false)
            .await
            .map_err(|e| FetchError::Broken(e.to_string()))?;
        let mut response = response.ok().await.map_err(|e| match e {
            ClientError::Status { .. } => FetchError::Refused(e.to_string()),
            e => FetchError::Broken(e.to_string()),
        })?;
        let mut decoder = wire::Decoder::new(max_file);
        let mut writer = Writer {
            staging,
            wanted: Wanted::Asked(&sizes),
            tag: 0,
            current: None,
            done: HashSet::new(),
            tell: done,
        };
        let broken = |e: &dyn std::fmt::Display| FetchError::Broken(e.to_string());
        while let Some(chunk) = response.chunk().await.map_err(|e| broken(&e))? {
            decoder.push(&chunk);
            while let Some(event) = decoder.next_event().map_err(|e| broken(&e))? {
                writer.take(event).map_err(FetchError::Broken)?;
            }
            // The importer runs in this task: let it see what was staged.
            tokio::task::yield_now().await;
        }
        decoder.finish().map_err(|e| broken(&e))?;
        if writer.done.len() != wanted.len() {
            return Err(FetchError::Broken(format!(
                "the cache sent {} of the {} paths asked for",
                writer.done.len(),
                wanted.len()
            )));
        }
        Ok(())
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| FetchError::Broken(format!("not done within {} s", deadline.as_secs())))?
}

/// Which entries a [`Writer`] takes.
enum Wanted<'a> {
    /// The paths asked for, each at most this many bytes.
    Asked(&'a HashMap<&'a StorePath, u64>),
    /// Any path of at most this many bytes (a delivery: the cache chose what to send), each
    /// once among the writers sharing the set (the shards of one delivery).
    Any(u64, &'a std::sync::Mutex<Claims>),
}

/// What the writers of one delivery have started: paths, and NAR file names (two paths of
/// the same contents share one).
#[derive(Default)]
struct Claims {
    paths: HashSet<StorePath>,
    files: HashSet<String>,
}

/// Writes decoded entries into the staging directory.
struct Writer<'a> {
    staging: &'a Path,
    wanted: Wanted<'a>,
    /// Tells this writer's part files from another's (the shards of a delivery write at once).
    tag: usize,
    /// The entry being received (writes gathered in a buffer; the bytes of an entry another
    /// writer has are dropped).
    current: Option<Receiving>,
    done: HashSet<StorePath>,
    /// Told of each complete entry: its path and references.
    tell: mpsc::UnboundedSender<Arrived>,
}

/// An entry being received: its narinfo (parsed and raw), its file's final name, its part
/// file, and the open part file (`None`: another writer has the entry).
type Receiving = (
    narinfo::NarInfo,
    Vec<u8>,
    PathBuf,
    PathBuf,
    Option<std::io::BufWriter<std::fs::File>>,
);

/// Bytes gathered before a write to a staged file.
const WRITE_BUFFER: usize = 1024 * 1024;

impl Writer<'_> {
    fn take(&mut self, event: Event) -> Result<(), String> {
        use std::io::Write as _;
        match event {
            Event::Entry {
                narinfo: raw,
                file_len,
            } => {
                let ni = narinfo::parse(&raw)
                    .map_err(|e| format!("the cache sent a bad narinfo: {e}"))?;
                let path = ni.store_path().clone();
                let shown = store::render(&path);
                let most = match &self.wanted {
                    Wanted::Asked(sizes) => sizes.get(&path).copied(),
                    Wanted::Any(most, _) => Some(*most),
                };
                if most.is_none_or(|m| file_len > m) || self.done.contains(&path) {
                    return Err(format!(
                        "the cache sent {shown} ({file_len} bytes), which was not asked for"
                    ));
                }
                let name = wire::nar_file_name(ni.url())
                    .ok_or_else(|| format!("the narinfo of {shown} has URL {:?}", ni.url()))?;
                if declared_size(&ni) != Some(file_len) {
                    return Err(format!(
                        "the cache sent {shown} as {file_len} bytes, its narinfo says otherwise"
                    ));
                }
                let (mine, alone) = match &self.wanted {
                    Wanted::Asked(_) => (true, true),
                    Wanted::Any(_, claims) => {
                        let mut c = claims
                            .lock()
                            .map_err(|_| "a writer of this transfer failed".to_owned())?;
                        (
                            c.paths.insert(path.clone()),
                            c.files.insert(name.to_owned()),
                        )
                    }
                };
                // Under its final name when no other writer of this transfer writes that file
                // (without its narinfo a NAR file is not taken for an entry); else aside,
                // renamed whole.
                let target = self.staging.join("nar").join(name);
                let part = if alone {
                    target.clone()
                } else {
                    self.staging
                        .join("nar")
                        .join(format!("{name}.part{}", self.tag))
                };
                let file = if mine {
                    let file = std::fs::File::create(&part)
                        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
                    let capacity = (file_len as usize).clamp(1, WRITE_BUFFER);
                    Some(std::io::BufWriter::with_capacity(capacity, file))
                } else {
                    None
                };
                self.current = Some((ni, raw.to_vec(), target, part, file));
            }
            Event::Data(bytes) => {
                let (_, _, _, part, file) = self.current.as_mut().ok_or("data outside an entry")?;
                if let Some(file) = file {
                    file.write_all(&bytes)
                        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
                }
            }
            Event::EntryEnd => {
                let (ni, raw, target, part, file) =
                    self.current.take().ok_or("an entry end outside an entry")?;
                let Some(mut file) = file else {
                    return Ok(());
                };
                // No fsync: Nix checks every NAR's hash when it imports it, and a later
                // attempt takes a staged entry only if its size and hash are right.
                file.flush()
                    .and_then(|()| {
                        if part == target {
                            Ok(())
                        } else {
                            std::fs::rename(&part, &target)
                        }
                    })
                    .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
                drop(file);
                let path = ni.store_path().clone();
                let fail =
                    |e: std::io::Error| format!("cannot stage {}: {e}", store::render(&path));
                // The narinfo last: its presence means the entry is complete.
                let file = narinfo_file(self.staging, &path);
                let tmp = file.with_extension(format!("narinfo.part{}", self.tag));
                std::fs::write(&tmp, &raw)
                    .and_then(|()| std::fs::rename(&tmp, &file))
                    .map_err(fail)?;
                // The importer may have ended (a refusal); the stream is then dropped too.
                let _ = self.tell.send(Arrived::Staged(
                    path.clone(),
                    ni.references().iter().cloned().collect(),
                ));
                self.done.insert(path);
            }
            Event::End { .. } => {}
        }
        Ok(())
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if let Some((_, _, _, part, Some(_))) = self.current.take() {
            let _ = std::fs::remove_file(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::transfer::test_path as p;

    fn entry(name: &str, file_size: u64, nar_size: u64) -> ClosureEntry {
        ClosureEntry {
            path: p(name),
            file_size,
            nar_size,
        }
    }

    #[test]
    fn a_small_delivery_is_staged_in_memory_unless_the_disk_holds_an_earlier_attempt() {
        use Place::{Disk, Memory};
        const MIB: u64 = 1024 * 1024;
        type Room = Option<(u64, u64)>;
        let cases: &[(Option<Place>, u64, Room, Place)] = &[
            // earlier attempt's place, delivery bytes, memory (largest, free) → place
            (None, 2 * MIB, Some((64 * MIB, 1024 * MIB)), Memory),
            (None, 0, Some((64 * MIB, 1024 * MIB)), Memory),
            (None, 64 * MIB, Some((64 * MIB, 1024 * MIB)), Memory),
            (None, 64 * MIB + 1, Some((64 * MIB, 1024 * MIB)), Disk),
            // at most half of the memory file system's free bytes
            (None, 10 * MIB, Some((64 * MIB, 20 * MIB)), Memory),
            (None, 10 * MIB + 1, Some((64 * MIB, 20 * MIB)), Disk),
            (None, 2 * MIB, Some((64 * MIB, 0)), Disk),
            (None, 2 * MIB, None, Disk),
            (None, u64::MAX, Some((u64::MAX, u64::MAX)), Disk),
            // entries left on the disk stay there; those in memory stay if it still fits
            (Some(Disk), 2 * MIB, Some((64 * MIB, 1024 * MIB)), Disk),
            (Some(Memory), 2 * MIB, Some((64 * MIB, 1024 * MIB)), Memory),
            (Some(Memory), 100 * MIB, Some((64 * MIB, 1024 * MIB)), Disk),
            (Some(Memory), 2 * MIB, None, Disk),
        ];
        for (earlier, bytes, memory, want) in cases {
            assert_eq!(
                staging_place(*earlier, *bytes, *memory),
                *want,
                "{earlier:?} {bytes} {memory:?}"
            );
        }
    }

    #[test]
    fn the_plan_fetches_only_what_is_neither_here_nor_staged() {
        let closure = vec![
            entry("a", 1, 10),
            entry("b", 2, 20),
            entry("c", 4, 40),
            entry("top", 8, 80),
        ];
        let set = |names: &[&str]| names.iter().map(|n| p(n)).collect::<HashSet<_>>();
        type Names<'a> = &'a [&'a str];
        let cases: &[(Names, Names, Names, Names, u64, u64)] = &[
            // invalid, staged → copy, fetch, fetch bytes, store bytes
            (&[], &[], &[], &[], 0, 0),
            (
                &["a", "b", "c", "top"],
                &[],
                &["a", "b", "c", "top"],
                &["a", "b", "c", "top"],
                15,
                150,
            ),
            (&["c", "top"], &[], &["c", "top"], &["c", "top"], 12, 120),
            (
                &["b", "c", "top"],
                &["b", "c"],
                &["b", "c", "top"],
                &["top"],
                8,
                140,
            ),
            (&["top"], &["a", "top"], &["top"], &[], 0, 80),
        ];
        for (invalid, staged, copy, fetch, fb, sb) in cases {
            let got = plan(&closure, &set(invalid), &set(staged));
            let names = |v: &[StorePath]| v.to_vec();
            assert_eq!(
                names(&got.copy),
                copy.iter().map(|n| p(n)).collect::<Vec<_>>(),
                "{invalid:?} {staged:?}"
            );
            assert_eq!(
                got.fetch.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
                fetch.iter().map(|n| p(n)).collect::<Vec<_>>()
            );
            assert_eq!((got.fetch_bytes, got.store_bytes), (*fb, *sb));
        }
    }

    #[test]
    fn space_is_checked_per_disk() {
        let plan = Plan {
            copy: vec![],
            fetch: vec![],
            fetch_bytes: 100,
            store_bytes: 1000,
        };
        let m = SPARE_BYTES;
        let space = |staging_free, store_free, same_disk| Space {
            staging_free,
            store_free,
            same_disk,
        };
        let cases = [
            (space(m + 1100, 0, true), None),
            (
                space(m + 1099, 0, true),
                Some((m + 1100, m + 1099, "the disk")),
            ),
            (space(m + 100, m + 1000, false), None),
            (
                space(m + 99, u64::MAX, false),
                Some((m + 100, m + 99, "the staging directory's disk")),
            ),
            (
                space(u64::MAX, m + 999, false),
                Some((m + 1000, m + 999, "the Nix store's disk")),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(short_of_space(&plan, s), want, "{s:?}");
        }
    }
}
