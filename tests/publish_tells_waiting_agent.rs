//! Instant updates: an agent waiting on `/watch/<generation>` is answered with the new
//! generation as soon as its release changes — through the deploy path's notification or,
//! for a release written by another process, through the release-file poll — and not by
//! another host's change. A wait with no change times out with `None`. The stock client
//! can wait the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, Instant};

use harness::servers::SftpServer;

/// Generous: these assert that the agent is told, not how fast.
const TOLD_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn waiting_agent_is_told_of_a_new_release() {
    let server = SftpServer::start(&["web1", "web2"]).await;
    server.dir.publish_made_up("web1", 1);
    server.dir.publish_made_up("web2", 1);
    let agent = server.client("web1").await.unwrap();

    // Told through the deploy path's notification.
    let started = Instant::now();
    let wait = agent.wait_release_change(1, Duration::from_secs(60));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.dir.publish_made_up("web1", 2);
        let t = Instant::now();
        server.state.notify_release_changed("web1");
        t
    };
    let (told, published_at) =
        tokio::time::timeout(TOLD_WITHIN, async { tokio::join!(wait, publish) })
            .await
            .expect("told in time");
    assert_eq!(told.unwrap(), Some(2));
    eprintln!(
        "notify: told {:?} after publishing (waited {:?})",
        published_at.elapsed(),
        started.elapsed()
    );

    // Told through the poll when nobody notifies (another process wrote the release).
    let wait = agent.wait_release_change(2, Duration::from_secs(60));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.dir.publish_made_up("web1", 3);
    };
    let (told, ()) = tokio::time::timeout(TOLD_WITHIN, async { tokio::join!(wait, publish) })
        .await
        .expect("told in time");
    assert_eq!(told.unwrap(), Some(3));

    // Another host's new release does not wake web1; with no change the wait times out.
    let wait = agent.wait_release_change(3, Duration::from_secs(2));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.dir.publish_made_up("web2", 2);
        server.state.notify_release_changed("web2");
    };
    let (told, ()) = tokio::join!(wait, publish);
    assert_eq!(told.unwrap(), None);

    // An agent behind the server's generation is answered at once.
    let t = Instant::now();
    assert_eq!(
        agent
            .wait_release_change(1, Duration::from_secs(60))
            .await
            .unwrap(),
        Some(3)
    );
    assert!(t.elapsed() < TOLD_WITHIN);
    assert!(server.state.metrics().snapshot().watch_wakeups >= 2);
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
