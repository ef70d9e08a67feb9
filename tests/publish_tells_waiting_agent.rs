//! Instant updates: an agent waiting on `/watch/<generation>` is answered with the new
//! generation as soon as its release changes — through the deploy path's notification or,
//! for a release written by another process, through the release-file poll — and not by
//! another host's change. A wait with no change times out with `None`. The stock client
//! can wait the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod publish_harness;

use std::time::{Duration, Instant};

use publish_harness::Fleet;

/// Generous: these assert that the agent is told, not how fast.
const TOLD_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn waiting_agent_is_told_of_a_new_release() {
    let fleet = Fleet::start(&["web1", "web2"]).await;
    fleet.write_release("web1", 1);
    fleet.write_release("web2", 1);
    let agent = fleet.client("web1").await.unwrap();

    // Told through the deploy path's notification.
    let started = Instant::now();
    let wait = agent.wait_release_change(1, Duration::from_secs(60));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        fleet.write_release("web1", 2);
        let t = Instant::now();
        fleet.state.notify_release_changed("web1");
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
        fleet.write_release("web1", 3);
    };
    let (told, ()) = tokio::time::timeout(TOLD_WITHIN, async { tokio::join!(wait, publish) })
        .await
        .expect("told in time");
    assert_eq!(told.unwrap(), Some(3));

    // Another host's new release does not wake web1; with no change the wait times out.
    let wait = agent.wait_release_change(3, Duration::from_secs(2));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fleet.write_release("web2", 2);
        fleet.state.notify_release_changed("web2");
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
    assert!(fleet.state.metrics().snapshot().watch_wakeups >= 2);
    fleet.stop().await;
}

#[tokio::test]
async fn stock_sftp_can_wait_too() {
    let fleet = Fleet::start(&["web1"]).await;
    fleet.write_release("web1", 7);
    let got = fleet.tmp.path().join("watch-answer");
    let get = |path: &str| format!("get {path} {}\n", got.display());
    // No change within 1 s: the answer is the unchanged generation.
    fleet
        .sftp_batch("web1", fleet.key("web1"), &get("/watch/7/1"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "7\n");

    let state = fleet.state.clone();
    let dir = fleet.host_dir("web1");
    let release8 = fleet.release_bytes("web1", 8);
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(dir.join(".tmp"), release8).unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("release")).unwrap();
        state.notify_release_changed("web1");
    });
    tokio::time::timeout(
        TOLD_WITHIN,
        fleet.sftp_batch("web1", fleet.key("web1"), &get("/watch/7/60")),
    )
    .await
    .expect("stock client told in time")
    .unwrap();
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "8\n");
    publisher.await.unwrap();
    fleet.stop().await;
}
