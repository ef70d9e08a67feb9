//! Limits: a session flooding requests is disconnected while another host's session keeps
//! being served; sessions per host and connections in total are capped; a connection that
//! does not authenticate in time, or a session that stays idle, is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bento::sftp::client::ClientError;
use bento::sftp::server::SftpConfig;
use harness::servers::{AcceptAny, SftpServer, sftp_config};
use tokio::io::AsyncReadExt as _;

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flooding_session_is_cut_off_and_others_are_served() {
    let server = SftpServer::start_with(
        &["web1", "web2"],
        SftpConfig {
            request_rate: 100.0,
            request_burst: 200,
            ..sftp_config()
        },
    )
    .await;
    server.dir.publish_made_up("web1", 1);
    server.dir.publish_made_up("web2", 1);
    let flooder = Arc::new(server.client("web1").await.unwrap());
    let polite = server.client("web2").await.unwrap();

    let flood = {
        let flooder = flooder.clone();
        tokio::spawn(async move {
            // The raw session leaves requests cut off by a disconnect pending until their
            // own timeout; 5 s is plenty on loopback.
            let requests = (0..3000).map(|_| {
                tokio::time::timeout(Duration::from_secs(5), flooder.sftp().stat("/release"))
            });
            let results = futures::future::join_all(requests).await;
            results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count()
        })
    };
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert!(polite.read_release().await.unwrap().is_some());
        slowest = slowest.max(t.elapsed());
    }
    let failed = flood.await.unwrap();
    eprintln!("flood: {failed} of 3000 requests failed; slowest polite read {slowest:?}");
    assert!(failed > 0, "the flood was not cut off");
    let t = Instant::now();
    let err = flooder.read_release().await.unwrap_err();
    eprintln!("flooder: {err} (after {:?})", t.elapsed());
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
    assert!(flooder.is_closed());
    assert_eq!(server.state.metrics().snapshot().flood_disconnects, 1);
    // The flooder can come back (and behave).
    let t = Instant::now();
    let again = server.client("web1").await.unwrap();
    eprintln!("reconnect took {:?}", t.elapsed());
    assert!(again.read_release().await.unwrap().is_some());
    assert!(polite.read_release().await.unwrap().is_some());
    server.stop().await;
}

#[tokio::test]
async fn sessions_per_host_and_connections_are_capped() {
    let server = SftpServer::start_with(
        &["web1", "web2", "web3"],
        SftpConfig {
            max_sessions_per_host: 2,
            max_sessions: 3,
            ..sftp_config()
        },
    )
    .await;
    let a = server.client("web1").await.unwrap();
    let b = server.client("web1").await.unwrap();
    let err = server.client("web1").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    // The refused client hangs up; then another host is not affected by web1's cap.
    wait_until("the refused connection to close", || {
        server.state.metrics().snapshot().connections_open == 2
    })
    .await;
    let c = server.client("web2").await.unwrap();
    // Three connections open: the fourth is closed on accept.
    wait_until("three open connections", || {
        server.state.metrics().snapshot().connections_open == 3
    })
    .await;
    let err = server.client("web3").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(server.state.metrics().snapshot().connections_refused >= 1);

    a.close().await;
    wait_until("web1 to have one session", || {
        server.state.sessions_of("web1") == 1
    })
    .await;
    wait_until("a free connection slot", || {
        server.state.metrics().snapshot().connections_open == 2
    })
    .await;
    let d = server.client("web1").await.unwrap();
    assert!(d.read_release().await.unwrap().is_none());
    drop((b, c, d));
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_and_idle_connections_are_closed() {
    let server = SftpServer::start_with(
        &["web1", "web2"],
        SftpConfig {
            auth_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            watch_max_wait: Duration::from_secs(1),
            ..sftp_config()
        },
    )
    .await;
    server.dir.publish_made_up("web1", 1);

    // A TCP connection that never speaks SSH.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(_))), "connection not closed: {read:?}");
    assert!(String::from_utf8_lossy(&buf).starts_with("SSH-2.0-bento"));

    // An SSH handshake that never authenticates.
    let ssh = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        server.addr,
        AcceptAny,
    )
    .await
    .unwrap();
    wait_until("the unauthenticated session to be closed", || {
        ssh.is_closed()
    })
    .await;
    assert!(server.state.metrics().snapshot().auth_timeouts >= 2);

    // An idle session is closed; a busy one is not.
    let idle = server.client("web1").await.unwrap();
    let busy = server.client("web2").await.unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(busy.read_release().await.is_ok());
    }
    assert!(idle.read_release().await.is_err(), "idle session survived");
    server.stop().await;
}
