//! What one client may hold of the cache: connections (in total and per source address),
//! NAR streams (in total, per source address and per host token), how long a request waits
//! for a stream before it is told to come back (503 with `Retry-After`), and how long a
//! connection may make no progress reading a request or sending a body.
//!
//! [`Limits`] is the configuration; [`StreamSlots`] are the places one NAR body holds, all
//! given back when the body ends (sent, cut or stalled).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::slots::{PerKey, Slot};

/// The limits of the cache's port. [`Limits::default`] protects a fleet of thousands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// NAR bodies one source address may be sent at once (hosts behind one NAT share it).
    pub max_nar_streams_per_address: usize,
    /// NAR bodies one host (by its token, with `--host-tokens`) may be sent at once.
    pub max_nar_streams_per_host: usize,
    /// How long a NAR request waits for a place before it is answered 503.
    pub nar_wait: Duration,
    /// A body that makes no progress for this long is cut and its connection closed.
    pub send_timeout: Duration,
    /// A connection must send a whole request head within this long, idle ones included.
    pub header_read_timeout: Duration,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections one source address may hold open at once.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nar_streams_per_address: 16,
            max_nar_streams_per_host: 8,
            nar_wait: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_address: 256,
        }
    }
}

impl Limits {
    /// The first limit that would refuse everything, as the flag that sets it.
    pub fn check(&self) -> Result<(), String> {
        let counts = [
            (
                "--max-nar-streams-per-address",
                self.max_nar_streams_per_address,
            ),
            ("--max-nar-streams-per-host", self.max_nar_streams_per_host),
            ("--max-connections", self.max_connections),
            (
                "--max-connections-per-address",
                self.max_connections_per_address,
            ),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        let times = [
            ("--send-timeout", self.send_timeout),
            ("--header-read-timeout", self.header_read_timeout),
        ];
        if let Some((flag, _)) = times.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("{flag} must be more than 0 seconds"));
        }
        Ok(())
    }
}

/// What `bento serve` may hold open at once, for the open-files check at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// `--max-nar-streams`.
    pub max_nar_streams: usize,
    /// The SFTP server's `max_sessions`.
    pub max_sftp_sessions: usize,
}

/// Files kept for the state directory, logs, the dashboard and the hook.
const SPARE_FILES: u64 = 256;

impl OpenFiles {
    /// What the fleet itself holds at once: each host an SFTP session (its socket and a
    /// handle, kept open with instant updates) and a cache connection while it copies, and
    /// each NAR body one file beside its connection.
    pub fn fleet_needs(&self) -> u64 {
        3 * self.hosts as u64 + self.max_nar_streams as u64 + SPARE_FILES
    }

    /// What the limits allow at once: every cache connection, a NAR body's file (two while
    /// a store path is encoded), every SFTP session with a few handles.
    pub fn limits_allow(&self, limits: &Limits) -> u64 {
        limits.max_connections as u64
            + 2 * self.max_nar_streams as u64
            + 4 * self.max_sftp_sessions as u64
            + SPARE_FILES
    }

    /// The warning to log, with its numbers, when the open-files limit `have` is below what
    /// the fleet needs (refusals will come), or below what the limits allow (they may).
    pub fn warning(&self, have: u64, limits: &Limits) -> Option<String> {
        let fleet = self.fleet_needs();
        let allowed = self.limits_allow(limits);
        if have < fleet {
            Some(format!(
                "the open files limit is {have}, below the {fleet} files a fleet of {} hosts holds at once (3 per host with instant updates, {} NAR streams, {SPARE_FILES} spare): connections will be refused; raise it (LimitNOFILE= in the unit, or ulimit -n)",
                self.hosts, self.max_nar_streams
            ))
        } else if have < allowed {
            Some(format!(
                "the open files limit is {have}, enough for the fleet of {} hosts ({fleet}) but below the {allowed} that --max-connections, --max-nar-streams and the SFTP sessions allow at once: a burst of clients may be refused; raise it (LimitNOFILE= in the unit) or lower those",
                self.hosts
            ))
        } else {
            None
        }
    }
}

/// Which limit kept a request or connection out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerAddress,
    NarStreams,
    NarStreamsPerAddress,
    NarStreamsPerHost,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerAddress,
        Refusal::NarStreams,
        Refusal::NarStreamsPerAddress,
        Refusal::NarStreamsPerHost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerAddress => "max_connections_per_address",
            Refusal::NarStreams => "max_nar_streams",
            Refusal::NarStreamsPerAddress => "max_nar_streams_per_address",
            Refusal::NarStreamsPerHost => "max_nar_streams_per_host",
        }
    }
}

/// The NAR stream places of the cache: in total, per address, per host.
#[derive(Debug)]
pub(super) struct StreamPlaces {
    total: Arc<Semaphore>,
    per_address: Arc<PerKey<IpAddr>>,
    per_host: Arc<PerKey<String>>,
    wait: Duration,
}

