//! The API's behaviour: authentication, registration, renewal, sessions, heartbeats and
//! revocations. Sans-IO apart from the registry: [`Platform::respond`] takes a parsed request
//! and `now`, and returns the response.
//!
//! Every request body is attacker-controlled: it is parsed strictly ([`super::api::FromBody`]),
//! identities come from the token and never from the body, and nothing here panics.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;

use super::api::*;
use super::assign::{AssignError, RelayView};
use super::http::{Handler, Request, Response};
use super::limit::FailureLimiter;
use super::state::State;
use super::store::{GatewayRecord, IdentityRecord, RelayRecord, SessionRecord, Store};
use super::token::{hex, Role, Token};
use super::PlatformError;
use crate::clock::{rfc3339, unix_now};
use crate::id::{GatewayId, OrgId, RelayId};
use crate::pki::ext::{GatewayIdentity, Permission, Target};
use crate::pki::{
    AuthorityStore, InstanceAuthorities, Lifetime, OrgAuthorities, PkiError, SshAuthority,
    SubjectKey, X509Authority,
};

/// Tunable limits of the API.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Longest session certificate an operator may ask for, in seconds.
    pub max_session_secs: u64,
    /// Lifetime of gateway certificates, in seconds.
    pub gateway_cert_secs: u64,
    /// Lifetime of relay certificates, in seconds.
    pub relay_cert_secs: u64,
    /// Heartbeat (and revocation poll) interval told to gateways and relays.
    pub heartbeat_secs: u64,
    /// A relay or gateway whose last heartbeat is older than this is not live.
    pub live_secs: u64,
    /// Failed authentications allowed per address before it is slowed down.
    pub auth_burst: u64,
    /// One more failed authentication is allowed per this many milliseconds.
    pub auth_refill_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_session_secs: 3_600,
            gateway_cert_secs: 86_400,
            relay_cert_secs: 7 * 86_400,
            heartbeat_secs: 15,
            live_secs: 60,
            auth_burst: 10,
            auth_refill_ms: 6_000,
        }
    }
}

/// The API service.
#[derive(Debug)]
pub struct Platform {
    store: Arc<dyn Store>,
    authorities: AuthorityStore,
    instance: Arc<InstanceAuthorities>,
    orgs: Mutex<HashMap<OrgId, Arc<OrgAuthorities>>>,
    config: ServeConfig,
    limiter: Mutex<FailureLimiter>,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    log::error!("internal error: {e}");
    ApiError::new(500, "internal error; the platform log has the details")
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The authorities a relay of one kind (instance or one org) is bound to.
enum RelayCas {
    Instance(Arc<InstanceAuthorities>),
    Org(Arc<OrgAuthorities>),
}

impl RelayCas {
    fn ssh_client(&self) -> &SshAuthority {
        match self {
            Self::Instance(a) => &a.relay_ssh_client,
            Self::Org(a) => &a.relay_ssh_client,
        }
    }
    fn ssh_server(&self) -> &SshAuthority {
        match self {
            Self::Instance(a) => &a.relay_ssh_server,
            Self::Org(a) => &a.relay_ssh_server,
        }
    }
    fn pki_client(&self) -> &X509Authority {
        match self {
            Self::Instance(a) => &a.relay_pki_client,
            Self::Org(a) => &a.relay_pki_client,
        }
    }
    fn pki_server(&self) -> &X509Authority {
        match self {
            Self::Instance(a) => &a.relay_pki_server,
            Self::Org(a) => &a.relay_pki_server,
        }
    }
}

impl Handler for Platform {
    fn handle(&self, request: &Request) -> Response {
        self.respond(request, SystemTime::now())
    }
}

impl Platform {
    /// A service over an opened state.
    pub fn new(state: State, config: ServeConfig) -> Result<Self, PlatformError> {
        let instance = Arc::new(state.authorities.load_instance()?);
        let limiter = FailureLimiter::new(config.auth_burst, config.auth_refill_ms, 65_536);
        Ok(Self {
            store: state.store,
            authorities: state.authorities,
            instance,
            orgs: Mutex::new(HashMap::new()),
            config,
            limiter: Mutex::new(limiter),
        })
    }

