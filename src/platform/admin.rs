//! What the admin command line does, as functions over an opened [`State`].
//!
//! Tokens are printed once, as enrolment strings, and only their digests are stored.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::state::State;
use super::store::{IdentityRecord, Store};
use super::token::{Enrolment, Role, Token};
use super::PlatformError;
use crate::clock::{rfc3339, span, unix_now};
use crate::id::{GatewayId, OperatorId, OrgId, RelayId};
use crate::pki::Lifetime;

const AUTHORITY_DAYS: u64 = 3650;

/// Creates an organisation and its six authorities, as one transaction: if any authority
/// cannot be created, the org is not recorded and the authorities made so far are removed.
pub fn create_org(state: &State, org: &OrgId, now: SystemTime) -> Result<(), PlatformError> {
    let authorities = &state.authorities;
    let dir = state.dir.join("authorities").join("org").join(org.as_str());
    state.store.create_org(org, unix_now(now), &mut || {
        let made = authorities.create_org(org, now, Lifetime::days(AUTHORITY_DAYS));
        if let Err(e) = &made {
            if !matches!(e, crate::pki::PkiError::AlreadyExists(_)) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        made.map(drop).map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Who a new token is for.
#[derive(Debug, Clone)]
pub struct IdentitySpec {
    /// The role.
    pub role: Role,
    /// The organisation; `None` only for an instance relay.
    pub org: Option<OrgId>,
    /// The name.
    pub name: String,
    /// For a gateway: the relay it must use (otherwise one is chosen automatically).
    pub relay_pin: Option<RelayId>,
    /// How long the token is valid, in seconds.
    pub valid_secs: u64,
}

fn usage(m: impl Into<String>) -> PlatformError {
    PlatformError::Usage(m.into())
}

fn check_spec(state: &State, spec: &IdentitySpec) -> Result<(), PlatformError> {
    let name = spec.name.as_str();
    let bad = |e: crate::id::IdError| usage(e.to_string());
    match spec.role {
        Role::Gateway => GatewayId::new(name).map(drop).map_err(bad)?,
        Role::Relay => RelayId::new(name).map(drop).map_err(bad)?,
        Role::Operator => OperatorId::new(name).map(drop).map_err(bad)?,
    }
    match (&spec.org, spec.role) {
        (None, Role::Gateway | Role::Operator) => {
            return Err(usage(format!(
                "a {} belongs to an org: pass --org",
                spec.role
            )))
        }
        (Some(org), _) if !state.store.org_exists(org)? => {
            return Err(usage(format!(
                "org {org} does not exist; create it with `postern-platform org create {org}`"
            )))
        }
        _ => {}
    }
    if spec.relay_pin.is_some() && spec.role != Role::Gateway {
        return Err(usage("--relay applies to gateways only"));
    }
    if spec.role == Role::Relay {
        if let Some(other) = find_relay(state.store.as_ref(), name)? {
            return Err(usage(format!(
                "relay names are unique across orgs, and {} exists",
                describe(&other)
            )));
        }
    }
    Ok(())
}

fn issue(
    state: &State,
    spec: &IdentitySpec,
    now: SystemTime,
) -> Result<(IdentityRecord, Enrolment), PlatformError> {
    let token = Token::generate().map_err(|e| usage(e.to_string()))?;
    let unix = unix_now(now);
    let record = IdentityRecord {
        role: spec.role,
        org: spec.org.clone(),
        name: spec.name.clone(),
        token_id: token.id().to_owned(),
        token_digest: token.digest().to_vec(),
        expires_at: unix.saturating_add(spec.valid_secs),
        created_at: unix,
        revoked_at: None,
        relay_pin: spec.relay_pin.clone(),
    };
    let enrolment = Enrolment {
        token,
        api_ca: state.api_ca.fingerprint(),
    };
    Ok((record, enrolment))
}

/// Creates an identity and returns its enrolment string (shown once, never stored).
pub fn create_identity(
    state: &State,
    spec: &IdentitySpec,
    now: SystemTime,
) -> Result<Enrolment, PlatformError> {
    check_spec(state, spec)?;
    let (record, enrolment) = issue(state, spec, now)?;
    state.store.create_identity(&record)?;
    Ok(enrolment)
}

/// Replaces an identity's token; the old one stops working at once.
pub fn rotate_identity(
    state: &State,
    spec: &IdentitySpec,
    now: SystemTime,
) -> Result<Enrolment, PlatformError> {
    let (record, enrolment) = issue(state, spec, now)?;
    state.store.rotate_identity(&record)?;
    Ok(enrolment)
}

fn find_relay(store: &dyn Store, name: &str) -> Result<Option<IdentityRecord>, PlatformError> {
    Ok(store
        .identities(Role::Relay)?
        .into_iter()
        .find(|i| i.name == name))
}

/// Revokes a gateway: its token stops working, no session to it is issued, and relays drop
/// its tunnel at their next revocation poll.
pub fn revoke_gateway(
    state: &State,
    org: &OrgId,
    name: &GatewayId,
    now: SystemTime,
) -> Result<(), PlatformError> {
    state
        .store
        .revoke(Role::Gateway, Some(org), name.as_str(), unix_now(now))?;
    Ok(())
}

/// Revokes a relay: its token stops working and no gateway or session is sent to it.
pub fn revoke_relay(state: &State, name: &RelayId, now: SystemTime) -> Result<(), PlatformError> {
    let found = find_relay(state.store.as_ref(), name.as_str())?
        .ok_or_else(|| usage(format!("no relay named {name}")))?;
    state.store.revoke(
        Role::Relay,
        found.org.as_ref(),
        name.as_str(),
        unix_now(now),
    )?;
    Ok(())
}

fn describe(i: &IdentityRecord) -> String {
    match &i.org {
        Some(org) => format!("{} {} of org {org}", i.role, i.name),
        None => format!("instance {} {}", i.role, i.name),
    }
}

fn ago(t: Option<u64>, now: u64) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!("{} ago", span(now.saturating_sub(t))),
    }
}

fn state_of(
    i: &IdentityRecord,
    registered: bool,
    heartbeat: Option<u64>,
    now: u64,
    live: u64,
) -> &'static str {
    if i.revoked_at.is_some() {
        "revoked"
    } else if now >= i.expires_at {
        "token-expired"
    } else if !registered {
        "unregistered"
    } else if heartbeat.is_some_and(|t| t.saturating_add(live) >= now) {
        "live"
    } else {
        "silent"
    }
}

/// The relay table: name, scope, state, addresses, tunnels, last heartbeat, certificate expiry.
pub fn relay_list(state: &State, now: SystemTime, live_secs: u64) -> Result<String, PlatformError> {
    let now = unix_now(now);
    let relays = state.store.relays()?;
    let mut out =
        String::from("RELAY\tSCOPE\tSTATE\tSSH\tTLS\tTUNNELS\tLAST-HEARTBEAT\tCERT-EXPIRES\n");
    for i in state.store.identities(Role::Relay)? {
        let r = relays.iter().find(|r| r.name.as_str() == i.name);
        let scope = i
            .org
            .as_ref()
            .map_or("instance".to_owned(), |o| format!("org {o}"));
        let heartbeat = r.and_then(|r| r.last_heartbeat);
        let _ = writeln!(
            out,
            "{}\t{scope}\t{}\t{}\t{}\t{}\t{}\t{}",
            i.name,
            state_of(&i, r.is_some(), heartbeat, now, live_secs),
            r.map_or("-", |r| r.ssh_address.as_str()),
            r.map_or("-", |r| r.tls_address.as_str()),
            r.map_or(0, |r| r.tunnels),
            ago(heartbeat, now),
            r.map_or("-".into(), |r| rfc3339(r.cert_not_after)),
        );
    }
    Ok(out)
}

/// The gateway table: org, name, state, assigned and connected relay, last heartbeat, expiry.
pub fn gateway_list(
    state: &State,
    org: Option<&OrgId>,
    now: SystemTime,
    live_secs: u64,
) -> Result<String, PlatformError> {
    let now = unix_now(now);
    let gateways = state.store.gateways()?;
    let mut out =
        String::from("ORG\tGATEWAY\tSTATE\tASSIGNED\tCONNECTED\tLAST-HEARTBEAT\tCERT-EXPIRES\n");
    for i in state.store.identities(Role::Gateway)? {
        if org.is_some() && i.org.as_ref() != org {
            continue;
        }
        let g = gateways
            .iter()
            .find(|g| Some(&g.org) == i.org.as_ref() && g.name.as_str() == i.name);
        let heartbeat = g.and_then(|g| g.last_heartbeat);
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            i.org.as_ref().map_or("-", OrgId::as_str),
            i.name,
            state_of(&i, g.is_some(), heartbeat, now, live_secs),
            g.map_or("-", |g| g.assigned_relay.as_str()),
            g.and_then(|g| g.connected_relay.as_ref())
                .map_or("-", RelayId::as_str),
            ago(heartbeat, now),
            g.map_or("-".into(), |g| rfc3339(g.cert_not_after)),
        );
    }
    Ok(out)
}

/// The organisation table.
pub fn org_list(state: &State) -> Result<String, PlatformError> {
    let mut out = String::from("ORG\tCREATED\n");
    for (org, created) in state.store.orgs()? {
        let _ = writeln!(out, "{org}\t{}", rfc3339(created));
    }
    Ok(out)
}
