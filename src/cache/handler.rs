//! The one request handler: parse the request (pure, `request.rs`), look it up in the
//! current index, answer from memory (narinfo, cache info) or start a NAR stream.
//!
//! Every refusal is a [`ServeError`] variant mapped to its status explicitly; the body says
//! what a client can act on, the details go to the log.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use thiserror::Error;

use super::access::{self, Caller};
use super::compress::FileIdentity;
use super::conn;
use super::index::{Compressed, Lookup};
use super::limits::Refusal;
use super::range::{self, RangeDecision};
use super::refresh::Cache;
use super::request::{self, Endpoint, Method, Request, RequestError};
use super::stream::{self, NarSource, OnMismatch, Spec};
use crate::nix::store;

const NARINFO_TYPE: HeaderValue = HeaderValue::from_static("text/x-nix-narinfo");
const CACHE_INFO_TYPE: HeaderValue = HeaderValue::from_static("text/x-nix-cache-info");
const NAR_TYPE: HeaderValue = HeaderValue::from_static("application/x-nix-nar");
const METRICS_TYPE: HeaderValue =
    HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE);
const BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// Why a request is not answered with what it asked for.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("not in this cache")]
    NotFound,
    #[error("this cache needs a host name and token (HTTP basic auth, e.g. from a netrc file)")]
    Unauthenticated,
    #[error("/metrics needs the metrics token (Authorization: Bearer <token>)")]
    MetricsToken,
    #[error("range not satisfiable for a resource of {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("the compressed NAR is being re-checked; retry shortly")]
    FileChanged,
    #[error("the NAR cannot be read on the server")]
    Unreadable,
    #[error(
        "{0} was altered on the server after it was published and is not served; repair it there and deploy again"
    )]
    Broken(String),
    #[error("the server is sending as many NARs as it may ({}); retry shortly", .0.name())]
    Busy(Refusal),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::Request(e) => match e {
                RequestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
                RequestError::PercentEncoded
                | RequestError::Traversal
                | RequestError::BadCharacter
                | RequestError::BadHashPart(_)
                | RequestError::BadNarName(_) => StatusCode::BAD_REQUEST,
                RequestError::Unknown => StatusCode::NOT_FOUND,
            },
            // Nix then says the path is missing, naming it, rather than "bad archive".
            ServeError::NotFound | ServeError::Broken(_) => StatusCode::NOT_FOUND,
            ServeError::Unauthenticated | ServeError::MetricsToken => StatusCode::UNAUTHORIZED,
            ServeError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            // Nix retries 503 with backoff, by which time the file is re-checked.
            ServeError::FileChanged => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Unreadable => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        match &self {
            ServeError::Unauthenticated => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"bento cache\""),
                );
            }
            ServeError::MetricsToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bento metrics\""),
                );
            }
            ServeError::RangeNotSatisfiable { len } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            ServeError::FileChanged => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ServeError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ServeError::Request(RequestError::Method(_)) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ServeError::Request(_)
            | ServeError::NotFound
            | ServeError::Broken(_)
            | ServeError::Unreadable => {}
        }
        (self.status(), headers, format!("{self}\n")).into_response()
    }
}

/// Answers every request (installed as the router's fallback).
pub async fn handle(State(cache): State<Arc<Cache>>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    let peer = conn::peer_of(&parts);
    let path = parts.uri.path();
    let parsed = request::parse_method(parts.method.as_str())
        .and_then(|m| request::parse(path).map(|r| (m, r)));
    let (endpoint, result) = match parsed {
        Ok((method, r)) => (
            r.endpoint(),
            answer(&cache, method, r, &parts.headers, peer).await,
        ),
        Err(e) => (RequestError::endpoint_of(path), Err(ServeError::Request(e))),
    };
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(path = %path.chars().take(200).collect::<String>(), status = e.status().as_u16(), error = %e, "refused");
            e.into_response()
        }
    };
    cache.metrics.request(endpoint, response.status().as_u16());
    response
}

fn small(
    cache: &Cache,
    endpoint: Endpoint,
    method: Method,
    ty: HeaderValue,
    body: Bytes,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, ty);
    if method == Method::Get {
        cache.metrics.sent(endpoint, body.len() as u64);
        (headers, body).into_response()
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        (headers, Body::empty()).into_response()
    }
}

