//! NAR bodies, streamed while they are produced and never held whole.
//!
//! A blocking task (NAR encoder over the store path, or reads of the zstd file) fills
//! chunks of [`CHUNK`] bytes into a channel of [`CHANNEL_DEPTH`] chunks that the response
//! body drains; a slow client therefore holds at most a few chunks in memory, and a
//! client that goes away stops the producer at its next chunk (a client that stops reading
//! is cut by the connection's send deadline, see `conn`). The task holds the body's NAR
//! stream places (`limits::StreamSlots`) until it ends.
//!
//! When the whole resource is sent, its hash is checked as it goes (NarHash for plain
//! NARs, FileHash for zstd files) and the last chunk is held back until the check passes:
//! a client never receives a complete body that does not match what its narinfo says; on a
//! mismatch the body is cut short (the client sees a failed transfer) and [`OnMismatch`]
//! says who is told: the refresher re-checks a zstd file, a store path is marked broken
//! (`broken`). Whole plain NARs are checked so (the store can be altered under the
//! server) unless the same NAR was checked before and nothing under its path changed
//! since (`verified`); zstd files only with `verify_sends` (they were hashed when loaded).

use std::io::{Read as _, Seek as _, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::limits::StreamSlots;
use super::metrics::Metrics;
use super::refresh::Cache;
use super::request::Endpoint;
use super::verified;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar;

/// Bytes per chunk handed to the HTTP layer.
pub const CHUNK: usize = 256 * 1024;
/// Chunks buffered between producer and client.
pub const CHANNEL_DEPTH: usize = 4;

/// Where the bytes come from.
#[derive(Debug)]
pub enum NarSource {
    /// Encode the NAR of this store path.
    Store(PathBuf),
    /// Read this (already opened and identity-checked) compressed file.
    File(std::fs::File),
}

/// One body to send: bytes `start..start+len` of the resource.
#[derive(Debug)]
pub struct Spec {
    pub source: NarSource,
    pub start: u64,
    pub len: u64,
    /// Set when the whole resource is sent: the hash it must have.
    pub expect: Option<Sha256Hash>,
    /// What the log calls the resource.
    pub what: String,
}

type Chunk = Result<Bytes, std::io::Error>;

/// Why a producer stopped early.
enum Stop {
    /// The client went away: nothing to report.
    ClientGone,
    /// Reading or encoding failed.
    Failed(String),
    /// Everything was read, but it does not hash to what the narinfo says.
    Mismatch(String),
}

/// Who is told when a whole body does not match its narinfo.
#[derive(Debug)]
pub enum OnMismatch {
    /// A zstd file, by its file hash: the refresher re-checks it.
    Suspect([u8; 32]),
    /// A store path, by its NAR hash: it is marked broken and no longer served.
    Broken { nar_hash: Sha256Hash, path: String },
}

/// Starts the producer and returns the body that streams its chunks.
pub fn body(
    spec: Spec,
    places: StreamSlots,
    cache: Arc<Cache>,
    endpoint: Endpoint,
    on_mismatch: OnMismatch,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let _places = places;
        let m = &cache.metrics;
        m.stream_started();
        let mut out = Out {
            tx: &tx,
            metrics: m,
            endpoint,
        };
        let result = match spec.source {
            NarSource::Store(ref path) => produce_store(path, &spec, &mut out, &cache),
            NarSource::File(ref file) => produce_file(file, &spec, &mut out),
        };
        let ok = match result {
            Ok(()) => true,
            Err(Stop::ClientGone) => {
                tracing::debug!(what = %spec.what, "client went away mid-body");
                false
            }
            Err(Stop::Failed(reason)) => {
                tracing::error!(what = %spec.what, reason = %reason, "NAR body cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(reason)));
                false
            }
            Err(Stop::Mismatch(reason)) => {
                tracing::warn!(what = %spec.what, reason = %reason, "NAR body cut short: it does not match its narinfo");
                match &on_mismatch {
                    OnMismatch::Suspect(file_hash) => cache.suspect(*file_hash),
                    OnMismatch::Broken { nar_hash, path } => {
                        cache.verified.forget(nar_hash);
                        cache.broken.mark(*nar_hash, path, &reason, &cache.metrics);
                    }
                }
                let _ = tx.blocking_send(Err(std::io::Error::other(reason)));
                false
            }
        };
        m.stream_ended(ok);
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

struct Out<'a> {
    tx: &'a mpsc::Sender<Chunk>,
    metrics: &'a Metrics,
    endpoint: Endpoint,
}

impl Out<'_> {
    fn send(&mut self, chunk: Bytes) -> Result<(), Stop> {
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| Stop::ClientGone)?;
        self.metrics.sent(self.endpoint, n);
        Ok(())
    }
}

