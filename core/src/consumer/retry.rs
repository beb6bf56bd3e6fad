//! When and how often a failed message is tried again.

use std::time::Duration;

/// Exponential backoff with jitter for failed messages.
///
/// The delay before the retry that follows failed attempt `n` (1-based) is
/// `initial_delay * multiplier^(n-1)`, capped at `max_delay`, then moved at random by up to
/// `jitter` of itself in either direction.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `None` retries for ever (nothing is dropped).
    pub max_retries: Option<u32>,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Factor applied to the delay after each failure (1.0 for a fixed delay).
    pub multiplier: f64,
    /// Upper bound of the delay.
    pub max_delay: Duration,
    /// Fraction of the delay randomized, between 0.0 and 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Retries for ever: 1 s, doubling, at most 60 s, ±10 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_retries: None,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// A fixed delay between at most `max_retries` retries, without jitter.
    pub fn fixed(max_retries: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_retries: Some(max_retries),
            initial_delay: delay,
            multiplier: 1.0,
            max_delay: delay,
            jitter: 0.0,
        }
    }

    /// True when a message that failed on delivery `attempt` (1-based) may be tried again.
    pub fn allows_retry(&self, attempt: u32) -> bool {
        self.max_retries.is_none_or(|max| attempt <= max)
    }

    /// The delay before the retry that follows failed delivery `attempt` (1-based).
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_for(1), Duration::from_secs(1));
        assert_eq!(policy.delay_for(2), Duration::from_secs(2));
        assert_eq!(policy.delay_for(4), Duration::from_secs(8));
        assert_eq!(policy.delay_for(30), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::fixed(3, Duration::from_secs(10))
        };
        for _ in 0..1000 {
            let delay = policy.delay_for(1).as_secs_f64();
            assert!((5.0..=15.0).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn max_retries_counts_retries_after_the_first_attempt() {
        let policy = RetryPolicy::fixed(2, Duration::ZERO);
        assert!(policy.allows_retry(1));
        assert!(policy.allows_retry(2));
        assert!(!policy.allows_retry(3));
        assert!(RetryPolicy::default().allows_retry(u32::MAX));
    }
}
