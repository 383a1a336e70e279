//! Reconnect delays: capped exponential backoff with jitter, so a fleet of gateways that lost
//! the same relay does not come back in one storm. Pure: the caller supplies the randomness.

use std::time::Duration;

/// Backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `unit` in `[0, 1]` picks a point in the upper half of
    /// the current step ("equal jitter"), so the delay is never less than half the step.
    pub fn next(&mut self, unit: f64) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let step = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// After a success: the next failure starts again at `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random number in `[0, 1]` from the system generator (0.5 if it fails).
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.next(1.0), Duration::from_secs(1));
        assert_eq!(b.next(0.0), Duration::from_secs(1));
        assert_eq!(b.next(1.0), Duration::from_secs(4));
        for _ in 0..40 {
            let d = b.next(1.0);
            assert!(d <= Duration::from_secs(30));
        }
        assert_eq!(b.next(0.0), Duration::from_secs(15));
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_secs(1));
    }

    #[test]
    fn random_unit_stays_in_range() {
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..=1.0).contains(&u));
        }
    }
}
