//! A wide-area link in userspace, for tests and benchmarks (this kernel has no `netem`): a
//! TCP relay that gives every connection through it a round-trip time, a bandwidth cap per
//! direction shared by all its connections, and TCP's window behaviour, while passing bytes,
//! their order, half-closes and EOF through unchanged.
//!
//! One implementation for both users: the tests declare `mod link;`, and
//! `examples/wan_link.rs` (the relay `scripts/bench-wan.sh` runs) includes this file with
//! `#[path]`. std and tokio only; it imports nothing else from `tests/`.
//!
//! The model, per direction of each connection (client → upstream is "up"):
//! - **Delay.** A byte read from one side is written to the other one-way delay (RTT/2)
//!   after it left. Each chunk carries its own due time in a queue, so delay never
//!   serializes with bandwidth: a full window is in flight at once, as on a real link.
//! - **Handshake.** The relay's own accept completes at once (the kernel does it), so the
//!   handshake's round trip is charged to the data: the client's first bytes leave no
//!   earlier than one RTT after accept, and the upstream connection is opened 1.5 RTT after
//!   accept, when the client's handshake would reach the server. Request/response over a
//!   new connection thus costs 2 RTT and 1 RTT over a kept one, as with real TCP; a
//!   server that speaks first (SSH) is heard 2 RTT after the client connected.
//! - **Bandwidth.** One bottleneck per direction, shared by every connection of the link: a
//!   chunk starts serializing when the bottleneck is free and occupies it for `len / rate`
//!   (a token bucket with no burst; the queue in front of it is unbounded, as a bloated
//!   buffer is). Unlimited when no rate is given.
//! - **Window.** Bytes count as in flight from the moment they leave until their
//!   acknowledgement would be back (written to the far side, plus RTT/2). A connection
//!   sends at most `cwnd` bytes in flight: `cwnd` starts at 10 segments of 1448 bytes and
//!   grows by every acknowledged byte (slow start, doubling per RTT) up to the window cap,
//!   which defaults to the kernel's `tcp_rmem` maximum. After an idle period longer than
//!   the retransmission timeout (RTT + 200 ms) `cwnd` halves per timeout elapsed, down to
//!   the initial window (Linux's `tcp_slow_start_after_idle`). One connection over a long
//!   fat link is therefore window-limited (at most cap / RTT) as real TCP is.
//!
//! What it does not emulate: loss, reordering, retransmission and congestion control
//! reacting to loss (the link is lossless, so `cwnd` never shrinks but for idleness); the
//! interplay of Nagle's algorithm and delayed ACKs across the long leg (both ends talk to the
//! relay over a leg with no delay); a reset is passed on as the connection's end, not as a
//! TCP reset; packetization (chunks of up to 64 KiB, not 1448-byte segments). The relay's
//! own socket buffers add up to a few MiB of buffering in front of a receiver that does not
//! read, beyond the window.
#![allow(dead_code)] // the tests and the example each use part of it

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// The segment size of the emulated path (1500-byte MTU, TCP timestamps on).
pub const MSS: usize = 1448;
/// Linux's initial congestion window: 10 segments.
pub const INITIAL_WINDOW: usize = 10 * MSS;
/// Linux's smallest retransmission timeout, added to the RTT to decide idleness.
const MIN_RTO: Duration = Duration::from_millis(200);
/// The most read from a socket at once.
const CHUNK: usize = 64 * 1024;
/// Used when `/proc/sys/net/ipv4/tcp_rmem` cannot be read.
const FALLBACK_WINDOW: usize = 6 * 1024 * 1024;

/// What the link is like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// The round-trip time added to every exchange.
    pub rtt: Duration,
    /// The bandwidth of each direction in bits per second; `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// The most bytes one connection keeps in flight in one direction.
    pub window: usize,
    /// Whether `cwnd` starts at [`INITIAL_WINDOW`] and grows (`false`: the whole window
    /// from the first byte, and no restart after idle).
    pub slow_start: bool,
}

impl Spec {
    /// A link of `rtt`, no bandwidth cap, the kernel's largest receive window, slow start.
    pub fn new(rtt: Duration) -> Spec {
        Spec {
            rtt,
            rate_bps: None,
            window: kernel_window(),
            slow_start: true,
        }
    }

    pub fn rate_mbit(self, mbit: f64) -> Spec {
        Spec {
            rate_bps: (mbit > 0.0).then_some((mbit * 1e6) as u64),
            ..self
        }
    }

