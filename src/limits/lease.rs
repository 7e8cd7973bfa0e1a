//! Reserved cells, so a busy caller far from its limit does not cost a Redis round trip
//! per request: with a decision the script also reserves a few cells for this replica
//! (charged in Redis at once, so replicas together never admit more than the limit),
//! and the next requests spend them here. The reservation follows the caller's demand
//! (as many cells as the caller sent requests in the current second, at most
//! [`MAX_RESERVATION`]) and never
//! exceeds `remaining / (2 × replicas)`, so near the limit every decision is made in
//! Redis again. A refusal is remembered until its `Retry-After`: the GCRA never lets a
//! refused caller in earlier, so refusals cost no round trip either.
//!
//! Cells reserved and not spent (a caller that went quiet) are simply not given back:
//! at worst the caller is refused a little early, never admitted beyond the limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gcra::{Verdict, WindowState};

/// The most cells one decision reserves.
pub const MAX_RESERVATION: u64 = 64;

/// One caller's reservation on one route and tier, in this replica.
#[derive(Default)]
struct Lease {
    /// Cells reserved in Redis, not yet spent here.
    reserved: u64,
    /// Requests in the current second, and when it began: the caller's demand.
    in_second: u64,
    second_began: Option<Instant>,
    /// Redis's answer at the last decision (remaining excludes `reserved`).
    known: Vec<WindowState>,
    /// When it was given.
    decided_at: Option<Instant>,
    /// Refused until then.
    denied_until: Option<Instant>,
}

/// What this replica can say without Redis.
pub enum Spend {
    /// Answered here.
    Local(Verdict),
    /// Ask Redis, reserving up to `want` more cells.
    Ask { want: u64 },
}

/// Identifies a lease: route index, tier (by address), hashed caller.
pub type LeaseKey = (usize, usize, u64);

/// Every lease of this replica, bounded and forgotten when idle.
pub struct Leases {
    leases: moka::sync::Cache<LeaseKey, Arc<Mutex<Lease>>>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            leases: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }
}

impl Leases {
    fn lease(&self, key: LeaseKey) -> Arc<Mutex<Lease>> {
        self.leases.get_with(key, Default::default)
    }

    /// Spends a reserved cell or repeats a standing refusal, else says what to ask for.
    pub fn spend(&self, key: LeaseKey) -> Spend {
        let lease = self.lease(key);
        let mut lease = lease.lock().expect("lease lock");
        let now = Instant::now();
        if lease
            .second_began
            .is_none_or(|began| now - began >= Duration::from_secs(1))
        {
            lease.second_began = Some(now);
            lease.in_second = 0;
        }
        lease.in_second += 1;
        // Cells already charged in Redis are spent first, even after a refusal.
        if lease.reserved > 0 {
            lease.reserved -= 1;
            let elapsed = lease.decided_at.map_or(Duration::ZERO, |at| now - at);
            let reserved = lease.reserved;
            let windows = lease
                .known
                .iter()
                .map(|w| WindowState {
                    remaining: w.remaining + reserved,
                    reset: w.reset.saturating_sub(elapsed),
                })
                .collect();
            return Spend::Local(Verdict {
                allowed: true,
                retry_after: Duration::ZERO,
                windows,
                reserved: 0,
            });
        }
        if let Some(until) = lease.denied_until {
            if now < until {
                // Another decision may have landed since; the refusal is what stands.
                let windows = lease
                    .known
                    .iter()
                    .map(|w| WindowState {
                        remaining: 0,
                        reset: w.reset,
                    })
                    .collect();
                return Spend::Local(Verdict {
                    allowed: false,
                    retry_after: until - now,
                    windows,
                    reserved: 0,
                });
            }
            lease.denied_until = None;
        }
        Spend::Ask {
            want: (lease.in_second - 1).min(MAX_RESERVATION),
        }
    }

    /// The cells this replica holds for the caller, and how long a standing refusal
    /// lasts (read only: nothing is spent or created).
    pub fn held(&self, key: LeaseKey) -> (u64, Option<Duration>) {
        let Some(lease) = self.leases.get(&key) else {
            return (0, None);
        };
        let lease = lease.lock().expect("lease lock");
        let now = Instant::now();
        let refused = lease
            .denied_until
            .filter(|until| *until > now)
            .map(|until| until - now);
        (lease.reserved, refused)
    }

    /// Records Redis's decision (and what it reserved) for the next requests.
    pub fn settle(&self, key: LeaseKey, verdict: &Verdict) {
        let lease = self.lease(key);
        let mut lease = lease.lock().expect("lease lock");
        let now = Instant::now();
        lease.decided_at = Some(now);
        lease.known = verdict.windows.clone();
        if verdict.allowed {
            lease.reserved += verdict.reserved;
        } else {
            lease.denied_until = Some(now + verdict.retry_after);
        }
    }

    /// Forgets every lease (Redis failed: its counts may be gone with it).
    pub fn clear(&self) {
        self.leases.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(allowed: bool, reserved: u64, remaining: u64) -> Verdict {
        Verdict {
            allowed,
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_secs(3)
            },
            windows: vec![WindowState {
                remaining,
                reset: Duration::from_secs(60),
            }],
            reserved,
        }
    }

    #[test]
    fn reservations_follow_demand_and_refusals_stand_until_retry_after() {
        let leases = Leases::default();
        let key = (0, 0, 7);
        // Demand grows with the requests of the current second.
        assert!(matches!(leases.spend(key), Spend::Ask { want: 0 }));
        leases.settle(key, &verdict(true, 0, 90));
        assert!(matches!(leases.spend(key), Spend::Ask { want: 1 }));
        leases.settle(key, &verdict(true, 0, 89));
        assert!(matches!(leases.spend(key), Spend::Ask { want: 2 }));
        leases.settle(key, &verdict(true, 2, 86));
        for left in [87, 86] {
            match leases.spend(key) {
                Spend::Local(v) => {
                    assert!(v.allowed);
                    assert_eq!(v.windows[0].remaining, left);
                }
                Spend::Ask { .. } => panic!("a reserved cell was not spent"),
            }
        }
        assert!(matches!(leases.spend(key), Spend::Ask { want: 5 }));
        leases.settle(key, &verdict(false, 0, 0));
        match leases.spend(key) {
            Spend::Local(v) => {
                assert!(!v.allowed);
                assert!(v.retry_after > Duration::from_secs(2));
            }
            Spend::Ask { .. } => panic!("a standing refusal asked Redis again"),
        }
    }
}