/// The places one NAR body holds until it ends.
#[derive(Debug)]
pub struct StreamSlots {
    _total: OwnedSemaphorePermit,
    _address: Option<Slot<IpAddr>>,
    _host: Option<Slot<String>>,
}

impl StreamPlaces {
    pub(super) fn new(max_nar_streams: usize, limits: &Limits) -> Self {
        StreamPlaces {
            total: Arc::new(Semaphore::new(max_nar_streams)),
            per_address: PerKey::new(limits.max_nar_streams_per_address),
            per_host: PerKey::new(limits.max_nar_streams_per_host),
            wait: limits.nar_wait,
        }
    }

    /// Places for a body to `address` (and `host`, when the request proved a host's
    /// token), waiting up to the configured wait for all of them together; the limit that
    /// was still full otherwise.
    pub(super) async fn claim(
        &self,
        address: Option<IpAddr>,
        host: Option<&str>,
    ) -> Result<StreamSlots, Refusal> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let host = match host {
            Some(h) => Some(
                self.per_host
                    .acquire_within(h.to_owned(), left())
                    .await
                    .ok_or(Refusal::NarStreamsPerHost)?,
            ),
            None => None,
        };
        let address = match address {
            Some(a) => Some(
                self.per_address
                    .acquire_within(a, left())
                    .await
                    .ok_or(Refusal::NarStreamsPerAddress)?,
            ),
            None => None,
        };
        let total = tokio::time::timeout(left(), self.total.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Refusal::NarStreams)?;
        Ok(StreamSlots {
            _total: total,
            _address: address,
            _host: host,
        })
    }

    /// Bodies being sent now.
    #[cfg(test)]
    pub(super) fn in_use(&self, max: usize) -> usize {
        max - self.total.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_warn_with_numbers_when_the_fleet_or_the_limits_could_exceed_them() {
        let limits = Limits::default();
        let need = |hosts| OpenFiles {
            hosts,
            max_nar_streams: 64,
            max_sftp_sessions: 8192,
        };
        // (hosts, the limit, the warning's numbers; None: no warning)
        let cases: [(usize, u64, Option<&[&str]>); 6] = [
            (10, 1 << 20, None),
            (10, 1024, Some(&["1024", "10 hosts (350)", "37248"])),
            (1000, 1024, Some(&["1024", "3320 files", "1000 hosts"])),
            (1000, 3320, Some(&["3320", "37248"])),
            (
                20_000,
                50_000,
                Some(&["50000", "60320 files", "20000 hosts"]),
            ),
            (20_000, 65_536, None),
        ];
        for (hosts, have, want) in cases {
            let got = need(hosts).warning(have, &limits);
            match (want, &got) {
                (None, None) => {}
                (Some(parts), Some(text)) => {
                    for p in parts {
                        assert!(text.contains(p), "{hosts} hosts, limit {have}: {text}");
                    }
                }
                _ => panic!("{hosts} hosts, limit {have}: {got:?}"),
            }
        }
        assert_eq!(need(1000).fleet_needs(), 3320);
        assert_eq!(need(1000).limits_allow(&limits), 4096 + 128 + 32768 + 256);
    }

    fn places(total: usize, per_address: usize, per_host: usize) -> StreamPlaces {
        let limits = Limits {
            max_nar_streams_per_address: per_address,
            max_nar_streams_per_host: per_host,
            nar_wait: Duration::from_millis(50),
            ..Limits::default()
        };
        StreamPlaces::new(total, &limits)
    }

    #[tokio::test]
    async fn each_limit_refuses_in_turn_and_places_come_back() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let p = places(3, 2, 1);
        let first = p.claim(Some(a), Some("web1")).await.unwrap();
        assert_eq!(
            p.claim(Some(b), Some("web1")).await.unwrap_err(),
            Refusal::NarStreamsPerHost
        );
        let second = p.claim(Some(a), Some("web2")).await.unwrap();
        assert_eq!(
            p.claim(Some(a), Some("web3")).await.unwrap_err(),
            Refusal::NarStreamsPerAddress
        );
        let third = p.claim(Some(b), None).await.unwrap();
        assert_eq!(p.in_use(3), 3);
        assert_eq!(
            p.claim(Some(b), None).await.unwrap_err(),
            Refusal::NarStreams
        );
        drop((first, second, third));
        assert_eq!(p.in_use(3), 0);
        assert!(p.claim(Some(a), Some("web1")).await.is_ok());
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_place_given_back() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let limits = Limits {
            max_nar_streams_per_address: 1,
            nar_wait: Duration::from_secs(20),
            ..Limits::default()
        };
        let p = Arc::new(StreamPlaces::new(4, &limits));
        let held = p.claim(Some(a), None).await.unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.claim(Some(a), None).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn limits_that_would_refuse_everything_are_named() {
        assert_eq!(Limits::default().check(), Ok(()));
        let zero = Limits {
            max_connections_per_address: 0,
            ..Limits::default()
        };
        assert!(
            zero.check()
                .unwrap_err()
                .contains("--max-connections-per-address")
        );
        let never = Limits {
            send_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(never.check().unwrap_err().contains("--send-timeout"));
    }
}
