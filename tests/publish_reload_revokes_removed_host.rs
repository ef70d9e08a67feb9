//! Reloading the access map (what the CLI does on SIGHUP or a changed fleet file) revokes a
//! removed host — its open session is cut and it cannot log in again — and a host whose key
//! was replaced, while every other host's open session, including one waiting for a release,
//! keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod publish_harness;

use std::time::Duration;

use bento::sftp::client::ClientError;
use publish_harness::{Fleet, public_key_line, ssh_keygen};

#[tokio::test]
async fn removed_host_loses_access_others_keep_their_sessions() {
    let fleet = Fleet::start(&["web1", "web2", "db1"]).await;
    fleet.write_release("web1", 1);
    fleet.write_release("web2", 1);
    fleet.write_release("db1", 1);

    let web1 = fleet.client("web1").await.unwrap();
    let web2 = fleet.client("web2").await.unwrap();
    let db1 = fleet.client("db1").await.unwrap();
    assert!(web2.read_release().await.unwrap().is_some());
    // web1 waits for a release across the reload.
    let waiting = tokio::spawn(async move {
        let r = web1.wait_release_change(1, Duration::from_secs(60)).await;
        (r, web1)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Remove web2; replace db1's key.
    let new_db1_key = ssh_keygen(&fleet.tmp.path().join("keys"), "db1-new");
    let hosts = bento::sftp::server::HostKeys::parse([
        ("web1", vec![public_key_line(fleet.key("web1"))]),
        ("db1", vec![public_key_line(&new_db1_key)]),
    ])
    .unwrap();
    let summary = fleet.state.reload(hosts);
    assert_eq!(summary.removed, vec!["web2"]);
    assert_eq!(summary.changed, vec!["db1"]);

    // web2's and db1's open sessions are cut at once, without waiting for their next request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fleet.state.sessions_of("web2") + fleet.state.sessions_of("db1") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "sessions not cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fleet.state.sessions_of("web1"), 1);
    for (name, s) in [("web2", &web2), ("db1", &db1)] {
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_release()).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "{name}'s session still works after losing access: {r:?}"
        );
    }
    // ...and they cannot log in again with the old keys.
    let err = fleet.client("web2").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    let err = fleet.client("db1").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    // db1's new key works.
    let db1_new = fleet.client_with("db1", &new_db1_key).await.unwrap();
    assert!(db1_new.read_release().await.unwrap().is_some());

    // web1's session, waiting all along, is told of its new release.
    fleet.write_release("web1", 2);
    fleet.state.notify_release_changed("web1");
    let (told, web1) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("web1 told within 30 s")
        .unwrap();
    assert_eq!(told.unwrap(), Some(2));
    let release = web1.read_release().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&release).contains("\"generation\":2"));
    assert!(fleet.state.metrics().snapshot().revoked_disconnects >= 2);

    // Adding web2 back lets it in again.
    fleet.state.reload(fleet.host_keys(&["web1", "web2"]));
    let again = fleet.client("web2").await.unwrap();
    assert!(again.read_release().await.unwrap().is_some());
    // ...and web1's session survived that reload too.
    assert!(web1.read_release().await.unwrap().is_some());
    fleet.stop().await;
}
