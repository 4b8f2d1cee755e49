//! Retry delays: doubling from `initial` up to `cap`, with ±20 % jitter so
//! a fleet of agents that lost the same receiver does not retry in step.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Webhooks: 1 s, 2 s, 4 s … 60 s.
    pub const WEBHOOK: Backoff = Backoff {
        initial: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };

    /// The delay before retry number `attempt` (0 for the first), without
    /// jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The delay to wait: `base` scaled by a random factor in [0.8, 1.2],
    /// never above `cap`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base(attempt)
            .mul_f64(0.8 + 0.4 * unit_random())
            .min(self.cap)
    }
}

/// A number in [0, 1). Jitter needs spread, not cryptographic quality:
/// std's randomly keyed hasher is enough and costs no dependency.
fn unit_random() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_the_cap() {
        let schedule: Vec<u64> = (0..9).map(|n| Backoff::WEBHOOK.base(n).as_secs()).collect();
        assert_eq!(schedule, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(Backoff::WEBHOOK.base(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..10 {
            for _ in 0..50 {
                let base = Backoff::WEBHOOK.base(attempt);
                let delay = Backoff::WEBHOOK.delay(attempt);
                assert!(delay >= base.mul_f64(0.8), "{delay:?} vs {base:?}");
                assert!(delay <= base.mul_f64(1.2), "{delay:?} vs {base:?}");
                assert!(delay <= Backoff::WEBHOOK.cap);
                seen.insert(delay);
            }
        }
        assert!(seen.len() > 100, "jitter varies: {} distinct", seen.len());
    }
}
