//! `--metrics-token-file`: with a metrics token, `/metrics` answers only a request that
//! carries it as a bearer token (401 with `WWW-Authenticate: Bearer` otherwise); the rest of
//! the cache is not affected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::http::http;
use harness::servers::{CacheServer, ServerDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_only_with_the_token() {
    let dir = ServerDir::new();
    let mut config = dir.cache_config();
    config.metrics_token = Some("s3cret-metrics-token".to_owned());
    let server = CacheServer::start(config).await;

    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, Headers, u16)] = &[
        ("no credentials", &[], 401),
        ("a wrong token", &[("Authorization", "Bearer guess")], 401),
        (
            "basic auth",
            &[("Authorization", "Basic d2ViMTpzM2NyZXQ=")],
            401,
        ),
        (
            "the token",
            &[("Authorization", "Bearer s3cret-metrics-token")],
            200,
        ),
    ];
    for (what, headers, status) in cases {
        let r = http(server.addr, "GET", "/metrics", headers).await.unwrap();
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        if *status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"bento metrics\"")
            );
            assert!(!r.text().contains("bento_cache_requests_total"), "{what}");
        } else {
            assert!(r.text().contains("bento_cache_requests_total"), "{what}");
        }
    }
    let info = http(server.addr, "GET", "/nix-cache-info", &[])
        .await
        .unwrap();
    assert_eq!(info.status, 200, "the cache itself needs no metrics token");
}
