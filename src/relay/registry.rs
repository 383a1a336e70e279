//! Routing entries: which SSH sessions carry tunnels for which certified (org, gateway).
//!
//! A gateway may hold several tunnels at once (a reconnect racing a stale session, or HA): each
//! `tcpip-forward` adds one, and new connections go to the newest first, falling back to older
//! ones if the newest does not open a channel. At most [`MAX_TUNNELS_PER_GATEWAY`] are kept; a
//! newer one pushes the oldest out. Revoked gateways are refused here and their tunnels handed
//! back for disconnection. Generic over the session handle so it can be tested without SSH.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::id::{GatewayId, OrgId};

/// Tunnels kept per gateway.
pub const MAX_TUNNELS_PER_GATEWAY: usize = 4;

/// The certified identity a tunnel is keyed by.
pub type TunnelKey = (OrgId, GatewayId);

/// One tunnel: the SSH session that asked for the forward, and what it asked for (echoed in
/// each `forwarded-tcpip` channel so the client can match it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel<H> {
    /// Registry-wide id.
    pub id: u64,
    /// The session handle.
    pub handle: H,
    /// The address the client asked to forward.
    pub bind_address: String,
    /// The port the client asked to forward (or the one assigned for 0).
    pub bind_port: u32,
}

/// Why a forward was not registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// The gateway is on the revocation list.
    Revoked,
}

#[derive(Debug)]
struct Inner<H> {
    tunnels: HashMap<TunnelKey, Vec<Tunnel<H>>>,
    revoked: HashSet<TunnelKey>,
    next: u64,
}

/// The routing table.
#[derive(Debug)]
pub struct Registry<H> {
    inner: Mutex<Inner<H>>,
}

impl<H: Clone> Default for Registry<H> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                tunnels: HashMap::new(),
                revoked: HashSet::new(),
                next: 1,
            }),
        }
    }
}

impl<H: Clone> Registry<H> {
    fn lock(&self) -> MutexGuard<'_, Inner<H>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a tunnel; returns its id and a tunnel pushed out by it (to disconnect).
    pub fn add(
        &self,
        key: &TunnelKey,
        handle: H,
        bind_address: &str,
        bind_port: u32,
    ) -> Result<(u64, Option<Tunnel<H>>), AddError> {
        let mut inner = self.lock();
        if inner.revoked.contains(key) {
            return Err(AddError::Revoked);
        }
        let id = inner.next;
        inner.next += 1;
        let list = inner.tunnels.entry(key.clone()).or_default();
        list.push(Tunnel {
            id,
            handle,
            bind_address: bind_address.to_owned(),
            bind_port,
        });
        let evicted = (list.len() > MAX_TUNNELS_PER_GATEWAY).then(|| list.remove(0));
        Ok((id, evicted))
    }

    /// Forgets one tunnel (its session ended or cancelled the forward).
    pub fn remove(&self, key: &TunnelKey, id: u64) {
        let mut inner = self.lock();
        if let Some(list) = inner.tunnels.get_mut(key) {
            list.retain(|t| t.id != id);
            if list.is_empty() {
                inner.tunnels.remove(key);
            }
        }
    }

