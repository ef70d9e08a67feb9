//! With per-host tokens, a host fetches its own closure (Nix reads the token from a netrc
//! file) and nothing else: another host's narinfo or NAR answers 404 with the same body as
//! a path that does not exist; no or wrong credentials answer 401. The whole-closure
//! transfer's routes are confined the same way, and refuse a path outside every published
//! closure. A delivery (one request per shard) is that visible closure less the paths the
//! host says it holds, its shards partitioning it in dependency order.
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
    two_hosts_with(salt, 0).await
}

/// [`two_hosts`] where web1's top also refers to a chain of `chain` paths of growing sizes
/// (each referring to the one before), so its closure has a dependency order to keep.
async fn two_hosts_with(
    salt: &str,
    chain: usize,
) -> (String, String, String, ServerDir, CacheServer) {
    // The tops differ in content: two paths with byte-identical NARs share one NAR URL,
    // and a host may fetch a NAR its own closure holds, whoever else holds it too.
    let shared = format!(r#"mk "bento-shared-{salt}" "echo shared > $out""#);
    let links = match chain {
        0 => String::new(),
        n => format!(
            r#" ${{let link = i: mk "bento-link-{salt}-${{toString i}}"
                    "(echo ${{if i == 0 then "" else link (i - 1)}};
                      head -c ${{toString (i * 4099)}} /dev/zero) > $out";
                in link {}}}"#,
            n - 1
        ),
    };
    let top1 = build(&format!(
        r#"let s = {shared}; in mk "bento-web1-{salt}" "echo web1 ${{s}}{links} > $out""#
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

/// [`two_hosts_with`] a chain of `chain` paths, plus a path in the server's store in no
/// published closure and the hosts' cache tokens as the server wrote them: (the salt,
/// web1's top, web2's top, the shared path, the outside path, (web1's token, web2's), the
/// server's directory, the cache).
type Scene = (
    String,
    String,
    String,
    String,
    String,
    (String, String),
    ServerDir,
    CacheServer,
);

async fn scene(chain: usize) -> Scene {
    let salt = nonce();
    let (top1, top2, shared_path, dir, server) = two_hosts_with(&salt, chain).await;
    let outside = build(&format!(
        r#"mk "bento-outside-{salt}" "echo outside > $out""#
    ));
    let token = |host: &str| {
        std::fs::read_to_string(dir.state.join("cache-tokens").join(host))
            .unwrap()
            .trim()
            .to_owned()
    };
    let tokens = (token("web1"), token("web2"));
    (salt, top1, top2, shared_path, outside, tokens, dir, server)
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
    let body: String = paths.iter().map(|p| format!("{p}\n")).collect();
    post(server, scratch, auth, route, body.as_bytes()).await
}

/// `POST route` with `body` as [`transfer`] does: the status and the body.
async fn post(
    server: &CacheServer,
    scratch: &std::path::Path,
    auth: Option<(&str, &str)>,
    route: &str,
    body: &[u8],
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
    let mut r = target
        .post(route, body, std::time::Duration::from_secs(30), false)
        .await
        .unwrap();
    let status = r.status;
    (status, r.body(1 << 30).await.unwrap())
}

/// The store paths of a NAR stream's entries, in the order sent.
fn streamed(body: &[u8]) -> Vec<String> {
    entries(body).into_iter().map(|(path, _)| path).collect()
}

/// The entries of a NAR stream, in the order sent: each one's store path and file bytes.
/// The stream must end properly, counting as many entries as it sent.
fn entries(body: &[u8]) -> Vec<(String, u64)> {
    use bento::transfer::wire::{Event, decode_all};
    let events = decode_all([body], u64::MAX).unwrap();
    let sent: Vec<(String, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Entry { narinfo, file_len } => {
                let ni = bento::nix::narinfo::parse(narinfo).unwrap();
                Some((bento::nix::store::render(ni.store_path()), *file_len))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        events.last(),
        Some(&Event::End {
            count: sent.len() as u64
        })
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_is_confined_like_the_cache() {
    use bento::transfer::{CLOSURE_PATH, NARS_PATH};
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let (_, top1, top2, shared_path, outside, (t1, t2), dir, server) = scene(0).await;
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

/// A delivery (`bento::transfer::deliver`) of `top`, shard `shard` of `shards`, holding
/// `have`: the status and the body.
async fn deliver(
    server: &CacheServer,
    scratch: &std::path::Path,
    auth: Option<(&str, &str)>,
    top: &str,
    shard: usize,
    shards: usize,
    have: &[&str],
) -> (u16, Vec<u8>) {
    let body = deliver_body(top, shard, shards, have);
    post(server, scratch, auth, bento::transfer::DELIVER_PATH, &body).await
}

fn deliver_body(top: &str, shard: usize, shards: usize, have: &[&str]) -> Vec<u8> {
    let sp = |p: &str| bento::nix::store::parse(p).unwrap();
    let have: Vec<_> = have.iter().map(|p| sp(p)).collect();
    bento::transfer::deliver::encode_request(&sp(top), shard, shards, &have)
}

/// A delivery's answer: its head, and the entries it streamed (path, file bytes).
fn delivered(body: &[u8]) -> (bento::transfer::deliver::Head, Vec<(String, u64)>) {
    let (head, len) = bento::transfer::deliver::parse_head(body)
        .unwrap()
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(body)));
    let sent = entries(&body[len..]);
    assert_eq!(head.shard_entries, sent.len() as u64, "{head:?}");
    (head, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_the_visible_closure_less_what_is_held_split_in_shards() {
    use bento::transfer::CLOSURE_PATH;
    use bento::transfer::deliver::{Head, split};
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    // web1's closure: the shared path, a chain of 6 paths, its top.
    let (salt, top1, top2, shared_path, outside, (t1, t2), dir, server) = scene(6).await;
    let web1 = Some(("web1", t1.as_str()));
    let web2 = Some(("web2", t2.as_str()));
    let s = dir.scratch();

    // The closure as the closure endpoint lists it: the reference for everything below.
    let (status, body) = transfer(&server, s, web1, CLOSURE_PATH, &[&top1]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listed = bento::transfer::wire::parse_closure(&body).unwrap();
    let order: Vec<String> = listed
        .iter()
        .map(|e| bento::nix::store::render(&e.path))
        .collect();
    let mut in_store = closure(&top1);
    in_store.sort();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, in_store);
    assert_eq!(order.len(), 8);
    let links: Vec<&str> = (0..6)
        .map(|i| {
            let name = format!("-bento-link-{salt}-{i}");
            order.iter().find(|p| p.ends_with(&name)).unwrap().as_str()
        })
        .collect();
    let size_of = |p: &str| {
        let e = listed
            .iter()
            .find(|e| bento::nix::store::render(&e.path) == p)
            .unwrap();
        (e.file_size, e.nar_size)
    };
    // The totals a delivery of `paths` announces.
    let totals = |paths: &[String]| {
        let sizes: Vec<(u64, u64)> = paths.iter().map(|p| size_of(p)).collect();
        Head {
            shard_entries: 0,
            entries: paths.len() as u64,
            file_bytes: sizes.iter().map(|s| s.0).sum(),
            nar_bytes: sizes.iter().map(|s| s.1).sum(),
        }
    };

    // One shard: the whole closure in the closure endpoint's order, which is a dependency
    // order (each link after the one it refers to, the top last).
    let (status, body) = deliver(&server, s, web1, &top1, 0, 1, &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (head, sent) = delivered(&body);
    let whole: Vec<String> = sent.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(whole, order);
    let at = |p: &str| whole.iter().position(|w| w == p).unwrap();
    for pair in links.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?}");
    }
    assert_eq!(whole.last(), Some(&top1));
    assert_eq!(
        head,
        Head {
            shard_entries: 8,
            ..totals(&order)
        }
    );
    assert_eq!(
        sent.iter().map(|(_, n)| n).sum::<u64>(),
        head.file_bytes,
        "the files streamed are the bytes announced"
    );

    // Four shards partition it: each in dependency order, by the split of the NAR sizes,
    // each announcing the totals of all four.
    let sizes: Vec<u64> = order.iter().map(|p| size_of(p).1).collect();
    let shard_of = split(&sizes, 4);
    let mut union: Vec<String> = Vec::new();
    for shard in 0..4 {
        let (status, body) = deliver(&server, s, web1, &top1, shard, 4, &[]).await;
        assert_eq!(status, 200, "shard {shard}");
        let (head, sent) = delivered(&body);
        let paths: Vec<String> = sent.into_iter().map(|(p, _)| p).collect();
        assert!(!paths.is_empty(), "8 paths leave no shard of 4 empty");
        let want: Vec<String> = order
            .iter()
            .zip(&shard_of)
            .filter(|(_, s)| **s == shard)
            .map(|(p, _)| p.clone())
            .collect();
        assert_eq!(paths, want, "shard {shard}");
        assert_eq!(
            head,
            Head {
                shard_entries: paths.len() as u64,
                ..totals(&order)
            },
            "shard {shard}"
        );
        union.extend(paths);
    }
    assert_eq!(union.len(), order.len(), "no path twice: {union:?}");
    union.sort();
    assert_eq!(union, sorted);

    // What is held is left out, of the entries and of the totals.
    let all_but_top: Vec<&str> = order[..7].iter().map(String::as_str).collect();
    let (status, body) = deliver(&server, s, web1, &top1, 0, 1, &all_but_top).await;
    assert_eq!(status, 200);
    let (head, sent) = delivered(&body);
    assert_eq!(sent, vec![(top1.clone(), size_of(&top1).0)]);
    assert_eq!(
        head,
        Head {
            shard_entries: 1,
            ..totals(std::slice::from_ref(&top1))
        }
    );
    // Some held (the shared path and every other link), over two shards.
    let held = vec![shared_path.as_str(), links[0], links[2], links[4]];
    let rest: Vec<String> = order
        .iter()
        .filter(|p| !held.contains(&p.as_str()))
        .cloned()
        .collect();
    let mut got: Vec<String> = Vec::new();
    for shard in 0..2 {
        let (status, body) = deliver(&server, s, web1, &top1, shard, 2, &held).await;
        assert_eq!(status, 200);
        let (head, sent) = delivered(&body);
        assert_eq!(
            head,
            Head {
                shard_entries: sent.len() as u64,
                ..totals(&rest)
            }
        );
        got.extend(sent.into_iter().map(|(p, _)| p));
    }
    got.sort();
    let mut want = rest.clone();
    want.sort();
    assert_eq!(got, want);
    // Holding a path outside the closure changes nothing; holding all of it, nothing is
    // sent (and the stream still ends properly).
    let (status, body) = deliver(&server, s, web1, &top1, 0, 1, &[&outside]).await;
    assert_eq!(status, 200);
    assert_eq!(delivered(&body).1.len(), 8);
    let everything: Vec<&str> = order.iter().map(String::as_str).collect();
    let (status, body) = deliver(&server, s, web1, &top1, 0, 1, &everything).await;
    assert_eq!(status, 200);
    assert_eq!(delivered(&body), (Head::default(), vec![]));

    // Confined like the cache: web2 gets its own closure, nothing of web1's (not even by
    // saying it holds all of it), nothing outside; no credentials, nothing.
    let (status, body) = deliver(&server, s, web2, &top2, 0, 1, &[]).await;
    assert_eq!(status, 200);
    let theirs: Vec<String> = delivered(&body).1.into_iter().map(|(p, _)| p).collect();
    assert_eq!(theirs, vec![shared_path.clone(), top2.clone()]);
    let (status, absent) = deliver(&server, s, web1, &outside, 0, 1, &[]).await;
    assert_eq!(status, 404);
    type Auth<'a> = Option<(&'a str, &'a str)>;
    let cases: Vec<(&str, Auth, &str, Vec<&str>, u16)> = vec![
        ("web2 asks web1's top", web2, &top1, vec![], 404),
        ("web2 holding web1's", web2, &top1, everything.clone(), 404),
        ("web1 asks web2's top", web1, &top2, vec![], 404),
        ("outside, held", web1, &outside, vec![&outside], 404),
        ("no credentials", None, &top1, vec![], 401),
        ("no credentials, shared", None, &shared_path, vec![], 401),
        (
            "wrong token",
            Some(("web1", t2.as_str())),
            &top1,
            vec![],
            401,
        ),
    ];
    for (what, auth, top, have, want) in cases {
        for shard in 0..2 {
            let (status, body) = deliver(&server, s, auth, top, shard, 2, &have).await;
            assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
            assert!(
                !body.starts_with(b"bento-deliver") && !body.windows(5).any(|w| w == b"entry"),
                "{what}: no head nor entry may be sent"
            );
            if want == 404 {
                assert_eq!(body, absent, "{what}: indistinguishable from absence");
            }
        }
    }
    // With open access, anyone gets a published closure, and still nothing outside.
    let open = CacheServer::start(dir.cache_config()).await;
    let (status, body) = deliver(&open, s, None, &top2, 0, 1, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(delivered(&body).1.len(), 2);
    assert_eq!(deliver(&open, s, None, &outside, 0, 1, &[]).await.0, 404);

    // Bad requests, each a good one (sent first, the control) spoiled.
    let route = bento::transfer::DELIVER_PATH;
    let good = deliver_body(&top1, 1, 2, &[shared_path.as_str(), links[0]]);
    assert_eq!(post(&server, s, web1, route, &good).await.0, 200);
    let magic = [b"bento-deliver 2".as_slice(), &good[15..]].concat();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("wrong magic", magic),
        ("shard = k", deliver_body(&top1, 2, 2, &[])),
        ("shard > k", deliver_body(&top1, 5, 2, &[])),
        ("no shards", deliver_body(&top1, 0, 0, &[])),
        ("17 shards", deliver_body(&top1, 0, 17, &[])),
        ("hints cut", good[..good.len() - 1].to_vec()),
        ("a byte after the hints", [good.as_slice(), b"x"].concat()),
        (
            "two hints announced, none sent",
            good[..good.len() - 10].to_vec(),
        ),
    ];
    for (what, body) in bad {
        let (status, answer) = post(&server, s, web1, route, &body).await;
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&answer));
    }
}
