//! The agent's side of SFTP: connect with the host's own key to a server whose host key is
//! pinned (never trust on first use), read `/release` and `/files/...`, upload a report, and
//! wait for the release to change (see the watch protocol in the module header of `sftp`).
//!
//! May import: `report` (report names), `openssh` (keys). Never `sftp::server`: the agent
//! links this alone.
//!
//! Built on the russh client and russh-sftp's raw session, so that every request's outcome
//! (including the close that puts a report in place) is seen and reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Disconnect, client::Config};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use thiserror::Error;
use tokio::net::ToSocketAddrs;

use crate::openssh::{SshKeyError, SshPublicKey, parse_private_key};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a whole connection attempt (TCP, handshake, authentication, SFTP start) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one watch request asks the server to wait; longer waits are several requests.
const WAIT_CHUNK_SECS: u64 = 30;
/// Per-request timeout of the SFTP session; longer than any watch request.
const REQUEST_TIMEOUT_SECS: u64 = WAIT_CHUNK_SECS + 30;
/// How often a pending request checks whether the SSH session has ended.
const CLOSED_POLL: Duration = Duration::from_millis(200);
/// Bytes per read or write request.
const CHUNK: u32 = 32 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot read SSH key {path}: {source}")]
    KeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH key {path} {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: SshKeyError,
    },
    #[error("pinned server key {given:?}: {source}")]
    PinnedKey {
        given: String,
        #[source]
        source: SshKeyError,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "server {addr} presented host key {presented}, not the pinned one; refusing to talk to it"
    )]
    HostKeyMismatch { addr: String, presented: String },
    #[error("server {addr} refused the key of host {host}")]
    AuthRefused { addr: String, host: String },
    #[error("{op} {path} on {addr} failed: {source}")]
    Sftp {
        op: &'static str,
        path: String,
        addr: String,
        #[source]
        source: SftpError,
    },
    #[error("report name {0:?} is not valid (1-128 of A-Z a-z 0-9 . _ -, not starting with a dot)")]
    ReportName(String),
    #[error("server {addr} answered a watch with {answer:?}, not a generation")]
    BadWatchAnswer { addr: String, answer: String },
    #[error("server {addr} ended the session: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("{path} on {addr} is larger than the {max} bytes expected")]
    TooLarge {
        path: String,
        addr: String,
        max: u64,
    },
}

/// An open SFTP session of one host.
pub struct Session {
    ssh: Handle<Pinned>,
    sftp: RawSftpSession,
    addr: String,
    host: String,
    closed: Closed,
}

