//! Which relay a gateway uses. Pure: the registry's rows and `now` in, a choice out.
//!
//! A relay is *open* to an org when it is the org's own relay or an instance relay, and is not
//! revoked; it is *live* when its last heartbeat is at most `live_secs` old. The rules, in
//! order:
//! 1. a relay the operator pinned for the gateway (it must be open, live or not);
//! 2. the gateway's current relay, while it is live (no churn);
//! 3. the least-loaded live org relay, else the least-loaded live instance relay.
//!
//! Alongside the choice come the other live relays of the same kind (same org, or instance):
//! they share its SSH authorities, so the gateway may fail over to them with the same certificate.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::store::RelayRecord;
use crate::id::{OrgId, RelayId};

/// Why no relay could be assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssignError {
    /// The pinned relay is unknown, revoked, or belongs to another org.
    PinnedRelayUnusable {
        /// The relay.
        relay: RelayId,
        /// Why.
        reason: &'static str,
    },
    /// No open relay has sent a heartbeat recently.
    NoLiveRelay {
        /// The org.
        org: OrgId,
    },
}

impl fmt::Display for AssignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PinnedRelayUnusable { relay, reason } => {
                write!(f, "the gateway is pinned to relay {relay}, which {reason}")
            }
            Self::NoLiveRelay { org } => write!(
                f,
                "no live relay is open to org {org}: start an org or instance relay and let it \
                 register"
            ),
        }
    }
}

/// The registry as assignment sees it.
#[derive(Debug)]
pub struct RelayView<'a> {
    /// Every registered relay.
    pub relays: &'a [RelayRecord],
    /// Names of revoked relays.
    pub revoked: &'a HashSet<RelayId>,
    /// Gateways currently assigned to each relay.
    pub load: &'a HashMap<RelayId, usize>,
    /// Unix time now.
    pub now: u64,
    /// How recent a heartbeat must be.
    pub live_secs: u64,
}

