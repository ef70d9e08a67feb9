//! Instant updates: an agent waiting on `/watch/<generation>` is answered with the new
//! generation as soon as its release changes — through the deploy path's notification or,
//! for a release written by another process, through the release-file poll — and not by
//! another host's change. A wait with no change times out with `None`. The stock client
//! can wait the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, Instant};

use bento::sftp::client::Session;
use harness::servers::SftpServer;

/// Generous: these assert that the agent is told, not how fast.
const TOLD_WITHIN: Duration = Duration::from_secs(30);

/// What a wait for a release newer than `known` (at most `window`) answers when `change`
/// happens 200 ms into it.
async fn told(agent: &Session, known: u64, window: Duration, change: impl FnOnce()) -> Option<u64> {
    let wait = agent.wait_release_change(known, window);
    let publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        change();
    };
    let (told, ()) = tokio::time::timeout(TOLD_WITHIN, async { tokio::join!(wait, publish) })
        .await
        .expect("the wait ends");
    told.unwrap()
}

#[tokio::test]
async fn waiting_agent_is_told_of_a_new_release() {
    let server = SftpServer::start(&["web1", "web2"]).await;
    server.dir.publish_made_up("web1", 1);
    server.dir.publish_made_up("web2", 1);
    let agent = server.client("web1").await.unwrap();
    let long = Duration::from_secs(60);

    // Told through the deploy path's notification.
    let started = Instant::now();
    let got = told(&agent, 1, long, || {
        server.dir.publish_made_up("web1", 2);
        server.state.notify_release_changed("web1");
    })
    .await;
    assert_eq!(got, Some(2));
    eprintln!("notify: told after {:?}", started.elapsed());

    // Told through the poll when nobody notifies (another process wrote the release).
    let got = told(&agent, 2, long, || {
        server.dir.publish_made_up("web1", 3);
    })
    .await;
    assert_eq!(got, Some(3));

    // Another host's new release does not wake web1: within a short window the wait ends
    // with `None`. Positive control first: in the same window, web1's own release change
    // announced the same way is told.
    let window = Duration::from_secs(2);
    let got = told(&agent, 3, window, || {
        server.dir.publish_made_up("web1", 4);
        server.state.notify_release_changed("web1");
    })
    .await;
    assert_eq!(got, Some(4), "web1's own change is told within {window:?}");
    let got = told(&agent, 4, window, || {
        server.dir.publish_made_up("web2", 2);
        server.state.notify_release_changed("web2");
    })
    .await;
    assert_eq!(got, None, "web2's change woke web1");

    // An agent behind the server's generation is answered at once.
    assert_eq!(agent.wait_release_change(1, long).await.unwrap(), Some(4));
    assert!(server.state.metrics().snapshot().watch_wakeups >= 3);
    server.stop().await;
}

#[tokio::test]
async fn stock_sftp_can_wait_too() {
    let server = SftpServer::start(&["web1"]).await;
    server.dir.publish_made_up("web1", 7);
    let got = server.dir.scratch().join("watch-answer");
    let get = |path: &str| format!("get {path} {}\n", got.display());
    // No change within 1 s: the answer is the unchanged generation.
    server
        .sftp_batch("web1", server.key("web1"), &get("/watch/7/1"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "7\n");

    let state = server.state.clone();
    let dir = server.dir.host_dir("web1");
    let release8 = server.dir.made_up_release("web1", 8);
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(dir.join(".tmp"), release8).unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("release")).unwrap();
        state.notify_release_changed("web1");
    });
    tokio::time::timeout(
        TOLD_WITHIN,
        server.sftp_batch("web1", server.key("web1"), &get("/watch/7/60")),
    )
    .await
    .expect("stock client told in time")
    .unwrap();
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "8\n");
    publisher.await.unwrap();
    server.stop().await;
}
