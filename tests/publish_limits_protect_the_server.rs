//! Limits: a session flooding requests is disconnected while another host's session keeps
//! being served; sessions per host and connections in total are capped; a connection that
//! does not authenticate in time, or a session that stays idle, is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod publish_harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bento::sftp::client::ClientError;
use bento::sftp::server::SftpConfig;
use publish_harness::{AcceptAny, Fleet, publish_config};
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
    let fleet = Fleet::start_with(
        &["web1", "web2"],
        SftpConfig {
            request_rate: 100.0,
            request_burst: 200,
            ..publish_config()
        },
    )
    .await;
    fleet.write_release("web1", 1);
    fleet.write_release("web2", 1);
    let flooder = Arc::new(fleet.client("web1").await.unwrap());
    let polite = fleet.client("web2").await.unwrap();

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
    assert_eq!(fleet.state.metrics().snapshot().flood_disconnects, 1);
    // The flooder can come back (and behave).
    let t = Instant::now();
    let again = fleet.client("web1").await.unwrap();
    eprintln!("reconnect took {:?}", t.elapsed());
    assert!(again.read_release().await.unwrap().is_some());
    assert!(polite.read_release().await.unwrap().is_some());
    fleet.stop().await;
}

#[tokio::test]
async fn sessions_per_host_and_connections_are_capped() {
    let fleet = Fleet::start_with(
        &["web1", "web2", "web3"],
        SftpConfig {
            max_sessions_per_host: 2,
            max_sessions: 3,
            ..publish_config()
        },
    )
    .await;
    let a = fleet.client("web1").await.unwrap();
    let b = fleet.client("web1").await.unwrap();
    let err = fleet.client("web1").await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");
    // The refused client hangs up; then another host is not affected by web1's cap.
    wait_until("the refused connection to close", || {
        fleet.state.metrics().snapshot().connections_open == 2
    })
    .await;
    let c = fleet.client("web2").await.unwrap();
    // Three connections open: the fourth is closed on accept.
    wait_until("three open connections", || {
        fleet.state.metrics().snapshot().connections_open == 3
    })
    .await;
    let err = fleet.client("web3").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(fleet.state.metrics().snapshot().connections_refused >= 1);

    a.close().await;
    wait_until("web1 to have one session", || {
        fleet.state.sessions_of("web1") == 1
    })
    .await;
    wait_until("a free connection slot", || {
        fleet.state.metrics().snapshot().connections_open == 2
    })
    .await;
    let d = fleet.client("web1").await.unwrap();
    assert!(d.read_release().await.unwrap().is_none());
    drop((b, c, d));
    fleet.stop().await;
}

#[tokio::test]
async fn unauthenticated_and_idle_connections_are_closed() {
    let fleet = Fleet::start_with(
        &["web1", "web2"],
        SftpConfig {
            auth_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            watch_max_wait: Duration::from_secs(1),
            ..publish_config()
        },
    )
    .await;
    fleet.write_release("web1", 1);

    // A TCP connection that never speaks SSH.
    let mut tcp = tokio::net::TcpStream::connect(fleet.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(_))), "connection not closed: {read:?}");
    assert!(String::from_utf8_lossy(&buf).starts_with("SSH-2.0-bento"));

    // An SSH handshake that never authenticates.
    let ssh = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        fleet.addr,
        AcceptAny,
    )
    .await
    .unwrap();
    wait_until("the unauthenticated session to be closed", || {
        ssh.is_closed()
    })
    .await;
    assert!(fleet.state.metrics().snapshot().auth_timeouts >= 2);

    // An idle session is closed; a busy one is not.
    let idle = fleet.client("web1").await.unwrap();
    let busy = fleet.client("web2").await.unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(busy.read_release().await.is_ok());
    }
    assert!(idle.read_release().await.is_err(), "idle session survived");
    fleet.stop().await;
}
