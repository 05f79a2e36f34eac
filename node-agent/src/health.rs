//! The agent's health: readiness from the outcomes of its passes, the
//! backoff between retries of failed ones, and what `/healthz` and
//! `/readyz` read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    /// Set by a pass in which every output succeeded; cleared after
    /// [`UNREADY_AFTER_FAILED_PASSES`] failed passes in a row.
    pub ready: AtomicBool,
    /// Unix seconds of the last loop iteration.
    pub last_loop: AtomicU64,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Delay before retrying after `failures` consecutive failed passes:
/// 100 ms doubling up to 30 s, each scaled by a random factor in
/// [0.5, 1.0) so agents failing together do not retry in lockstep.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    let exp = BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX);
    exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from std's randomly keyed hasher: enough for jitter.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_secs());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Unready after this many consecutive failed passes. With the backoff
/// above, five failures span at least 0.75 s of retries: a transient
/// failure (a netlink EBUSY, nft racing another writer) recovers before
/// that without flapping readiness, while a persistent one shows within
/// seconds rather than after a resync period.
pub const UNREADY_AFTER_FAILED_PASSES: u32 = 5;

/// Readiness from pass outcomes: ready after a good pass, unready after
/// [`UNREADY_AFTER_FAILED_PASSES`] failed ones in a row.
#[derive(Debug, Default)]
pub struct Readiness {
    failed_in_a_row: u32,
}

impl Readiness {
    /// Records one pass; returns whether the agent is ready now, or `None`
    /// when this pass does not change it.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failed_in_a_row = 0;
            return Some(true);
        }
        self.failed_in_a_row += 1;
        (self.failed_in_a_row >= UNREADY_AFTER_FAILED_PASSES).then_some(false)
    }

    /// Consecutive failed passes so far.
    pub fn failures(&self) -> u32 {
        self.failed_in_a_row
    }

    /// Records one finished pass in `health`, logging when readiness
    /// changes; after a failed pass, the delay before retrying it.
    pub fn report(&mut self, health: &Health, ok: bool, node: &str, elapsed: Duration) -> Option<Duration> {
        let was_ready = health.ready.load(Ordering::Relaxed);
        match self.record(ok) {
            Some(true) if !was_ready => {
                health.ready.store(true, Ordering::Relaxed);
                tracing::info!(node = %node, elapsed_ms = elapsed.as_millis() as u64, "sync complete: ready");
            }
            Some(false) if was_ready => {
                health.ready.store(false, Ordering::Relaxed);
                tracing::warn!(node = %node, passes = self.failures(), "consecutive passes failed: not ready");
            }
            _ => {}
        }
        (!ok).then(|| {
            let delay = backoff(self.failures(), jitter());
            tracing::info!(node = %node, delay_ms = delay.as_millis() as u64, "retrying the failed outputs");
            delay
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_30s_with_jitter() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(1, 1.0), ms(100));
        assert_eq!(backoff(2, 1.0), ms(200));
        assert_eq!(backoff(4, 1.0), ms(800));
        assert_eq!(backoff(9, 1.0), Duration::from_secs(25) + ms(600));
        assert_eq!(backoff(10, 1.0), Duration::from_secs(30), "capped");
        assert_eq!(backoff(1000, 1.0), Duration::from_secs(30), "no overflow");
        assert_eq!(backoff(1, 0.0), ms(50), "jitter takes off at most half");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn unready_after_consecutive_failures_and_ready_after_one_good_pass() {
        let mut r = Readiness::default();
        assert_eq!(r.record(true), Some(true));
        for _ in 1..UNREADY_AFTER_FAILED_PASSES {
            assert_eq!(r.record(false), None, "a few failures do not flap readiness");
        }
        assert_eq!(r.record(false), Some(false));
        assert_eq!(r.record(false), Some(false));
        assert_eq!(r.failures(), UNREADY_AFTER_FAILED_PASSES + 1);
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.failures(), 0);
        assert_eq!(r.record(false), None, "the count starts again");
    }
}