/// Set when the SSH session ends, with the server's reason if it gave one; every request
/// races it, so a dropped session fails requests at once instead of at their timeout.
#[derive(Clone, Default)]
struct Closed {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Closed {
    fn close(&self, reason: String) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.token.cancel();
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Parses a pinned server key: `ssh-ed25519 AAAA... [comment]`, or a known_hosts line
/// (`[host]:port ssh-ed25519 AAAA...`) as the server prints it.
pub fn parse_pinned_key(text: &str) -> Result<PublicKey, SshKeyError> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    // A known_hosts line starts with the host patterns; the key starts at its type.
    let start = tokens
        .iter()
        .position(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
        .unwrap_or(0);
    SshPublicKey::parse(&tokens[start..].join(" ")).map(|k| k.key().clone())
}

/// Connects to `addr` as `host` with the private key at `key_path` (OpenSSH format, as
/// `ssh-keygen` writes it, unencrypted), accepting only a server presenting `pinned_host_key`.
pub async fn connect<A>(
    addr: A,
    host: &str,
    key_path: &Path,
    pinned_host_key: &str,
) -> Result<Session, ClientError>
where
    A: ToSocketAddrs + std::fmt::Display,
{
    let pinned = parse_pinned_key(pinned_host_key).map_err(|source| ClientError::PinnedKey {
        given: pinned_host_key.to_owned(),
        source,
    })?;
    let text = std::fs::read(key_path).map_err(|source| ClientError::KeyRead {
        path: key_path.to_owned(),
        source,
    })?;
    let key = parse_private_key(&text).map_err(|source| ClientError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    let addr_text = addr.to_string();
    let work = connect_inner(addr, &addr_text, host, key, pinned);
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect {
            addr: addr_text,
            reason: format!("no session within {}s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

async fn connect_inner<A: ToSocketAddrs>(
    addr: A,
    addr_text: &str,
    host: &str,
    key: russh::keys::PrivateKey,
    pinned: PublicKey,
) -> Result<Session, ClientError> {
    let presented = Arc::new(Mutex::new(None));
    let closed = Closed::default();
    let handler = Pinned {
        pinned,
        presented: presented.clone(),
        closed: closed.clone(),
    };
    let config = Arc::new(Config {
        nodelay: true,
        ..Config::default()
    });
    let connect_err = |e: russh::Error| {
        let seen = presented.lock().unwrap_or_else(|p| p.into_inner()).take();
        match seen {
            Some(presented) => ClientError::HostKeyMismatch {
                addr: addr_text.to_owned(),
                presented,
            },
            None => ClientError::Connect {
                addr: addr_text.to_owned(),
                reason: e.to_string(),
            },
        }
    };
    let mut ssh = client::connect(config, addr, handler)
        .await
        .map_err(connect_err)?;
    let auth = ssh
        .authenticate_publickey(host, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .map_err(connect_err)?;
    if !auth.success() {
        let _ = ssh.disconnect(Disconnect::ByApplication, "", "en").await;
        return Err(ClientError::AuthRefused {
            addr: addr_text.to_owned(),
            host: host.to_owned(),
        });
    }
    let channel = ssh.channel_open_session().await.map_err(connect_err)?;
    // No reply asked: SFTP's own start (below) follows at once and fails if the server
    // refused the subsystem, one round trip sooner.
    channel
        .request_subsystem(false, "sftp")
        .await
        .map_err(connect_err)?;
    let sftp = RawSftpSession::new_with_config(
        channel.into_stream(),
        russh_sftp::client::Config {
            request_timeout_secs: REQUEST_TIMEOUT_SECS,
            ..russh_sftp::client::Config::default()
        },
    );
    let session = Session {
        ssh,
        sftp,
        addr: addr_text.to_owned(),
        host: host.to_owned(),
        closed,
    };
    session
        .guard("start SFTP on", "/", session.sftp.init())
        .await?;
    Ok(session)
}

impl Session {
    fn err(&self, op: &'static str, path: &str, source: SftpError) -> ClientError {
        ClientError::Sftp {
            op,
            path: path.to_owned(),
            addr: self.addr.clone(),
            source,
        }
    }

    /// Runs one SFTP request, failing at once if the SSH session ends meanwhile.
    async fn guard<T>(
        &self,
        op: &'static str,
        path: &str,
        request: impl std::future::Future<Output = Result<T, SftpError>>,
    ) -> Result<T, ClientError> {
        // russh does not always call `disconnected` (it skips it when shutting down the
        // socket fails), so the handle's state is polled as well.
        let ended = async {
            let mut tick = tokio::time::interval(CLOSED_POLL);
            loop {
                tokio::select! {
                    () = self.closed.token.cancelled() => return,
                    _ = tick.tick() => if self.ssh.is_closed() { return },
                }
            }
        };
        let disconnected = || ClientError::Disconnected {
            addr: self.addr.clone(),
            reason: self.closed.reason(),
        };
        tokio::select! {
            r = request => r.map_err(|e| {
                if self.is_closed() {
                    disconnected()
                } else {
                    self.err(op, path, e)
                }
            }),
            () = ended => Err(disconnected()),
        }
    }

    /// True once the server or the network ended the session.
    pub fn is_closed(&self) -> bool {
        self.closed.token.is_cancelled() || self.ssh.is_closed()
    }

    /// The host this session logged in as.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The raw SFTP session, for requests this API does not wrap.
    pub fn sftp(&self) -> &RawSftpSession {
        &self.sftp
    }

    /// The release bytes, `None` when the server has no release for this host yet.
    pub async fn read_release(&self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.read_file("/release").await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ClientError::Sftp {
                source: SftpError::Status(s),
                ..
            }) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A whole file of the host's tree (`/release`, `/files/...`).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.read_file_at_most(path, u64::MAX).await
    }

    /// A whole file of at most `max` bytes, or `None` when it does not exist; reading stops
    /// as soon as more arrives.
    pub async fn read_optional_file(
        &self,
        path: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        match self.read_file_at_most(path, max).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ClientError::Sftp {
                source: SftpError::Status(s),
                ..
            }) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_file_at_most(&self, path: &str, max: u64) -> Result<Vec<u8>, ClientError> {
        let open = self
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::empty());
        let handle = self.guard("open", path, open).await?.handle;
        // Most files read here (a release, a manifest, a small blob) fit in one read: that
        // read, the size of the open file and the close leave together (a server answers
        // the requests on one handle in the order sent): one round trip instead of three.
        let h = handle.as_str();
        let (read, attrs, closed) = futures::future::join3(
            self.guard("read", path, self.sftp.read(h, 0, CHUNK)),
            self.guard("stat", path, self.sftp.fstat(h)),
            self.guard("close", path, self.sftp.close(h)),
        )
        .await;
        let data = match read {
            Ok(d) => d.data,
            Err(ClientError::Sftp {
                source: SftpError::Status(s),
                ..
            }) if s.status_code == StatusCode::Eof => Vec::new(),
            Err(e) => return Err(e),
        };
        closed?;
        if attrs?.attrs.size == Some(data.len() as u64) {
            return self.at_most(data, path, max);
        }
        // Longer than one read (or read short): read again, one request at a time.
        self.read_whole(path, max).await
    }

    fn at_most(&self, out: Vec<u8>, path: &str, max: u64) -> Result<Vec<u8>, ClientError> {
        if out.len() as u64 > max {
            return Err(ClientError::TooLarge {
                path: path.to_owned(),
                addr: self.addr.clone(),
                max,
            });
        }
        Ok(out)
    }

    /// Reads `path` one request at a time until its end.
    async fn read_whole(&self, path: &str, max: u64) -> Result<Vec<u8>, ClientError> {
        let open = self
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::empty());
        let handle = self.guard("open", path, open).await?.handle;
        let mut out = Vec::new();
        let result = loop {
            let read = self.sftp.read(handle.as_str(), out.len() as u64, CHUNK);
            match self.guard("read", path, read).await {
                Ok(data) if data.data.is_empty() => break Ok(()),
                Ok(data) => {
                    out.extend_from_slice(&data.data);
                    if out.len() as u64 > max {
                        break Err(ClientError::TooLarge {
                            path: path.to_owned(),
                            addr: self.addr.clone(),
                            max,
                        });
                    }
                }
                Err(ClientError::Sftp {
                    source: SftpError::Status(s),
                    ..
                }) if s.status_code == StatusCode::Eof => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let closed = self.guard("close", path, self.sftp.close(handle)).await;
        result?;
        closed?;
        Ok(out)
    }

    /// Uploads a new report `/reports/<name>`; fails if a report of that name exists or
    /// `bytes` is over the server's per-file cap.
    pub async fn upload_report(&self, name: &str, bytes: &[u8]) -> Result<(), ClientError> {
        if crate::report::check_report_name(name).is_err() {
            return Err(ClientError::ReportName(name.to_owned()));
        }
        let path = format!("/reports/{name}");
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
        let open = self
            .sftp
            .open(path.as_str(), flags, FileAttributes::empty());
        let handle = self.guard("create", &path, open).await?.handle;
        // Every write, then the close, leave at once (each request is sent when its future
        // is first polled; a server answers the requests on one handle in order): one round
        // trip after the open, whatever the report's size.
        let h = handle.as_str();
        let mut writes: Vec<_> = bytes
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, chunk)| {
                let offset = i as u64 * u64::from(CHUNK);
                let write = self.sftp.write(h, offset, chunk.to_vec());
                Box::pin(futures::future::maybe_done(
                    self.guard("write", &path, write),
                ))
            })
            .collect();
        for w in &mut writes {
            let _ = futures::poll!(w.as_mut());
        }
        let written = async {
            let mut result = Ok(());
            for w in &mut writes {
                w.as_mut().await;
                if let Some(Err(e)) = w.as_mut().take_output()
                    && result.is_ok()
                {
                    result = Err(e);
                }
            }
            result
        };
        // Closing puts the report in place; its answer says whether that worked.
        let (written, closed) =
            futures::future::join(written, self.guard("store", &path, self.sftp.close(h))).await;
        written?;
        closed?;
        Ok(())
    }

    /// Waits until the server's release generation for this host differs from
    /// `current_generation` and returns the new one, or returns `None` once `timeout` has
    /// passed (rounded up to whole seconds) without a change.
    pub async fn wait_release_change(
        &self,
        current_generation: u64,
        timeout: Duration,
    ) -> Result<Option<u64>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let secs = (left.as_secs_f64().ceil() as u64).min(WAIT_CHUNK_SECS);
            let generation = self.watch_once(current_generation, secs).await?;
            if generation != current_generation {
                return Ok(Some(generation));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// One watch request: the generation after waiting at most `secs` for a change.
    async fn watch_once(&self, known: u64, secs: u64) -> Result<u64, ClientError> {
        let path = format!("/watch/{known}/{secs}");
        let open = self
            .sftp
            .open(path.as_str(), OpenFlags::READ, FileAttributes::empty());
        let handle = self.guard("open", &path, open).await?.handle;
        let read = self
            .guard("wait on", &path, self.sftp.read(handle.as_str(), 0, 64))
            .await;
        let _ = self.guard("close", &path, self.sftp.close(handle)).await;
        let data = read?.data;
        let answer = String::from_utf8_lossy(&data).trim().to_owned();
        answer.parse().map_err(|_| ClientError::BadWatchAnswer {
            addr: self.addr.clone(),
            answer,
        })
    }

    /// Ends the session politely.
    pub async fn close(self) {
        let _ = self.sftp.close_session();
        let _ = self
            .ssh
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// The client handler: accepts only the pinned server key and remembers any other.
struct Pinned {
    pinned: PublicKey,
    presented: Arc<Mutex<Option<String>>>,
    closed: Closed,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            *self.presented.lock().unwrap_or_else(|p| p.into_inner()) =
                Some("a certificate".to_owned());
            return Ok(false);
        };
        if key.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(key.fingerprint(HashAlg::Sha256).to_string());
        Ok(false)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                self.closed.close(info.message);
                Ok(())
            }
            client::DisconnectReason::Error(e) => {
                self.closed.close(e.to_string());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_key_accepts_key_and_known_hosts_forms() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLRv7c/XLDHLq2O0hmUOy7+vKW9kLIOYrwurXb9jCs8";
        let a = parse_pinned_key(key).unwrap();
        let b = parse_pinned_key(&format!("[127.0.0.1]:2222 {key}")).unwrap();
        let c = parse_pinned_key(&format!("{key} bento-server")).unwrap();
        assert_eq!(a.key_data(), b.key_data());
        assert_eq!(a.key_data(), c.key_data());
        assert!(parse_pinned_key("127.0.0.1 nothing").is_err());
        assert!(parse_pinned_key("ssh-ed25519 AAAA!!").is_err());
    }
}
