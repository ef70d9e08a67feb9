//! The agent's side of a delivery (`crate::transfer::deliver`): the release's closure in
//! about the round trips of one GET, where asking for the closure first costs two more.
//!
//! 1. List what this host holds: the closures of its current, booted and profile systems
//!    (one `nix-store` call), and what an interrupted attempt left staged.
//! 2. Ask [`SHARDS`] connections at once for a share each of the rest of the closure (the
//!    cache splits it by size; each connection starts its own TCP window, so together they
//!    reach a far link's speed in fewer round trips than one does).
//! 3. Choose the staging directory by the sizes the first answer line gives (in memory for
//!    a small delivery, `super::staging_place`) and check its disk; stage the entries as
//!    they arrive (`super::Writer`), and import them batch after batch (`super::import`):
//!    Nix verifies every signature and hash, as in the two-request form.
//!
//! The delivery is done when the top path is in the store. Anything short of that (a shard
//! refused or cut, a path the host was thought to hold but lacks, a cache without this
//! route) is [`Delivered::Incomplete`]: the two-request form follows, reusing every entry
//! staged here. A refusal by Nix ends the copy as it does there.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::super::children;
use super::super::config::Agent;
use super::super::system::{self, SystemError, push_line};
use super::{
    Arrived, Claims, Failed, Imports, Place, Plan, Stagings, Wanted, Writer, narinfo_file,
};
use crate::nix::cmd::Command;
use crate::nix::narinfo;
use crate::nix::store::{self, StorePath};
use crate::transfer::DELIVER_PATH;
use crate::transfer::client::{ClientError, Response, Target};
use crate::transfer::deliver::{self as wire_deliver, Head};
use crate::transfer::wire::{self, Event};

/// Connections a delivery is spread over.
pub const SHARDS: usize = 4;
/// Where the systems this host holds are found.
const SYSTEM_ROOTS: [&str; 2] = ["/run/current-system", "/run/booted-system"];
const PROFILES: &str = "/nix/var/nix/profiles";

/// How a delivery ended, when Nix refused nothing.
pub enum Delivered {
    /// The top path is in the store.
    Done,
    /// Why not: the two-request form takes over.
    Incomplete(String),
}