impl RelayView<'_> {
    /// Whether `relay` is open to `org`.
    pub fn open_to(&self, relay: &RelayRecord, org: &OrgId) -> bool {
        !self.revoked.contains(&relay.name) && relay.org.as_ref().is_none_or(|o| o == org)
    }

    /// Whether `relay` sent a heartbeat recently.
    pub fn live(&self, relay: &RelayRecord) -> bool {
        relay
            .last_heartbeat
            .is_some_and(|t| t.saturating_add(self.live_secs) >= self.now)
    }

    fn find(&self, name: &RelayId) -> Option<&RelayRecord> {
        self.relays.iter().find(|r| &r.name == name)
    }

    /// The relays a gateway of `org` should use, chosen first.
    pub fn assign(
        &self,
        org: &OrgId,
        pin: Option<&RelayId>,
        current: Option<&RelayId>,
    ) -> Result<Vec<RelayRecord>, AssignError> {
        let chosen = match pin {
            Some(pin) => self.pinned(org, pin)?,
            None => match current.and_then(|c| self.find(c)) {
                Some(c) if self.open_to(c, org) && self.live(c) => c,
                _ => self.least_loaded(org)?,
            },
        };
        let mut out = vec![chosen.clone()];
        out.extend(
            self.relays
                .iter()
                .filter(|r| r.name != chosen.name && r.org == chosen.org)
                .filter(|r| self.open_to(r, org) && self.live(r))
                .cloned(),
        );
        Ok(out)
    }

    fn pinned(&self, org: &OrgId, pin: &RelayId) -> Result<&RelayRecord, AssignError> {
        let unusable = |reason| AssignError::PinnedRelayUnusable {
            relay: pin.clone(),
            reason,
        };
        let relay = self.find(pin).ok_or(unusable("has not registered"))?;
        if self.revoked.contains(pin) {
            return Err(unusable("is revoked"));
        }
        if !self.open_to(relay, org) {
            return Err(unusable("belongs to another org"));
        }
        Ok(relay)
    }

    fn least_loaded(&self, org: &OrgId) -> Result<&RelayRecord, AssignError> {
        let candidates = |own: bool| {
            self.relays
                .iter()
                .filter(move |r| r.org.is_some() == own)
                .filter(|r| self.open_to(r, org) && self.live(r))
                .min_by_key(|r| (self.load.get(&r.name).copied().unwrap_or(0), r.name.clone()))
        };
        candidates(true)
            .or_else(|| candidates(false))
            .ok_or_else(|| AssignError::NoLiveRelay { org: org.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(name: &str, org: Option<&str>, heartbeat: Option<u64>) -> RelayRecord {
        RelayRecord {
            name: RelayId::new(name).unwrap(),
            org: org.map(|o| OrgId::new(o).unwrap()),
            ssh_address: "h:22".into(),
            tls_address: "h:443".into(),
            hostnames: vec!["h".into()],
            registered_at: 0,
            cert_not_after: 0,
            last_heartbeat: heartbeat,
            tunnels: 0,
        }
    }

    fn id(s: &str) -> RelayId {
        RelayId::new(s).unwrap()
    }

    fn names(v: &[RelayRecord]) -> Vec<&str> {
        v.iter().map(|r| r.name.as_str()).collect()
    }

    struct Fixture {
        relays: Vec<RelayRecord>,
        revoked: HashSet<RelayId>,
        load: HashMap<RelayId, usize>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                relays: vec![
                    relay("inst1", None, Some(100)),
                    relay("inst2", None, Some(100)),
                    relay("a1", Some("a"), Some(100)),
                    relay("a2", Some("a"), Some(10)),
                    relay("b1", Some("b"), Some(100)),
                ],
                revoked: HashSet::new(),
                load: HashMap::new(),
            }
        }
        fn view(&self) -> RelayView<'_> {
            RelayView {
                relays: &self.relays,
                revoked: &self.revoked,
                load: &self.load,
                now: 100,
                live_secs: 30,
            }
        }
    }

    fn org(s: &str) -> OrgId {
        OrgId::new(s).unwrap()
    }

    #[test]
    fn org_relays_come_before_instance_relays() {
        let f = Fixture::new();
        let got = f.view().assign(&org("a"), None, None).unwrap();
        assert_eq!(
            names(&got),
            ["a1"],
            "a2 is not live, instance relays are another kind"
        );
        let got = f.view().assign(&org("c"), None, None).unwrap();
        assert_eq!(names(&got), ["inst1", "inst2"]);
    }

    #[test]
    fn never_assign_another_orgs_relay() {
        let f = Fixture::new();
        let got = f.view().assign(&org("a"), None, Some(&id("b1"))).unwrap();
        assert_eq!(names(&got), ["a1"]);
        let err = f
            .view()
            .assign(&org("a"), Some(&id("b1")), None)
            .unwrap_err();
        assert!(matches!(err, AssignError::PinnedRelayUnusable { .. }));
    }

    #[test]
    fn least_loaded_and_current_kept() {
        let mut f = Fixture::new();
        f.load.insert(id("inst1"), 5);
        let got = f.view().assign(&org("c"), None, None).unwrap();
        assert_eq!(names(&got)[0], "inst2");
        let got = f
            .view()
            .assign(&org("c"), None, Some(&id("inst1")))
            .unwrap();
        assert_eq!(names(&got)[0], "inst1", "a live current relay is kept");
    }

    #[test]
    fn revoked_and_dead_relays_are_skipped_but_pins_need_not_be_live() {
        let mut f = Fixture::new();
        f.revoked.insert(id("a1"));
        let got = f.view().assign(&org("a"), None, None).unwrap();
        assert_eq!(names(&got), ["inst1", "inst2"]);
        let got = f.view().assign(&org("a"), Some(&id("a2")), None).unwrap();
        assert_eq!(names(&got), ["a2"]);
        let err = f
            .view()
            .assign(&org("a"), Some(&id("a1")), None)
            .unwrap_err();
        assert!(err.to_string().contains("revoked"));
    }

    #[test]
    fn no_live_relay_is_an_error_naming_the_org() {
        let f = Fixture {
            relays: vec![relay("a2", Some("a"), Some(10))],
            revoked: HashSet::new(),
            load: HashMap::new(),
        };
        let err = f.view().assign(&org("a"), None, None).unwrap_err();
        assert_eq!(err, AssignError::NoLiveRelay { org: org("a") });
    }
}
