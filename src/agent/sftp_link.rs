//! The agent's [`Link`] over the SFTP client: one session kept for polls and
//! waits (reopened when it drops), and a fresh session for every confirmation probe, so a
//! probe proves that a new connection (network, server, this host's key) works now.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Mutex;

use super::config::Agent;
use super::link::{Link, LinkError};
use crate::sftp::client::{self, ClientError, Session};

/// How long a confirmation probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SftpLink {
    server: String,
    host: String,
    key: PathBuf,
    pinned: String,
    session: Mutex<Option<Session>>,
}

fn link_err(e: ClientError) -> LinkError {
    LinkError(e.to_string())
}

impl SftpLink {
    pub fn new(agent: &Agent) -> Self {
        SftpLink {
            server: agent.server.clone(),
            host: agent.host.clone(),
            key: agent.ssh_key.clone(),
            pinned: agent.server_host_key.clone(),
            session: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<Session, LinkError> {
        client::connect(self.server.as_str(), &self.host, &self.key, &self.pinned)
            .await
            .map_err(link_err)
    }

    /// Runs `op` on the kept session, opening one if there is none or it has closed; a
    /// failed operation drops the session so the next call starts afresh.
    async fn with_session<T>(
        &self,
        op: impl AsyncFnOnce(&Session) -> Result<T, ClientError>,
    ) -> Result<T, LinkError> {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_none_or(Session::is_closed) {
            *guard = Some(self.connect().await?);
        }
        let Some(session) = guard.as_ref() else {
            return Err(LinkError("no session".into()));
        };
        match op(session).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if let Some(s) = guard.take() {
                    s.close().await;
                }
                Err(link_err(e))
            }
        }
    }
}

impl Link for SftpLink {
    async fn fetch_release(&self) -> Result<Vec<u8>, LinkError> {
        let release = self.with_session(async |s| s.read_release().await).await?;
        release.ok_or_else(|| {
            LinkError(format!(
                "the server has no release for {} yet (run `bento deploy` on the server)",
                self.host
            ))
        })
    }

    async fn probe_fresh(&self) -> Result<(), LinkError> {
        let probe = async {
            let session = self.connect().await?;
            let read = session.read_release().await.map_err(link_err);
            session.close().await;
            read.map(|_| ())
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .map_err(|_| {
                LinkError(format!(
                    "no answer from {} within {PROBE_TIMEOUT:?}",
                    self.server
                ))
            })?
    }

    async fn fetch_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, LinkError> {
        self.with_session(async |s| s.read_optional_file(path, max).await)
            .await
    }

    async fn upload_report(&self, name: &str, bytes: &[u8]) -> Result<(), LinkError> {
        self.with_session(async |s| s.upload_report(name, bytes).await)
            .await
    }

    async fn wait_for_change(
        &self,
        known: Option<u64>,
        timeout: Duration,
    ) -> Result<bool, LinkError> {
        let known = known.unwrap_or(0);
        let changed = self
            .with_session(async |s| s.wait_release_change(known, timeout).await)
            .await?;
        Ok(changed.is_some())
    }
}
