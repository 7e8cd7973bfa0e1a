//! The per-replica fallback while Redis fails (or when there is none): `governor`'s
//! GCRA in memory, at the configured limit divided by the replica count, so the
//! replicas together stay near the shared limit.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::settings::WindowSettings;

type Limiter = DefaultKeyedRateLimiter<u64, StateInformationMiddleware>;

/// One window's in-memory buckets, keyed by the hashed caller.
pub struct LocalWindow {
    limiter: Limiter,
    clock: DefaultClock,
    /// This replica's share of the window's requests.
    share: u64,
    per: Duration,
}

impl std::fmt::Debug for LocalWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWindow")
            .field("share", &self.share)
            .field("per", &self.per)
            .finish()
    }
}

/// What one window said about one request.
pub enum LocalAnswer {
    Allowed { remaining: u64 },
    Limited { wait: Duration },
}

impl LocalWindow {
    pub fn new(window: &WindowSettings, replicas: u32) -> Self {
        let replicas = u64::from(replicas.max(1));
        let share = (window.requests / replicas).max(1);
        let burst = (window.burst.unwrap_or(window.requests) / replicas).clamp(1, share);
        let period = Duration::from_nanos((window.per.as_nanos() / u128::from(share)) as u64)
            .max(Duration::from_micros(1));
        let quota = Quota::with_period(period)
            .expect("the period is positive")
            .allow_burst(NonZeroU32::new(burst.min(u64::from(u32::MAX)) as u32).expect("≥ 1"));
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota).with_middleware(),
            clock: DefaultClock::default(),
            share,
            per: window.per,
        }
    }

    pub fn check(&self, key: u64) -> LocalAnswer {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => LocalAnswer::Allowed {
                remaining: u64::from(snapshot.remaining_burst_capacity()),
            },
            Err(not_until) => LocalAnswer::Limited {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Drops buckets that are full again, so memory follows the active callers.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }

    /// This replica's share of the window.
    pub fn share(&self) -> u64 {
        self.share
    }
}