/// Delivers `top`'s closure into this host's store through a staging directory, chosen
/// from `stagings` once the answer says how large the delivery is; returns it with the
/// outcome (the two-request form goes on there).
pub async fn deliver(
    agent: &Agent,
    target: &Target,
    top: &StorePath,
    stagings: &Stagings,
    log: &mut String,
) -> Result<(Delivered, PathBuf), Failed> {
    let started = Instant::now();
    let ms = || started.elapsed().as_millis();
    let held = held_paths(agent, log).await;
    if held.contains(top) {
        return Ok((Delivered::Done, stagings.disk.clone()));
    }
    // What an earlier attempt left: on the disk, else in memory (one place is kept).
    let on_disk = staged_here(&stagings.disk, &held);
    let in_memory = match &stagings.memory {
        Some((dir, _)) if on_disk.is_empty() => staged_here(dir, &held),
        Some((dir, _)) => {
            let _ = std::fs::remove_dir_all(dir);
            HashMap::new()
        }
        None => HashMap::new(),
    };
    let (earlier, staged) = if !on_disk.is_empty() {
        (Some(Place::Disk), on_disk)
    } else if !in_memory.is_empty() {
        (Some(Place::Memory), in_memory)
    } else {
        (None, HashMap::new())
    };
    let idle = agent.copy_timeout.min(Duration::from_secs(60));
    let hints: Vec<&StorePath> = held.iter().chain(staged.keys()).collect();
    let requests = (0..SHARDS).map(|i| {
        let body = wire_deliver::encode_request(top, i, SHARDS, hints.iter().copied());
        async move {
            let mut r = target
                .post(DELIVER_PATH, &body, idle, false)
                .await?
                .ok()
                .await?;
            let (head, rest) = read_head(&mut r).await?;
            Ok::<_, ClientError>((r, head, rest))
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut failures = Vec::new();
    let mut streams = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(s) => streams.push(s),
            Err(e) => failures.push(format!("shard {i}: {e}")),
        }
    }
    let Some((_, head, _)) = streams.first() else {
        let staging = stagings.dir(earlier.unwrap_or(Place::Disk)).to_owned();
        return Ok((
            Delivered::Incomplete(format!(
                "the delivery was not answered ({}); asking for the closure instead",
                failures.join("; ")
            )),
            staging,
        ));
    };
    let head = *head;
    let memory_room = stagings.memory.as_ref().and_then(|(dir, largest)| {
        super::prepare(dir).ok()?;
        let (free, _) = super::free_space(dir).ok()?;
        Some((*largest, free))
    });
    let place = super::staging_place(earlier, head.file_bytes, memory_room);
    let staged = if earlier.is_some_and(|e| e != place) {
        // Entries staged in memory, and a delivery too large for it now: they are fetched
        // again (the two-request form brings what the hints left out).
        let _ = std::fs::remove_dir_all(stagings.dir(Place::Memory));
        HashMap::new()
    } else {
        staged
    };
    let staging = stagings.dir(place).to_owned();
    push_line(
        log,
        &format!(
            "delivery: {} paths held here, {} staged by an earlier attempt; {} connections bring the {} others ({} bytes) into {}{} ({} ms)",
            held.len(),
            staged.len(),
            streams.len(),
            head.entries,
            head.file_bytes,
            staging.display(),
            if place == Place::Memory {
                " (memory)"
            } else {
                ""
            },
            ms()
        ),
    );
    let staging = staging.as_path();
    super::prepare(staging).map_err(|why| {
        Failed::Copy(SystemError::Transfer {
            path: store::render(top),
            cache: agent.cache_url.to_string(),
            why,
        })
    })?;
    let plan = Plan {
        copy: vec![],
        fetch: vec![],
        fetch_bytes: head.file_bytes,
        store_bytes: head.nar_bytes,
    };
    super::check_space(staging, &plan).map_err(|why| {
        Failed::Copy(SystemError::Transfer {
            path: store::render(top),
            cache: agent.cache_url.to_string(),
            why,
        })
    })?;

    let imports_have = held;
    let top_path = store::render(top);
    let mut imports = Imports::growing(imports_have.clone());
    for (p, refs) in staged {
        imports.staged(p, refs);
    }
    let claimed = Mutex::new(Claims::default());
    let (tx, rx) = mpsc::unbounded_channel();
    // The most bytes one entry may take: the whole delivery's, with room for a cache that
    // compressed a path between the answer line and its entry.
    let most = head
        .file_bytes
        .saturating_add(head.nar_bytes / 64)
        .saturating_add(64 * 1024);
    let held_before = imports_have.clone();
    let ctx = ShardCtx {
        agent,
        top: &top_path,
        staging,
        held: &held_before,
        most,
    };
    let fetched = async {
        let runs = streams
            .into_iter()
            .enumerate()
            .map(|(tag, (r, head, rest))| {
                let writer = Writer {
                    staging,
                    wanted: Wanted::Any(most, &claimed),
                    tag,
                    current: None,
                    done: HashSet::new(),
                    tell: tx.clone(),
                };
                let ctx = &ctx;
                async move {
                    let mut log = String::new();
                    let result = shard(ctx, r, head, rest, writer, &mut log).await;
                    (result, log)
                }
            });
        let results = futures::future::join_all(runs).await;
        drop(tx);
        let mut cut = Vec::new();
        let mut refused = None;
        let mut logs = String::new();
        for (result, log) in results {
            logs.push_str(&log);
            match result {
                Ok(()) => {}
                Err(ShardError::Cut(why)) => cut.push(why),
                Err(ShardError::Refused(e)) => refused = Some(e),
            }
        }
        Ok::<_, Failed>((cut, refused, logs, ms()))
    };
    let mut import_log = String::new();
    let source = format!("file://{}", staging.display());
    let imported = super::import(agent, &top_path, &source, &mut imports, rx, &mut import_log);
    let joined = tokio::try_join!(fetched, imported);
    log.push_str(&import_log);
    let refusal = |e: &Failed| {
        matches!(
            e,
            Failed::Copy(SystemError::CopyRefused { .. } | SystemError::CopyTampered { .. })
        )
    };
    let joined = match joined {
        Ok(((_, Some(refused), logs, _), _)) => {
            log.push_str(&logs);
            Err(refused)
        }
        Ok(((cut, None, logs, fetched_ms), batches)) => {
            log.push_str(&logs);
            Ok(((cut, fetched_ms), batches))
        }
        Err(e) => Err(e),
    };
    let ((cut, fetched_ms), batches) = match joined {
        Ok(done) => done,
        Err(e) => {
            if refusal(&e) {
                // Nothing refused is kept for the next attempt.
                let _ = std::fs::remove_dir_all(staging);
            }
            return Err(e);
        }
    };
    failures.extend(cut);
    if imports.holds(top) {
        push_line(
            log,
            &format!(
                "delivered ({fetched_ms} ms) and copied into the store in {batches} batches ({} ms)",
                ms()
            ),
        );
        return Ok((Delivered::Done, staging.to_owned()));
    }
    let why = if failures.is_empty() {
        format!(
            "{} delivered paths wait for references this host lacks",
            imports.left()
        )
    } else {
        failures.join("; ")
    };
    Ok((
        Delivered::Incomplete(format!(
            "the delivery is incomplete ({why}); asking for the rest of the closure"
        )),
        staging.to_owned(),
    ))
}

/// Reads the answer line of a delivery; returns it and the body bytes read after it.
async fn read_head(r: &mut Response) -> Result<(Head, Vec<u8>), ClientError> {
    let mut buf = Vec::new();
    loop {
        let parsed = wire_deliver::parse_head(&buf).map_err(|e| ClientError::Malformed {
            addr: r.addr().to_owned(),
            why: leak_free(&e),
        })?;
        if let Some((head, len)) = parsed {
            return Ok((head, buf.split_off(len)));
        }
        match r.chunk().await? {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                return Err(ClientError::Malformed {
                    addr: r.addr().to_owned(),
                    why: "the delivery answer ended before its first line",
                });
            }
        }
    }
}

