//! The agent's side of the wire: HTTP/1.1 `POST`s with the host's cache token from its netrc
//! file as basic auth, the body read as it arrives. A response read to its end can carry the
//! next request on its connection ([`Response::post_next`]), which saves the TCP handshake
//! and keeps the window the first answer opened. Plain `http://` only: for any other cache
//! URL the agent copies with Nix as before.
//!
//! Hand-written (about a hundred lines on tokio) because Bento has no HTTP client crate and
//! these two requests need none of one's features; the parts that read untrusted bytes
//! (status line, headers, netrc) are pure functions tested here.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("the transfer needs an http:// cache URL, not {0}")]
    Scheme(String),
    #[error("the cache URL {0} has no host")]
    NoHost(String),
    #[error("cannot read the netrc file {path}: {source}")]
    Netrc {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the cache at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to the cache at {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cache at {addr} closed the connection without answering; retry")]
    Closed { addr: String },
    #[error("the cache at {addr} sent nothing for {secs} s")]
    Stalled { addr: String, secs: u64 },
    #[error("the cache at {addr} sent a malformed HTTP response: {why}")]
    Malformed { addr: String, why: &'static str },
    #[error("the cache answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// Where the cache is, and the credentials to send.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    base: String,
    auth: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({}:{}{})", self.host, self.port, self.base)
    }
}

impl Target {
    /// The cache at `url` (`http://` only), with the token `netrc` holds for its host.
    pub fn new(url: &url::Url, netrc: Option<&Path>) -> Result<Target, ClientError> {
        if url.scheme() != "http" {
            return Err(ClientError::Scheme(url.to_string()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ClientError::NoHost(url.to_string()))?
            .to_owned();
        let auth = match netrc {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ClientError::Netrc {
                    path: path.display().to_string(),
                    source,
                })?;
                netrc_login(&text, &host).map(|(user, password)| {
                    let raw = format!("{user}:{password}");
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    )
                })
            }
        };
        Ok(Target {
            port: url.port_or_known_default().unwrap_or(80),
            base: url.path().trim_end_matches('/').to_owned(),
            host,
            auth,
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `POST <base><path>` with `body` over a new connection; returns once the response head
    /// is read. Each read waits at most `idle`. With `keep`, the connection may carry a next
    /// request ([`Response::post_next`]); without, it is closed after this answer.
    pub async fn post(
        &self,
        path: &str,
        body: &[u8],
        idle: Duration,
        keep: bool,
    ) -> Result<Response, ClientError> {
        let addr = self.addr();
        let stream = tokio::time::timeout(idle, TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Stalled {
                addr: addr.clone(),
                secs: idle.as_secs(),
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let response = Response {
            target: self.clone(),
            stream,
            addr,
            idle,
            buffered: Vec::new(),
            scratch: Vec::new(),
            remaining: None,
            reusable: false,
            status: 0,
        };
        response.send(path, body, keep).await
    }
}

/// A response whose head is read; its body is read with [`Response::chunk`].
#[derive(Debug)]
pub struct Response {
    target: Target,
    stream: TcpStream,
    addr: String,
    idle: Duration,
    buffered: Vec<u8>,
    /// The read buffer, kept between reads.
    scratch: Vec<u8>,
    /// Body bytes still to come, when the length is known.
    remaining: Option<u64>,
    /// Whether the connection may carry another request once the body is read.
    reusable: bool,
    pub status: u16,
}

impl Response {
    /// Sends a request on this response's connection and reads the head of its answer.
    async fn send(mut self, path: &str, body: &[u8], keep: bool) -> Result<Response, ClientError> {
        let t = &self.target;
        let mut head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: {}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n",
            t.base,
            self.addr,
            if keep { "keep-alive" } else { "close" },
            body.len()
        );
        if let Some(auth) = &t.auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        // One write: head and body leave in the same segments.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let io = |addr: &str| {
            let addr = addr.to_owned();
            move |source| ClientError::Io { addr, source }
        };
        self.stream
            .write_all(&request)
            .await
            .map_err(io(&self.addr))?;
        self.read_head(keep).await?;
        Ok(self)
    }

    /// `POST <base><path>` with `body` on this response's connection once its body has been
    /// read to the end, or on a new connection when it cannot carry another request (the
    /// server closed it, the body was not read whole, or the request on it fails before any
    /// answer: the server may have closed it while idle). The request must be one that may
    /// be sent twice.
    pub async fn post_next(
        self,
        path: &str,
        body: &[u8],
        keep: bool,
    ) -> Result<Response, ClientError> {
        let (target, idle) = (self.target.clone(), self.idle);
        if !(self.reusable && self.remaining == Some(0) && self.buffered.is_empty()) {
            return target.post(path, body, idle, keep).await;
        }
        match self.send(path, body, keep).await {
            Ok(r) => Ok(r),
            Err(ClientError::Io { .. } | ClientError::Closed { .. }) => {
                target.post(path, body, idle, keep).await
            }
            Err(e) => Err(e),
        }
    }
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        tokio::time::timeout(self.idle, self.stream.read(buf))
            .await
            .map_err(|_| ClientError::Stalled {
                addr: self.addr.clone(),
                secs: self.idle.as_secs(),
            })?
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    async fn read_head(&mut self, keep: bool) -> Result<(), ClientError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                let head =
                    parse_head(&self.buffered[..end]).map_err(|why| ClientError::Malformed {
                        addr: self.addr.clone(),
                        why,
                    })?;
                self.buffered.drain(..end + 4);
                self.status = head.status;
                self.reusable = keep && !head.close && head.content_length.is_some();
                self.remaining = head
                    .content_length
                    .map(|n| n.saturating_sub(self.buffered.len() as u64));
                return Ok(());
            }
            if self.buffered.len() > MAX_HEAD {
                return Err(ClientError::Malformed {
                    addr: self.addr.clone(),
                    why: "the response head is too long",
                });
            }
            let n = self.read_some(&mut buf).await?;
            if n == 0 && self.buffered.is_empty() {
                return Err(ClientError::Closed {
                    addr: self.addr.clone(),
                });
            }
            if n == 0 {
                return Err(ClientError::Malformed {
                    addr: self.addr.clone(),
                    why: "the connection closed before the response head ended",
                });
            }
            self.buffered.extend_from_slice(&buf[..n]);
        }
    }

    /// Where the answer comes from (`host:port`), for error messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next bytes of the body; `None` at its end (the announced length, or EOF).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if !self.buffered.is_empty() {
            return Ok(Some(Bytes::from(std::mem::take(&mut self.buffered))));
        }
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(256 * 1024, 0);
        let read = self.read_some(&mut buf).await;
        let chunk = read.map(|n| Bytes::copy_from_slice(&buf[..n]));
        self.scratch = buf;
        let chunk = chunk?;
        if chunk.is_empty() {
            return Ok(None);
        }
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(chunk.len() as u64);
        }
        Ok(Some(chunk))
    }

    /// The whole body, at most `max` bytes (then an error).
    pub async fn body(&mut self, max: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
            if out.len() > max {
                return Err(ClientError::Malformed {
                    addr: self.addr.clone(),
                    why: "the response body is larger than expected",
                });
            }
        }
        Ok(out)
    }

    /// Turns a non-200 answer into an error carrying the start of its body.
    pub async fn ok(mut self) -> Result<Response, ClientError> {
        if self.status == 200 {
            return Ok(self);
        }
        let body = self.body(4096).await.unwrap_or_default();
        Err(ClientError::Status {
            status: self.status,
            body: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(300)
                .collect(),
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the client needs of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    /// `Connection: close`: no further request on this connection.
    pub close: bool,
}

/// Parses a response head (without its final blank line). Chunked bodies are refused:
/// the cache always sends a length.
pub fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "the head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("no HTTP/1 status line");
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status code")?;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| "a bad Content-Length")?;
            if content_length.is_some_and(|m| m != n) {
                return Err("two different Content-Lengths");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a Transfer-Encoding the client does not read");
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    Ok(Head {
        status,
        content_length,
        close,
    })
}

/// The login and password a netrc file gives for `host` (or its `default`), as Nix reads
/// them: whitespace-separated tokens, `machine` / `default` starting an entry.
pub fn netrc_login(text: &str, host: &str) -> Option<(String, String)> {
    let mut tokens = text.split_whitespace();
    let mut current: Option<bool> = None; // Some(matches) inside an entry
    let (mut login, mut password) = (None, None);
    let done = |m: Option<bool>, l: &Option<String>, p: &Option<String>| match (m, l, p) {
        (Some(true), Some(l), Some(p)) => Some((l.clone(), p.clone())),
        _ => None,
    };
    while let Some(t) = tokens.next() {
        match t {
            "machine" | "default" => {
                if let Some(found) = done(current, &login, &password) {
                    return Some(found);
                }
                current = Some(t == "default" || tokens.next() == Some(host));
                login = None;
                password = None;
            }
            "login" => login = tokens.next().map(str::to_owned),
            "password" => password = tokens.next().map(str::to_owned),
            _ => {}
        }
    }
    done(current, &login, &password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let ok = |s: &str| parse_head(s.as_bytes());
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx: y"),
            Ok(Head {
                status: 200,
                content_length: Some(12),
                close: false,
            })
        );
        assert_eq!(
            ok("HTTP/1.1 404 Not Found\r\nConnection: keep-alive, Close"),
            Ok(Head {
                status: 404,
                content_length: None,
                close: true,
            })
        );
        for bad in [
            "SSH-2.0-x",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 200 OK\r\nContent-Length: -1",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
            "HTTP/1.1 200 OK\r\nno colon",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netrc_entries() {
        let text = "machine other login a password b\n\
                    machine 10.0.0.1 login web1 password s3cret\n";
        let got = |t: &str, h: &str| netrc_login(t, h);
        assert_eq!(
            got(text, "10.0.0.1"),
            Some(("web1".into(), "s3cret".into()))
        );
        assert_eq!(got(text, "other"), Some(("a".into(), "b".into())));
        assert_eq!(got(text, "10.0.0.2"), None);
        let with_default = format!("{text}default login d password e\n");
        assert_eq!(
            got(&with_default, "10.0.0.2"),
            Some(("d".into(), "e".into()))
        );
        assert_eq!(got("machine h login x", "h"), None, "no password");
    }
}