async fn answer(
    cache: &Arc<Cache>,
    method: Method,
    request: Request,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Response, ServeError> {
    let index = cache.index();
    let caller = || {
        access::identify(
            index.tokens(),
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
    };
    let client = |caller: &Caller| Client {
        address: peer,
        host: match caller {
            Caller::Host(h) => Some(h.clone()),
            Caller::Anyone | Caller::Unauthenticated => None,
        },
    };
    let found = |lookup: Lookup| match lookup {
        Lookup::Found(e) => Ok(e),
        Lookup::NotFound => Err(ServeError::NotFound),
        Lookup::Unauthenticated => Err(ServeError::Unauthenticated),
    };
    match request {
        Request::CacheInfo => Ok(small(
            cache,
            Endpoint::CacheInfo,
            method,
            CACHE_INFO_TYPE,
            cache.cache_info.clone(),
        )),
        Request::Metrics => {
            if let Some(token) = &cache.config.metrics_token {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if !given.is_some_and(|g| access::tokens_equal(g.trim(), token)) {
                    return Err(ServeError::MetricsToken);
                }
            }
            // The fleet gauges read the state directory.
            let me = cache.clone();
            let text = crate::blocking::run("rendering /metrics", move || me.render_metrics())
                .await
                .map_err(|_| ServeError::Unreadable)?;
            Ok(small(
                cache,
                Endpoint::Metrics,
                method,
                METRICS_TYPE,
                Bytes::from(text),
            ))
        }
        Request::NarInfo { hash_part } => {
            let entry = found(index.narinfo(&hash_part, &caller()))?;
            if entry.zst.is_none() && cache.broken.contains(&entry.info.nar_hash) {
                return Err(ServeError::Broken(store::render(&entry.info.path)));
            }
            Ok(small(
                cache,
                Endpoint::NarInfo,
                method,
                NARINFO_TYPE,
                entry.narinfo().clone(),
            ))
        }
        Request::Nar { nar_hash } => {
            let who = caller();
            let entry = found(index.nar(&nar_hash, &who))?;
            drop(index);
            let len = entry.info.nar_size;
            let what = store::render(&entry.info.path);
            if cache.broken.contains(&entry.info.nar_hash) {
                return Err(ServeError::Broken(what));
            }
            let on_mismatch = OnMismatch::Broken {
                nar_hash: entry.info.nar_hash,
                path: what.clone(),
            };
            let nar = Nar {
                source: NarSource::Store(what.clone().into()),
                hash: entry.info.nar_hash,
                len,
                what,
            };
            send(
                cache,
                method,
                headers,
                Endpoint::Nar,
                nar,
                on_mismatch,
                client(&who),
            )
            .await
        }
        Request::NarZst { file_hash } => {
            let who = caller();
            let entry = found(index.nar_zst(&file_hash, &who))?;
            drop(index);
            let Some(Compressed { file: zst, .. }) = &entry.zst else {
                return Err(ServeError::NotFound);
            };
            let (path, identity) = (zst.path.clone(), zst.identity);
            let opened = crate::blocking::run("opening a compressed NAR", move || {
                let file = std::fs::File::open(&path).ok()?;
                let now = FileIdentity::of(&file.metadata().ok()?);
                (now == identity).then_some(file)
            })
            .await
            .ok()
            .flatten();
            let Some(file) = opened else {
                tracing::warn!(file = %zst.path.display(), "compressed NAR changed or vanished since it was verified");
                cache.suspect(file_hash);
                return Err(ServeError::FileChanged);
            };
            let nar = Nar {
                source: NarSource::File(file),
                hash: zst.file_hash,
                len: zst.size,
                what: zst.path.display().to_string(),
            };
            send(
                cache,
                method,
                headers,
                Endpoint::NarZst,
                nar,
                OnMismatch::Suspect(file_hash),
                client(&who),
            )
            .await
        }
    }
}

/// A NAR or compressed NAR to answer with: where its bytes come from, the hash and length of
/// the whole of it, and what the log calls it.
struct Nar {
    source: NarSource,
    hash: crate::nix::hash::Sha256Hash,
    len: u64,
    what: String,
}

/// Who a body goes to, for the NAR stream shares.
struct Client {
    address: Option<IpAddr>,
    host: Option<String>,
}

async fn send(
    cache: &Arc<Cache>,
    method: Method,
    headers: &HeaderMap,
    endpoint: Endpoint,
    nar: Nar,
    on_mismatch: OnMismatch,
    client: Client,
) -> Result<Response, ServeError> {
    let Nar {
        source,
        hash,
        len,
        what,
    } = nar;
    let decision = range::decide(headers.get(header::RANGE).map(HeaderValue::as_bytes), len);
    if decision == RangeDecision::Unsatisfiable {
        return Err(ServeError::RangeNotSatisfiable { len });
    }
    let (start, count) = decision.span(len);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, NAR_TYPE)
        .header(header::ACCEPT_RANGES, BYTES)
        .header(header::CONTENT_LENGTH, count);
    if let RangeDecision::Partial { start, end } = decision {
        builder = builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    let body = if method == Method::Head || count == 0 {
        Body::empty()
    } else {
        let places = cache
            .nar_places
            .claim(client.address, client.host.as_deref())
            .await
            .map_err(|limit| {
                cache.metrics.refused(limit);
                ServeError::Busy(limit)
            })?;
        let spec = Spec {
            source,
            start,
            len: count,
            // A store path can be altered under the server: whole plain NARs are always
            // checked. zstd files were hashed when loaded: only with `verify_sends`.
            expect: (decision == RangeDecision::Full
                && (cache.config.verify_sends || endpoint == Endpoint::Nar))
                .then_some(hash),
            what,
        };
        stream::body(spec, places, cache.clone(), endpoint, on_mismatch)
    };
    builder.body(body).map_err(|e| {
        tracing::error!(error = %e, "cannot build NAR response");
        ServeError::Unreadable
    })
}
