//! With per-host tokens, a host fetches its own closure (Nix reads the token from a netrc
//! file) and nothing else: another host's narinfo or NAR answers 404 with the same body as
//! a path that does not exist; no or wrong credentials answer 401. The whole-closure
//! transfer's routes are confined the same way, and refuse a path outside every published
//! closure.
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

/// Two hosts' closures sharing a path, published, served with host tokens:
/// (web1's top, web2's top, the shared path, the server's directory, the cache).
async fn two_hosts(salt: &str) -> (String, String, String, ServerDir, CacheServer) {
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
    (top1, top2, shared_path, dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_see_only_their_own_closure() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let (top1, top2, shared_path, dir, server) = two_hosts(&nonce()).await;

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

/// A transfer request (`crate::transfer`) with the agent's own client, as host `user`
/// with `token` (none: no credentials): the status and the body.
async fn transfer(
    server: &CacheServer,
    scratch: &std::path::Path,
    auth: Option<(&str, &str)>,
    route: &str,
    paths: &[&str],
) -> (u16, Vec<u8>) {
    let netrc = auth.map(|(user, token)| {
        let file = scratch.join(format!("netrc-{user}-{}", nonce()));
        std::fs::write(
            &file,
            format!("machine 127.0.0.1 login {user} password {token}\n"),
        )
        .unwrap();
        file
    });
    let url = url::Url::parse(&server.url()).unwrap();
    let target = bento::transfer::client::Target::new(&url, netrc.as_deref()).unwrap();
    let body: String = paths.iter().map(|p| format!("{p}\n")).collect();
    let mut r = target
        .post(
            route,
            body.as_bytes(),
            std::time::Duration::from_secs(30),
            false,
        )
        .await
        .unwrap();
    let status = r.status;
    (status, r.body(1 << 30).await.unwrap())
}

/// The store paths of a NAR stream's entries, in the order sent.
fn streamed(body: &[u8]) -> Vec<String> {
    use bento::transfer::wire::{Event, decode_all};
    decode_all([body], u64::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Entry { narinfo, .. } => {
                let ni = bento::nix::narinfo::parse(&narinfo).unwrap();
                Some(bento::nix::store::render(ni.store_path()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_is_confined_like_the_cache() {
    use bento::transfer::{CLOSURE_PATH, NARS_PATH};
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let (top1, top2, shared_path, dir, server) = two_hosts(&salt).await;
    // In the server's store, in no published closure.
    let outside = build(&format!(
        r#"mk "bento-outside-{salt}" "echo outside > $out""#
    ));
    let token = |h: &str| {
        std::fs::read_to_string(dir.state.join("cache-tokens").join(h))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (t1, t2) = (token("web1"), token("web2"));
    let web1 = Some(("web1", t1.as_str()));
    let web2 = Some(("web2", t2.as_str()));
    let s = dir.scratch();

    // Positive controls: each host gets its own closure, dependencies first.
    let (status, body) = transfer(&server, s, web1, CLOSURE_PATH, &[&top1]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listed: Vec<String> = bento::transfer::wire::parse_closure(&body)
        .unwrap()
        .iter()
        .map(|e| bento::nix::store::render(&e.path))
        .collect();
    assert_eq!(listed, vec![shared_path.clone(), top1.clone()]);
    let (status, body) = transfer(&server, s, web1, NARS_PATH, &[&top1, &shared_path]).await;
    assert_eq!(status, 200);
    assert_eq!(streamed(&body), vec![shared_path.clone(), top1.clone()]);
    let (status, body) = transfer(&server, s, web2, NARS_PATH, &[&shared_path]).await;
    assert_eq!(status, 200, "a shared path is web2's too");
    assert_eq!(streamed(&body), vec![shared_path.clone()]);

    // Another host's path, alone or among its own, and a path outside every closure.
    type Auth<'a> = Option<(&'a str, &'a str)>;
    let cases: Vec<(&str, Auth, &str, Vec<&str>, u16)> = vec![
        (
            "web2 asks web1's closure",
            web2,
            CLOSURE_PATH,
            vec![&top1],
            404,
        ),
        ("web2 asks web1's top", web2, NARS_PATH, vec![&top1], 404),
        (
            "web2 hides web1's top among its own",
            web2,
            NARS_PATH,
            vec![&shared_path, &top2, &top1],
            404,
        ),
        ("outside, closure", web1, CLOSURE_PATH, vec![&outside], 404),
        ("outside, NAR", web1, NARS_PATH, vec![&outside], 404),
        ("no credentials", None, NARS_PATH, vec![&shared_path], 401),
        (
            "wrong token",
            Some(("web1", t2.as_str())),
            NARS_PATH,
            vec![&top1],
            401,
        ),
        (
            "not a store path",
            web1,
            NARS_PATH,
            vec!["/etc/passwd"],
            400,
        ),
    ];
    for (what, auth, route, paths, want) in cases {
        let (status, body) = transfer(&server, s, auth, route, &paths).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(
            !body.windows(5).any(|w| w == b"entry"),
            "{what}: no entry may be sent"
        );
    }

    // With open access too, a path outside every published closure is refused.
    let open = CacheServer::start(dir.cache_config()).await;
    assert_eq!(transfer(&open, s, None, NARS_PATH, &[&top2]).await.0, 200);
    assert_eq!(
        transfer(&open, s, None, NARS_PATH, &[&outside]).await.0,
        404
    );
    assert_eq!(
        transfer(&open, s, None, CLOSURE_PATH, &[&outside]).await.0,
        404
    );
}