    /// Answers one request at time `now`.
    pub fn respond(&self, req: &Request, now: SystemTime) -> Response {
        match self.route(req, now) {
            Ok(r) => r,
            Err(e) => {
                if e.status >= 500 {
                    log::warn!("{} {} from {}: {e}", req.method, req.path, req.peer);
                } else {
                    log::info!("refused {} {} from {}: {e}", req.method, req.path, req.peer);
                }
                e.response()
            }
        }
    }

    fn route(&self, req: &Request, now: SystemTime) -> Result<Response, ApiError> {
        let ok = |v: &dyn erased::Reply| Ok(v.reply());
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/health") => Ok(Response::json(200, &Health { status: "ok" })),
            ("POST", "/v1/relay/register") => ok(&self.relay_register(req, now, false)?),
            ("POST", "/v1/relay/renew") => ok(&self.relay_register(req, now, true)?),
            ("POST", "/v1/relay/heartbeat") => ok(&self.relay_heartbeat(req, now)?),
            ("GET", "/v1/revocations") => ok(&self.revocations(req, now)?),
            ("POST", "/v1/gateway/register") => ok(&self.gateway_register(req, now, false)?),
            ("POST", "/v1/gateway/renew") => ok(&self.gateway_register(req, now, true)?),
            ("POST", "/v1/gateway/heartbeat") => ok(&self.gateway_heartbeat(req, now)?),
            ("POST", "/v1/session") => ok(&self.session(req, now)?),
            (method, path) if ENDPOINTS.contains(&path) => Err(ApiError::new(
                405,
                format!("{path} does not accept {method}"),
            )),
            (method, path) => Err(ApiError::new(404, format!("no endpoint {method} {path}"))),
        }
    }

    // ---- authentication ----------------------------------------------------------------