/// A static reason for a malformed answer line (`ClientError::Malformed` carries one).
fn leak_free(e: &wire::WireError) -> &'static str {
    match e {
        wire::WireError::Magic(_) => "the delivery answer is not a Bento delivery",
        _ => "the delivery answer's first line is malformed",
    }
}

/// Why a shard did not bring all its entries.
enum ShardError {
    /// Cut, malformed, or an import as it arrived that failed for another reason than a
    /// refusal: the two-request form brings the rest.
    Cut(String),
    /// Nix refused an entry imported as it arrived.
    Refused(Failed),
}

impl From<String> for ShardError {
    fn from(why: String) -> Self {
        ShardError::Cut(why)
    }
}

/// What a shard needs besides its answer.
struct ShardCtx<'a> {
    agent: &'a Agent,
    /// The top path, as the copy's judgement names it.
    top: &'a str,
    staging: &'a Path,
    /// Paths in the store before the delivery: an entry referring only to these may be
    /// imported as it arrives.
    held: &'a HashSet<StorePath>,
    most: u64,
}

/// The next event of a shard's stream, reading the answer as needed; `None` at its end.
async fn next(decoder: &mut wire::Decoder, r: &mut Response) -> Result<Option<Event>, String> {
    loop {
        if let Some(e) = decoder.next_event().map_err(|e| e.to_string())? {
            return Ok(Some(e));
        }
        match r.chunk().await.map_err(|e| e.to_string())? {
            Some(chunk) => decoder.push(&chunk),
            None => return Ok(None),
        }
    }
}

