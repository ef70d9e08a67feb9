//! The cache's connections: accepted within the caps on connections in total and per
//! source address, each served by hyper's HTTP/1 server with its header read timeout (which
//! also closes idle keep-alive connections) and a send deadline, and cut at shutdown.
//!
//! The send deadline is [`SendDeadline`], a wrapper of the socket: a write that can make no
//! progress for `send_timeout` fails, hyper ends the connection, the body is dropped and its
//! NAR stream places are given back. Hyper has no such timeout (its body timeouts only run
//! while hyper polls the body, which it stops doing while the socket is full), and the
//! kernel's `TCP_USER_TIMEOUT` counts a client that acknowledges with a zero window as alive.
//!
//! Requests carry their source address as `axum::extract::ConnectInfo`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use super::limits::{Limits, Refusal};
use super::metrics::Metrics;
use crate::slots::PerKey;

/// Largest request head read (hyper's buffer): requests of the cache are one short line
/// and a few headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Accepts connections on `listener` and serves `app` on each until `shutdown`, which
/// cuts every connection still open (in-flight bodies included).
pub(super) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerKey::new(limits.max_connections_per_address);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let send_timeout = limits.send_timeout;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept: the
                // listener itself is fine; pause briefly so that an exhausted process does
                // not spin.
                tracing::warn!(error = %e, "cannot accept a cache connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(connection) = total.clone().try_acquire_owned() else {
            metrics.refused(Refusal::MaxConnections);
            continue;
        };
        let Some(address) = per_address.try_acquire(peer.ip()) else {
            metrics.refused(Refusal::MaxConnectionsPerAddress);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(SendDeadline::new(tcp, send_timeout, metrics.clone()));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(req.map(axum::body::Body::new)).await }
        });
        let conn = http.serve_connection(io, service);
        let (stop, metrics) = (shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            let _held = (connection, address);
            let _open = metrics.connection_opened();
            tokio::select! {
                served = conn => if let Err(e) = served {
                    tracing::debug!(peer = %peer, error = %e, "cache connection ended");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

/// A socket whose writes fail after `timeout` without progress.
pub(super) struct SendDeadline<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Metrics,
}

impl<T> SendDeadline<T> {
    pub(super) fn new(inner: T, timeout: Duration, metrics: Metrics) -> Self {
        SendDeadline {
            inner,
            timeout,
            stalled: None,
            metrics,
        }
    }

    /// After a write that could not proceed: pending until the deadline, then the error.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.metrics.send_timed_out();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took nothing for {} s", timeout.as_secs()),
                )))
            }
        }
    }

    fn progressed<R>(
        &mut self,
        done: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match done {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(done, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(done, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The source address a request came from, when it came through [`serve`].
pub(super) fn peer_of(req: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
    req.extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_write_without_progress_fails_after_the_timeout_and_progress_resets_it() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ours = SendDeadline::new(ours, Duration::from_millis(200), Metrics::default());
        // Progress: the other side reads slowly but steadily, each wait shorter than the
        // timeout.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let mut total = 0;
            while total < 8 * 1024 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            theirs
        });
        ours.write_all(&[1u8; 8 * 1024]).await.unwrap();
        let theirs = reader.await.unwrap();
        // No progress: nobody reads any more.
        let err = ours.write_all(&[2u8; 8 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(theirs);
    }
}
