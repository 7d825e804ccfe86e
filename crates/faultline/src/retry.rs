//! Retry backoff: `min(base · 2^(attempt−1), cap)`, with jitter. Pure, so it is unit-tested
//! without a database.

use std::time::Duration;

use rand::Rng;

/// How the computed delay is randomised, so that jobs failing together do not retry in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// No randomness: exactly `min(base · 2^(attempt−1), cap)`.
    None,
    /// Uniform in `[d/2, d)`. The default: the delay still grows strictly from one attempt to the
    /// next (until the cap), because attempt `n+1`'s lower bound is attempt `n`'s upper bound.
    Equal,
    /// Uniform in `[0, d)`: the widest spread, but consecutive delays may shrink.
    Full,
}

/// A retry backoff policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second attempt (before jitter).
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 1 s base, 1 h cap, equal jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            jitter: Jitter::Equal,
        }
    }
}

impl Backoff {
    /// The un-jittered delay after failed attempt `attempt` (1-based; 0 is treated as 1):
    /// `min(base · 2^(attempt−1), cap)`. Never overflows: large attempt numbers give `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        let factor = 1u32.checked_shl(exponent).filter(|_| exponent < 32);
        factor
            .and_then(|f| self.base.checked_mul(f))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay after failed attempt `attempt`, jittered with `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let (low, spread) = match self.jitter {
            Jitter::None => return ceiling,
            Jitter::Equal => (ceiling / 2, ceiling - ceiling / 2),
            Jitter::Full => (Duration::ZERO, ceiling),
        };
        if spread.is_zero() {
            return low;
        }
        // Uniform in [low, low + spread): the upper bound is exclusive, which is what keeps equal
        // jitter strictly growing.
        let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        low + Duration::from_nanos(rng.gen_range(0..nanos))
    }

    /// The delay after failed attempt `attempt`, jittered with the thread's RNG.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn ceiling_doubles_from_base_until_cap() {
        let b = policy(Jitter::None);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(400));
        assert_eq!(b.ceiling(10), Duration::from_millis(51_200));
        assert_eq!(b.ceiling(11), Duration::from_secs(60));
    }

    #[test]
    fn huge_attempt_numbers_give_the_cap_without_overflow() {
        let b = Backoff {
            base: Duration::from_secs(u64::MAX / 4),
            cap: Duration::from_secs(3600),
            jitter: Jitter::Equal,
        };
        for attempt in [2, 3, 31, 32, 33, 64, 65, 1000, u32::MAX] {
            assert_eq!(b.ceiling(attempt), Duration::from_secs(3600), "{attempt}");
            assert!(b.delay(attempt) <= Duration::from_secs(3600));
        }
        let small = policy(Jitter::Full);
        assert_eq!(small.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn equal_jitter_stays_in_upper_half_and_grows_strictly() {
        let b = policy(Jitter::Equal);
        let mut rng = rand::thread_rng();
        for _ in 0..2_000 {
            let mut previous = Duration::ZERO;
            for attempt in 1..=9 {
                let d = b.delay_with(attempt, &mut rng);
                let ceiling = b.ceiling(attempt);
                assert!(d >= ceiling / 2 && d < ceiling, "{attempt}: {d:?}");
                assert!(d > previous, "attempt {attempt}: {d:?} <= {previous:?}");
                previous = d;
            }
        }
    }

    #[test]
    fn full_jitter_stays_below_ceiling() {
        let b = policy(Jitter::Full);
        let mut rng = rand::thread_rng();
        for attempt in 1..=20 {
            let d = b.delay_with(attempt, &mut rng);
            assert!(d < b.ceiling(attempt));
        }
    }

    #[test]
    fn zero_base_gives_zero_delay() {
        let b = Backoff {
            base: Duration::ZERO,
            cap: Duration::from_secs(1),
            jitter: Jitter::Equal,
        };
        assert_eq!(b.delay(5), Duration::ZERO);
    }
}
