//! The SFTP request loop of one session: reads request packets from the channel, charges each
//! to the session's rate bucket, re-checks that the host and key are still authorized, and
//! hands the request to [`Ops`]; answers go through a writer task (see `reply`) so that watch
//! reads, which are answered later by their own task, never block other requests.
//!
//! Framing is done here (4-byte length, at most [`MAX_PACKET`]), decoding and encoding by
//! `russh_sftp::protocol::Packet`. russh-sftp's own server loop is not used because it
//! cannot refuse a flooding client, re-check access per request, or answer out of order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelStream;
use russh::server::Msg;
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::control::{Identity, KillReason, SessionCtl};
use super::ops::Ops;
use super::reply::send;
use super::sessions::Sessions;

/// Largest request accepted (a 256 KiB write plus its header).
pub(crate) const MAX_PACKET: u32 = 256 * 1024 + 1024;

/// How long answers already queued may take to be written when a session ends.
const FLUSH_TIME: Duration = Duration::from_secs(5);

/// Answers queued for the writer before the loop waits.
const OUT_QUEUE: usize = 64;

pub(crate) fn spawn(
    stream: ChannelStream<Msg>,
    sessions: Arc<Sessions>,
    ctl: Arc<SessionCtl>,
    identity: Identity,
) {
    tokio::spawn(run(stream, sessions, ctl, identity));
}

#[tracing::instrument(skip_all, fields(host = %identity.host))]
async fn run(
    stream: ChannelStream<Msg>,
    sessions: Arc<Sessions>,
    ctl: Arc<SessionCtl>,
    identity: Identity,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    let mut writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut ops = Ops::new(sessions.clone(), identity.host.clone(), tx.clone());
    loop {
        let read = tokio::select! {
            r = read_packet(&mut rd) => r,
            () = ctl.killed() => break,
        };
        let mut bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(error = %e, "ending SFTP session");
                break;
            }
        };
        sessions.metrics().sftp_requests.inc();
        if !ctl.charge(sessions.metrics()) {
            break;
        }
        if !sessions.is_authorized(&identity.host, &identity.key) {
            ctl.kill(KillReason::Revoked);
            break;
        }
        // Every request is contact: agents with instant updates keep one session for days.
        sessions.saw(&identity.host);
        let answer = match Packet::try_from(&mut bytes) {
            Ok(request) => ops.handle(request).await,
            Err(_) => Some(Packet::error(0, StatusCode::BadMessage)),
        };
        if let Some(packet) = answer
            && !send(&tx, packet).await
        {
            break;
        }
    }
    ops.shutdown();
    drop(ops);
    drop(tx);
    // A session being cut off gets no more answers. Otherwise the answers already queued are
    // written, for a while. Either way the channel is then dropped, which matters: russh
    // blocks the whole connection while a channel it feeds is full and not read.
    if ctl.is_killed() {
        writer.abort();
    }
    if tokio::time::timeout(FLUSH_TIME, &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
}

/// One request's bytes (type byte onwards), `None` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<Bytes>> {
    let len = match rd.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 || len > MAX_PACKET {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("SFTP packet of {len} bytes (limit {MAX_PACKET})"),
        ));
    }
    let mut buf = vec![0; len as usize];
    rd.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn framing_refuses_oversized_and_empty_packets() {
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 8];
        assert_eq!(
            read_packet(&mut ok).await.unwrap().as_deref(),
            Some(&[7u8, 8][..])
        );
        assert!(read_packet(&mut ok).await.unwrap().is_none());
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_packet(&mut huge).await.is_err());
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(read_packet(&mut empty).await.is_err());
    }
}
