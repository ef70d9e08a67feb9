//! A relay between a simulated host and the binary cache that records every request and can
//! misbehave on the whole-closure transfer's routes: cut every NAR stream (a delivery's or
//! the two-request form's) 20 bytes before its end (a server going away mid-stream), stall
//! every NAR stream halfway and hold it open (a transfer in progress, for as long as a test
//! needs one), answer
//! the delivery 404 as a `bento serve` from before it does, or answer every transfer route
//! 405 as a server without them (not `bento serve`) does, so that the agent substitutes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Relay {
    /// Each request's head and body, as the agent or Nix sent it.
    pub requests: Mutex<Vec<Vec<u8>>>,
    /// Cut every NAR stream 20 bytes before its end while set.
    pub cut: AtomicBool,
    /// Send half of every NAR stream, then hold the connection open, while set.
    pub stall: AtomicBool,
    /// How many NAR streams are held halfway now or were.
    pub stalled: AtomicUsize,
    /// Answer the delivery 404, as a server that has only the two-request form does.
    pub no_delivery: AtomicBool,
    /// Answer the transfer's requests 405, as a server without them does.
    pub old_server: AtomicBool,
}

impl Relay {
    /// A relay on `ip` (a fresh port) to `upstream`, and its URL.
    pub async fn start(ip: &str, upstream: SocketAddr) -> (Arc<Relay>, String) {
        let relay = Arc::new(Relay::default());
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let me = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(me.clone().connection(client, upstream));
            }
        });
        (relay, url)
    }

    /// Relays one connection. Nix keeps connections alive, so its requests are recorded as
    /// the bytes of each write burst. The agent's transfer requests are relayed one by one
    /// (the closure request's connection carries the next one), each recorded whole.
    async fn connection(self: Arc<Self>, mut client: TcpStream, upstream: SocketAddr) {
        let Some(mut request) = read_request(&mut client).await else {
            return;
        };
        if !request.starts_with(b"POST /_bento/") {
            self.requests.lock().unwrap().push(request.clone());
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            if server.write_all(&request).await.is_err() {
                return;
            }
            let me = self.clone();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(m) = cr.read(&mut buf).await {
                    if m == 0 || sw.write_all(&buf[..m]).await.is_err() {
                        break;
                    }
                    me.requests.lock().unwrap().push(buf[..m].to_vec());
                }
                let _ = sw.shutdown().await;
            });
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
            up.abort();
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        loop {
            self.requests.lock().unwrap().push(request.clone());
            if self.old_server.load(Ordering::SeqCst) {
                let body = "method POST is not allowed: the cache answers GET and HEAD\n";
                let answer = format!(
                    "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: {}\r\nallow: GET, HEAD\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(answer.as_bytes()).await;
                return;
            }
            if request.starts_with(b"POST /_bento/v1/deliver")
                && self.no_delivery.load(Ordering::SeqCst)
            {
                let body = "not in this cache\n";
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(answer.as_bytes()).await;
                return;
            }
            if server.write_all(&request).await.is_err() {
                return;
            }
            let stream = request.starts_with(b"POST /_bento/v1/nars")
                || request.starts_with(b"POST /_bento/v1/deliver");
            let cut = stream && self.cut.load(Ordering::SeqCst);
            let answer = read_answer(&mut server).await;
            if stream && self.stall.load(Ordering::SeqCst) {
                // Half of the answer, then nothing more until the client goes away.
                let _ = client.write_all(&answer[..answer.len() / 2]).await;
                self.stalled.fetch_add(1, Ordering::SeqCst);
                let mut rest = [0u8; 1];
                while matches!(client.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            if cut {
                // The answer up to 20 bytes before its end, then both sides dropped.
                let keep = answer.len().saturating_sub(20);
                let _ = client.write_all(&answer[..keep]).await;
                return;
            }
            if client.write_all(&answer).await.is_err() {
                return;
            }
            match read_request(&mut client).await {
                Some(next) => request = next,
                None => return,
            }
        }
    }

    /// The requests whose first line starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .filter(|r| r.starts_with(prefix))
            .collect()
    }

    /// [`Relay::requests_to`], as the bytes sent (a delivery's hints are binary).
    pub fn requests_raw(&self, prefix: &str) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(prefix.as_bytes()))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

/// One request from `client`: its head, and its body when it announces a length; `None` at
/// the end of the connection.
async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(h) = head_len(&request)
            && request.len() >= h + content_length(&request).unwrap_or(0)
        {
            return Some(request);
        }
        let m = client.read(&mut buf).await.unwrap_or(0);
        if m == 0 {
            return (!request.is_empty()).then_some(request);
        }
        request.extend_from_slice(&buf[..m]);
    }
}

/// One whole answer from `server` (its head and `content-length` bytes), or what came
/// before the connection ended.
async fn read_answer(server: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let (Some(h), Some(len)) = (head_len(&answer), content_length(&answer))
            && answer.len() >= h + len
        {
            return answer;
        }
        let m = server.read(&mut buf).await.unwrap_or(0);
        if m == 0 {
            return answer;
        }
        answer.extend_from_slice(&buf[..m]);
    }
}

fn head_len(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

fn content_length(bytes: &[u8]) -> Option<usize> {
    let head = String::from_utf8_lossy(&bytes[..head_len(bytes)?]).to_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
}
