//! One source address may hold only `max_unauthenticated_per_ip` connections that have not
//! logged in: a further one is closed at accept (no SSH banner), other addresses are not
//! affected, and a connection that logs in gives its slot back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use bento::sftp::server::SftpConfig;
use harness::ran::retry;
use harness::servers::{SftpServer, sftp_config};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};

/// A raw TCP connection from `source` that never speaks SSH, and the first bytes the
/// server sent on it (empty when it closed the connection at once).
async fn silent_connection(source: [u8; 4], server: SocketAddr) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server neither greeted nor closed")
        .unwrap_or(0);
    buf.truncate(n);
    (stream, buf)
}

#[tokio::test]
async fn one_address_cannot_hold_every_slot_before_logging_in() {
    let server = SftpServer::start_with(
        &["web1"],
        SftpConfig {
            max_unauthenticated_per_ip: 3,
            ..sftp_config()
        },
    )
    .await;
    server.dir.publish_made_up("web1", 1);
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, greeting) = silent_connection([127, 0, 0, 1], server.addr).await;
        assert!(greeting.starts_with(b"SSH-2.0-bento"), "{greeting:?}");
        held.push(stream);
    }
    let (_, greeting) = silent_connection([127, 0, 0, 1], server.addr).await;
    assert!(
        greeting.is_empty(),
        "a fourth silent connection from one address is closed at once: {greeting:?}"
    );
    assert!(server.state.metrics().snapshot().connections_refused >= 1);
    assert!(
        server.client("web1").await.is_err(),
        "even a real host behind that address waits for a free slot"
    );

    // Another address has its own allowance.
    let (other, greeting) = silent_connection([127, 0, 0, 2], server.addr).await;
    assert!(greeting.starts_with(b"SSH-2.0-bento"), "{greeting:?}");

    // A freed slot lets a host in, and its login gives the slot back: logins beyond the
    // limit work while two silent connections still hold theirs.
    drop(held.pop());
    let mut logged_in = Vec::new();
    for _ in 0..3 {
        // The dropped connection's slot comes back when the server notices the close.
        let session = retry("web1 cannot log in", || server.client("web1")).await;
        assert!(session.read_release().await.unwrap().is_some());
        logged_in.push(session);
    }
    drop((held, other, logged_in));
    server.stop().await;
}
