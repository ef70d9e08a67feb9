//! What one connection's parts share: the SSH handler (auth, channels), the SFTP loop and
//! the supervisor task in `server` that owns the connection.
//!
//! The identity is set once, when public-key authentication succeeds. Any part may ask for
//! the connection to end ([`SessionCtl::kill`]); the supervisor then sends an SSH disconnect
//! with the reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use russh::keys::ssh_key::PublicKey;
use tokio_util::sync::CancellationToken;

use super::metrics::{Limit, Metrics};
use super::ratelimit::TokenBucket;
use crate::slots::Slot;

/// Who a session authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub host: String,
    pub key: PublicKey,
}

/// Why the server ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    Flood,
    Revoked,
}

impl KillReason {
    pub(crate) fn text(self) -> &'static str {
        match self {
            KillReason::Flood => "request rate exceeded",
            KillReason::Revoked => "access revoked",
        }
    }
}

pub(crate) struct SessionCtl {
    pub peer: SocketAddr,
    identity: OnceLock<Identity>,
    reason: OnceLock<KillReason>,
    kill: CancellationToken,
    bucket: Mutex<TokenBucket>,
    /// The source address's pre-authentication slot, given back at login.
    unauthenticated: Mutex<Option<Slot<IpAddr>>>,
}

impl SessionCtl {
    pub(crate) fn new(peer: SocketAddr, rate: f64, burst: u32) -> Self {
        SessionCtl {
            peer,
            identity: OnceLock::new(),
            reason: OnceLock::new(),
            kill: CancellationToken::new(),
            bucket: Mutex::new(TokenBucket::new(rate, burst, Instant::now())),
            unauthenticated: Mutex::new(None),
        }
    }

    /// Holds `slot` until the session authenticates (or ends).
    pub(crate) fn hold_until_login(&self, slot: Slot<IpAddr>) {
        if let Ok(mut s) = self.unauthenticated.lock() {
            *s = Some(slot);
        }
    }

    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        let _ = self.identity.set(identity);
        if let Ok(mut s) = self.unauthenticated.lock() {
            s.take();
        }
    }

    /// Asks the supervisor to disconnect this session; the first reason wins.
    pub(crate) fn kill(&self, reason: KillReason) {
        let _ = self.reason.set(reason);
        self.kill.cancel();
    }

    pub(crate) fn kill_reason(&self) -> Option<KillReason> {
        self.reason.get().copied()
    }

    /// Resolves when the session is to end.
    pub(crate) fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kill.cancelled()
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// Charges one request to the session's bucket. A flooding session is killed (and the
    /// flood counted once); the caller stops serving it.
    pub(crate) fn charge(&self, metrics: &Metrics) -> bool {
        let ok = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if !ok && !self.is_killed() {
            metrics.flood_disconnects.inc();
            metrics.limit_hit(Limit::RequestRate);
            tracing::warn!(
                peer = %self.peer,
                host = self.identity().map_or("-", |i| i.host.as_str()),
                "request rate exceeded; disconnecting"
            );
            self.kill(KillReason::Flood);
        }
        ok
    }
}
