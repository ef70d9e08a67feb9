//! `POST /hooks/git`: a push hook (GitLab, Gitea, a CI job, `curl`) tells the follower to
//! fetch now. The request carries the shared secret as `Authorization: Bearer <secret>` or
//! `X-Gitlab-Token: <secret>`, compared in constant time (`subtle`); the body is ignored
//! (the follower fetches the branch itself, so a forged body could not choose a commit).
//!
//! Served on its own listener (`bento serve --hook-listen`), apart from the cache and the
//! dashboard. Answers: 202 fetch requested, 401 bad or missing secret, 405 another method,
//! 404 another path.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::GitopsError;

/// Shortest secret accepted: a guessable one would let anyone make the server fetch.
pub const MIN_SECRET_BYTES: usize = 16;

/// The shared secret of the hook (never printed).
#[derive(Clone)]
pub struct HookSecret(Arc<Vec<u8>>);

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSecret(redacted)")
    }
}

impl HookSecret {
    /// Reads the secret from `path` (surrounding whitespace removed).
    pub fn load(path: &std::path::Path) -> Result<HookSecret, GitopsError> {
        let text = std::fs::read(path).map_err(|source| GitopsError::Io {
            path: path.to_owned(),
            source,
        })?;
        HookSecret::new(text.trim_ascii()).map_err(|problem| GitopsError::HookSecret {
            path: path.to_owned(),
            problem,
        })
    }

    pub fn new(secret: &[u8]) -> Result<HookSecret, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "is {} bytes; use at least {MIN_SECRET_BYTES} random ones (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(HookSecret(Arc::new(secret.to_vec())))
    }

    /// Whether the request's headers carry the secret.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| headers.get("x-gitlab-token").map(|v| v.as_bytes()));
        given.is_some_and(|g| bool::from(g.ct_eq(&self.0)))
    }
}

#[derive(Clone)]
struct Hook {
    secret: HookSecret,
    fetch_now: Arc<Notify>,
}

/// Largest request body taken: push payloads of GitLab, Gitea and GitHub are a few KiB to
/// a few hundred; the hook reads and ignores them. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Time a request may take, its body included.
const ANSWER_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The hook's routes; every other path is 404. Bodies are capped (tower-http's
/// `RequestBodyLimitLayer`) and requests timed out (`TimeoutLayer`, 408).
pub fn router(secret: HookSecret, fetch_now: Arc<Notify>) -> axum::Router {
    axum::Router::new()
        .route("/hooks/git", post(hook))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            ANSWER_TIME,
        ))
        .with_state(Hook { secret, fetch_now })
}

/// The body is read (so that its cap holds whatever its framing) and ignored.
async fn hook(
    State(h): State<Hook>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    if !h.secret.admits(&headers) {
        tracing::warn!("git hook refused: bad or missing secret");
        return (StatusCode::UNAUTHORIZED, "bad or missing secret\n");
    }
    tracing::info!("git hook: fetching now");
    h.fetch_now.notify_one();
    (StatusCode::ACCEPTED, "fetching\n")
}

/// Serves the hook on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    secret: HookSecret,
    fetch_now: Arc<Notify>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(secret, fetch_now))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_exact_secret_is_admitted() {
        let secret = HookSecret::new(b"0123456789abcdef-secret").unwrap();
        let with = |name: &'static str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(value).unwrap());
            h
        };
        let cases = [
            (
                with("authorization", "Bearer 0123456789abcdef-secret"),
                true,
            ),
            (with("x-gitlab-token", "0123456789abcdef-secret"), true),
            (
                with("authorization", "Bearer 0123456789abcdef-secreT"),
                false,
            ),
            (
                with("authorization", "Bearer 0123456789abcdef-secre"),
                false,
            ),
            (
                with("authorization", "Bearer 0123456789abcdef-secretX"),
                false,
            ),
            (
                with("authorization", "Basic 0123456789abcdef-secret"),
                false,
            ),
            (with("authorization", "0123456789abcdef-secret"), false),
            (HeaderMap::new(), false),
        ];
        for (headers, want) in cases {
            assert_eq!(secret.admits(&headers), want, "{headers:?}");
        }
        assert!(HookSecret::new(b"short").is_err());
        assert_eq!(format!("{secret:?}"), "HookSecret(redacted)");
    }
}
