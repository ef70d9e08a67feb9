//! A raw HTTP/1.1 client, so that tests control every byte of the request line (the
//! binary cache must answer malformed targets with 4xx), with keep-alive connections for
//! load tests; and `curl`, an HTTP client nobody here wrote, for pages as a user fetches them.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A field of a narinfo body.
    pub fn field(&self, name: &str) -> Option<String> {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    }
}

/// A keep-alive HTTP/1.1 connection that sends request targets byte for byte.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Resp> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut resp_headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                resp_headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut resp = Resp {
            status,
            headers: resp_headers,
            body: Vec::new(),
        };
        if method == "HEAD" {
            return Ok(resp);
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(std::io::Error::other)?;
            resp.body.resize(len, 0);
            self.stream.read_exact(&mut resp.body).await?;
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        }
        Ok(resp)
    }
}

/// One request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    Conn::connect(addr)
        .await?
        .request(method, target, headers)
        .await
}

/// The body of a GET of `url` by `curl`, which must succeed (2xx).
pub fn curl(url: &str) -> String {
    let ran = super::ran::Ran::of(std::process::Command::new("curl").args([
        "-sSf",
        "--max-time",
        "20",
        url,
    ]));
    assert!(ran.success(), "GET {url}: {}", ran.both());
    ran.stdout
}

/// The status `curl` gets for a GET of `url`.
pub fn curl_status(url: &str) -> u16 {
    let ran = super::ran::Ran::of(std::process::Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "20",
        "-w",
        "%{http_code}",
        url,
    ]));
    ran.stdout.trim().parse().unwrap_or(0)
}