/// Receives one shard's entries into the staging directory, or into the store through a
/// pipe ([`piped`]) for a large one whose references are there.
async fn shard(
    ctx: &ShardCtx<'_>,
    mut r: Response,
    head: Head,
    rest: Vec<u8>,
    mut writer: Writer<'_>,
    log: &mut String,
) -> Result<(), ShardError> {
    let deadline = ctx.agent.copy_timeout;
    let work = async {
        let mut decoder = wire::Decoder::new(ctx.most);
        decoder.push(&rest);
        while let Some(event) = next(&mut decoder, &mut r).await? {
            if let Event::Entry {
                narinfo: raw,
                file_len,
            } = &event
                && *file_len >= PIPE_MIN
                && let Some(ni) = pipeable(&writer, raw, ctx.held)
            {
                piped(ctx, ni, raw, &mut decoder, &mut r, &mut writer, log).await?;
                continue;
            }
            let entry_end = matches!(event, Event::EntryEnd);
            writer.take(event)?;
            if entry_end {
                // The importer and the other shards run in this task: let them see it.
                tokio::task::yield_now().await;
            }
        }
        decoder.finish().map_err(|e| e.to_string())?;
        if writer.done.len() as u64 != head.shard_entries {
            return Err(ShardError::Cut(format!(
                "the cache sent {} of the {} entries it announced",
                writer.done.len(),
                head.shard_entries
            )));
        }
        Ok(())
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| ShardError::Cut(format!("not done within {} s", deadline.as_secs())))?
}

/// Entries at least this large are imported as they arrive when they can be: Nix reads
/// them from a pipe the stream fills, instead of from a file written whole first.
const PIPE_MIN: u64 = 16 * 1024 * 1024;
/// The pipe's buffer (Linux allows up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
const PIPE_BYTES: usize = 1024 * 1024;

/// The narinfo of an entry that may be imported as it arrives: it parses, every reference
/// is in the store already (or itself), and no other shard has it (it is then this one's).
fn pipeable(
    writer: &Writer<'_>,
    raw: &[u8],
    held: &HashSet<StorePath>,
) -> Option<narinfo::NarInfo> {
    let ni = narinfo::parse(raw).ok()?;
    let path = ni.store_path();
    if !ni
        .references()
        .iter()
        .all(|r| r == path || held.contains(r))
    {
        return None;
    }
    wire::nar_file_name(ni.url())?;
    let Wanted::Any(_, claims) = &writer.wanted else {
        return None;
    };
    // Its NAR file is a FIFO in a directory of its own: the file name needs no claim.
    claims.lock().ok()?.paths.insert(path.clone()).then_some(ni)
}

