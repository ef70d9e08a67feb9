//! Shared harness of the cache tests: Nix settings for child processes, test derivations,
//! a fleet state directory with signed releases, an in-process server on 127.0.0.1:0, a
//! raw HTTP/1.1 client (so tests control every byte of the request line), and `nix copy`
//! into a separate chroot store as the judge.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bento::cache::{self, Cache, CacheConfig};
use bento::nix::cmd::{CmdError, Command, Output};
use bento::nix::keys::SecretKey;
use bento::release::Release;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)] // each test binary uses some of them
pub use support::nonce;

#[path = "../support/mod.rs"]
mod support;

/// A Nix program with the test settings; narinfo answers are never cached, so each test
/// sees what the server says now.
pub fn nix_command(program: &str) -> Command {
    Command::new(program).env("NIX_CONFIG", support::NIX_CONFIG_NO_NARINFO_CACHE)
}

/// The `mk` helper of TESTING.md, to prefix a Nix expression with.
pub const MK: &str = r#"let mk = name: script: derivation {
      inherit name; system = builtins.currentSystem;
      builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ];
    }; in "#;

/// Builds `expr` (which may use `mk`) and returns its output path.
pub async fn build(expr: &str) -> String {
    let out = nix_command("nix-build")
        .args(["--no-out-link", "-E", &format!("{MK}{expr}")])
        .run_async()
        .await
        .unwrap_or_else(|e| panic!("nix-build failed: {e}"));
    out.stdout_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// A closure with the NAR cases that break naive encoders: non-UTF-8 file names, a
/// 3000-byte symlink target, a directory of 10,001 entries, and a reference.
pub async fn build_tricky(salt: &str) -> String {
    build(&format!(
        r#"let dep = mk "bento-dep-{salt}" "echo dep-{salt} > $out"; in
        mk "bento-tricky-{salt}" ''
          mkdir -p $out/many
          cd $out
          touch "$(printf 'caf\351')" "$(printf '\377\376')"
          ln -s "$(head -c 3000 /dev/zero | tr '\000' a)" long-link
          (cd many && seq 1 10001 | xargs touch)
          echo ${{dep}} > ref
        ''"#
    ))
    .await
}

/// A small closure of `n` leaves under one top, with `payload` bytes of random data each.
pub async fn build_fan(salt: &str, n: usize, payload: usize) -> String {
    build(&format!(
        r#"let leaf = i: mk "bento-leaf-{salt}-${{toString i}}" "head -c {payload} /dev/urandom > $out";
               leaves = builtins.genList leaf {n}; in
           mk "bento-fan-{salt}" "mkdir $out; echo ${{toString leaves}} > $out/refs""#
    ))
    .await
}

/// Every path in the closure of `path`.
pub async fn closure(path: &str) -> Vec<String> {
    let out = nix_command("nix-store")
        .args(["-qR", path])
        .run_async()
        .await
        .unwrap();
    out.stdout_text().lines().map(str::to_owned).collect()
}

pub fn hash_part(path: &str) -> String {
    path.trim_start_matches("/nix/store/")[..32].to_owned()
}

/// A server state directory with a fleet key.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
}

impl Fleet {
    pub fn new() -> Self {
        Fleet {
            dir: tempfile::tempdir().unwrap(),
            key: SecretKey::generate("bento-test-fleet-1").unwrap(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Signs and writes `publish/<host>/release` (atomically, as deploy does).
    pub fn publish(&self, host: &str, generation: u64, path: &str) {
        self.publish_signed(host, generation, path, &self.key);
    }

    pub fn publish_signed(&self, host: &str, generation: u64, path: &str, key: &SecretKey) {
        let r = Release::sign(host, generation, path, 1_790_000_000 + generation, key).unwrap();
        let dir = self.dir.path().join("publish").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        bento::durable::write_atomic(&dir.join("release"), &r.to_bytes(), 0o644).unwrap();
    }

    pub fn config(&self) -> CacheConfig {
        let mut c = CacheConfig::new(self.dir.path(), self.key.clone());
        c.poll_interval = Duration::from_millis(200);
        c
    }
}

/// A cache served in-process on 127.0.0.1:0 until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<Cache>,
    shutdown: CancellationToken,
}

impl Server {
    /// Loads the publish tree (waiting for compression), then serves.
    pub async fn start(config: CacheConfig) -> Self {
        let state = Cache::new(config).unwrap();
        state.refresh().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(cache::serve(listener, state.clone(), shutdown.clone()));
        Server {
            addr,
            state,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[]).await.unwrap()
    }

    /// Waits until `check` passes on GET `path`, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        check: impl Fn(&Resp) -> bool,
    ) -> Resp {
        let start = Instant::now();
        loop {
            let r = self.get(path).await;
            if check(&r) {
                return r;
            }
            assert!(
                start.elapsed() < timeout,
                "GET {path} still answers {} after {timeout:?}: {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

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

/// A chroot store to copy into, with its own Nix cache directory.
pub struct Client {
    pub dir: tempfile::TempDir,
}

impl Client {
    pub fn new() -> Self {
        Client {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn store(&self) -> String {
        format!("local?root={}", self.dir.path().join("root").display())
    }

    fn cmd(&self, program: &str) -> Command {
        nix_command(program).env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
    }

    /// `nix copy --from URL` with only `trusted_key` trusted and signatures required.
    pub async fn copy(
        &self,
        url: &str,
        trusted_key: &str,
        path: &str,
        extra: &[&str],
    ) -> Result<Output, CmdError> {
        self.cmd("nix")
            .args(["copy", "--from", url, "--to", &self.store()])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "trusted-public-keys", trusted_key])
            .args(["--option", "substituters", ""])
            .args(extra)
            .arg(path)
            .timeout(Duration::from_secs(300))
            .run_async()
            .await
    }

    /// [`Client::copy`] then [`Client::verify`], both of which must succeed.
    pub async fn copy_and_verify(&self, url: &str, trusted_key: &str, path: &str, extra: &[&str]) {
        let copied = self.copy(url, trusted_key, path, extra).await;
        assert!(copied.is_ok(), "{}", copied.err().unwrap());
        assert!(self.verify(trusted_key, path).await.is_ok());
    }

    /// `nix store verify -r` on the copy, trusting only `trusted_key`.
    pub async fn verify(&self, trusted_key: &str, path: &str) -> Result<Output, CmdError> {
        self.cmd("nix")
            .args(["store", "verify", "--store", &self.store(), "-r"])
            .args(["--option", "trusted-public-keys", trusted_key])
            .arg(path)
            .run_async()
            .await
    }

    pub fn has(&self, path: &str) -> bool {
        self.dir
            .path()
            .join("root")
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

pub fn path_of(p: &Path) -> PathBuf {
    p.to_owned()
}
