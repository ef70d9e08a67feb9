//! The whole-closure transfer between `bento serve` and `bento agent`: a few round trips
//! whatever the number of paths, where `nix copy` (Nix 2.8) makes two per path.
//!
//! The agent asks for the closure of its release ([`CLOSURE_PATH`], one request), asks its
//! own store which paths it lacks (one query), then asks for all of them at once
//! ([`NARS_PATH`]); the cache answers with one stream of (signed narinfo, compressed NAR)
//! entries in dependency order, from the files it precomputed. The agent writes them as a
//! `file://` binary cache and lets `nix copy` import it with only the fleet key trusted, so
//! Nix verifies every signature and hash as it does for the HTTP cache.
//!
//! Files: `wire` (the request and response formats, pure and fuzzed), `order`
//! (dependency order, pure), `client` (the agent's HTTP/1.1 client and netrc lookup).
//!
//! May import: `nix`. Both `cache` (the server side) and `agent` use it.

pub mod client;
pub mod deliver;
pub mod order;
pub mod wire;

/// `POST`, body: one store path line. Answer: the path's closure ([`wire::parse_closure`]).
pub const CLOSURE_PATH: &str = "/_bento/v1/closure";
/// `POST`, body: store path lines. Answer: their entries ([`wire::Decoder`]).
pub const NARS_PATH: &str = "/_bento/v1/nars";
/// `POST`, body: a top path, a shard and the paths held ([`deliver`]). Answer: a line of
/// counts, then that shard's entries of the rest of the closure ([`wire::Decoder`]).
pub const DELIVER_PATH: &str = "/_bento/v1/deliver";
/// Most store paths one request may name.
pub const MAX_PATHS: usize = 200_000;
/// Most bytes of a request body (`MAX_PATHS` lines of the longest store paths fit).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// A made-up store path named `name` (its hash derived from the name), for tests.
#[cfg(test)]
pub(crate) fn test_path(name: &str) -> crate::nix::StorePath {
    let hash = crate::nix::hash::nixbase32::encode(
        &crate::nix::hash::Sha256Hash::of(name.as_bytes()).0[..20],
    );
    crate::nix::store::parse(&format!("/nix/store/{hash}-{name}"))
        .unwrap_or_else(|e| unreachable!("{e}"))
}
