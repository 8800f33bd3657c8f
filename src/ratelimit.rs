//! Rate limits: per principal (API key, or user for JWTs) with the values for the
//! `X-RateLimit-*` headers, and login throttling per client IP and per username.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A principal's limiter and when it was last used.
type Tracked = (Arc<Limiter>, Instant);

/// What the headers say after a request was counted.
#[derive(Debug, Clone, Copy)]
pub struct RateStatus {
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the allowance is full again.
    pub reset: u64,
}

/// The request was refused.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub status: RateStatus,
    pub retry_after_secs: u64,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1) is non-zero"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub struct RateLimits {
    default_per_minute: u32,
    /// Each principal's limiter and when it was last used (idle ones are pruned).
    principals: Mutex<HashMap<(String, u32), Tracked>>,
    login_ip: DefaultKeyedRateLimiter<String>,
    login_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(default_per_minute: u32, login_per_minute: u32) -> Self {
        Self {
            default_per_minute: default_per_minute.max(1),
            principals: Mutex::new(HashMap::new()),
            login_ip: RateLimiter::keyed(per_minute(login_per_minute)),
            login_user: RateLimiter::keyed(per_minute(login_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request for `key`, with `override_per_minute` replacing the default.
    pub fn check(
        &self,
        key: &str,
        override_per_minute: Option<u32>,
    ) -> Result<RateStatus, Limited> {
        let limit = override_per_minute
            .unwrap_or(self.default_per_minute)
            .max(1);
        let limiter = {
            let mut map = self.principals.lock().expect("rate limit map lock");
            let entry = map.entry((key.to_string(), limit)).or_insert_with(|| {
                (
                    Arc::new(RateLimiter::direct(per_minute(limit)).with_middleware()),
                    Instant::now(),
                )
            });
            entry.1 = Instant::now();
            entry.0.clone()
        };
        // One token comes back every 60/limit seconds.
        let per_token = Duration::from_secs_f64(60.0 / limit as f64);
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = per_token * (limit - remaining);
                Ok(RateStatus {
                    limit,
                    remaining,
                    reset: unix_now() + ceil_secs(refill),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry = ceil_secs(wait).max(1);
                Err(Limited {
                    status: RateStatus {
                        limit,
                        remaining: 0,
                        reset: unix_now() + ceil_secs(per_token * limit),
                    },
                    retry_after_secs: retry,
                })
            }
        }
    }

    /// Forgets state that no longer limits anyone: principals idle for over a minute (their
    /// allowance is full again) and login keys whose allowance has refilled. Called
    /// periodically so memory stays bounded by recent traffic.
    pub fn housekeeping(&self) {
        self.prune(Duration::from_secs(61));
    }

    /// As [`Self::housekeeping`], forgetting principals idle for longer than `idle`.
    fn prune(&self, idle: Duration) {
        self.principals
            .lock()
            .expect("rate limit map lock")
            .retain(|_, (_, last)| last.elapsed() < idle);
        self.login_ip.retain_recent();
        self.login_user.retain_recent();
        self.login_ip.shrink_to_fit();
        self.login_user.shrink_to_fit();
    }

    /// Number of principals with live limiter state (for tests and metrics).
    pub fn tracked_principals(&self) -> usize {
        self.principals.lock().expect("rate limit map lock").len()
    }

    /// Counts a login attempt against both the client IP and the username; `Err` carries
    /// Retry-After seconds.
    pub fn check_login(&self, ip: &str, username: &str) -> Result<(), u64> {
        let by_ip = self.login_ip.check_key(&ip.to_string());
        let by_user = self.login_user.check_key(&username.to_ascii_lowercase());
        let wait = [by_ip.err(), by_user.err()]
            .into_iter()
            .flatten()
            .map(|n| n.wait_time_from(self.clock.now()))
            .max();
        match wait {
            Some(w) => Err(ceil_secs(w).max(1)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_then_refuses() {
        let rl = RateLimits::new(3, 10);
        let a = rl.check("k", None).unwrap();
        assert_eq!((a.limit, a.remaining), (3, 2));
        rl.check("k", None).unwrap();
        rl.check("k", None).unwrap();
        let refused = rl.check("k", None).unwrap_err();
        assert!(refused.retry_after_secs >= 1);
        // Another principal has its own allowance.
        assert!(rl.check("other", None).is_ok());
    }

    #[test]
    fn housekeeping_forgets_only_idle_principals() {
        let rl = RateLimits::new(60, 10);
        rl.check("a", None).unwrap();
        rl.check_login("127.0.0.1", "someone").unwrap();
        rl.housekeeping();
        assert_eq!(
            rl.tracked_principals(),
            1,
            "a principal used just now is kept"
        );
        rl.prune(Duration::ZERO);
        assert_eq!(rl.tracked_principals(), 0, "idle principals are forgotten");
    }

    #[test]
    fn override_applies() {
        let rl = RateLimits::new(60, 10);
        assert_eq!(rl.check("k", Some(5)).unwrap().limit, 5);
    }
}