fn check(hasher: Option<sha2::Sha256>, expect: Option<Sha256Hash>) -> Result<(), Stop> {
    match (hasher, expect) {
        (Some(h), Some(want)) => {
            let got = Sha256Hash(h.finalize().into());
            if got == want {
                Ok(())
            } else {
                Err(Stop::Mismatch(format!("expected {want}, got {got}")))
            }
        }
        _ => Ok(()),
    }
}

fn produce_file(mut file: &std::fs::File, spec: &Spec, out: &mut Out<'_>) -> Result<(), Stop> {
    let failed = |e: std::io::Error| Stop::Failed(format!("read error: {e}"));
    file.seek(SeekFrom::Start(spec.start)).map_err(failed)?;
    let mut hasher = spec.expect.map(|_| sha2::Sha256::new());
    let mut remaining = spec.len;
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64);
        let mut buf = Vec::with_capacity(want as usize);
        let n = (&mut file)
            .take(want)
            .read_to_end(&mut buf)
            .map_err(failed)? as u64;
        if n == 0 {
            return Err(Stop::Failed(format!(
                "read error: file ended {remaining} bytes early"
            )));
        }
        remaining -= n;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        if remaining == 0 {
            // The last chunk goes out only if the whole file hashed right.
            check(hasher.take(), spec.expect)?;
        }
        out.send(Bytes::from(buf))?;
    }
    Ok(())
}

/// A NAR encoded from the store. A whole body is hashed as it goes, unless the same NAR
/// was sent whole and hashed right before and its path's fingerprint has not changed since
/// (`verified`): the walk costs a `stat` per file, the hash a pass over every byte.
fn produce_store(
    path: &std::path::Path,
    spec: &Spec,
    out: &mut Out<'_>,
    cache: &Cache,
) -> Result<(), Stop> {
    let verified = &cache.verified;
    let Some(nar_hash) = spec.expect else {
        return produce_nar(path, spec, None, out);
    };
    let before = verified::fingerprint(path).ok();
    if before.is_some_and(|f| verified.trusted(&nar_hash, &f)) {
        cache.metrics.nar_hash_skipped();
        return produce_nar(path, spec, None, out);
    }
    produce_nar(path, spec, Some(nar_hash), out)?;
    if let Some(before) = before {
        verified.record(nar_hash, before);
    }
    Ok(())
}

fn produce_nar(
    path: &std::path::Path,
    spec: &Spec,
    expect: Option<Sha256Hash>,
    out: &mut Out<'_>,
) -> Result<(), Stop> {
    let mut sink = Sink {
        out,
        buf: BytesMut::with_capacity(CHUNK),
        skip: spec.start,
        remaining: spec.len,
        hasher: expect.map(|_| sha2::Sha256::new()),
        stop: None,
        range_done: false,
    };
    let result = nar::dump(path, &mut sink);
    if let Some(stop) = sink.stop.take() {
        return Err(stop);
    }
    if let Err(e) = result
        && !sink.range_done
    {
        return Err(Stop::Failed(e.to_string()));
    }
    if sink.remaining > 0 {
        return Err(Stop::Mismatch(format!(
            "the NAR ended {} bytes short of its registered size",
            sink.remaining
        )));
    }
    check(sink.hasher.take(), expect)?;
    let last = sink.buf.split().freeze();
    if !last.is_empty() {
        sink.out.send(last)?;
    }
    Ok(())
}