    /// The gateway's tunnels, newest first.
    pub fn candidates(&self, key: &TunnelKey) -> Vec<Tunnel<H>> {
        let inner = self.lock();
        inner
            .tunnels
            .get(key)
            .map(|l| l.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the gateway is revoked.
    pub fn is_revoked(&self, key: &TunnelKey) -> bool {
        self.lock().revoked.contains(key)
    }

    /// Replaces the revocation list; returns the tunnels of newly revoked gateways, removed
    /// from the table, for the caller to disconnect.
    pub fn set_revoked(&self, revoked: HashSet<TunnelKey>) -> Vec<Tunnel<H>> {
        let mut inner = self.lock();
        let mut dropped = Vec::new();
        for key in &revoked {
            if let Some(list) = inner.tunnels.remove(key) {
                dropped.extend(list);
            }
        }
        inner.revoked = revoked;
        dropped
    }

    /// Tunnels up.
    pub fn tunnels(&self) -> usize {
        self.lock().tunnels.values().map(Vec::len).sum()
    }

    /// Gateways with at least one tunnel.
    pub fn gateways(&self) -> usize {
        self.lock().tunnels.len()
    }

    /// Removes and returns every tunnel (when stopping).
    pub fn drain(&self) -> Vec<Tunnel<H>> {
        self.lock().tunnels.drain().flat_map(|(_, l)| l).collect()
    }
}

/// Connections per organisation, bounded. A slot is held for the life of a splice.
#[derive(Debug)]
pub struct TenantSlots {
    max: usize,
    used: Mutex<HashMap<OrgId, usize>>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<TenantSlots>,
    org: OrgId,
}

impl TenantSlots {
    /// At most `max` concurrent connections per organisation.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OrgId, usize>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `org`, or `None` when the org is at its limit.
    pub fn take(self: &Arc<Self>, org: &OrgId) -> Option<Slot> {
        let mut used = self.lock();
        let n = used.entry(org.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            org: org.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = self.slots.lock();
        if let Some(n) = used.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                used.remove(&self.org);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(org: &str, gw: &str) -> TunnelKey {
        (OrgId::new(org).unwrap(), GatewayId::new(gw).unwrap())
    }

    #[test]
    fn newest_tunnel_first_and_a_second_one_is_accepted() {
        let r = Registry::<&str>::default();
        let (a, _) = r.add(&key("a", "g1"), "old", "", 0).unwrap();
        let (b, _) = r.add(&key("a", "g1"), "new", "", 0).unwrap();
        let c = r.candidates(&key("a", "g1"));
        assert_eq!(
            c.iter().map(|t| t.handle).collect::<Vec<_>>(),
            ["new", "old"]
        );
        r.remove(&key("a", "g1"), b);
        assert_eq!(r.candidates(&key("a", "g1"))[0].id, a);
        r.remove(&key("a", "g1"), a);
        assert!(r.candidates(&key("a", "g1")).is_empty());
        assert_eq!(r.tunnels(), 0);
    }

    #[test]
    fn never_route_to_another_key() {
        let r = Registry::<&str>::default();
        r.add(&key("a", "g1"), "a-g1", "", 0).unwrap();
        assert!(r.candidates(&key("b", "g1")).is_empty());
        assert!(r.candidates(&key("a", "g2")).is_empty());
    }

    #[test]
    fn oldest_tunnel_is_pushed_out_past_the_cap() {
        let r = Registry::<u32>::default();
        for i in 0..MAX_TUNNELS_PER_GATEWAY {
            assert!(r
                .add(&key("a", "g1"), u32::try_from(i).unwrap(), "", 0)
                .unwrap()
                .1
                .is_none());
        }
        let (_, evicted) = r.add(&key("a", "g1"), 99, "", 0).unwrap();
        assert_eq!(evicted.unwrap().handle, 0);
        assert_eq!(r.tunnels(), MAX_TUNNELS_PER_GATEWAY);
    }

    #[test]
    fn reject_revoked_gateway_and_hand_back_its_tunnels() {
        let r = Registry::<&str>::default();
        r.add(&key("a", "g1"), "t1", "", 0).unwrap();
        r.add(&key("a", "g2"), "t2", "", 0).unwrap();
        let dropped = r.set_revoked([key("a", "g1")].into_iter().collect());
        assert_eq!(dropped.iter().map(|t| t.handle).collect::<Vec<_>>(), ["t1"]);
        assert!(r.is_revoked(&key("a", "g1")));
        assert_eq!(r.add(&key("a", "g1"), "t3", "", 0), Err(AddError::Revoked));
        assert_eq!(r.tunnels(), 1);
        r.set_revoked(HashSet::new());
        assert!(
            r.add(&key("a", "g1"), "t4", "", 0).is_ok(),
            "un-revoked again"
        );
    }

    #[test]
    fn tenant_slots_are_bounded_per_org_and_freed_on_drop() {
        let slots = TenantSlots::new(2);
        let a = OrgId::new("a").unwrap();
        let s1 = slots.take(&a).unwrap();
        let _s2 = slots.take(&a).unwrap();
        assert!(slots.take(&a).is_none());
        assert!(slots.take(&OrgId::new("b").unwrap()).is_some());
        drop(s1);
        assert!(slots.take(&a).is_some());
    }
}
