//! The web dashboard `bento serve` answers on its own address (`--dashboard-listen`, by
//! default loopback only, never the hosts' cache port): `/` (the fleet table, refreshed every 2 s from `/api/status`), `/hosts/<name>` (one
//! host: its state, release history and reports with their logs), `/api/status` (the JSON
//! of `bento status --json`) and `/api/hosts/<name>`. The pages themselves are in `pages`.
//!
//! Every other path is 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;
use serde::Serialize;

use super::source::StatusSource;
use super::view::HostStatus;
use super::{StatusError, collect, pages};
use crate::deploy::HistoryEntry;
use crate::report::Report;

/// Reports shown on a host's page, newest first.
const REPORTS_SHOWN: usize = 50;

/// Serves the dashboard on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<StatusSource>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = router(source).fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The dashboard's routes.
pub fn router(source: Arc<StatusSource>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/api/status", get(api_status))
        .route("/hosts/{name}", get(host_page))
        .route("/api/hosts/{name}", get(api_host))
        // A page whose reads of the state directory are stuck behind a slow disk is
        // answered 503 rather than held open.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ANSWER_TIME,
        ))
        .with_state(source)
}

/// Time a dashboard request may take.
const ANSWER_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// One host in detail.
#[derive(Debug, Serialize)]
pub struct HostDetail {
    pub schema: u32,
    pub status: HostStatus,
    /// Published releases, newest first.
    pub history: Vec<HistoryEntry>,
    /// Reports, newest first (at most 50).
    pub reports: Vec<Report>,
}

enum WebError {
    UnknownHost,
    Status(StatusError),
    Task(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::UnknownHost => (StatusCode::NOT_FOUND, "no such host\n").into_response(),
            WebError::Status(e) => {
                tracing::warn!(error = %e, "dashboard cannot read the state directory");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the fleet's state: {e}\n"),
                )
                    .into_response()
            }
            WebError::Task(e) => {
                tracing::warn!(error = %e, "dashboard task failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

/// Reads of the state directory run as `crate::blocking` work, off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    crate::blocking::run("reading the fleet's state for the dashboard", f)
        .await
        .map_err(|e| WebError::Task(e.to_string()))?
}

fn detail(source: &StatusSource, host: &str) -> Result<HostDetail, WebError> {
    if !source.knows(host) {
        return Err(WebError::UnknownHost);
    }
    let status = source.host(host).map_err(WebError::Status)?;
    let mut history = crate::deploy::history::read(&source.state.history(host))
        .map_err(|e| {
            WebError::Status(StatusError::History {
                host: host.to_owned(),
                problem: e.to_string(),
            })
        })?
        .entries;
    history.reverse();
    let mut reports =
        collect::reports(&source.state, host, REPORTS_SHOWN).map_err(WebError::Status)?;
    reports.sort_by_key(|r| std::cmp::Reverse(r.finished_ms));
    Ok(HostDetail {
        schema: super::SCHEMA,
        status,
        history,
        reports,
    })
}

async fn api_status(State(source): State<Arc<StatusSource>>) -> Result<Response, WebError> {
    let fleet = blocking(move || source.fleet().map_err(WebError::Status)).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(&*fleet)).into_response())
}

async fn api_host(
    State(source): State<Arc<StatusSource>>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let d = blocking(move || detail(&source, &name)).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(d)).into_response())
}

async fn index(State(source): State<Arc<StatusSource>>) -> Result<Markup, WebError> {
    let fleet = blocking(move || source.fleet().map_err(WebError::Status)).await?;
    Ok(pages::fleet(&fleet))
}

async fn host_page(
    State(source): State<Arc<StatusSource>>,
    Path(name): Path<String>,
) -> Result<Markup, WebError> {
    let d = blocking(move || detail(&source, &name)).await?;
    Ok(pages::host(&d))
}
