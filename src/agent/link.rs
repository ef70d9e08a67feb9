//! What the agent needs from the server, as a seam between the cycle and the SFTP client:
//! read this host's release, prove the server is reachable with a fresh session, upload a
//! report. The implementation is `sftp::client`, in `sftp_link`.

use std::future::Future;
use std::time::Duration;

/// A failure to talk to the server, with the client's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

pub trait Link {
    /// Reads `/release` (an existing session may be reused).
    fn fetch_release(&self) -> impl Future<Output = Result<Vec<u8>, LinkError>> + Send;
    /// Opens a fresh session, authenticates and reads `/release`: after an activation this
    /// proves the network, the server and this host's key all still work.
    fn probe_fresh(&self) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Reads a file of this host's tree (`/files/...`) of at most `max` bytes; `None` when
    /// it does not exist.
    fn fetch_file(
        &self,
        path: &str,
        max: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, LinkError>> + Send;
    /// Uploads a report as a new file under `/reports/`.
    fn upload_report(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Waits, on one long-lived session, until the server's release for this host has a
    /// generation other than `known`, or `timeout` passes. `Ok(true)` when it changed.
    /// An error means instant updates are unavailable now; the caller falls back to polling.
    fn wait_for_change(
        &self,
        known: Option<u64>,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, LinkError>> + Send;
}
