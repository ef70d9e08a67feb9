//! No client can starve the others on the cache port. Raw TCP clients from their own
//! loopback addresses (127.0.0.2, ...) ask for a 32 MB NAR and never read it, open
//! connections and send nothing, or send half a request head; the cache cuts them after
//! its timeouts, gives each address only its share of NAR streams and connections, and a
//! real `nix copy` from another address completes meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use bento::cache::limits::Refusal;
use bento::cache::{CacheConfig, Limits};
use harness::nix::{Nix, build, closure, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// A big NAR for `web2` and a small closure for `web1`, published and served with
/// `limits`; `None` when this test may not run here.
async fn served(
    limits: Limits,
    max_nar_streams: usize,
) -> Option<(ServerDir, CacheServer, String, String)> {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return None;
    }
    let salt = nonce();
    let big = build(&format!(
        r#"mk "bento-stall-big-{salt}" "head -c 32000000 /dev/urandom > $out""#
    ));
    let small = build(&format!(
        r#"mk "bento-stall-small-{salt}" "echo small > $out""#
    ));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &small);
    dir.publish("web2", 1, &big);
    let config = CacheConfig {
        max_nar_streams,
        limits,
        ..dir.cache_config()
    };
    let server = CacheServer::start(config).await;
    Some((dir, server, big, small))
}

/// A TCP connection to `server` from loopback address `from`, with a small receive buffer
/// so that a client that does not read stalls the sender quickly.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Sends a GET of `path` and reads the response head; returns the status and the head.
async fn request_head(conn: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: cache\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed in the response head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head)
}

/// Reads until the server closes the connection (or 30 s pass); returns the bytes read and
/// whether the server closed it.
async fn read_to_close(conn: &mut TcpStream) -> (usize, bool) {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
        }
    }
}

async fn plain_nar_url(server: &CacheServer, path: &str) -> (String, usize) {
    let ni = server.get(&format!("/{}.narinfo", hash_part(path))).await;
    assert_eq!(ni.status, 200, "{}", ni.text());
    let hash = ni.field("NarHash").unwrap();
    let size = ni.field("NarSize").unwrap().parse().unwrap();
    (
        format!("/nar/{}.nar", hash.trim_start_matches("sha256:")),
        size,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_from_one_address_get_their_share_and_nix_copy_from_another_completes() {
    let limits = Limits {
        max_nar_streams_per_address: 4,
        nar_wait: Duration::from_secs(2),
        send_timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    let Some((dir, server, big, small)) = served(limits, 8).await else {
        return;
    };
    let (nar, _) = plain_nar_url(&server, &big).await;

    // Twelve stalled readers from one address: four streams start (and stall), the other
    // eight are told to come back after the bounded wait.
    let mut stalled = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let mut conn = connect_from("127.0.0.2", server.addr).await;
        let (status, head) = request_head(&mut conn, &nar).await;
        if status == 503 {
            assert!(head.contains("retry-after: 5"), "{head}");
        }
        statuses.push(status);
        stalled.push(conn);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        8,
        "{statuses:?}"
    );
    let m = server.state.metrics();
    assert_eq!(m.refused_total(Refusal::NarStreamsPerAddress), 8);
    assert_eq!(
        m.streams_in_flight(),
        4,
        "the stalled streams hold their places"
    );

    // Meanwhile a real Nix client on another address copies web1's closure.
    let client = Nix::chroot();
    let pubkey = dir.key.public().to_string();
    let copied = client.copy_from(&server.url(), &pubkey, &small, &[]).await;
    assert!(copied.is_ok(), "nix copy failed: {}", copied.err().unwrap());
    for path in closure(&small) {
        assert!(client.has(&path), "{path} was not copied");
    }
    assert_eq!(
        m.streams_in_flight(),
        4,
        "the stalls were still there all along"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_cut_after_the_send_timeout_and_its_place_goes_to_a_waiter() {
    let limits = Limits {
        send_timeout: Duration::from_secs(2),
        nar_wait: Duration::from_secs(60),
        ..Limits::default()
    };
    let Some((_dir, server, big, _)) = served(limits, 1).await else {
        return;
    };
    let (nar, size) = plain_nar_url(&server, &big).await;

    let mut staller = connect_from("127.0.0.2", server.addr).await;
    let (status, _) = request_head(&mut staller, &nar).await;
    assert_eq!(status, 200);

    // The only place is taken: this request waits, then gets the NAR once the staller is
    // cut.
    let mut waiter = connect_from("127.0.0.3", server.addr).await;
    let (status, _) = request_head(&mut waiter, &nar).await;
    assert_eq!(status, 200);
    let m = server.state.metrics();
    assert_eq!(
        m.send_timeouts_total(),
        1,
        "the staller was cut for its stall"
    );
    let mut body = vec![0u8; size];
    waiter.read_exact(&mut body).await.unwrap();

    // The staller's connection was closed before its body was complete.
    let (read, closed) = read_to_close(&mut staller).await;
    assert!(closed, "the server closed the stalled connection");
    assert!(
        read < size,
        "the stalled body was cut: {read} of {size} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_requests_are_closed_and_each_address_gets_its_connections() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(5),
        max_connections_per_address: 250,
        ..Limits::default()
    };
    let Some((_dir, server, _, small)) = served(limits, 8).await else {
        return;
    };

    // Positive control: a whole request is answered on a fresh connection.
    let mut fine = connect_from("127.0.0.5", server.addr).await;
    let (status, _) = request_head(&mut fine, &format!("/{}.narinfo", hash_part(&small))).await;
    assert_eq!(status, 200);

    // 100 connections that send nothing, 100 that send half a request head.
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut conn = connect_from("127.0.0.2", server.addr).await;
        if i % 2 == 1 {
            conn.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: ca")
                .await
                .unwrap();
        }
        idle.push(conn);
    }
    // Over the per-address cap: the 251st connection of 127.0.0.2 is closed at once.
    let mut extra = Vec::new();
    for _ in 0..51 {
        extra.push(connect_from("127.0.0.2", server.addr).await);
    }
    let mut over = extra.pop().unwrap();
    let (read, closed) = read_to_close(&mut over).await;
    assert!(closed && read == 0, "closed without an answer");
    let m = server.state.metrics();
    assert!(m.refused_total(Refusal::MaxConnectionsPerAddress) >= 1);

    let mut closed_by_server = 0;
    for mut conn in idle {
        let (_, closed) = read_to_close(&mut conn).await;
        closed_by_server += usize::from(closed);
    }
    assert_eq!(
        closed_by_server, 200,
        "every idle or half-sent connection was closed"
    );
    // The connection that asked nothing more after its answer was closed as idle too.
    let (_, closed) = read_to_close(&mut fine).await;
    assert!(closed);
}
