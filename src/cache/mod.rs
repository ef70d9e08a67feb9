//! The HTTP binary cache of published closures (`bento serve`).
//!
//! It serves exactly the closures of the releases in `<state_dir>/publish/*/release`
//! (each verified with the fleet key), never the rest of the server's store. Narinfos are
//! signed once per path and answered from memory; NARs are streamed while they are
//! encoded, or read from a zstd file compressed once per path and verified by hash before
//! it is advertised. See `docs/cache.md` for the design and its failure modes.
//!
//! Files: `request` and `range` (pure parsing), `access` (tokens), `index` (what is
//! servable), `broken` (store paths found altered: never served), `limits` (connection caps,
//! NAR stream shares, timeouts), `conn` (connections: caps, timeouts, the send deadline),
//! `scan` (the publish tree), `compress` (zstd files), `refresh` (the running cache: its
//! index kept in step with the publish tree), `stream` (NAR bodies), `handler` (HTTP),
//! `metrics`, `transfer` (the whole-closure transfer's two routes).
//!
//! May import: `nix`, `release`, `durable` (atomic writes), `slots`, `transfer`. Never
//! `build` or `deploy`.

use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub mod access;
mod broken;
pub mod compress;
mod conn;
mod handler;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod range;
mod refresh;
pub mod request;
pub mod scan;
mod stream;
mod transfer;
mod verified;

pub use access::Access;
pub use handler::ServeError;
pub use limits::Limits;
pub use metrics::Metrics;
pub use refresh::{Cache, CacheConfig, RefreshReport, ShownReleases};

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("invalid cache configuration: {0}")]
    Config(String),
    #[error("cannot compute the closures of published releases: {0}")]
    Closure(#[source] crate::nix::pathinfo::PathInfoError),
    #[error(transparent)]
    Access(#[from] access::AccessError),
    #[error("cannot sign narinfo: {0}")]
    NarInfo(#[from] crate::nix::narinfo::NarInfoError),
    #[error("cache refresh task failed: {0}")]
    Task(String),
}

/// Time a request may take to be answered (its head: a NAR body then streams under the
/// send deadline), beyond the wait for a NAR stream place: a client that sends its body
/// slower than this, or blocking work stuck behind a slow disk, gets 408 and the connection
/// is freed.
const ANSWER_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The cache's routes: one handler that parses every request itself (see `request.rs`),
/// and the two `POST` routes of the whole-closure transfer (`transfer.rs`). Request bodies
/// are capped by tower-http's `RequestBodyLimitLayer` at the largest legitimate one (the
/// transfer's path list): 413 when a body is announced or grows larger. Time to the
/// answer's head is bounded by its `TimeoutLayer`.
pub fn router(cache: Arc<Cache>) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::TimeoutLayer;
    let answer_time = cache.config.limits.nar_wait + ANSWER_TIME;
    axum::Router::new()
        .route(crate::transfer::CLOSURE_PATH, post(transfer::closure))
        .route(crate::transfer::NARS_PATH, post(transfer::nars))
        .route(crate::transfer::DELIVER_PATH, post(transfer::deliver))
        .fallback(handler::handle)
        // One limit, tower-http's, instead of axum's per-extractor default.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(
            crate::transfer::MAX_REQUEST_BYTES,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            answer_time,
        ))
        .with_state(cache)
}

/// Serves the cache on `listener` and keeps it in step with the publish tree (loaded at
/// start, then polled), until `shutdown` is cancelled, which cuts open connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cache: Arc<Cache>,
    shutdown: CancellationToken,
) -> Result<(), CacheError> {
    let watcher = tokio::spawn(cache.clone().watch(shutdown.clone()));
    let (limits, metrics) = (cache.config.limits.clone(), cache.metrics.clone());
    conn::serve(listener, router(cache), &limits, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = watcher.await;
    Ok(())
}
