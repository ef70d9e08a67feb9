//! Reloading the access map (what the CLI does on SIGHUP or a changed fleet file) revokes a
//! removed host — its open session is cut and it cannot log in again — and a host whose key
//! was replaced, while every other host's open session, including one waiting for a release,
//! keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use bento::sftp::client::ClientError;
use harness::keys::{public_key_line, ssh_keygen};
use harness::servers::SftpServer;

#[tokio::test]
async fn removed_host_loses_access_others_keep_their_sessions() {
    let server = SftpServer::start(&["web1", "web2", "db1"]).await;
    server.dir.publish_made_up("web1", 1);
    server.dir.publish_made_up("web2", 1);
    server.dir.publish_made_up("db1", 1);

    let web1 = server.client("web1").await.unwrap();
    let web2 = server.client("web2").await.unwrap();
    let db1 = server.client("db1").await.unwrap();
    assert!(web2.read_release().await.unwrap().is_some());
    // web1 waits for a release across the reload.
    let waiting = tokio::spawn(async move {
        let r = web1.wait_release_change(1, Duration::from_secs(60)).await;
        (r, web1)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Remove web2; replace db1's key.
    let new_db1_key = ssh_keygen(&server.dir.scratch().join("keys"), "db1-new");
    let hosts = bento::sftp::server::HostKeys::parse([
        ("web1", vec![public_key_line(server.key("web1"))]),
        ("db1", vec![public_key_line(&new_db1_key)]),
    ])
    .unwrap();
    let summary = server.state.reload(hosts);
    assert_eq!(summary.removed, vec!["web2"]);
    assert_eq!(summary.changed, vec!["db1"]);

    // web2's and db1's open sessions are cut at once, without waiting for their next request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.state.sessions_of("web2") + server.state.sessions_of("db1") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "sessions not cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.sessions_of("web1"), 1);
    for (name, s) in [("web2", &web2), ("db1", &db1)] {
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_release()).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "{name}'s session still works after losing access: {r:?}"
        );
    }
    // ...and they cannot log in again with the old keys.
    let err = server.client("web2").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    let err = server.client("db1").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    // db1's new key works.
    let db1_new = server.client_with("db1", &new_db1_key).await.unwrap();
    assert!(db1_new.read_release().await.unwrap().is_some());

    // web1's session, waiting all along, is told of its new release.
    server.dir.publish_made_up("web1", 2);
    server.state.notify_release_changed("web1");
    let (told, web1) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("web1 told within 30 s")
        .unwrap();
    assert_eq!(told.unwrap(), Some(2));
    let release = web1.read_release().await.unwrap().unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&release)
            .unwrap()
            .generation,
        2
    );
    assert!(server.state.metrics().snapshot().revoked_disconnects >= 2);

    // Adding web2 back lets it in again.
    server.state.reload(server.host_keys(&["web1", "web2"]));
    let again = server.client("web2").await.unwrap();
    assert!(again.read_release().await.unwrap().is_some());
    // ...and web1's session survived that reload too.
    assert!(web1.read_release().await.unwrap().is_some());
    server.stop().await;
}