/// Imports the entry of `ni` while it arrives: a one-entry `file://` cache whose NAR file
/// is a FIFO the stream is written into, and `nix copy` from it, judged as any copy is (Nix
/// verifies the signature and the hash). A stream cut inside the entry leaves the path out
/// (the two-request form fetches it again); a refusal ends the copy.
async fn piped(
    ctx: &ShardCtx<'_>,
    ni: narinfo::NarInfo,
    raw: &[u8],
    decoder: &mut wire::Decoder,
    r: &mut Response,
    writer: &mut Writer<'_>,
    log: &mut String,
) -> Result<(), ShardError> {
    use tokio::io::AsyncWriteExt as _;
    let path = ni.store_path().clone();
    let dir = ctx.staging.join(format!("pipe{}", writer.tag));
    let fail =
        |e: std::io::Error| ShardError::Cut(format!("cannot prepare {}: {e}", dir.display()));
    let _ = std::fs::remove_dir_all(&dir);
    super::prepare(&dir)?;
    std::fs::write(narinfo_file(&dir, &path), raw).map_err(fail)?;
    let name = wire::nar_file_name(ni.url()).unwrap_or_default();
    let fifo = dir.join("nar").join(name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| fail(e.into()))?;
    // Read-write: opening never waits for Nix, and a Nix that never reads is seen by its
    // exit, not by a write that fails.
    let mut sender = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&fifo)
        .map_err(fail)?;
    // A larger pipe: Nix and the stream switch turns every pipe-full (64 KiB by default).
    let _ = rustix::pipe::fcntl_setpipe_size(&sender, PIPE_BYTES);
    let source = format!("file://{}", dir.display());
    let copy = super::copy_command(ctx.agent, &source, std::slice::from_ref(&path));
    let mut import_log = String::new();
    let (verdict, cut) = {
        let import = system::copy_judged(ctx.agent, copy, ctx.top, &mut import_log);
        tokio::pin!(import);
        let mut verdict = None;
        let mut cut = None;
        loop {
            let event = match next(decoder, r).await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    cut = Some("the stream ended inside an entry".to_owned());
                    break;
                }
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            };
            match event {
                Event::Data(bytes) if verdict.is_none() => {
                    tokio::select! {
                        written = sender.write_all(&bytes) => {
                            if let Err(e) = written {
                                cut = Some(format!("cannot write {}: {e}", fifo.display()));
                                break;
                            }
                        }
                        v = &mut import => verdict = Some(v),
                    }
                }
                Event::Data(_) => {}
                Event::EntryEnd => break,
                Event::Entry { .. } | Event::End { .. } => {
                    cut = Some("an entry without its end".to_owned());
                    break;
                }
            }
        }
        drop(sender);
        let verdict = match (verdict, &cut) {
            (Some(v), _) => Some(v),
            // Cut: Nix's verdict no longer matters, and a `nix copy` that has not opened
            // the pipe yet would wait for a writer until its deadline. Dropping the import
            // kills it (a path is valid only once Nix has imported it whole).
            (None, Some(_)) => None,
            (None, None) => Some(import.await),
        };
        (verdict, cut)
    };
    let _ = std::fs::remove_dir_all(&dir);
    log.push_str(&import_log);
    let (Some(verdict), None) = (verdict, &cut) else {
        return Err(ShardError::Cut(cut.unwrap_or_default()));
    };
    match verdict {
        Ok(()) => {
            push_line(
                log,
                &format!("imported {} as it arrived", store::render(&path)),
            );
            let _ = writer.tell.send(Arrived::Imported(path.clone()));
            writer.done.insert(path);
            Ok(())
        }
        Err(e @ (SystemError::CopyRefused { .. } | SystemError::CopyTampered { .. })) => {
            Err(ShardError::Refused(Failed::Copy(e)))
        }
        Err(e) => Err(ShardError::Cut(format!(
            "importing {} as it arrived failed: {e}",
            store::render(&path)
        ))),
    }
}

/// The paths of the systems this host holds (current, booted, every system profile
/// generation); empty when there are none or they cannot be listed (then the delivery
/// brings the whole closure, as to a new host).
async fn held_paths(agent: &Agent, log: &mut String) -> HashSet<StorePath> {
    let mut roots: Vec<String> = SYSTEM_ROOTS
        .iter()
        .filter(|r| Path::new(r).exists())
        .map(|r| (*r).to_owned())
        .collect();
    if let Ok(dir) = std::fs::read_dir(PROFILES) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("system-") && name.ends_with("-link") {
                roots.push(e.path().display().to_string());
            }
        }
    }
    if roots.is_empty() {
        return HashSet::new();
    }
    let query = Command::new("nix-store")
        .args(["--query", "--requisites"])
        .args(&roots)
        .timeout(agent.copy_timeout);
    match children::run(&agent.state_dir, query, |l| push_line(log, l)).await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| store::parse(l.trim()).ok())
            .collect(),
        Err(e) => {
            push_line(
                log,
                &format!(
                    "cannot list the paths of this host's systems ({e}); asking for the whole closure"
                ),
            );
            HashSet::new()
        }
    }
}

/// The entries an earlier attempt completed in `staging` (a narinfo naming a NAR file of
/// the declared size and hash) for paths not in `held`, with their references. Anything
/// else staged is removed.
fn staged_here(staging: &Path, held: &HashSet<StorePath>) -> HashMap<StorePath, Vec<StorePath>> {
    let mut staged = HashMap::new();
    let Ok(dir) = std::fs::read_dir(staging) else {
        return staged;
    };
    for e in dir.flatten() {
        let file = e.path();
        if file.extension().is_none_or(|x| x != "narinfo") {
            continue;
        }
        let complete = super::staged_whole(staging, &file).map(|(ni, _)| {
            (
                ni.store_path().clone(),
                ni.references().iter().cloned().collect::<Vec<_>>(),
            )
        });
        match complete {
            Some((p, refs)) if !held.contains(&p) => {
                staged.insert(p, refs);
            }
            Some(_) => {}
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    staged
}
