//! The binary cache decides what a request asks for from its raw path alone
//! (`cache::request::parse`): any path must give a request or a typed refusal, never a
//! panic. A path it accepts is one of the cache's own URL shapes — no `..`, no empty
//! segment, no percent-encoding, nothing outside `A-Z a-z 0-9 - _ . /` — and is exactly the
//! URL the cache would hand out for that request, so no second spelling reaches the same
//! resource.
#![no_main]

use bento::cache::request::{self, Request, RequestError};
use bento::nix::hash::nixbase32;
use libfuzzer_sys::fuzz_target;

/// The one URL of a request.
fn url(r: &Request) -> String {
    match r {
        Request::CacheInfo => "/nix-cache-info".to_owned(),
        Request::Metrics => "/metrics".to_owned(),
        Request::NarInfo { hash_part } => format!("/{}.narinfo", nixbase32::encode(hash_part)),
        Request::Nar { nar_hash } => format!("/nar/{}.nar", nixbase32::encode(nar_hash)),
        Request::NarZst { file_hash } => format!("/nar/{}.nar.zst", nixbase32::encode(file_hash)),
    }
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let _ = request::parse_method(&path);
    let _ = RequestError::endpoint_of(&path);
    let Ok(r) = request::parse(&path) else {
        return;
    };
    assert!(!path.contains(".."), "accepted {path:?}");
    assert!(!path.contains("//"), "accepted {path:?}");
    assert!(!path.contains('%'), "accepted {path:?}");
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)),
        "accepted {path:?}"
    );
    assert_eq!(url(&r), path, "a second spelling of {r:?}");
    assert_eq!(request::parse(&url(&r)), Ok(r));
    // A refused request is counted under the endpoint its shape suggests: the same one as
    // an accepted request of that shape.
    if !matches!(r, Request::CacheInfo | Request::Metrics) {
        assert_eq!(r.endpoint(), RequestError::endpoint_of(&path));
    }
});