    pub fn window(self, bytes: usize) -> Spec {
        Spec {
            window: bytes.max(MSS),
            ..self
        }
    }

    pub fn slow_start(self, on: bool) -> Spec {
        Spec {
            slow_start: on,
            ..self
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rtt {} ms, ", self.rtt.as_millis())?;
        match self.rate_bps {
            Some(bps) => write!(f, "{} Mbit/s each way, ", bps as f64 / 1e6)?,
            None => write!(f, "no bandwidth cap, ")?,
        }
        write!(
            f,
            "window {} KiB per connection and direction, slow start {}",
            self.window / 1024,
            if self.slow_start { "on" } else { "off" }
        )
    }
}

/// The largest TCP receive buffer the kernel gives a socket (third field of `tcp_rmem`).
pub fn kernel_window() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(FALLBACK_WINDOW)
}

/// Totals of a link since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes delivered to the upstream side.
    pub bytes_up: u64,
    /// Bytes delivered to the client side.
    pub bytes_down: u64,
}

/// What happened to one connection, for a log.
#[derive(Debug, Clone)]
pub enum Event {
    Opened {
        id: u64,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// The upstream could not be reached; the client's connection was closed.
    Refused {
        id: u64,
        to: SocketAddr,
        error: String,
    },
    Closed {
        id: u64,
        lasted: Duration,
        bytes_up: u64,
        bytes_down: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Opened { id, from, to } => write!(f, "conn {id} opened from {from} to {to}"),
            Event::Refused { id, to, error } => write!(f, "conn {id} refused by {to}: {error}"),
            Event::Closed {
                id,
                lasted,
                bytes_up,
                bytes_down,
            } => write!(
                f,
                "conn {id} closed after {:.3} s, {bytes_up} B up, {bytes_down} B down",
                lasted.as_secs_f64()
            ),
        }
    }
}

type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// One emulated link. Every relay made from it shares its bottlenecks and its totals.
pub struct Link {
    spec: Spec,
    up: Wire,
    down: Wire,
    connections: AtomicU64,
    bytes: [AtomicU64; 2],
    events: Option<EventSink>,
}

#[derive(Clone, Copy)]
enum Dir {
    Up = 0,
    Down = 1,
}

impl Link {
    pub fn new(spec: Spec) -> Arc<Link> {
        Link::build(spec, None)
    }

    /// A link that reports every connection's opening and end to `sink`.
    pub fn with_events(spec: Spec, sink: impl Fn(Event) + Send + Sync + 'static) -> Arc<Link> {
        Link::build(spec, Some(Arc::new(sink)))
    }

    fn build(spec: Spec, events: Option<EventSink>) -> Arc<Link> {
        Arc::new(Link {
            spec,
            up: Wire::new(spec),
            down: Wire::new(spec),
            connections: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            events,
        })
    }

    pub fn spec(&self) -> Spec {
        self.spec
    }

    pub fn totals(&self) -> Totals {
        Totals {
            connections: self.connections.load(Ordering::Relaxed),
            bytes_up: self.bytes[0].load(Ordering::Relaxed),
            bytes_down: self.bytes[1].load(Ordering::Relaxed),
        }
    }

    /// Relays every connection accepted on `listener` to `upstream` through this link,
    /// until the returned [`Relay`] is dropped (which ends its connections too). Must be
    /// called inside a tokio runtime.
    pub fn relay(self: &Arc<Self>, listener: TcpListener, upstream: SocketAddr) -> Relay {
        let listen = listener.local_addr().unwrap_or(upstream);
        let task = tokio::spawn(accept_loop(self.clone(), listener, upstream));
        Relay { listen, task }
    }

    fn wire(&self, dir: Dir) -> &Wire {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }
}

/// A running relay; dropping it stops it and ends its connections.
pub struct Relay {
    listen: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Runs until the task ends (it does not by itself): for a program that only relays.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(link: Arc<Link>, listener: TcpListener, upstream: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, from)) => {
                    let id = link.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    link.emit(Event::Opened { id, from, to: upstream });
                    connections.spawn(connection(link.clone(), id, client, upstream));
                }
                // Out of descriptors, or a connection reset before accept: try again soon.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One relayed connection: both directions, each a reader, a writer and an acknowledger.