    fn authenticate(
        &self,
        req: &Request,
        role: Role,
        now: SystemTime,
    ) -> Result<IdentityRecord, ApiError> {
        let now_ms = unix_millis(now);
        if let Some(wait) = lock(&self.limiter).check(req.peer, now_ms) {
            return Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    429,
                    format!("too many failed token attempts from this address; retry in {wait} s"),
                )
            });
        }
        let bearer = req.bearer.as_deref().ok_or_else(|| {
            ApiError::new(401, "missing \"Authorization: Bearer <token>\" header")
        })?;
        let token = Token::parse(bearer).map_err(|e| self.failed(req.peer, now_ms, &e))?;
        let identity = self
            .store
            .identity_by_token(token.id())
            .map_err(internal)?
            .filter(|i| token.matches(&i.token_digest))
            .ok_or_else(|| self.failed(req.peer, now_ms, &"unknown token"))?;
        self.admit(identity, role, &req.path, now)
    }

    fn failed(&self, peer: IpAddr, now_ms: u64, why: &dyn std::fmt::Display) -> ApiError {
        lock(&self.limiter).fail(peer, now_ms);
        ApiError::new(401, why.to_string())
    }

    fn admit(
        &self,
        identity: IdentityRecord,
        role: Role,
        path: &str,
        now: SystemTime,
    ) -> Result<IdentityRecord, ApiError> {
        let unix = unix_now(now);
        let who = describe(&identity);
        if unix >= identity.expires_at {
            return Err(ApiError::new(
                401,
                format!(
                    "the token of {who} expired at {}; create a new one with \
                     `postern-platform identity rotate`",
                    rfc3339(identity.expires_at)
                ),
            ));
        }
        if let Some(at) = identity.revoked_at {
            return Err(ApiError::new(
                403,
                format!("{who} was revoked at {}", rfc3339(at)),
            ));
        }
        if identity.role != role {
            return Err(ApiError::new(
                403,
                format!(
                    "this is a {} token; {path} needs a {role} token",
                    identity.role
                ),
            ));
        }
        Ok(identity)
    }

    // ---- authorities -------------------------------------------------------------------

    fn org_cas(&self, org: &OrgId) -> Result<Arc<OrgAuthorities>, ApiError> {
        if let Some(cas) = lock(&self.orgs).get(org) {
            return Ok(cas.clone());
        }
        let cas = Arc::new(self.authorities.load_org(org).map_err(internal)?);
        lock(&self.orgs).insert(org.clone(), cas.clone());
        Ok(cas)
    }

    fn relay_cas(&self, org: Option<&OrgId>) -> Result<RelayCas, ApiError> {
        Ok(match org {
            None => RelayCas::Instance(self.instance.clone()),
            Some(org) => RelayCas::Org(self.org_cas(org)?),
        })
    }

    // ---- relays ------------------------------------------------------------------------

    fn relay_register(
        &self,
        req: &Request,
        now: SystemTime,
        renew: bool,
    ) -> Result<RelayCredentials, ApiError> {
        let who = self.authenticate(req, Role::Relay, now)?;
        let body = RelayRegistration::from_body(&req.body)?;
        check_org_claim(body.org.as_deref(), who.org.as_ref())?;
        let name = RelayId::new(&who.name).map_err(internal)?;
        let ssh_key = ssh_public_key("ssh_host_key", &body.ssh_host_key)?;
        let tls_key = tls_public_key("tls_public_key", &body.tls_public_key)?;
        check_hostnames(&body.hostnames)?;
        check_address("ssh_address", &body.ssh_address)?;
        check_address("tls_address", &body.tls_address)?;
        let existing = self.store.relay(&name).map_err(internal)?;
        match &existing {
            None if renew => return Err(not_registered("relay", &name, "/v1/relay/register")),
            Some(e) if e.org != who.org => {
                return Err(ApiError::new(
                    409,
                    format!("relay name {name} is taken by a relay of another scope"),
                ))
            }
            _ => {}
        }
        let cas = self.relay_cas(who.org.as_ref())?;
        let life = Lifetime::new(Duration::from_secs(self.config.relay_cert_secs));
        let host_cert = cas
            .ssh_server()
            .issue_relay_host(&ssh_key, &name, &body.hostnames, now, life)
            .map_err(issue_error("ssh_host_key"))?;
        let tls_leaf = cas
            .pki_server()
            .issue_relay_server(&tls_key, &name, &body.hostnames, now, life)
            .map_err(issue_error("tls_public_key"))?;
        let unix = unix_now(now);
        let record = RelayRecord {
            name: name.clone(),
            org: who.org.clone(),
            ssh_address: body.ssh_address,
            tls_address: body.tls_address,
            hostnames: body.hostnames,
            registered_at: unix,
            cert_not_after: unix + self.config.relay_cert_secs,
            last_heartbeat: Some(unix),
            tunnels: existing.map_or(0, |e| e.tunnels),
        };
        self.store.put_relay(&record).map_err(internal)?;
        log::info!(
            "{} {name}",
            if renew {
                "renewed relay"
            } else {
                "registered relay"
            }
        );
        Ok(RelayCredentials {
            relay: name.to_string(),
            org: who.org.map(|o| o.to_string()),
            ssh_host_certificate: host_cert.to_openssh().map_err(internal)?,
            ssh_user_ca: cas
                .ssh_client()
                .public_key()
                .to_openssh()
                .map_err(internal)?,
            tls_chain: vec![pem_cert(&tls_leaf), cas.pki_server().certificate_pem()],
            tls_client_ca: cas.pki_client().certificate_pem(),
            not_after: record.cert_not_after,
            renew_after: renew_after(unix, self.config.relay_cert_secs),
            heartbeat_secs: self.config.heartbeat_secs,
        })
    }

    fn relay_heartbeat(&self, req: &Request, now: SystemTime) -> Result<HeartbeatReply, ApiError> {
        let who = self.authenticate(req, Role::Relay, now)?;
        let body = RelayHeartbeat::from_body(&req.body)?;
        let name = RelayId::new(&who.name).map_err(internal)?;
        self.store
            .relay_heartbeat(&name, unix_now(now), body.tunnels)
            .map_err(|_| not_registered("relay", &name, "/v1/relay/register"))?;
        Ok(HeartbeatReply {
            assigned_relay: None,
            heartbeat_secs: self.config.heartbeat_secs,
        })
    }

    fn revocations(&self, req: &Request, now: SystemTime) -> Result<Revocations, ApiError> {
        let who = self.authenticate(req, Role::Relay, now)?;
        let revoked = self
            .store
            .revoked(Role::Gateway, who.org.as_ref())
            .map_err(internal)?;
        Ok(Revocations {
            gateways: revoked
                .into_iter()
                .filter_map(|i| {
                    Some(RevokedGateway {
                        org: i.org?.to_string(),
                        gateway: i.name,
                        revoked_at: i.revoked_at?,
                    })
                })
                .collect(),
            poll_secs: self.config.heartbeat_secs,
        })
    }

    // ---- gateways ----------------------------------------------------------------------

    fn relay_view_parts(&self, except: (&OrgId, &GatewayId)) -> Result<RegistryParts, ApiError> {
        let relays = self.store.relays().map_err(internal)?;
        let revoked = self
            .store
            .revoked(Role::Relay, None)
            .map_err(internal)?
            .into_iter()
            .filter_map(|i| RelayId::new(&i.name).ok())
            .collect();
        let mut load = HashMap::new();
        for g in self.store.gateways().map_err(internal)? {
            if (&g.org, &g.name) != except {
                *load.entry(g.assigned_relay).or_insert(0) += 1;
            }
        }
        Ok((relays, revoked, load))
    }

    fn assign(
        &self,
        org: &OrgId,
        gateway: &GatewayId,
        pin: Option<&RelayId>,
        current: Option<&RelayId>,
        now: SystemTime,
    ) -> Result<Vec<RelayRecord>, ApiError> {
        let (relays, revoked, load) = self.relay_view_parts((org, gateway))?;
        let view = RelayView {
            relays: &relays,
            revoked: &revoked,
            load: &load,
            now: unix_now(now),
            live_secs: self.config.live_secs,
        };
        view.assign(org, pin, current).map_err(|e| match e {
            AssignError::NoLiveRelay { .. } => ApiError::new(503, e.to_string()),
            _ => ApiError::new(409, e.to_string()),
        })
    }

    fn gateway_identity(who: &IdentityRecord) -> Result<(OrgId, GatewayId), ApiError> {
        let org = who
            .org
            .clone()
            .ok_or_else(|| internal("gateway identity without an org"))?;
        Ok((org, GatewayId::new(&who.name).map_err(internal)?))
    }

    fn gateway_register(
        &self,
        req: &Request,
        now: SystemTime,
        renew: bool,
    ) -> Result<GatewayCredentials, ApiError> {
        let who = self.authenticate(req, Role::Gateway, now)?;
        let body = GatewayRegistration::from_body(&req.body)?;
        check_org_claim(body.org.as_deref(), who.org.as_ref())?;
        let (org, gw) = Self::gateway_identity(&who)?;
        let ssh_key = ssh_public_key("ssh_public_key", &body.ssh_public_key)?;
        let tls_key = tls_public_key("tls_public_key", &body.tls_public_key)?;
        let existing = self.store.gateway(&org, &gw).map_err(internal)?;
        if renew && existing.is_none() {
            return Err(not_registered("gateway", &gw, "/v1/gateway/register"));
        }
        let current = existing.as_ref().map(|e| &e.assigned_relay);
        let relays = self.assign(&org, &gw, who.relay_pin.as_ref(), current, now)?;
        let relay = relays.first().ok_or_else(|| internal("empty assignment"))?;
        let cas = self.relay_cas(relay.org.as_ref())?;
        let org_cas = self.org_cas(&org)?;
        let life = Lifetime::new(Duration::from_secs(self.config.gateway_cert_secs));
        let ssh_cert = cas
            .ssh_client()
            .issue_gateway_user(&ssh_key, &org, &gw, now, life)
            .map_err(issue_error("ssh_public_key"))?;
        let tls_leaf = org_cas
            .gateway_server
            .issue_gateway_server(&tls_key, &gw, now, life)
            .map_err(issue_error("tls_public_key"))?;
        let unix = unix_now(now);
        let record = GatewayRecord {
            org: org.clone(),
            name: gw.clone(),
            assigned_relay: relay.name.clone(),
            connected_relay: existing.as_ref().and_then(|e| e.connected_relay.clone()),
            registered_at: unix,
            cert_not_after: unix + self.config.gateway_cert_secs,
            last_heartbeat: existing.and_then(|e| e.last_heartbeat),
        };
        self.store.put_gateway(&record).map_err(internal)?;
        log::info!("gateway {gw} of org {org} assigned to relay {}", relay.name);
        Ok(GatewayCredentials {
            org: org.to_string(),
            gateway: gw.to_string(),
            relays: relays.iter().map(endpoint).collect(),
            ssh_certificate: ssh_cert.to_openssh().map_err(internal)?,
            relay_host_ca: cas
                .ssh_server()
                .public_key()
                .to_openssh()
                .map_err(internal)?,
            tls_chain: vec![
                pem_cert(&tls_leaf),
                org_cas.gateway_server.certificate_pem(),
            ],
            gateway_client_ca: org_cas.gateway_client.certificate_pem(),
            not_after: record.cert_not_after,
            renew_after: renew_after(unix, self.config.gateway_cert_secs),
            heartbeat_secs: self.config.heartbeat_secs,
        })
    }

    fn gateway_heartbeat(
        &self,
        req: &Request,
        now: SystemTime,
    ) -> Result<HeartbeatReply, ApiError> {
        let who = self.authenticate(req, Role::Gateway, now)?;
        let body = GatewayHeartbeat::from_body(&req.body)?;
        let (org, gw) = Self::gateway_identity(&who)?;
        let connected = body
            .connected_relay
            .as_deref()
            .map(RelayId::new)
            .transpose()
            .map_err(|e| ApiError::field("connected_relay", e.to_string()))?;
        let record = self
            .store
            .gateway(&org, &gw)
            .map_err(internal)?
            .ok_or_else(|| not_registered("gateway", &gw, "/v1/gateway/register"))?;
        self.store
            .gateway_heartbeat(&org, &gw, connected.as_ref(), unix_now(now))
            .map_err(internal)?;
        let pin = who.relay_pin.as_ref();
        let assigned = self
            .assign(&org, &gw, pin, Some(&record.assigned_relay), now)
            .ok()
            .and_then(|relays| relays.into_iter().next())
            .map_or(record.assigned_relay, |r| r.name);
        Ok(HeartbeatReply {
            assigned_relay: Some(assigned.to_string()),
            heartbeat_secs: self.config.heartbeat_secs,
        })
    }

    // ---- sessions ----------------------------------------------------------------------

    fn session(&self, req: &Request, now: SystemTime) -> Result<SessionCredentials, ApiError> {
        let who = self.authenticate(req, Role::Operator, now)?;
        let org = who
            .org
            .clone()
            .ok_or_else(|| internal("operator identity without an org"))?;
        let body = SessionRequest::from_body(&req.body)?;
        let gw =
            GatewayId::new(&body.gateway).map_err(|e| ApiError::field("gateway", e.to_string()))?;
        let target = Target::parse(&body.target).map_err(|e| ApiError::field("target", e))?;
        let ttl = body.ttl_secs;
        if ttl == 0 || ttl > self.config.max_session_secs {
            return Err(ApiError::field(
                "ttl_secs",
                format!(
                    "expected 1 to {} seconds, found {ttl}",
                    self.config.max_session_secs
                ),
            ));
        }
        let relay_key = tls_public_key("relay_client_key", &body.relay_client_key)?;
        let gateway_key = tls_public_key("gateway_client_key", &body.gateway_client_key)?;
        let relay = self.session_relay(&org, &gw, now)?;
        let cas = self.relay_cas(relay.org.as_ref())?;
        let org_cas = self.org_cas(&org)?;
        let session_id = random_id().map_err(internal)?;
        let permission = Permission::new(org.clone(), gw.clone(), target, &who.name, &session_id)
            .map_err(internal)?;
        let life = Lifetime::new(Duration::from_secs(ttl));
        let identity = GatewayIdentity {
            org: org.clone(),
            gateway: gw.clone(),
        };
        let relay_cert = cas
            .pki_client()
            .issue_relay_client(&relay_key, &identity, now, life)
            .map_err(issue_error("relay_client_key"))?;
        let gateway_cert = org_cas
            .gateway_client
            .issue_gateway_client(&gateway_key, &permission, now, life)
            .map_err(issue_error("gateway_client_key"))?;
        let unix = unix_now(now);
        self.store
            .record_session(&SessionRecord {
                id: session_id.clone(),
                org: org.clone(),
                gateway: gw.clone(),
                operator: who.name.clone(),
                target: body.target.clone(),
                relay: relay.name.clone(),
                issued_at: unix,
                not_after: unix + ttl,
            })
            .map_err(internal)?;
        log::info!(
            "session {session_id}: operator {} of org {org} to {} via gateway {gw}, relay {}",
            who.name,
            body.target,
            relay.name
        );
        Ok(SessionCredentials {
            session_id,
            org: org.to_string(),
            gateway: gw.to_string(),
            target: body.target,
            relay: endpoint(&relay),
            relay_client_certificate: pem_cert(&relay_cert),
            gateway_client_certificate: pem_cert(&gateway_cert),
            relay_server_ca: cas.pki_server().certificate_pem(),
            gateway_server_ca: org_cas.gateway_server.certificate_pem(),
            gateway_pin: crate::id::gateway_pin_name(&org, &gw),
            not_after: unix + ttl,
        })
    }

    /// The relay a session to `gw` goes through: the one the gateway last said it is connected
    /// to (while its heartbeats are fresh), else the one assigned to it.
    fn session_relay(
        &self,
        org: &OrgId,
        gw: &GatewayId,
        now: SystemTime,
    ) -> Result<RelayRecord, ApiError> {
        let no_such = || ApiError {
            field: Some("gateway".into()),
            ..ApiError::new(404, format!("no gateway {gw} in org {org}"))
        };
        let identity = self
            .store
            .identity(Role::Gateway, Some(org), gw.as_str())
            .map_err(internal)?
            .ok_or_else(no_such)?;
        if let Some(at) = identity.revoked_at {
            return Err(ApiError::new(
                403,
                format!("gateway {gw} in org {org} was revoked at {}", rfc3339(at)),
            ));
        }
        let record = self
            .store
            .gateway(org, gw)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::new(
                    409,
                    format!("gateway {gw} in org {org} has not registered yet"),
                )
            })?;
        let unix = unix_now(now);
        let fresh = record
            .last_heartbeat
            .is_some_and(|t| t.saturating_add(self.config.live_secs) >= unix);
        let name = match (&record.connected_relay, fresh) {
            (Some(connected), true) => connected.clone(),
            _ => record.assigned_relay.clone(),
        };
        let relay = self
            .store
            .relay(&name)
            .map_err(internal)?
            .ok_or_else(|| ApiError::new(503, format!("relay {name} is not registered")))?;
        let revoked = self
            .store
            .identity(Role::Relay, relay.org.as_ref(), name.as_str())
            .map_err(internal)?
            .and_then(|i| i.revoked_at);
        if revoked.is_some() || relay.org.as_ref().is_some_and(|o| o != org) {
            return Err(ApiError::new(
                503,
                format!("gateway {gw} has no usable relay: {name} is revoked or of another org"),
            ));
        }
        Ok(relay)
    }
}

