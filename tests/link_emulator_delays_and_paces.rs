//! The emulated wide-area link (`tests/link`, also run by `scripts/bench-wan.sh`) does what
//! it claims: the round trips it adds are the ones asked for (2 RTT for a request on a new
//! connection, 1 RTT on a kept one), the bandwidth cap holds and is shared by connections,
//! one connection is limited by its window and starts slowly, bytes arrive intact both
//! ways, half-closes and EOF pass through, and many connections run at once.
//!
//! These check the emulator's correctness with generous tolerances (delays are lower
//! bounds by construction; the upper bounds leave room for a loaded machine); they are not
//! performance assertions about Bento.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use link::{Link, Relay, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MS: Duration = Duration::from_millis(1);

/// A server on loopback running `serve` for each connection; stops when dropped.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server<F, Fut>(serve: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(s));
        }
    });
    Server { addr, task }
}

/// Echoes everything back, then closes its sending side after the client's EOF.
async fn echo(s: TcpStream) {
    let (mut r, mut w) = s.into_split();
    tokio::io::copy(&mut r, &mut w).await.unwrap();
    w.shutdown().await.unwrap();
}

/// Sends `n` bytes of [`data`] (made once, before any connection) and closes.
fn sender(n: usize) -> impl Fn(TcpStream) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let bytes = Arc::new(data(n, 7));
    move |mut s| {
        let bytes = bytes.clone();
        Box::pin(async move {
            s.write_all(&bytes).await.unwrap();
            s.shutdown().await.unwrap();
        })
    }
}

async fn relay(spec: Spec, upstream: SocketAddr) -> (Arc<Link>, Relay) {
    let link = Link::new(spec);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = link.relay(listener, upstream);
    (link, relay)
}

/// Deterministic bytes that differ by `seed` and position (xorshift).
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Downloads everything `addr` sends; returns the bytes and how long it took from connect.
async fn download(addr: SocketAddr) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    (got, start.elapsed())
}