/// Any socket error ends the whole connection (both sides are closed).
async fn connection(link: Arc<Link>, id: u64, client: TcpStream, upstream: SocketAddr) {
    let accepted = Instant::now();
    let rtt = link.spec.rtt;
    let _ = client.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks: JoinSet<io::Result<()>> = JoinSet::new();

    // The client's bytes may leave once its handshake would be done, one RTT after accept.
    let up = Direction::new(&link, Dir::Up, &counts);
    let up_rx = up.start_reading(&mut tasks, client_r, accepted + rtt);

    // The server learns of the connection when the client's handshake reaches it.
    tokio::time::sleep_until((accepted + rtt + rtt / 2).into()).await;
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            link.emit(Event::Refused {
                id,
                to: upstream,
                error: e.to_string(),
            });
            tokio::time::sleep(rtt / 2).await;
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (server_r, server_w) = server.into_split();
    up.start_writing(&mut tasks, up_rx, server_w);
    let down = Direction::new(&link, Dir::Down, &counts);
    let down_rx = down.start_reading(&mut tasks, server_r, Instant::now());
    down.start_writing(&mut tasks, down_rx, client_w);

    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            break; // dropping `tasks` aborts the rest and closes both sockets
        }
    }
    link.emit(Event::Closed {
        id,
        lasted: accepted.elapsed(),
        bytes_up: counts[0].load(Ordering::Relaxed),
        bytes_down: counts[1].load(Ordering::Relaxed),
    });
}

/// What travels from a direction's reader to its writer.
enum Segment {
    Data { due: Instant, bytes: Vec<u8> },
    End { due: Instant },
}

/// One direction of one connection.
struct Direction {
    link: Arc<Link>,
    dir: Dir,
    window: Arc<Window>,
    counts: Arc<[AtomicU64; 2]>,
}

impl Direction {
    fn new(link: &Arc<Link>, dir: Dir, counts: &Arc<[AtomicU64; 2]>) -> Direction {
        Direction {
            link: link.clone(),
            dir,
            window: Arc::new(Window::new(link.spec)),
            counts: counts.clone(),
        }
    }

    /// Reads `src` into segments stamped with their arrival time; none leaves before
    /// `earliest`.
    fn start_reading(
        &self,
        tasks: &mut JoinSet<io::Result<()>>,
        mut src: OwnedReadHalf,
        earliest: Instant,
    ) -> mpsc::UnboundedReceiver<Segment> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (link, dir, window) = (self.link.clone(), self.dir, self.window.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = src.read(&mut buf).await?;
                let wire = link.wire(dir);
                if n == 0 {
                    let due = wire.arrival(0, Instant::now().max(earliest));
                    let _ = tx.send(Segment::End { due });
                    return Ok(());
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let k = window.take(rest.len()).await;
                    let due = wire.arrival(k, Instant::now().max(earliest));
                    let bytes = rest[..k].to_vec();
                    rest = &rest[k..];
                    if tx.send(Segment::Data { due, bytes }).is_err() {
                        return Ok(()); // the writer is gone; the connection is ending
                    }
                }
            }
        });
        rx
    }

    /// Writes each segment to `dst` when it is due, then acknowledges it RTT/2 later.
    fn start_writing(
        &self,
        tasks: &mut JoinSet<io::Result<()>>,
        mut rx: mpsc::UnboundedReceiver<Segment>,
        mut dst: OwnedWriteHalf,
    ) {
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(Instant, usize)>();
        let one_way = self.link.spec.rtt / 2;
        let (link, dir, counts) = (self.link.clone(), self.dir, self.counts.clone());
        tasks.spawn(async move {
            while let Some(segment) = rx.recv().await {
                match segment {
                    Segment::Data { due, bytes } => {
                        wait_until(due).await;
                        dst.write_all(&bytes).await?;
                        let n = bytes.len();
                        counts[dir as usize].fetch_add(n as u64, Ordering::Relaxed);
                        link.bytes[dir as usize].fetch_add(n as u64, Ordering::Relaxed);
                        let _ = ack_tx.send((Instant::now() + one_way, n));
                    }
                    Segment::End { due } => {
                        wait_until(due).await;
                        dst.shutdown().await?;
                        break;
                    }
                }
            }
            Ok(())
        });
        let window = self.window.clone();
        tasks.spawn(async move {
            while let Some((due, n)) = ack_rx.recv().await {
                wait_until(due).await;
                window.ack(n);
            }
            Ok(())
        });
    }
}

/// Sleeps until `due`; returns at once when it has passed (a timer would add up to 1 ms).
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// One direction's bottleneck, shared by every connection of the link.
struct Wire {
    /// Bytes per second; `None` for unlimited.
    rate: Option<f64>,
    one_way: Duration,
    busy_until: Mutex<Instant>,
}

