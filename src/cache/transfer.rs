//! The server side of the whole-closure transfer (`crate::transfer`): the closure of a
//! published path, and one stream of the entries of many paths, read from the narinfos
//! signed at refresh and the zstd files compressed at publish.
//!
//! Scoped exactly like the cache: every path asked for is looked up in the index for the
//! caller (with host tokens, a host sees only its own closure; another host's path and a
//! path outside every published closure are both 404, for the whole request). A request
//! may name at most [`crate::transfer::MAX_PATHS`] paths and [`MAX_TRANSFER_BYTES`] of
//! files. One NAR-stream permit is held for the whole answer.

use std::io::Read as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

use super::access;
use super::compress::FileIdentity;
use super::index::{Index, Lookup, ServablePath};
use super::refresh::Cache;
use super::request::Endpoint;
use crate::nix::{nar, store};
use crate::transfer::{MAX_PATHS, deliver, order, wire};

/// Most bytes of files one transfer request may ask for.
pub const MAX_TRANSFER_BYTES: u64 = 64 * 1024 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum TransferServeError {
    #[error("bad transfer request: {0}")]
    Request(#[from] wire::WireError),
    #[error("not in this cache")]
    NotFound,
    #[error("this cache needs a host name and token (HTTP basic auth, e.g. from a netrc file)")]
    Unauthenticated,
    #[error(
        "the paths asked for hold {bytes} bytes, more than the {max} one request may; ask for fewer"
    )]
    TooLarge { bytes: u64, max: u64 },
    #[error("the cache is shutting down")]
    Closed,
    #[error("every NAR stream this client may hold is busy ({}); retry shortly", .0.name())]
    Busy(super::limits::Refusal),
}

impl TransferServeError {
    fn status(&self) -> StatusCode {
        match self {
            TransferServeError::Request(_) => StatusCode::BAD_REQUEST,
            TransferServeError::NotFound => StatusCode::NOT_FOUND,
            TransferServeError::Unauthenticated => StatusCode::UNAUTHORIZED,
            TransferServeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TransferServeError::Closed | TransferServeError::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for TransferServeError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if matches!(self, TransferServeError::Unauthenticated) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"bento cache\""),
            );
        }
        if matches!(self, TransferServeError::Busy(_)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        (self.status(), headers, format!("{self}\n")).into_response()
    }
}

/// The entries of `paths` as the caller may see them, or why not (the first path that is
/// not visible makes the whole request 404).
fn visible(
    index: &Index,
    caller: &access::Caller,
    paths: &[crate::nix::StorePath],
) -> Result<Vec<Arc<ServablePath>>, TransferServeError> {
    paths
        .iter()
        .map(|p| match index.narinfo(p.digest(), caller) {
            Lookup::Found(e) if e.info.path == *p => Ok(e),
            Lookup::Found(_) | Lookup::NotFound => Err(TransferServeError::NotFound),
            Lookup::Unauthenticated => Err(TransferServeError::Unauthenticated),
        })
        .collect()
}

/// Who is asking, by the request's credentials (once per request).
fn caller_of(index: &Index, headers: &HeaderMap) -> access::Caller {
    access::identify(
        index.tokens(),
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
}

fn file_size(e: &ServablePath) -> u64 {
    e.zst.as_ref().map_or(e.info.nar_size, |c| c.file.size)
}

fn finish(cache: &Cache, result: Result<Response, TransferServeError>) -> Response {
    let response = result.unwrap_or_else(|e| {
        tracing::debug!(status = e.status().as_u16(), error = %e, "transfer refused");
        e.into_response()
    });
    cache
        .metrics
        .request(Endpoint::Other, response.status().as_u16());
    response
}

/// The closure of `top` as `caller` may see it, dependencies first (404 as a whole when
/// any of it is not visible).
fn closure_of(
    index: &Index,
    caller: &access::Caller,
    top: &crate::nix::StorePath,
) -> Result<Vec<Arc<ServablePath>>, TransferServeError> {
    let mut todo = visible(index, caller, std::slice::from_ref(top))?;
    let mut seen: std::collections::HashSet<[u8; 20]> = todo.iter().map(|e| e.hash_part).collect();
    let mut all = Vec::new();
    while let Some(e) = todo.pop() {
        let refs: Vec<_> = e
            .info
            .references
            .iter()
            .filter(|r| seen.insert(*r.digest()))
            .cloned()
            .collect();
        todo.extend(visible(index, caller, &refs)?);
        all.push(e);
    }
    Ok(order::dependency_order(
        all,
        |e| &e.info.path,
        |e| &e.info.references,
    ))
}

/// `POST /_bento/v1/closure`: the closure of the one path in the body, dependencies first.
pub async fn closure(State(cache): State<Arc<Cache>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| {
        let asked = wire::parse_paths(&body, 1)?;
        let index = cache.index();
        let caller = caller_of(&index, &headers);
        let Some(top) = asked.first() else {
            return Err(TransferServeError::NotFound);
        };
        let entries: Vec<wire::ClosureEntry> = closure_of(&index, &caller, top)?
            .iter()
            .map(|e| wire::ClosureEntry {
                path: e.info.path.clone(),
                file_size: file_size(e),
                nar_size: e.info.nar_size,
            })
            .collect();
        Ok(wire::encode_closure(&entries).into_response())
    })();
    finish(&cache, result)
}

