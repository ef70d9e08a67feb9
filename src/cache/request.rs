//! What a request asks for, decided from its method and raw (undecoded) path alone.
//!
//! Pure: no state, no I/O. The handler looks the parsed request up in the index. Anything
//! that is not exactly one of the cache's URL shapes is either unknown (404) or malformed
//! (400): percent-encoding, `..`, empty segments, hashes of the wrong length or alphabet.
//! Percent-encoding is refused rather than decoded, because no URL this cache hands out
//! ever needs it, and a decoded `%2e%2e` is the classic way around a `..` check.
//! Hand-written rather than with axum's `Path` extractors for that reason: they decode first.

use thiserror::Error;

use crate::nix::hash::nixbase32;
use crate::nix::store;

/// Length of a sha256 in nix32, as in NAR file names.
const NIX32_SHA256_LEN: usize = 52;

/// A request the cache knows how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `/nix-cache-info`
    CacheInfo,
    /// `/<hash part>.narinfo`
    NarInfo { hash_part: [u8; 20] },
    /// `/nar/<nar hash>.nar`: the plain NAR, encoded from the store while it is sent.
    Nar { nar_hash: [u8; 32] },
    /// `/nar/<file hash>.nar.zst`: the zstd file compressed once at publish.
    NarZst { file_hash: [u8; 32] },
    /// `/metrics`
    Metrics,
}

/// The endpoint a request is counted under in the metrics, parsed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CacheInfo,
    NarInfo,
    Nar,
    NarZst,
    Metrics,
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::CacheInfo,
        Endpoint::NarInfo,
        Endpoint::Nar,
        Endpoint::NarZst,
        Endpoint::Metrics,
        Endpoint::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::CacheInfo => "nix-cache-info",
            Endpoint::NarInfo => "narinfo",
            Endpoint::Nar => "nar",
            Endpoint::NarZst => "nar_zst",
            Endpoint::Metrics => "metrics",
            Endpoint::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Request {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Request::CacheInfo => Endpoint::CacheInfo,
            Request::NarInfo { .. } => Endpoint::NarInfo,
            Request::Nar { .. } => Endpoint::Nar,
            Request::NarZst { .. } => Endpoint::NarZst,
            Request::Metrics => Endpoint::Metrics,
        }
    }
}

/// Why a path is not a request the cache answers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("method {0} is not allowed: the cache answers GET and HEAD")]
    Method(String),
    #[error("the path contains percent-encoding, which no cache URL uses")]
    PercentEncoded,
    #[error("the path contains `..` or an empty or dot segment")]
    Traversal,
    #[error("the path contains a character no cache URL uses")]
    BadCharacter,
    #[error("{0:?} is not a store path hash (32 characters of nix32)")]
    BadHashPart(String),
    #[error("{0:?} is not a NAR file name (52 characters of nix32, then .nar or .nar.zst)")]
    BadNarName(String),
    #[error("no such resource")]
    Unknown,
}

impl RequestError {
    /// Where a refused request is counted, guessed from its shape.
    pub fn endpoint_of(path: &str) -> Endpoint {
        if path.starts_with("/nar/") {
            if path.ends_with(".zst") {
                Endpoint::NarZst
            } else {
                Endpoint::Nar
            }
        } else if path.ends_with(".narinfo") {
            Endpoint::NarInfo
        } else {
            Endpoint::Other
        }
    }
}

/// The method, for [`parse`]: only these two are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// Checks the method: GET and HEAD are served, anything else is refused.
pub fn parse_method(method: &str) -> Result<Method, RequestError> {
    match method {
        "GET" => Ok(Method::Get),
        "HEAD" => Ok(Method::Head),
        other => Err(RequestError::Method(other.chars().take(20).collect())),
    }
}

/// Parses the raw path of a request URI (without the query string).
pub fn parse(path: &str) -> Result<Request, RequestError> {
    if path.contains('%') {
        return Err(RequestError::PercentEncoded);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RequestError::BadCharacter);
    };
    if rest.is_empty() {
        return Err(RequestError::Unknown);
    }
    if rest
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || rest.contains("..")
    {
        // Also refuses `//` and a trailing `/`: no cache URL has an empty segment.
        return Err(RequestError::Traversal);
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Err(RequestError::BadCharacter);
    }
    match rest {
        "nix-cache-info" => return Ok(Request::CacheInfo),
        "metrics" => return Ok(Request::Metrics),
        _ => {}
    }
    if let Some(hash) = rest.strip_suffix(".narinfo") {
        let hash_part =
            store::parse_hash_part(hash).map_err(|_| RequestError::BadHashPart(clip(hash)))?;
        return Ok(Request::NarInfo { hash_part });
    }
    if let Some(file) = rest.strip_prefix("nar/") {
        if let Some(hash) = file.strip_suffix(".nar.zst") {
            return Ok(Request::NarZst {
                file_hash: parse_nix32_sha256(hash).ok_or_else(|| bad_nar(file))?,
            });
        }
        if let Some(hash) = file.strip_suffix(".nar") {
            return Ok(Request::Nar {
                nar_hash: parse_nix32_sha256(hash).ok_or_else(|| bad_nar(file))?,
            });
        }
        return Err(bad_nar(file));
    }
    Err(RequestError::Unknown)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn bad_nar(file: &str) -> RequestError {
    RequestError::BadNarName(clip(file))
}