impl Wire {
    fn new(spec: Spec) -> Wire {
        Wire {
            rate: spec.rate_bps.map(|bps| bps as f64 / 8.0),
            one_way: spec.rtt / 2,
            busy_until: Mutex::new(Instant::now()),
        }
    }

    /// When `n` bytes that are ready to leave at `ready` reach the far end: after everything
    /// queued before them, their own time on the wire, and the one-way delay.
    fn arrival(&self, n: usize, ready: Instant) -> Instant {
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*busy).max(ready);
        let end = match self.rate {
            Some(rate) => start + Duration::from_secs_f64(n as f64 / rate),
            None => start,
        };
        *busy = end;
        end + self.one_way
    }
}

/// The sending window of one direction of one connection.
struct Window {
    state: Mutex<WindowState>,
    wake: Notify,
    cap: usize,
    initial: usize,
    slow_start: bool,
    rto: Duration,
}

struct WindowState {
    in_flight: usize,
    cwnd: usize,
    last_sent: Instant,
}

impl Window {
    fn new(spec: Spec) -> Window {
        let initial = if spec.slow_start {
            INITIAL_WINDOW.min(spec.window)
        } else {
            spec.window
        };
        Window {
            state: Mutex::new(WindowState {
                in_flight: 0,
                cwnd: initial,
                last_sent: Instant::now(),
            }),
            wake: Notify::new(),
            cap: spec.window,
            initial,
            slow_start: spec.slow_start,
            rto: spec.rtt + MIN_RTO,
        }
    }

    /// Waits until the window has room, then takes up to `want` bytes of it.
    async fn take(&self, want: usize) -> usize {
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if self.slow_start && s.in_flight == 0 {
                    s.cwnd = restart_after_idle(s.cwnd, self.initial, now - s.last_sent, self.rto);
                }
                if s.cwnd > s.in_flight {
                    let k = want.min(s.cwnd - s.in_flight);
                    s.in_flight += k;
                    s.last_sent = now;
                    return k;
                }
            }
            // Only this direction's reader waits here, so a stored permit is never lost.
            self.wake.notified().await;
        }
    }

    fn ack(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(n);
        if self.slow_start {
            s.cwnd = (s.cwnd + n).min(self.cap);
        }
        drop(s);
        self.wake.notify_one();
    }
}

/// Linux's congestion window restart: halved for every RTO the connection was idle, never
/// below the initial window.
fn restart_after_idle(cwnd: usize, initial: usize, idle: Duration, rto: Duration) -> usize {
    let mut cwnd = cwnd;
    let mut idle = idle;
    while idle > rto && cwnd > initial {
        cwnd /= 2;
        idle -= rto;
    }
    cwnd.max(initial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_restart_halves_per_rto_down_to_the_initial_window() {
        let rto = Duration::from_millis(300);
        let cases = [
            // (cwnd, idle ms, expected)
            (1 << 20, 0, 1 << 20),
            (1 << 20, 300, 1 << 20),
            (1 << 20, 301, 1 << 19),
            (1 << 20, 601, 1 << 18),
            (1 << 20, 60_000, INITIAL_WINDOW),
            (INITIAL_WINDOW, 60_000, INITIAL_WINDOW),
        ];
        for (cwnd, idle, want) in cases {
            let got = restart_after_idle(cwnd, INITIAL_WINDOW, Duration::from_millis(idle), rto);
            assert_eq!(got, want, "cwnd {cwnd} idle {idle} ms");
        }
    }

    #[test]
    fn the_wire_queues_behind_earlier_bytes_and_adds_the_one_way_delay() {
        let spec = Spec::new(Duration::from_millis(100)).rate_mbit(8.0); // 1 MB/s
        let wire = Wire::new(spec);
        let t = Instant::now() + Duration::from_secs(1);
        let a = wire.arrival(1_000, t);
        let b = wire.arrival(1_000, t); // queued behind a
        let c = wire.arrival(0, t); // an EOF after both
        let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 1e3).round() / 1e3;
        assert_eq!(ms(a - t), 51.0);
        assert_eq!(ms(b - t), 52.0);
        assert_eq!(c, b);
        let unlimited = Wire::new(Spec::new(Duration::from_millis(100)));
        assert_eq!(ms(unlimited.arrival(1 << 30, t) - t), 50.0);
    }
}