/// The writer the NAR encoder writes into: skips the bytes before the range, stops after
/// it, hashes, and holds the current chunk until the next write (so the last one is still
/// held when the encoder finishes).
struct Sink<'o, 'a> {
    out: &'o mut Out<'a>,
    buf: BytesMut,
    skip: u64,
    remaining: u64,
    hasher: Option<sha2::Sha256>,
    stop: Option<Stop>,
    range_done: bool,
}

impl Write for Sink<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.remaining == 0 && self.hasher.is_none() {
            // A range request is complete: stop the encoder.
            self.range_done = true;
            return Err(std::io::Error::other("range complete"));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        let mut d = data;
        if self.skip > 0 {
            let k = (self.skip.min(d.len() as u64)) as usize;
            d = &d[k..];
            self.skip -= k as u64;
        }
        let take = (self.remaining.min(d.len() as u64)) as usize;
        if take > 0 {
            if self.buf.len() >= CHUNK {
                let full = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK));
                if let Err(stop) = self.out.send(full.freeze()) {
                    self.stop = Some(stop);
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
                }
            }
            self.buf.extend_from_slice(&d[..take]);
            self.remaining -= take as u64;
        } else if self.remaining == 0 && self.hasher.is_some() && !d.is_empty() {
            // More bytes than the registered size: the store path changed.
            self.stop = Some(Stop::Mismatch(
                "the NAR is longer than its registered size".into(),
            ));
            return Err(std::io::Error::other("NAR too long"));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::nix::keys::SecretKey;
    use futures::StreamExt as _;

    async fn collect(body: Body) -> (Vec<u8>, bool) {
        let mut stream = body.into_data_stream();
        let mut got = Vec::new();
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => return (got, false),
            }
        }
        (got, true)
    }

    #[tokio::test]
    async fn a_file_that_does_not_hash_right_is_cut_before_its_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(CacheConfig::new(
            dir.path(),
            SecretKey::generate("k").unwrap(),
        ))
        .unwrap();
        let content: Vec<u8> = (0..(CHUNK * 5 / 2)).map(|i| i as u8).collect();
        let path = dir.path().join("f");
        std::fs::write(&path, &content).unwrap();
        for (expect, whole) in [
            (Sha256Hash::of(&content), true),
            (Sha256Hash::of(b"x"), false),
        ] {
            let permit = cache.nar_places.claim(None, None).await.unwrap();
            let spec = Spec {
                source: NarSource::File(std::fs::File::open(&path).unwrap()),
                start: 0,
                len: content.len() as u64,
                expect: Some(expect),
                what: "test".into(),
            };
            let (got, ok) = collect(body(
                spec,
                permit,
                cache.clone(),
                Endpoint::NarZst,
                OnMismatch::Suspect([0; 32]),
            ))
            .await;
            assert_eq!(ok, whole);
            if whole {
                assert_eq!(got, content);
            } else {
                assert_eq!(got.len(), CHUNK * 2, "the last chunk must be held back");
            }
        }
    }

    #[tokio::test]
    async fn nar_ranges_skip_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(CacheConfig::new(
            dir.path(),
            SecretKey::generate("k").unwrap(),
        ))
        .unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![7u8; CHUNK * 3]).unwrap();
        let mut whole = Vec::new();
        nar::dump(&file, &mut whole).unwrap();
        for (start, len) in [
            (0, whole.len()),
            (5, 100),
            (CHUNK + 3, CHUNK),
            (whole.len() - 1, 1),
        ] {
            let permit = cache.nar_places.claim(None, None).await.unwrap();
            let spec = Spec {
                source: NarSource::Store(file.clone()),
                start: start as u64,
                len: len as u64,
                expect: (len == whole.len()).then(|| Sha256Hash::of(&whole)),
                what: "test".into(),
            };
            let on_mismatch = OnMismatch::Broken {
                nar_hash: Sha256Hash::of(&whole),
                path: "test".into(),
            };
            let (got, ok) = collect(body(
                spec,
                permit,
                cache.clone(),
                Endpoint::Nar,
                on_mismatch,
            ))
            .await;
            assert!(ok, "{start}+{len}");
            assert!(got == whole[start..start + len], "{start}+{len}");
        }
    }
}
