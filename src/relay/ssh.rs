//! The relay's SSH side: one [`russh::server::Handler`] per gateway connection.
//!
//! Only public-key authentication with an OpenSSH user certificate is accepted, and it is
//! checked with the full [`crate::sshcert::GatewayCertPolicy`] against exactly the SSH Client
//! CA this relay trusts; plain keys, passwords and keyboard-interactive are refused. After
//! authentication the gateway may do one thing: ask for reverse forwards, which become routing
//! entries keyed by its certified (org, gateway). The relay binds nothing for them. Sessions,
//! exec, shells, X11, agent forwarding, direct-tcpip and streamlocal are refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};

use super::metrics::Refusal;
use super::registry::TunnelKey;
use super::Shared;
use crate::sshcert::{parse_blob, VerifiedGateway};

/// One gateway connection.
pub(super) struct SshConn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    gateway: Option<VerifiedGateway>,
    tunnels: Vec<(TunnelKey, u64)>,
    authenticated: Arc<AtomicBool>,
    /// Why the last authentication attempt failed (logged once, if the client never succeeds:
    /// OpenSSH offers the plain key before the certificate on every connection).
    last_refusal: Option<String>,
}

impl SshConn {
    pub(super) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        authenticated: Arc<AtomicBool>,
    ) -> Self {
        Self {
            shared,
            peer,
            gateway: None,
            tunnels: Vec::new(),
            authenticated,
            last_refusal: None,
        }
    }

    fn who(&self) -> String {
        match &self.gateway {
            Some(g) => format!("gateway {} of org {} ({})", g.gateway(), g.org(), self.peer),
            None => format!("unauthenticated client {}", self.peer),
        }
    }

    fn refuse_request(&self, what: &str) {
        self.shared.metrics.refuse(Refusal::SshRequest);
        log::warn!(
            "refused {what} from {}: gateways may only ask for reverse forwards",
            self.who()
        );
    }

    fn check_certificate(&self, user: &str, cert: &Certificate) -> Result<VerifiedGateway, String> {
        let blob = cert
            .to_bytes()
            .map_err(|e| format!("certificate does not encode: {e}"))?;
        let cert = parse_blob(&blob).map_err(|e| e.to_string())?;
        let verified = self
            .shared
            .live()
            .gateway_policy
            .verify(&cert, user, SystemTime::now())
            .map_err(|e| e.to_string())?;
        let key = (verified.org().clone(), verified.gateway().clone());
        if self.shared.registry.is_revoked(&key) {
            return Err(format!("gateway {} of org {} is revoked", key.1, key.0));
        }
        Ok(verified)
    }
}

fn publickey_only() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl SshConn {
    fn refuse_auth(&mut self, why: String) -> Auth {
        log::debug!("authentication attempt from {} refused: {why}", self.peer);
        self.last_refusal = Some(why);
        publickey_only()
    }
}

impl Drop for SshConn {
    fn drop(&mut self) {
        if let (None, Some(why)) = (&self.gateway, &self.last_refusal) {
            self.shared.metrics.refuse(Refusal::SshAuth);
            log::warn!("refused SSH client {}: {why}", self.peer);
        }
        for (key, id) in self.tunnels.drain(..) {
            self.shared.registry.remove(&key, id);
            log::info!("tunnel {id} of gateway {} of org {} closed", key.1, key.0);
        }
    }
}

impl russh::server::Handler for SshConn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(publickey_only())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.refuse_auth(format!(
            "password authentication as {user:?}; only gateway certificates are accepted"
        )))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_auth(format!(
            "plain public key as {user:?}; a gateway certificate is required"
        )))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_auth(format!(
            "keyboard-interactive as {user:?}; only gateway certificates are accepted"
        )))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        match self.check_certificate(user, certificate) {
            Ok(verified) => {
                log::info!(
                    "gateway {} of org {} authenticated from {}",
                    verified.gateway(),
                    verified.org(),
                    self.peer
                );
                self.gateway = Some(verified);
                Ok(Auth::Accept)
            }
            Err(why) => Ok(self.refuse_auth(format!("certificate for {user:?}: {why}"))),
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authenticated.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("a session channel");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("an X11 channel");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(&format!("direct-tcpip to {host}:{port}"));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("a forwarded-tcpip channel from the client side");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("direct-streamlocal");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request("agent forwarding");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request("a streamlocal forward");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(gateway) = &self.gateway else {
            self.refuse_request("a forward before authentication");
            return Ok(false);
        };
        if *port == 0 {
            // Nothing is bound; any non-zero port lets the client match the channels we open.
            *port = 1;
        }
        let key = (gateway.org().clone(), gateway.gateway().clone());
        match self
            .shared
            .registry
            .add(&key, session.handle(), address, *port)
        {
            Ok((id, evicted)) => {
                self.tunnels.push((key.clone(), id));
                log::info!(
                    "tunnel {id} up for gateway {} of org {} ({})",
                    key.1,
                    key.0,
                    self.peer
                );
                if let Some(old) = evicted {
                    log::info!(
                        "tunnel {} of gateway {} pushed out by a newer one",
                        old.id,
                        key.1
                    );
                    super::disconnect(old.handle, "replaced by a newer tunnel").await;
                }
                Ok(true)
            }
            Err(_) => {
                self.shared.metrics.refuse(Refusal::Revoked);
                log::warn!(
                    "refused forward for revoked gateway {} of org {}",
                    key.1,
                    key.0
                );
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let before = self.tunnels.len();
        let registry = &self.shared.registry;
        self.tunnels.retain(|(key, id)| {
            let matches = registry
                .candidates(key)
                .iter()
                .any(|t| t.id == *id && t.bind_address == address && t.bind_port == port);
            if matches {
                registry.remove(key, *id);
            }
            !matches
        });
        Ok(self.tunnels.len() < before)
    }
}