/// The connection's peer, for the per-address share of NAR streams (as plain NARs).
fn peer_of(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// `POST /_bento/v1/deliver`: one shard of the closure of a top path, less what the host
/// says it holds, as a NAR stream after a line of counts (`crate::transfer::deliver`).
pub async fn deliver(
    State(cache): State<Arc<Cache>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer_of(&extensions);
    let result = async {
        let asked = deliver::parse_request(&body)?;
        let index = cache.index();
        let caller = caller_of(&index, &headers);
        let missing: Vec<Arc<ServablePath>> = closure_of(&index, &caller, &asked.top)?
            .into_iter()
            .filter(|e| !asked.have.contains(&deliver::hint(&e.info.path)))
            .collect();
        let sizes: Vec<u64> = missing.iter().map(|e| e.info.nar_size).collect();
        let head = deliver::Head {
            shard_entries: 0,
            entries: missing.len() as u64,
            file_bytes: missing.iter().map(|e| file_size(e)).sum(),
            nar_bytes: sizes.iter().sum(),
        };
        let mine: Vec<Arc<ServablePath>> = missing
            .into_iter()
            .zip(deliver::split(&sizes, asked.shards))
            .filter(|(_, s)| *s == asked.shard)
            .map(|(e, _)| e)
            .collect();
        let head = deliver::Head {
            shard_entries: mine.len() as u64,
            ..head
        };
        drop(index);
        stream(&cache, peer, caller, mine, deliver::encode_head(&head)).await
    }
    .await;
    finish(&cache, result)
}

/// `POST /_bento/v1/nars`: one stream of the entries of the paths in the body.
pub async fn nars(
    State(cache): State<Arc<Cache>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer_of(&extensions);
    let result = start_nars(&cache, peer, &headers, &body).await;
    finish(&cache, result)
}

async fn start_nars(
    cache: &Arc<Cache>,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TransferServeError> {
    let asked = wire::parse_paths(body, MAX_PATHS)?;
    let index = cache.index();
    let caller = caller_of(&index, headers);
    let entries = visible(&index, &caller, &asked)?;
    let entries = order::dependency_order(entries, |e| &e.info.path, |e| &e.info.references);
    drop(index);
    stream(cache, peer, caller, entries, Vec::new()).await
}

/// Answers with `prefix` then the NAR stream of `entries` (in the order given), holding a
/// NAR-stream permit of `peer` and `caller` throughout.
async fn stream(
    cache: &Arc<Cache>,
    peer: Option<std::net::IpAddr>,
    caller: access::Caller,
    entries: Vec<Arc<ServablePath>>,
    prefix: Vec<u8>,
) -> Result<Response, TransferServeError> {
    let bytes: u64 = entries.iter().map(|e| file_size(e)).sum();
    if bytes > MAX_TRANSFER_BYTES {
        return Err(TransferServeError::TooLarge {
            bytes,
            max: MAX_TRANSFER_BYTES,
        });
    }
    let len = prefix.len() as u64
        + wire::nars_len(entries.iter().map(|e| (e.narinfo().len(), file_size(e))));
    let host = match caller {
        access::Caller::Host(h) => Some(h),
        access::Caller::Anyone | access::Caller::Unauthenticated => None,
    };
    let permit = cache
        .nar_places
        .claim(peer, host.as_deref())
        .await
        .map_err(|limit| {
            cache.metrics.refused(limit);
            TransferServeError::Busy(limit)
        })?;
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let me = cache.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        me.metrics.stream_started();
        let result = produce(&me, &entries, &prefix, &tx);
        if let Err(why) = &result
            && !tx.is_closed()
        {
            tracing::error!(reason = %why, "transfer cut short");
            let _ = tx.blocking_send(Err(std::io::Error::other(why.clone())));
        }
        me.metrics.stream_ended(result.is_ok());
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-bento-nars")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|_| TransferServeError::Closed)
}

/// Writes chunks into the response channel, counting them as sent.
struct Out<'a> {
    tx: &'a mpsc::Sender<Result<Bytes, std::io::Error>>,
    cache: &'a Cache,
    buf: Vec<u8>,
    written: u64,
}

impl Out<'_> {
    fn flush_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))?;
        self.cache.metrics.sent(Endpoint::Other, n);
        Ok(())
    }
}

impl std::io::Write for Out<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= CHUNK {
            self.flush_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buf()
    }
}

fn produce(
    cache: &Cache,
    entries: &[Arc<ServablePath>],
    prefix: &[u8],
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = Out {
        tx,
        cache,
        buf: Vec::with_capacity(CHUNK),
        written: 0,
    };
    let io = |e: std::io::Error| e.to_string();
    out.write_all(prefix).map_err(io)?;
    out.write_all(&wire::nars_start()).map_err(io)?;
    for e in entries {
        let size = file_size(e);
        out.write_all(&wire::entry_header(e.narinfo().len(), size))
            .map_err(io)?;
        out.write_all(e.narinfo()).map_err(io)?;
        let before = out.written;
        match &e.zst {
            Some(c) => {
                let mut file = std::fs::File::open(&c.file.path).map_err(io)?;
                let now = file.metadata().map(|m| FileIdentity::of(&m)).map_err(io)?;
                if now != c.file.identity {
                    cache.suspect(c.file.file_hash.0);
                    return Err(format!(
                        "{} changed since it was verified",
                        c.file.path.display()
                    ));
                }
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n]).map_err(io)?;
                }
            }
            None => {
                let path = store::render(&e.info.path);
                nar::dump(std::path::Path::new(&path), &mut out).map_err(|e| e.to_string())?;
            }
        }
        if out.written - before != size {
            return Err(format!(
                "{} gave {} bytes, not the {size} its narinfo says",
                store::render(&e.info.path),
                out.written - before
            ));
        }
    }
    out.write_all(&wire::nars_end(entries.len() as u64))
        .map_err(io)?;
    out.flush().map_err(io)
}
