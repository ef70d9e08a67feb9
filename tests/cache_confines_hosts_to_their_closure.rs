//! With per-host tokens, a host fetches its own closure (Nix reads the token from a netrc
//! file) and nothing else: another host's narinfo or NAR answers 404 with the same body as
//! a path that does not exist; no or wrong credentials answer 401.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use bento::cache::Access;
use harness::http::http;
use harness::nix::{Nix, build, closure, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

fn basic(user: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_see_only_their_own_closure() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    // The tops differ in content: two paths with byte-identical NARs share one NAR URL,
    // and a host may fetch a NAR its own closure holds, whoever else holds it too.
    let shared = format!(r#"mk "bento-shared-{salt}" "echo shared > $out""#);
    let top1 = build(&format!(
        r#"let s = {shared}; in mk "bento-web1-{salt}" "echo web1 ${{s}} > $out""#
    ));
    let top2 = build(&format!(
        r#"let s = {shared}; in mk "bento-web2-{salt}" "echo web2 ${{s}} > $out""#
    ));
    let shared_path = closure(&top1)
        .into_iter()
        .find(|p| p.contains("bento-shared-"))
        .unwrap();
    let dir = ServerDir::new();
    dir.publish("web1", 1, &top1);
    dir.publish("web2", 1, &top2);
    let mut config = dir.cache_config();
    config.access = Access::TokenDir;
    let server = CacheServer::start(config).await;

    let token_file = |h: &str| dir.state.join("cache-tokens").join(h);
    let mode = std::fs::metadata(token_file("web1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let t1 = std::fs::read_to_string(token_file("web1"))
        .unwrap()
        .trim()
        .to_owned();
    let t2 = std::fs::read_to_string(token_file("web2"))
        .unwrap()
        .trim()
        .to_owned();
    let (web1, web2) = (basic("web1", &t1), basic("web2", &t2));

    let get = |path: String, auth: Option<String>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("Authorization", a.as_str())],
                None => vec![],
            };
            http(addr, "GET", &path, &headers).await.unwrap()
        }
    };
    let ni = |p: &str| format!("/{}.narinfo", hash_part(p));

    let own = get(ni(&top1), Some(web1.clone())).await;
    assert_eq!(own.status, 200);
    let zst1 = format!("/{}", own.field("URL").unwrap());
    let plain1 = format!(
        "/nar/{}.nar",
        own.field("NarHash").unwrap().trim_start_matches("sha256:")
    );
    let unknown = get(
        "/00000000000000000000000000000000.narinfo".into(),
        Some(web2.clone()),
    )
    .await;
    assert_eq!(unknown.status, 404);

    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        ("own narinfo", ni(&top1), Some(web1.clone()), 200),
        ("own NAR", zst1.clone(), Some(web1.clone()), 200),
        ("own plain NAR", plain1.clone(), Some(web1.clone()), 200),
        (
            "shared path, web1",
            ni(&shared_path),
            Some(web1.clone()),
            200,
        ),
        (
            "shared path, web2",
            ni(&shared_path),
            Some(web2.clone()),
            200,
        ),
        ("other host's narinfo", ni(&top1), Some(web2.clone()), 404),
        ("other host's NAR", zst1.clone(), Some(web2.clone()), 404),
        (
            "other host's plain NAR",
            plain1.clone(),
            Some(web2.clone()),
            404,
        ),
        ("no credentials", ni(&top1), None, 401),
        ("no credentials, NAR", zst1.clone(), None, 401),
        ("wrong token", ni(&top1), Some(basic("web1", &t2)), 401),
        (
            "token of another host",
            ni(&top1),
            Some(basic("web2", &t1)),
            401,
        ),
        ("unknown host", ni(&top1), Some(basic("web3", &t1)), 401),
    ];
    for (what, path, auth, status) in cases {
        let r = get(path, auth).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status == 404 {
            // Indistinguishable from absence.
            assert_eq!(r.body, unknown.body, "{what}");
            assert_eq!(r.header("content-type"), unknown.header("content-type"));
        }
        if status == 401 {
            assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        }
    }
    // The cache info is public: Nix asks for it before anything else.
    assert_eq!(get("/nix-cache-info".into(), None).await.status, 200);

    // Nix itself, with the token in a netrc file.
    let pubkey = dir.key.public().to_string();
    let client = Nix::chroot();
    let netrc = dir.scratch().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1 login web1 password {t1}\n"),
    )
    .unwrap();
    let netrc_opt = ["--option", "netrc-file", netrc.to_str().unwrap()];
    client
        .copy_and_verify(&server.url(), &pubkey, &top1, &netrc_opt)
        .await;
    let refused = client
        .copy_from(&server.url(), &pubkey, &top2, &netrc_opt)
        .await;
    assert!(refused.is_err(), "web1 must not copy web2's closure");
    assert!(!client.has(&top2));
    // Without the netrc file, nothing.
    let anon = Nix::chroot()
        .copy_from(&server.url(), &pubkey, &top1, &[])
        .await;
    assert!(anon.is_err());
}
