//! The optional local web page of the original Bento's habit ("open http://localhost:51337
//! to update"): a button that asks the running agent to check now, and the attempt's
//! progress as it happens. Off by default; it only ever listens on a loopback address, and
//! uses the same requests as the unix-socket trigger.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::trigger::Request;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>bento agent</title>
<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}</style>
</head><body>
<h1>bento agent</h1>
<p>This machine gets its configuration from its Bento server. Check for a new one now:</p>
<button id="check">Check for updates</button>
<pre id="log"></pre>
<script>
document.getElementById('check').onclick = async () => {
  const log = document.getElementById('log');
  log.textContent = '';
  const r = await fetch('/check', {method: 'POST'});
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  for (;;) { const {value, done} = await reader.read(); if (done) break; log.textContent += dec.decode(value); }
};
</script>
</body></html>
"#;

#[derive(Clone)]
struct Shared {
    requests: mpsc::Sender<Request>,
    progress: broadcast::Sender<String>,
}

/// The page's router.
pub fn router(requests: mpsc::Sender<Request>, progress: broadcast::Sender<String>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/check", post(check))
        .with_state(Shared { requests, progress })
}

async fn check(State(s): State<Shared>) -> Response {
    let mut lines = s.progress.subscribe();
    let (tx, mut rx) = oneshot::channel();
    if s.requests.send(tx).await.is_err() {
        return "done: the agent is shutting down\n".into_response();
    }
    let (out, body) = mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                result = &mut rx => {
                    while let Ok(l) = lines.try_recv() {
                        let _ = out.send(Ok(format!("{l}\n"))).await;
                    }
                    let result = result.unwrap_or_else(|_| "the attempt was abandoned".into());
                    let _ = out.send(Ok(format!("done: {result}\n"))).await;
                    return;
                }
                line = lines.recv() => match line {
                    Ok(l) => { let _ = out.send(Ok(format!("{l}\n"))).await; }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let stream = tokio_stream_from(body);
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves the page on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Whether an address is one the page may listen on: loopback only, never the network.
pub fn is_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn http(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_page_triggers_a_check_and_streams_it() {
        let (req_tx, mut req_rx) = mpsc::channel::<Request>(1);
        let (prog, _) = broadcast::channel(16);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router(req_tx, prog.clone()), stop.clone()));
        tokio::spawn(async move {
            while let Some(answer) = req_rx.recv().await {
                let _ = prog.send("copying".into());
                let _ = answer.send("applied".into());
            }
        });
        let page = http(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(page.contains("Check for updates"), "{page}");
        let run = http(
            addr,
            "POST /check HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(run.contains("copying"), "{run}");
        assert!(run.contains("done: applied"), "{run}");
        stop.cancel();
    }

    #[test]
    fn only_loopback_addresses_are_allowed() {
        let ok: SocketAddr = "127.0.0.1:51337".parse().unwrap();
        let ok6: SocketAddr = "[::1]:51337".parse().unwrap();
        let bad: SocketAddr = "0.0.0.0:51337".parse().unwrap();
        let lan: SocketAddr = "10.0.0.5:51337".parse().unwrap();
        assert!(is_allowed(&ok) && is_allowed(&ok6));
        assert!(!is_allowed(&bad) && !is_allowed(&lan));
    }
}
