//! Rate limit on failed authentication, per client address.
//!
//! Each address has a bucket of `burst` failures that refills at one failure per `refill`.
//! When the bucket is empty every authenticated request from that address is refused with 429,
//! the right token included, until the bucket refills: guessing is slowed to the refill rate.
//! Sans-IO: time is a parameter in milliseconds.

use std::collections::HashMap;
use std::net::IpAddr;

/// Tracks failures per address.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: u64,
    refill_ms: u64,
    max_tracked: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed, scaled by `refill_ms` so refill is exact integer arithmetic.
    credit: u64,
    updated_ms: u64,
}

impl FailureLimiter {
    /// Allows `burst` failures, then one more per `refill_ms`; tracks at most `max_tracked`
    /// addresses (when full, addresses whose bucket has refilled are forgotten first).
    pub fn new(burst: u64, refill_ms: u64, max_tracked: usize) -> Self {
        Self {
            burst: burst.max(1),
            refill_ms: refill_ms.max(1),
            max_tracked: max_tracked.max(1),
            buckets: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        self.burst.saturating_mul(self.refill_ms)
    }

    fn current(&self, ip: IpAddr, now_ms: u64) -> u64 {
        self.buckets.get(&ip).map_or(self.full(), |b| {
            let gained = now_ms.saturating_sub(b.updated_ms);
            b.credit.saturating_add(gained).min(self.full())
        })
    }

    /// `None` if `ip` may try to authenticate now, else the seconds until it may.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let credit = self.current(ip, now_ms);
        if credit >= self.refill_ms {
            None
        } else {
            Some((self.refill_ms - credit).div_ceil(1000).max(1))
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn fail(&mut self, ip: IpAddr, now_ms: u64) {
        let credit = self.current(ip, now_ms).saturating_sub(self.refill_ms);
        if self.buckets.len() >= self.max_tracked && !self.buckets.contains_key(&ip) {
            self.forget_refilled(now_ms);
        }
        if self.buckets.len() < self.max_tracked || self.buckets.contains_key(&ip) {
            self.buckets.insert(
                ip,
                Bucket {
                    credit,
                    updated_ms: now_ms,
                },
            );
        }
    }

    fn forget_refilled(&mut self, now_ms: u64) {
        let full = self.full();
        self.buckets
            .retain(|_, b| b.credit.saturating_add(now_ms.saturating_sub(b.updated_ms)) < full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn allows_burst_then_refuses_until_refill() {
        let mut l = FailureLimiter::new(3, 2_000, 100);
        for _ in 0..3 {
            assert_eq!(l.check(A, 0), None);
            l.fail(A, 0);
        }
        assert_eq!(l.check(A, 0), Some(2));
        assert_eq!(l.check(A, 1_000), Some(1));
        assert_eq!(l.check(B, 0), None, "another address is not affected");
        assert_eq!(l.check(A, 2_000), None, "one attempt refilled");
        l.fail(A, 2_000);
        assert!(l.check(A, 2_000).is_some());
    }

    #[test]
    fn bucket_never_exceeds_burst() {
        let mut l = FailureLimiter::new(2, 1_000, 100);
        l.fail(A, 1_000_000);
        l.fail(A, 1_000_000);
        assert!(l.check(A, 1_000_000).is_some());
        assert_eq!(l.check(A, 9_000_000), None);
        l.fail(A, 9_000_000);
        l.fail(A, 9_000_000);
        assert!(l.check(A, 9_000_000).is_some());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut l = FailureLimiter::new(1, 1_000, 2);
        l.fail(A, 0);
        l.fail(B, 0);
        let c = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));
        l.fail(c, 0);
        assert_eq!(l.buckets.len(), 2);
        l.fail(c, 5_000);
        assert!(l.buckets.contains_key(&c), "refilled entries make room");
    }
}