/// Relays, revoked relay names, and gateways per relay.
type RegistryParts = (Vec<RelayRecord>, HashSet<RelayId>, HashMap<RelayId, usize>);

const ENDPOINTS: &[&str] = &[
    "/v1/health",
    "/v1/relay/register",
    "/v1/relay/renew",
    "/v1/relay/heartbeat",
    "/v1/revocations",
    "/v1/gateway/register",
    "/v1/gateway/renew",
    "/v1/gateway/heartbeat",
    "/v1/session",
];

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Lets `route` treat every reply type alike.
mod erased {
    use super::Response;

    pub(super) trait Reply {
        fn reply(&self) -> Response;
    }

    impl<T: serde::Serialize> Reply for T {
        fn reply(&self) -> Response {
            Response::json(200, self)
        }
    }
}

fn describe(i: &IdentityRecord) -> String {
    match &i.org {
        Some(org) => format!("{} {} in org {org}", i.role, i.name),
        None => format!("instance {} {}", i.role, i.name),
    }
}

fn unix_millis(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn renew_after(issued: u64, life: u64) -> u64 {
    issued + life * 2 / 3
}

fn random_id() -> Result<String, &'static str> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "system random generator failed")?;
    Ok(hex(&bytes))
}

fn endpoint(r: &RelayRecord) -> RelayEndpoint {
    RelayEndpoint {
        name: r.name.to_string(),
        org: r.org.as_ref().map(|o| o.to_string()),
        ssh_address: r.ssh_address.clone(),
        tls_address: r.tls_address.clone(),
        hostnames: r.hostnames.clone(),
    }
}

