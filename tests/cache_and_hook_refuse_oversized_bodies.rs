//! Request bodies are capped by tower-http's `RequestBodyLimitLayer` at the largest body a
//! legitimate client sends: on the cache port, the transfer's path list
//! (`transfer::MAX_REQUEST_BYTES`); on the git hook, 1 MiB (push payloads are a few KiB; the
//! hook ignores them). A body announced larger gets 413 before a byte of it is read, and a
//! chunked body that grows past the cap gets 413 when it does; a body within the cap is
//! answered as usual (the positive control).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use harness::servers::{CacheServer, ServerDir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `head` (the request line and headers, without the blank line) and `body`, and
/// returns the status of the answer (reading stops at the status line: the server may
/// answer before it has read the body, and close).
async fn status_of(addr: SocketAddr, head: &str, body: impl IntoIterator<Item = Vec<u8>>) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for chunk in body {
        // The server may close once it has answered: later writes may fail.
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A chunked body of `total` bytes in 1 MiB chunks, then its end.
fn chunked(total: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(1 << 20);
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'a', n));
        chunk.extend_from_slice(b"\r\n");
        out.push(chunk);
        left -= n;
    }
    out.push(b"0\r\n\r\n".to_vec());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_refuses_a_body_over_the_transfers_largest() {
    let dir = ServerDir::new();
    let server = CacheServer::start(dir.cache_config()).await;
    let max = bento::transfer::MAX_REQUEST_BYTES;
    let path = bento::transfer::CLOSURE_PATH;
    let post = |extra: &str| format!("POST {path} HTTP/1.1\r\nHost: cache\r\n{extra}");

    // Announced too large: refused before it is sent.
    let announced = post(&format!("Content-Length: {}", max + 1));
    assert_eq!(status_of(server.addr, &announced, []).await, 413);
    // Chunked, growing past the cap.
    let grows = post("Transfer-Encoding: chunked");
    assert_eq!(status_of(server.addr, &grows, chunked(max + 1)).await, 413);

    // Positive control: a path list within the cap is read and answered (here: a path this
    // cache does not serve).
    let body = "/nix/store/00000000000000000000000000000000-absent\n";
    let fits = post(&format!("Content-Length: {}", body.len()));
    let status = status_of(server.addr, &fits, [body.as_bytes().to_vec()]).await;
    assert_ne!(status, 413);
    assert!((200..500).contains(&status), "{status}");
    // A GET with a body (nobody's client sends one, the cap holds all the same).
    let get = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\nContent-Length: {}",
        max + 1
    );
    assert_eq!(status_of(server.addr, &get, []).await, 413);
    assert_eq!(server.get("/nix-cache-info").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_git_hook_refuses_a_body_over_a_mebibyte() {
    let secret = bento::gitops::hook::HookSecret::new(b"0123456789abcdef-secret").unwrap();
    let notify = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(bento::gitops::hook::serve(
        listener,
        secret,
        notify.clone(),
        shutdown.clone(),
    ));
    let post = |extra: &str| {
        format!(
            "POST /hooks/git HTTP/1.1\r\nHost: hook\r\nAuthorization: Bearer 0123456789abcdef-secret\r\n{extra}"
        )
    };
    let limit = bento::gitops::hook::MAX_BODY_BYTES;
    let too_big = post(&format!("Content-Length: {}", limit + 1));
    assert_eq!(status_of(addr, &too_big, []).await, 413);
    let grows = post("Transfer-Encoding: chunked");
    assert_eq!(status_of(addr, &grows, chunked(limit + 1)).await, 413);
    // Positive control: a push payload of 64 KiB is taken, and the fetch requested.
    let body = vec![b'{'; 64 << 10];
    let fits = post(&format!("Content-Length: {}", body.len()));
    assert_eq!(status_of(addr, &fits, [body]).await, 202);
    tokio::time::timeout(std::time::Duration::from_secs(10), notify.notified())
        .await
        .expect("the hook asked for a fetch");
    shutdown.cancel();
}