fn assert_between(what: &str, got: Duration, low: Duration, high: Duration) {
    assert!(
        got >= low && got <= high,
        "{what}: {got:?}, expected between {low:?} and {high:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_cost_the_rtt_asked_for() {
    let echo = server(echo).await;
    for rtt_ms in [0u32, 80] {
        let rtt = rtt_ms * MS;
        let (_link, relay) = relay(Spec::new(rtt), echo.addr).await;
        let start = Instant::now();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        let first = start.elapsed();
        let mut kept = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            s.write_all(b"y").await.unwrap();
            s.read_exact(&mut b).await.unwrap();
            kept.push(t.elapsed());
        }
        kept.sort();
        let kept = kept[2];
        eprintln!(
            "rtt {rtt_ms} ms: connect + echo {first:?}, echo on the kept connection {kept:?}"
        );
        if rtt_ms == 0 {
            // The positive control: without delay asked, the relay adds next to nothing.
            assert!(first < 40 * MS && kept < 40 * MS, "{first:?} {kept:?}");
        } else {
            assert_between(
                "connect + echo",
                first,
                2 * rtt - 2 * MS,
                2 * rtt * 3 / 2 + 40 * MS,
            );
            assert_between("echo", kept, rtt - 2 * MS, rtt * 3 / 2 + 40 * MS);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_is_heard_after_two_round_trips() {
    let greeter = server(|mut s: TcpStream| async move {
        s.write_all(b"SSH-2.0-banner\r\n").await.unwrap();
        let _ = s.read(&mut [0u8; 1]).await;
    })
    .await;
    let rtt = 60 * MS;
    let (_link, relay) = relay(Spec::new(rtt), greeter.addr).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    let mut banner = [0u8; 16];
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-2.0-banner\r\n");
    assert_between(
        "banner",
        start.elapsed(),
        2 * rtt - 2 * MS,
        3 * rtt + 40 * MS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_holds_and_is_shared_by_connections() {
    // 16 Mbit/s = 2 MB/s each way; 3 MB take 1.5 s, alone or split over 3 connections.
    let (total, rate) = (3_000_000usize, 2_000_000.0);
    let expected = Duration::from_secs_f64(total as f64 / rate);
    let one = server(sender(total)).await;
    let (link, relay1) = relay(Spec::new(10 * MS).rate_mbit(16.0), one.addr).await;
    let (got, took) = download(relay1.addr()).await;
    assert_eq!(got, data(total, 7));
    eprintln!("{total} B over one connection at 16 Mbit/s: {took:?} (expected {expected:?})");
    assert_between(
        "one connection",
        took,
        expected * 95 / 100,
        expected * 3 / 2 + 300 * MS,
    );
    assert_eq!(link.totals().bytes_down, total as u64);

    let third = server(sender(total / 3)).await;
    let (_link, relay3) = relay(Spec::new(10 * MS).rate_mbit(16.0), third.addr).await;
    let start = Instant::now();
    let downloads: Vec<_> = (0..3)
        .map(|_| tokio::spawn(download(relay3.addr())))
        .collect();
    for d in downloads {
        assert_eq!(d.await.unwrap().0, data(total / 3, 7));
    }
    let took = start.elapsed();
    eprintln!("{total} B over three connections at once: {took:?}");
    assert_between(
        "three connections",
        took,
        expected * 95 / 100,
        expected * 3 / 2 + 300 * MS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_is_limited_by_its_window_not_by_its_chunks() {
    // 256 KiB window, 100 ms: at most 2.56 MB/s. 5 MiB is 20 windows: about 21 RTT with the
    // handshake. A relay that delayed each 64 KiB read in turn would need 80 one-way delays.
    let rtt = 100 * MS;
    let window = 256 * 1024;
    let total = 20 * window;
    let big = server(sender(total)).await;
    let spec = Spec::new(rtt).window(window).slow_start(false);
    let (_link, relay) = relay(spec, big.addr).await;
    let (got, took) = download(relay.addr()).await;
    assert_eq!(got.len(), total);
    eprintln!("{total} B through a {window} B window at 100 ms: {took:?}");
    assert_between("window-limited download", took, 20 * rtt, 32 * rtt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_starts_slowly_and_grows_its_window() {
    // 1 MiB at 100 ms: from 10 segments, doubling per RTT, 7 rounds (about 8 RTT with the
    // handshake); with the whole window at once, one round (2 RTT). Same window cap.
    let rtt = 100 * MS;
    let total = 1 << 20;
    let src = server(sender(total)).await;
    let (_l1, slow) = relay(Spec::new(rtt), src.addr).await;
    let (_l2, fast) = relay(Spec::new(rtt).slow_start(false), src.addr).await;
    let (got, slow_took) = download(slow.addr()).await;
    assert_eq!(got.len(), total);
    let (got, fast_took) = download(fast.addr()).await;
    assert_eq!(got.len(), total);
    eprintln!("1 MiB at 100 ms: slow start {slow_took:?}, whole window at once {fast_took:?}");
    assert_between("with slow start", slow_took, 7 * rtt, 16 * rtt);
    assert_between("without slow start", fast_took, 2 * rtt - 2 * MS, 4 * rtt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_intact_in_both_directions_at_once() {
    let echo = server(echo).await;
    let (link, relay) = relay(Spec::new(20 * MS).rate_mbit(400.0), echo.addr).await;
    let sent = data(8 << 20, 42);
    let s = TcpStream::connect(relay.addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(back == sent, "the echo differs from what was sent");
    let totals = link.totals();
    assert_eq!((totals.bytes_up, totals.bytes_down), (8 << 20, 8 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_pass_through_in_both_directions() {
    // Client → server: the server reads to EOF, then answers on the same connection.
    let summer = server(|s: TcpStream| async move {
        let (mut r, mut w) = s.into_split();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let sum: u64 = got.iter().map(|b| u64::from(*b)).sum();
        w.write_all(format!("{} {sum}", got.len()).as_bytes())
            .await
            .unwrap();
        w.shutdown().await.unwrap();
    })
    .await;
    let (_link, relay1) = relay(Spec::new(30 * MS), summer.addr).await;
    let sent = data(1 << 20, 3);
    let mut s = TcpStream::connect(relay1.addr()).await.unwrap();
    s.write_all(&sent).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let sum: u64 = sent.iter().map(|b| u64::from(*b)).sum();
    assert_eq!(answer, format!("{} {sum}", sent.len()));

    // Server → client: the server sends and closes its side, then still hears the client.
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let heard_tx = std::sync::Mutex::new(Some(heard_tx));
    let heard_tx = Arc::new(heard_tx);
    let talker = server(move |s: TcpStream| {
        let heard_tx = heard_tx.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            w.write_all(b"done talking").await.unwrap();
            w.shutdown().await.unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            let tx = heard_tx.lock().unwrap().take().unwrap();
            tx.send(got).unwrap();
        }
    })
    .await;
    let (_link, relay2) = relay(Spec::new(30 * MS), talker.addr).await;
    let mut s = TcpStream::connect(relay2.addr()).await.unwrap();
    let mut first = Vec::new();
    s.read_to_end(&mut first).await.unwrap();
    assert_eq!(first, b"done talking");
    s.write_all(b"thanks, bye").await.unwrap();
    s.shutdown().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), heard_rx).await;
    assert_eq!(heard.unwrap().unwrap(), b"thanks, bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_closes_the_clients_connection() {
    // Port 1 on loopback: nothing listens there on these machines.
    let (_link, relay) = relay(Spec::new(20 * MS), "127.0.0.1:1".parse().unwrap()).await;
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(end.is_ok(), "the client's connection was left open");
    assert!(got.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_run_at_once_and_each_gets_its_own_bytes() {
    let echo = server(echo).await;
    let rtt = 50 * MS;
    let (link, relay) = relay(Spec::new(rtt), echo.addr).await;
    let (n, size) = (100u64, 10 * 1024);
    let start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let addr = relay.addr();
            tokio::spawn(async move {
                let sent = data(size, 1000 + i);
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&sent).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert!(back == sent, "connection {i} got other bytes back");
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let took = start.elapsed();
    eprintln!("{n} connections of {size} B echoed at 50 ms: {took:?}");
    // One at a time they would take at least 2 RTT each: 10 s.
    assert_between("100 connections at once", took, 2 * rtt, 20 * rtt);
    let totals = link.totals();
    assert_eq!(totals.connections, n);
    assert_eq!(totals.bytes_up, n * size as u64);
    assert_eq!(totals.bytes_down, n * size as u64);
}