fn parse_nix32_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != NIX32_SHA256_LEN {
        return None;
    }
    nixbase32::decode(s.as_bytes()).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "62zx2hw8gp9dzf022s6cibdx2pl0v9dx";
    const NAR: &str = "1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3";

    fn kind(r: &Result<Request, RequestError>) -> &'static str {
        match r {
            Ok(Request::CacheInfo) => "cache-info",
            Ok(Request::Metrics) => "metrics",
            Ok(Request::NarInfo { .. }) => "narinfo",
            Ok(Request::Nar { .. }) => "nar",
            Ok(Request::NarZst { .. }) => "nar.zst",
            Err(RequestError::Method(_)) => "method",
            Err(RequestError::PercentEncoded) => "percent",
            Err(RequestError::Traversal) => "traversal",
            Err(RequestError::BadCharacter) => "char",
            Err(RequestError::BadHashPart(_)) => "bad-hash",
            Err(RequestError::BadNarName(_)) => "bad-nar",
            Err(RequestError::Unknown) => "unknown",
        }
    }

    #[test]
    fn paths_are_classified() {
        let cases: &[(String, &str)] = &[
            ("/nix-cache-info".into(), "cache-info"),
            ("/metrics".into(), "metrics"),
            (format!("/{HASH}.narinfo"), "narinfo"),
            (format!("/nar/{NAR}.nar"), "nar"),
            (format!("/nar/{NAR}.nar.zst"), "nar.zst"),
            // Unknown but well-formed.
            ("/".into(), "unknown"),
            ("/index.html".into(), "unknown"),
            ("/nix-cache-info2".into(), "unknown"),
            (format!("/log/{HASH}"), "unknown"),
            (format!("/{HASH}.ls"), "unknown"),
            (format!("/nar/{NAR}.nar.xz"), "bad-nar"),
            (format!("/nar/{NAR}"), "bad-nar"),
            // Malformed hashes.
            ("/.narinfo".into(), "bad-hash"),
            (format!("/{}.narinfo", &HASH[1..]), "bad-hash"),
            (format!("/{HASH}x.narinfo"), "bad-hash"),
            (
                "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(),
                "bad-hash",
            ),
            (format!("/{}.narinfo", HASH.to_uppercase()), "bad-hash"),
            (format!("/nar/{}.nar", &NAR[1..]), "bad-nar"),
            (format!("/nar/{}u.nar.zst", &NAR[1..]), "bad-nar"),
            // Traversal, encoded or not.
            ("/../etc/passwd".into(), "traversal"),
            ("/nar/../../etc/passwd".into(), "traversal"),
            (format!("/nar/..{NAR}.nar"), "traversal"),
            ("/nar/./x.nar".into(), "traversal"),
            ("//etc/passwd".into(), "traversal"),
            ("/nar/".into(), "traversal"),
            ("/%2e%2e/etc/passwd".into(), "percent"),
            ("/nar/%2E%2E%2Fetc%2Fpasswd".into(), "percent"),
            (format!("/{HASH}%2enarinfo"), "percent"),
            ("/nar/a\\b.nar".into(), "char"),
            ("/a b".into(), "char"),
            ("/\u{e9}.narinfo".into(), "char"),
            ("relative".into(), "char"),
            ("".into(), "char"),
        ];
        for (path, want) in cases {
            assert_eq!(kind(&parse(path)), *want, "{path:?}: {:?}", parse(path));
        }
    }

    #[test]
    fn hashes_decode_to_the_bytes_nix_uses() {
        let Ok(Request::NarInfo { hash_part }) = parse(&format!("/{HASH}.narinfo")) else {
            panic!("narinfo path must parse")
        };
        assert_eq!(nixbase32::encode(&hash_part), HASH);
        let Ok(Request::Nar { nar_hash }) = parse(&format!("/nar/{NAR}.nar")) else {
            panic!("nar path must parse")
        };
        assert_eq!(nixbase32::encode(&nar_hash), NAR);
    }

    #[test]
    fn methods() {
        assert_eq!(parse_method("GET"), Ok(Method::Get));
        assert_eq!(parse_method("HEAD"), Ok(Method::Head));
        for m in ["POST", "PUT", "DELETE", "get", "OPTIONS"] {
            assert!(parse_method(m).is_err(), "{m}");
        }
    }

    #[test]
    fn refused_requests_are_counted_under_a_guessed_endpoint() {
        assert_eq!(
            RequestError::endpoint_of("/nar/x.nar.zst"),
            Endpoint::NarZst
        );
        assert_eq!(RequestError::endpoint_of("/nar/x.nar"), Endpoint::Nar);
        assert_eq!(RequestError::endpoint_of("/x.narinfo"), Endpoint::NarInfo);
        assert_eq!(RequestError::endpoint_of("/x"), Endpoint::Other);
    }
}
