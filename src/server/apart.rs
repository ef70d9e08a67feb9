//! The SFTP server on a runtime and threads of its own, at a lower CPU priority than the
//! cache.
//!
//! A deploy waits on hosts' downloads (narinfos, NARs); reports, release polls and SSH
//! handshakes can wait. On one runtime, a burst of report uploads (SSH decryption, SFTP
//! requests) queues in front of the cache's requests on the same worker threads. On threads
//! of its own, niced by [`NICE`], the kernel's scheduler hands the CPU to the cache first
//! and to the SFTP server what is left (`scripts/bench-reports.sh` measures it). Failing to
//! lower the priority (a seccomp filter, a container's policy) only loses that head start.
//!
//! May import: `sftp::server`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::sftp::server::{self as sftp, Sessions};

/// Nice value added to every thread of the SFTP server's runtime.
const NICE: i32 = 10;
/// How long blocking work left at a stop (a report being written) may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Serves SFTP on `listener` until `stop`, on its own runtime; returns when it has stopped.
pub(super) async fn serve(
    listener: TcpListener,
    sessions: Arc<Sessions>,
    stop: CancellationToken,
) -> io::Result<()> {
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bento-sftp".into())
        .spawn(move || {
            let _ = done.send(run(listener, sessions, stop));
        })?;
    finished
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the SFTP server's thread ended early")))
}

fn run(
    listener: std::net::TcpListener,
    sessions: Arc<Sessions>,
    stop: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bento-sftp")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()?;
    lower_priority();
    let served = runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        sftp::serve(listener, sessions, stop).await;
        Ok(())
    });
    runtime.shutdown_timeout(STOP_GRACE);
    served
}

/// Lowers the calling thread's priority by [`NICE`] (on Linux, nice is per thread).
fn lower_priority() {
    let me = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(me)
        .and_then(|now| rustix::process::setpriority_process(me, now + NICE));
    if let Err(e) = lowered {
        tracing::debug!(error = %e, "cannot lower the SFTP server's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let mine = rustix::process::getpriority_process(None).unwrap();
        let theirs = std::thread::spawn(|| {
            lower_priority();
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (mine + NICE).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), mine);
    }
}
