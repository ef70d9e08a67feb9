//! Malformed hashes, `..` and percent-encoded traversal, odd methods: always 4xx, never
//! 5xx, and never a file from outside the published closures; a path that is valid in the
//! server's store but in no published closure is 404 like an unknown one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::http::http;
use harness::nix::{self, build, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_4xx_and_unpublished_paths_404() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let published = build(&format!(r#"mk "bento-pub-{salt}" "echo pub > $out""#));
    let secret = build(&format!(r#"mk "bento-secret-{salt}" "echo secret > $out""#));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &published);
    let server = CacheServer::start(dir.cache_config()).await;

    // Positive control: the published path is served.
    let ok = server
        .get(&format!("/{}.narinfo", hash_part(&published)))
        .await;
    assert_eq!(ok.status, 200);

    // In the server's store (a valid path), but in no published closure.
    let info = nix::command("nix-store")
        .args(["-q", "--hash", &secret])
        .run_async()
        .await;
    assert!(
        info.is_ok(),
        "the secret path must be valid in the local store"
    );
    let outside = server
        .get(&format!("/{}.narinfo", hash_part(&secret)))
        .await;
    assert_eq!(outside.status, 404, "{}", outside.text());
    assert!(!outside.text().contains("secret"));
    let dump = nix::command("nix-hash")
        .args(["--type", "sha256", "--base32", &secret])
        .run_async()
        .await
        .unwrap()
        .stdout_text();
    assert_eq!(server.get(&format!("/nar/{dump}.nar")).await.status, 404);

    let h = hash_part(&published);
    let nar52 = "1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3";
    let cases: Vec<(String, u16)> = vec![
        // Malformed hashes.
        ("/.narinfo".into(), 400),
        (format!("/{}.narinfo", &h[1..]), 400),
        (format!("/{h}0.narinfo"), 400),
        ("/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(), 400),
        (format!("/{}.narinfo", h.to_uppercase()), 400),
        ("/nar/abc.nar".into(), 400),
        (format!("/nar/{}.nar", &nar52[1..]), 400),
        (format!("/nar/{nar52}.nar.xz"), 400),
        (format!("/nar/{nar52}.nar.bz2"), 400),
        // Traversal, plain and percent-encoded.
        ("/../../etc/passwd".into(), 400),
        ("/nar/../../../etc/passwd".into(), 400),
        ("/nar/..%2f..%2fetc%2fpasswd".into(), 400),
        ("/%2e%2e/%2e%2e/etc/passwd".into(), 400),
        ("/nar/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd.nar".into(), 400),
        (format!("/{h}%2enarinfo"), 400),
        ("/nar/./x.nar".into(), 400),
        ("//etc/passwd".into(), 400),
        ("/nar//etc/passwd".into(), 400),
        ("/nar\\..\\..\\etc\\passwd".into(), 400),
        // Well-formed but unknown.
        ("/".into(), 404),
        ("/index.html".into(), 404),
        (format!("/log/{h}"), 404),
        (format!("/{h}.ls"), 404),
        ("/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".into(), 404),
        (format!("/nar/{nar52}.nar"), 404),
        (format!("/nar/{nar52}.nar.zst"), 404),
        ("/00000000000000000000000000000000.narinfo".into(), 404),
    ];
    for (target, want) in &cases {
        let r = http(server.addr, "GET", target, &[]).await.unwrap();
        assert_eq!(r.status, *want, "GET {target}: {}", r.text());
        assert!(!r.text().contains("root:"), "GET {target} leaked a file");
        let head = http(server.addr, "HEAD", target, &[]).await.unwrap();
        assert_eq!(head.status, *want, "HEAD {target}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = http(
            server.addr,
            method,
            &format!("/{h}.narinfo"),
            &[("Content-Length", "0")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    // Nothing above was a server error.
    let metrics = server.get("/metrics").await.text();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_info_head_and_ranges() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let path = build(&format!(
        r#"mk "bento-range-{salt}" "head -c 3000000 /dev/urandom > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &path);
    let server = CacheServer::start(dir.cache_config()).await;

    let info = server.get("/nix-cache-info").await;
    assert_eq!(info.status, 200);
    assert!(info.text().contains("StoreDir: /nix/store\n"));
    assert!(info.text().contains("WantMassQuery: 1\n"));
    assert!(info.text().contains("Priority: 30\n"));

    let ni = server.get(&format!("/{}.narinfo", hash_part(&path))).await;
    let head = http(
        server.addr,
        "HEAD",
        &format!("/{}.narinfo", hash_part(&path)),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(ni.body.len().to_string().as_str())
    );
    assert_eq!(head.header("content-type"), Some("text/x-nix-narinfo"));

    let zst_url = format!("/{}", ni.field("URL").unwrap());
    let file_size: usize = ni.field("FileSize").unwrap().parse().unwrap();
    let plain_url = format!(
        "/nar/{}.nar",
        ni.field("NarHash").unwrap().trim_start_matches("sha256:")
    );
    let nar_size: usize = ni.field("NarSize").unwrap().parse().unwrap();
    for (url, len) in [(zst_url, file_size), (plain_url, nar_size)] {
        let full = server.get(&url).await;
        assert_eq!(full.status, 200);
        assert_eq!(full.body.len(), len);
        assert_eq!(full.header("accept-ranges"), Some("bytes"));
        let head = http(server.addr, "HEAD", &url, &[]).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(len.to_string().as_str())
        );
        assert_eq!(head.header("accept-ranges"), Some("bytes"));

        type Span = Option<(usize, usize)>;
        let cases: Vec<(String, u16, Span)> = vec![
            ("bytes=0-99".into(), 206, Some((0, 99))),
            (
                format!("bytes={}-", len - 10),
                206,
                Some((len - 10, len - 1)),
            ),
            ("bytes=-500".into(), 206, Some((len - 500, len - 1))),
            (
                "bytes=1000-2000000".into(),
                206,
                Some((1000, 2_000_000.min(len - 1))),
            ),
            (format!("bytes={len}-"), 416, None),
            ("bytes=0-1,5-6".into(), 200, None),
            ("bytes=garbage".into(), 200, None),
        ];
        for (range, status, span) in cases {
            let r = http(server.addr, "GET", &url, &[("Range", &range)])
                .await
                .unwrap();
            assert_eq!(r.status, status, "{url} {range}");
            match span {
                Some((a, b)) => {
                    assert_eq!(&r.body[..], &full.body[a..=b], "{url} {range}");
                    assert_eq!(
                        r.header("content-range"),
                        Some(format!("bytes {a}-{b}/{len}").as_str())
                    );
                }
                None if status == 416 => {
                    assert_eq!(
                        r.header("content-range"),
                        Some(format!("bytes */{len}").as_str())
                    );
                }
                None => assert_eq!(r.body, full.body),
            }
        }
    }
}
