//! The agent's copy step: which method copies a release's closure from the cache, and the
//! fallback from one to the other.
//!
//! - `copy_method = "substitute"`, or (`auto`) a cache that is not `http://` (`file://`,
//!   `s3://`, and `https://`, which the transfer's client does not speak): parallel
//!   substitution (`substitute`).
//! - `copy_method = "transfer"`: the whole-closure transfer (`transfer`) only; a server
//!   that is not `bento serve` is a failed copy that says so.
//! - `auto` with an `http://` cache: the transfer. A server that answers the closure
//!   request with 404, 405 or 501 (a route or method it does not have: a static file
//!   server, a plain binary cache, an object store) is not `bento serve`: the copy is made
//!   by substitution, and the cache URL is remembered for [`PLAIN_FOR`], so later
//!   attempts go straight to substitution until a server upgraded to `bento serve` is
//!   asked again. Any other failure of the request (no
//!   connection, a 5xx, a 401/403 from `bento serve` itself) is not taken for an answer
//!   about what the server is: the copy fails and is tried again later. When the transfer
//!   cannot be used for a reason of its own (a transfer request refused, a URL it cannot
//!   speak), that copy alone is made by substitution.
//!
//! Every method's failure is judged alike (`system::copy_judged`): refused, tampered, or
//! failed and tried again.
//!
//! May import: `agent::{config, system, substitute, transfer}`, `transfer::client`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use url::Url;

use super::config::{Agent, CopyMethod};
use super::substitute;
use super::system::{SystemError, push_line};
use super::transfer::{self, Failed};
use crate::transfer::client::ClientError;

/// How one copy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The whole-closure transfer, falling back to substitution when allowed.
    Transfer { fallback: bool },
    /// Parallel substitution.
    Substitute,
}

/// Pure: the route for `method` and `cache_url`; `plain` says the server at `cache_url`
/// was found, earlier in this process, not to be `bento serve`.
pub fn route(method: CopyMethod, cache_url: &Url, plain: bool) -> Route {
    match method {
        CopyMethod::Substitute => Route::Substitute,
        CopyMethod::Transfer => Route::Transfer { fallback: false },
        CopyMethod::Auto if cache_url.scheme() == "http" && !plain => {
            Route::Transfer { fallback: true }
        }
        CopyMethod::Auto => Route::Substitute,
    }
}

/// Pure: whether the closure request's failure is the server saying it has no such route
/// or method, i.e. that it is not `bento serve` (see the module's header).
pub fn not_a_bento_server(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. } if matches!(status, 404 | 405 | 501))
}

/// How long a cache found not to be `bento serve` is copied from by substitution without
/// asking it again.
pub const PLAIN_FOR: Duration = Duration::from_secs(3600);

/// Cache URLs found not to be `bento serve` in this process, and when.
static PLAIN_CACHES: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Mutex::default);

fn known_plain(url: &Url) -> bool {
    let caches = PLAIN_CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches
        .get(url.as_str())
        .is_some_and(|found| found.elapsed() < PLAIN_FOR)
}

fn remember_plain(url: &Url) {
    let mut caches = PLAIN_CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches.insert(url.as_str().to_owned(), Instant::now());
}

/// Copies `path`'s closure into this host's store by the method [`route`] chooses.
pub async fn copy_closure(agent: &Agent, path: &str, log: &mut String) -> Result<(), SystemError> {
    let url = &agent.cache_url;
    let fallback = match route(agent.copy_method, url, known_plain(url)) {
        Route::Substitute => return substitute::copy_closure(agent, path, log).await,
        Route::Transfer { fallback } => fallback,
    };
    let why = match transfer::transfer(agent, path, log).await {
        Ok(()) => return Ok(()),
        Err(Failed::Copy(e)) => return Err(e),
        Err(Failed::NotBento(why)) => {
            if fallback {
                remember_plain(url);
            }
            why
        }
        Err(Failed::Fallback(why)) => why,
    };
    if !fallback {
        return Err(SystemError::Transfer {
            path: path.to_owned(),
            cache: url.to_string(),
            why: format!(
                "{why}; copy_method = \"transfer\" allows no other method (\"auto\" or \"substitute\" copy from any binary cache)"
            ),
        });
    }
    push_line(log, &format!("copying by substitution instead: {why}"));
    substitute::copy_closure(agent, path, log).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_follows_the_method_the_scheme_and_what_was_learnt() {
        use CopyMethod::{Auto, Substitute, Transfer};
        let t = Route::Transfer { fallback: true };
        let forced = Route::Transfer { fallback: false };
        let s = Route::Substitute;
        let cases = [
            (Auto, "http://10.77.0.1:8080", false, t),
            (Auto, "http://10.77.0.1:8080", true, s),
            (Auto, "https://cache.example", false, s),
            (Auto, "file:///mnt/cache", false, s),
            (Auto, "s3://fleet-cache?region=eu-west-1", false, s),
            (Transfer, "http://10.77.0.1:8080", false, forced),
            (Transfer, "http://10.77.0.1:8080", true, forced),
            (Substitute, "http://10.77.0.1:8080", false, s),
            (Substitute, "file:///mnt/cache", false, s),
        ];
        for (method, url, plain, want) in cases {
            let url = Url::parse(url).unwrap();
            assert_eq!(route(method, &url, plain), want, "{method:?} {url} {plain}");
        }
    }

    #[test]
    fn only_a_missing_route_or_method_says_the_server_is_not_bento() {
        let status = |status| ClientError::Status {
            status,
            body: String::new(),
        };
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (status(404), true),
            (status(405), true),
            (status(501), true),
            (status(400), false),
            (status(401), false),
            (status(403), false),
            (status(413), false),
            (status(500), false),
            (status(502), false),
            (status(503), false),
            (
                ClientError::Connect {
                    addr: "10.77.0.1:8080".into(),
                    source: io(),
                },
                false,
            ),
            (
                ClientError::Stalled {
                    addr: "10.77.0.1:8080".into(),
                    secs: 60,
                },
                false,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(not_a_bento_server(&e), want, "{e}");
        }
    }

    #[test]
    fn a_plain_cache_is_remembered_by_its_url() {
        let a = Url::parse("http://10.77.0.9:1/remembered-test").unwrap();
        let b = Url::parse("http://10.77.0.9:2/remembered-test").unwrap();
        assert!(!known_plain(&a));
        remember_plain(&a);
        assert!(known_plain(&a));
        assert!(!known_plain(&b), "only the URL found plain");
    }
}
