//! The answers of one SFTP session on their way out: each is encoded and queued for the
//! session's writer task. The request loop (`requests`) answers most requests at once; `ops`
//! answers watch reads later, from their own tasks; both queue here, so neither waits on the
//! other.

use bytes::Bytes;
use russh_sftp::protocol::Packet;
use tokio::sync::mpsc;

/// Queues an answer for the writer; false once the writer is gone.
pub(crate) async fn send(tx: &mpsc::Sender<Bytes>, packet: Packet) -> bool {
    match Bytes::try_from(packet) {
        Ok(bytes) => tx.send(bytes).await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode an SFTP answer");
            true
        }
    }
}
