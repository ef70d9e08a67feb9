//! The accept loop and the supervisor of each connection.
//!
//! `serve` accepts while a connection slot is free (one `Semaphore` permit per connection,
//! `max_sessions`), and runs one supervisor task per connection. The supervisor starts the
//! russh session and ends it — with an SSH disconnect message saying why — when the server
//! shuts down, when the connection has not authenticated within `auth_timeout`, when a reload
//! revokes its host or key, or when a part of the session asks (request flood). Idle
//! sessions are ended by russh itself (`inactivity_timeout` = `idle_timeout`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server::Config;
use russh::{Disconnect, MethodKind, MethodSet, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::{KillReason, SessionCtl};
use super::killswitch::Killable;
use super::metrics::{GaugeGuard, Limit};
use super::sessions::Sessions;
use super::ssh::SshHandler;
use crate::slots::Slot;

/// How long a disconnected session gets to finish before its supervisor lets go.
const DRAIN: Duration = Duration::from_secs(5);

/// Runs the SSH/SFTP server on `listener` until `shutdown` is cancelled, then disconnects
/// every session and returns once they have ended (or after a few seconds). Per-connection
/// errors are logged, never returned. Also polls the release files of watched hosts every
/// `release_poll_interval`.
pub async fn serve(listener: TcpListener, sessions: Arc<Sessions>, shutdown: CancellationToken) {
    let config = Arc::new(russh_config(&sessions));
    let tasks = TaskTracker::new();
    tasks.spawn(poll_releases(sessions.clone(), shutdown.clone()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            host_key = %sessions.host_key().public_openssh(),
            fingerprint = %sessions.host_key().fingerprint(),
            "SFTP server listening"
        );
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        sessions.metrics().connections_accepted.inc();
        let Ok(permit) = sessions.connections.clone().try_acquire_owned() else {
            sessions.metrics().connections_refused.inc();
            sessions.metrics().limit_hit(Limit::MaxSessions);
            tracing::warn!(%peer, "too many connections; closing");
            drop(socket);
            continue;
        };
        let Some(slot) = sessions.unauthenticated.try_acquire(peer.ip()) else {
            sessions.metrics().connections_refused.inc();
            sessions.metrics().limit_hit(Limit::MaxUnauthenticatedPerIp);
            tracing::warn!(%peer, "too many unauthenticated connections from this address; closing");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        tasks.spawn(supervise(
            socket,
            peer,
            (permit, slot),
            sessions.clone(),
            config.clone(),
            shutdown.clone(),
        ));
    }
    tasks.close();
    if tokio::time::timeout(DRAIN * 2, tasks.wait()).await.is_err() {
        tracing::warn!("some SFTP sessions did not end in time");
    }
}

/// The russh configuration: our host key, public key only, timeouts from the config.
fn russh_config(sessions: &Sessions) -> Config {
    let c = sessions.config();
    Config {
        server_id: SshId::Standard(format!("SSH-2.0-bento_{}", env!("CARGO_PKG_VERSION")).into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: c.auth_rejection_time,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![sessions.host_key().private_key().clone()],
        max_auth_attempts: c.max_auth_attempts,
        inactivity_timeout: Some(c.idle_timeout),
        keepalive_interval: None,
        nodelay: true,
        ..Config::default()
    }
}

async fn poll_releases(sessions: Arc<Sessions>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(sessions.config().release_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                // Re-reads changed release files of watched hosts: disk work.
                let s = sessions.clone();
                let _ = crate::blocking::run("polling release files", move || s.poll_releases()).await;
            }
        }
    }
}

#[tracing::instrument(skip_all, fields(%peer))]
async fn supervise(
    socket: TcpStream,
    peer: SocketAddr,
    (permit, unauthenticated): (OwnedSemaphorePermit, Slot<std::net::IpAddr>),
    sessions: Arc<Sessions>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let _open = GaugeGuard::new(&sessions.metrics().connections_open);
    // Declared after the gauge so that the slot is free before the gauge says so.
    let _permit = permit;
    let c = sessions.config();
    let ctl = Arc::new(SessionCtl::new(peer, c.request_rate, c.request_burst));
    ctl.hold_until_login(unauthenticated);
    let auth_deadline = tokio::time::Instant::now() + c.auth_timeout;
    let handler = SshHandler::new(sessions.clone(), ctl.clone());
    let cut = CancellationToken::new();
    let stream = Killable::new(socket, cut.clone());
    let started = tokio::time::timeout_at(
        auth_deadline,
        russh::server::run_stream(config, stream, handler),
    )
    .await;
    let mut running = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "SSH handshake failed");
            return;
        }
        Err(_) => {
            sessions.metrics().auth_timeouts.inc();
            tracing::info!("no SSH greeting within the authentication timeout");
            return;
        }
    };
    let handle = running.handle();
    let mut access = sessions.subscribe_access();
    let auth_timer = tokio::time::sleep_until(auth_deadline);
    tokio::pin!(auth_timer);
    // `select!` evaluates branch conditions once per round, so the timer branch re-checks.
    let mut auth_pending = true;
    let reason: &str = loop {
        tokio::select! {
            result = &mut running => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "session ended with an error");
                }
                return;
            }
            () = shutdown.cancelled() => break "server shutting down",
            () = ctl.killed() => {
                let why = ctl.kill_reason().unwrap_or(KillReason::Revoked);
                if why == KillReason::Revoked {
                    sessions.metrics().revoked_disconnects.inc();
                }
                break why.text();
            }
            () = &mut auth_timer, if auth_pending => {
                if ctl.identity().is_some() {
                    auth_pending = false;
                    continue;
                }
                sessions.metrics().auth_timeouts.inc();
                break "authentication timeout";
            }
            changed = access.changed() => {
                if changed.is_err() {
                    continue;
                }
                if let Some(id) = ctl.identity()
                    && !sessions.is_authorized(&id.host, &id.key)
                {
                    ctl.kill(KillReason::Revoked);
                }
            }
        }
    };
    tracing::info!(
        host = ctl.identity().map_or("-", |i| i.host.as_str()),
        reason,
        "disconnecting"
    );
    let disconnect = handle.disconnect(
        Disconnect::ByApplication,
        reason.to_owned(),
        "en".to_owned(),
    );
    let _ = tokio::time::timeout(DRAIN, disconnect).await;
    if tokio::time::timeout(DRAIN, &mut running).await.is_err() {
        tracing::warn!("session did not end after disconnect; cutting its connection");
        cut.cancel();
        let _ = tokio::time::timeout(DRAIN, running).await;
    }
}
