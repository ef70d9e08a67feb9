//! The SSH side of a session (russh `server::Handler`): public-key authentication only, the
//! user name is the host name, and the only thing a session may do is open a session channel
//! and start the `sftp` subsystem on it. Shell, exec, env, pty, X11, agent forwarding, TCP and
//! unix-socket forwarding in both directions are refused, each counted and logged.

use std::collections::HashMap;
use std::sync::Arc;

use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use thiserror::Error;

use super::control::{Identity, SessionCtl};
use super::metrics::{Limit, Metrics};
use super::requests;
use super::sessions::{HostSlot, Sessions};

/// Session channels one connection may have open (the stock client uses one).
const MAX_CHANNELS: usize = 2;

#[derive(Debug, Error)]
pub(crate) enum SshError {
    #[error(transparent)]
    Russh(#[from] russh::Error),
}

pub(crate) struct SshHandler {
    sessions: Arc<Sessions>,
    ctl: Arc<SessionCtl>,
    slot: Option<HostSlot>,
    /// Accepted channels not yet running a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Channels accepted and not yet closed.
    open_channels: usize,
}

impl SshHandler {
    pub(crate) fn new(sessions: Arc<Sessions>, ctl: Arc<SessionCtl>) -> Self {
        SshHandler {
            sessions,
            ctl,
            slot: None,
            channels: HashMap::new(),
            open_channels: 0,
        }
    }

    fn metrics(&self) -> &Metrics {
        self.sessions.metrics()
    }

    /// Rejects an authentication request, advertising public-key authentication only.
    fn reject(&self, user: &str, method: &'static str, why: &'static str) -> Auth {
        self.metrics().auth_failures.inc();
        tracing::info!(peer = %self.ctl.peer, user, method, why, "authentication rejected");
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    /// Counts and logs a refused request on a channel.
    fn refuse(&self, what: &'static str) {
        self.metrics().requests_refused.inc();
        tracing::info!(
            peer = %self.ctl.peer,
            host = self.ctl.identity().map_or("-", |i| i.host.as_str()),
            what,
            "request refused"
        );
    }

    fn refuse_channel(&self, channel: ChannelId, session: &mut Session, what: &'static str) {
        self.ctl.charge(self.metrics());
        self.refuse(what);
        let _ = session.channel_failure(channel);
    }

    async fn refuse_open(&self, reply: ChannelOpenHandle, what: &'static str) {
        self.ctl.charge(self.metrics());
        self.refuse(what);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }
}

impl russh::server::Handler for SshHandler {
    type Error = SshError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        // Every client probes with "none" first; not worth a log line or a failure count.
        let _ = user;
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.reject(user, "password", "only public keys are accepted"))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject(
            user,
            "keyboard-interactive",
            "only public keys are accepted",
        ))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject(user, "certificate", "certificates are not accepted"))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.sessions.is_authorized(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(self.reject(user, "publickey", "not a key of this host"))
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.sessions.is_authorized(user, key.public_key) {
            return Ok(self.reject(user, "publickey", "not a key of this host"));
        }
        if self.slot.is_none() {
            match self.sessions.claim_host_slot(user) {
                Some(slot) => self.slot = Some(slot),
                None => {
                    self.metrics().limit_hit(Limit::MaxSessionsPerHost);
                    return Ok(self.reject(user, "publickey", "too many sessions of this host"));
                }
            }
        }
        self.metrics().auth_successes.inc();
        self.sessions.saw(user);
        self.ctl.set_identity(Identity {
            host: user.to_owned(),
            key: key.public_key.clone(),
        });
        tracing::info!(peer = %self.ctl.peer, host = user, "host logged in");
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.ctl.charge(self.metrics()) {
            return Ok(());
        }
        if self.ctl.identity().is_none() || self.open_channels >= MAX_CHANNELS {
            self.refuse("another session channel");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        self.open_channels += 1;
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.ctl.charge(self.metrics()) {
            return Ok(());
        }
        let identity = self.ctl.identity().cloned();
        match (name, self.channels.remove(&channel), identity) {
            ("sftp", Some(ch), Some(identity)) => {
                session.channel_success(channel)?;
                requests::spawn(
                    ch.into_stream(),
                    self.sessions.clone(),
                    self.ctl.clone(),
                    identity,
                );
            }
            (_, ch, _) => {
                if let Some(ch) = ch {
                    self.channels.insert(channel, ch);
                }
                self.refuse("subsystem other than sftp");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "exec");
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "shell");
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "pty");
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "env");
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "x11 forwarding");
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "window change");
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, session, "signal");
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.ctl.charge(self.metrics());
        self.refuse("agent forwarding");
        Ok(false)
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(reply, "x11 channel").await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(reply, "local port forwarding").await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(reply, "forwarded-tcpip channel").await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(reply, "unix socket forwarding").await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.ctl.charge(self.metrics());
        self.refuse("remote port forwarding");
        Ok(false)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        _port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.ctl.charge(self.metrics());
        self.refuse("remote unix socket forwarding");
        Ok(false)
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The client is done sending on this channel; for SFTP that means done.
        session.close(channel)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.open_channels = self.open_channels.saturating_sub(1);
        Ok(())
    }
}