fn not_registered(what: &str, name: &dyn std::fmt::Display, path: &str) -> ApiError {
    ApiError::new(
        409,
        format!("{what} {name} has not registered; POST {path} first"),
    )
}

fn check_org_claim(claim: Option<&str>, actual: Option<&OrgId>) -> Result<(), ApiError> {
    match (claim, actual) {
        (None, _) => Ok(()),
        (Some(c), Some(a)) if c == a.as_str() => Ok(()),
        (Some(c), actual) => Err(ApiError {
            status: 403,
            ..ApiError::field(
                "org",
                format!(
                    "the token belongs to {}, not to org {c}",
                    actual.map_or("the instance".to_owned(), |a| format!("org {a}"))
                ),
            )
        }),
    }
}

fn ssh_public_key(field: &str, text: &str) -> Result<ssh_key::PublicKey, ApiError> {
    let key = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|e| ApiError::field(field, format!("expected an OpenSSH public key: {e}")))?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(ApiError::field(
            field,
            format!("expected an ssh-ed25519 key, found {}", key.algorithm()),
        ));
    }
    Ok(key)
}

fn tls_public_key(field: &str, text: &str) -> Result<SubjectKey, ApiError> {
    let parsed = if text.contains("CERTIFICATE REQUEST") {
        SubjectKey::from_csr_pem(text)
    } else {
        SubjectKey::from_spki_pem(text)
    };
    parsed.map_err(|e| {
        ApiError::field(
            field,
            format!("expected a PEM PUBLIC KEY or CERTIFICATE REQUEST: {e}"),
        )
    })
}

fn check_hostnames(names: &[String]) -> Result<(), ApiError> {
    for n in names {
        let plain = !n.is_empty() && !n.contains([',', '*']) && !n.contains(char::is_whitespace);
        if !plain || ServerName::try_from(n.as_str()).is_err() {
            return Err(ApiError::field(
                "hostnames",
                format!("{n:?} is not a DNS name or IP address"),
            ));
        }
    }
    Ok(())
}

fn check_address(field: &str, text: &str) -> Result<(), ApiError> {
    Target::parse(text)
        .map(drop)
        .map_err(|e| ApiError::field(field, format!("expected host:port: {e}")))
}

/// Maps an issuance failure: a bad subject key is the request's fault, anything else ours.
fn issue_error(field: &'static str) -> impl Fn(PkiError) -> ApiError {
    move |e| match e {
        PkiError::Subject(m) => ApiError::field(field, m),
        other => internal(other),
    }
}
