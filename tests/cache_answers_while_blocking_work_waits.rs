//! Blocking work reached from requests (disk reads for `/metrics`, SFTP sessions' file work,
//! report closes) runs off the runtime, a bounded number at once (`bento::blocking`). Here
//! every turn is taken by work that is stuck (as a slow disk would hold it), on a runtime of
//! one worker thread: narinfos and the cache info are still answered at once, while a
//! `/metrics` request, which needs a turn, waits (the positive control that the turns really
//! are all taken), and is answered as soon as the stuck work ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::{Arc, Mutex};

use harness::nix::{build, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn narinfo_answers_while_every_blocking_turn_is_stuck() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let path = build(&format!(
        r#"mk "bento-blocking-{salt}" "echo {salt} > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &path);
    let server = CacheServer::start(dir.cache_config()).await;
    let narinfo = format!("/{}.narinfo", hash_part(&path));
    assert_eq!(server.get("/metrics").await.status, 200);

    // Every turn taken by stuck work.
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = Arc::new(Mutex::new(stuck));
    let mut jobs = Vec::new();
    for _ in 0..bento::blocking::MAX_AT_ONCE {
        let stuck = stuck.clone();
        jobs.push(tokio::spawn(bento::blocking::run("stuck", move || {
            let _ = stuck.lock().unwrap().recv();
        })));
    }
    while bento::blocking::free_turns() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let addr = server.addr;
    let metrics =
        tokio::spawn(async move { harness::http::http(addr, "GET", "/metrics", &[]).await });
    for _ in 0..20 {
        let r = server.get(&narinfo).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(&format!("StorePath: {path}")));
        assert_eq!(server.get("/nix-cache-info").await.status, 200);
    }
    assert!(
        !metrics.is_finished(),
        "/metrics was answered although every blocking turn was taken"
    );

    for _ in 0..bento::blocking::MAX_AT_ONCE {
        release.send(()).unwrap();
    }
    for j in jobs {
        j.await.unwrap().unwrap();
    }
    let answered = metrics.await.unwrap().unwrap();
    assert_eq!(answered.status, 200);
    assert!(answered.text().contains("bento_cache_requests_total"));
}
