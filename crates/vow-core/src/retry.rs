//! Where retries get decided: backoff delays and the retry-or-dead decision.

use crate::{Backoff, Timestamp};

/// What happens to a job after a failed attempt (a worker's `fail` or a lease expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to `scheduled`, to run again at `run_at`.
    Retry {
        /// When the next attempt may start.
        run_at: Timestamp,
    },
    /// Out of attempts, or the failure was not retryable: `dead`.
    Dead,
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based), given
    /// `jitter` drawn uniformly from `[0, 1)`: full jitter over the exponential ceiling.
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = attempt.saturating_sub(1).min(1_000) as i32;
        let ceiling = (self.initial_ms as f64) * self.multiplier.max(1.0).powi(exp);
        let ceiling = ceiling.min(self.max_ms as f64).max(0.0);
        (ceiling * jitter.clamp(0.0, 1.0)) as u64
    }
}

/// Decides the fate of a job whose attempt number `attempt` just failed.
///
/// A lease expiry counts as a failed, retryable attempt. `retry_after_ms`, when the worker
/// gives it, replaces the backoff delay (but never revives a job out of attempts).
pub fn after_failure(
    attempt: u32,
    max_attempts: u32,
    retryable: bool,
    retry_after_ms: Option<u64>,
    backoff: &Backoff,
    now: Timestamp,
    jitter: f64,
) -> AfterFailure {
    if !retryable || attempt >= max_attempts {
        return AfterFailure::Dead;
    }
    let delay = retry_after_ms.unwrap_or_else(|| backoff.delay_ms(attempt, jitter));
    AfterFailure::Retry {
        run_at: now.plus_ms(delay.min(i64::MAX as u64) as i64),
    }
}

/// A fresh jitter draw in `[0, 1)` for [`after_failure`].
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delay_grows_then_caps() {
        let b = Backoff {
            initial_ms: 1_000,
            max_ms: 10_000,
            multiplier: 2.0,
        };
        assert_eq!(b.delay_ms(1, 1.0), 1_000);
        assert_eq!(b.delay_ms(2, 1.0), 2_000);
        assert_eq!(b.delay_ms(4, 1.0), 8_000);
        assert_eq!(b.delay_ms(5, 1.0), 10_000);
        assert_eq!(b.delay_ms(50, 1.0), 10_000);
        assert_eq!(b.delay_ms(3, 0.0), 0);
        assert_eq!(b.delay_ms(3, 0.5), 2_000);
    }

    #[test]
    fn non_retryable_or_exhausted_is_dead() {
        let b = Backoff::default();
        let now = Timestamp(0);
        assert_eq!(
            after_failure(1, 5, false, None, &b, now, 0.5),
            AfterFailure::Dead
        );
        assert_eq!(
            after_failure(5, 5, true, None, &b, now, 0.5),
            AfterFailure::Dead
        );
        assert_eq!(
            after_failure(5, 5, true, Some(10), &b, now, 0.5),
            AfterFailure::Dead
        );
        assert_eq!(
            after_failure(2, 5, true, Some(10), &b, now, 0.5),
            AfterFailure::Retry {
                run_at: Timestamp(10)
            }
        );
    }

    proptest! {
        #[test]
        fn delay_is_within_full_jitter_bounds(
            initial in 0u64..100_000, max in 0u64..10_000_000, mult in 1.0f64..10.0,
            attempt in 1u32..200, jitter in 0.0f64..1.0,
        ) {
            let b = Backoff { initial_ms: initial, max_ms: max, multiplier: mult };
            let d = b.delay_ms(attempt, jitter);
            prop_assert!(d <= max);
            prop_assert!(d as f64 <= initial as f64 * mult.powi(attempt as i32 - 1) + 1.0);
        }
    }
}
