//! Rate limits: per principal (API key, or user for JWTs) with the values for the
//! `X-RateLimit-*` headers, and budgets of failures: failed logins per (username, client
//! IP) and per client IP, failed authentications per client IP. Only failures spend a
//! budget; a key whose budget is spent is refused, unchecked, until it refills.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A principal's limiter for one limit, and when it was last used.
struct Tracked {
    limit: u32,
    limiter: Arc<Limiter>,
    last: Instant,
}

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

/// Failures allowed per minute per key, over a sliding minute: once a key has had that many
/// in the last 60 s it is blocked until the oldest of them is a minute old. (A GCRA
/// limiter such as governor's cannot say whether the next attempt would pass without
/// spending it, and attempts must be refused before they are checked.)
struct FailureBudget {
    /// Changes live (`PATCH /api/v1/config`).
    per_minute: AtomicUsize,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

const MINUTE: Duration = Duration::from_secs(60);

fn trim(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
        q.pop_front();
    }
}

impl FailureBudget {
    fn new(per_minute_n: u32) -> Self {
        Self {
            per_minute: AtomicUsize::new(per_minute_n.max(1) as usize),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Retry-After seconds while `key` is blocked.
    fn blocked(&self, key: &str) -> Option<u64> {
        let mut map = self.recent.lock().expect("failure budget lock");
        let q = map.get_mut(key)?;
        let now = Instant::now();
        trim(q, now);
        if q.len() < self.per_minute() {
            return None;
        }
        let oldest = *q.front()?;
        Some(ceil_secs(MINUTE.saturating_sub(now.duration_since(oldest))).max(1))
    }

    fn fail(&self, key: String) {
        let mut map = self.recent.lock().expect("failure budget lock");
        let q = map.entry(key).or_default();
        let now = Instant::now();
        trim(q, now);
        q.push_back(now);
        if q.len() > self.per_minute() {
            q.pop_front();
        }
    }

    fn per_minute(&self) -> usize {
        self.per_minute.load(Ordering::Relaxed)
    }

    fn set(&self, per_minute_n: u32) {
        self.per_minute
            .store(per_minute_n.max(1) as usize, Ordering::Relaxed);
    }

    fn prune(&self) {
        let now = Instant::now();
        self.recent
            .lock()
            .expect("failure budget lock")
            .retain(|_, q| {
                trim(q, now);
                !q.is_empty()
            });
    }
}

/// A client IP gets this many times the per-(username, IP) login budget, so guessing at
/// several usernames from one address is bounded too.
const LOGIN_IP_FACTOR: u32 = 5;

pub struct RateLimits {
    /// Changes live (`PATCH /api/v1/config`); a principal's limiter for the old value is
    /// left unused and pruned.
    default_per_minute: AtomicU32,
    /// Each principal's limiter per limit (a key whose limit changes gets a fresh one) and
    /// when it was last used (idle ones are pruned). Keyed by the principal alone, so that
    /// the lookup of every request borrows the key instead of allocating one.
    principals: Mutex<HashMap<String, Vec<Tracked>>>,
    login_pair: FailureBudget,
    login_ip: FailureBudget,
    auth_ip: FailureBudget,
    clock: DefaultClock,
}

impl RateLimits {
    /// `login_per_minute`: failed logins per (username, IP) (and 5 times that per IP);
    /// `failed_auth_per_minute`: failed authentications per IP.
    pub fn new(
        default_per_minute: u32,
        login_per_minute: u32,
        failed_auth_per_minute: u32,
    ) -> Self {
        Self {
            default_per_minute: AtomicU32::new(default_per_minute.max(1)),
            principals: Mutex::new(HashMap::new()),
            login_pair: FailureBudget::new(login_per_minute),
            login_ip: FailureBudget::new(login_per_minute.saturating_mul(LOGIN_IP_FACTOR)),
            auth_ip: FailureBudget::new(failed_auth_per_minute),
            clock: DefaultClock::default(),
        }
    }

    /// New limits, from the next request on (arguments as for [`RateLimits::new`]).
    pub fn set_limits(
        &self,
        default_per_minute: u32,
        login_per_minute: u32,
        failed_auth_per_minute: u32,
    ) {
        self.default_per_minute
            .store(default_per_minute.max(1), Ordering::Relaxed);
        self.login_pair.set(login_per_minute);
        self.login_ip
            .set(login_per_minute.saturating_mul(LOGIN_IP_FACTOR));
        self.auth_ip.set(failed_auth_per_minute);
    }

    /// Counts one request for `key`, with `override_per_minute` replacing the default.
    pub fn check(
        &self,
        key: &str,
        override_per_minute: Option<u32>,
    ) -> Result<RateStatus, Limited> {
        let limit = override_per_minute
            .unwrap_or_else(|| self.default_per_minute.load(Ordering::Relaxed))
            .max(1);
        let limiter = {
            let now = Instant::now();
            let mut map = self.principals.lock().expect("rate limit map lock");
            let tracked = match map.get_mut(key) {
                Some(list) => list,
                None => map.entry(key.to_string()).or_default(),
            };
            let i = match tracked.iter().position(|t| t.limit == limit) {
                Some(i) => i,
                None => {
                    tracked.push(Tracked {
                        limit,
                        limiter: Arc::new(RateLimiter::direct(per_minute(limit)).with_middleware()),
                        last: now,
                    });
                    tracked.len() - 1
                }
            };
            tracked[i].last = now;
            tracked[i].limiter.clone()
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
            .retain(|_, tracked| {
                tracked.retain(|t| t.last.elapsed() < idle);
                !tracked.is_empty()
            });
        self.login_pair.prune();
        self.login_ip.prune();
        self.auth_ip.prune();
    }

    /// Number of principals with live limiter state (for tests and metrics).
    pub fn tracked_principals(&self) -> usize {
        self.principals
            .lock()
            .expect("rate limit map lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Retry-After seconds when logins as `username` from `ip` are refused for now (too
    /// many failures from that IP for that username, or from that IP at all).
    pub fn login_blocked(&self, ip: &str, username: &str) -> Option<u64> {
        [
            self.login_pair.blocked(&login_key(ip, username)),
            self.login_ip.blocked(ip),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Spends one failed login of `username` from `ip`.
    pub fn login_failed(&self, ip: &str, username: &str) {
        self.login_pair.fail(login_key(ip, username));
        self.login_ip.fail(ip.to_string());
    }

    /// Retry-After seconds when credentials from `ip` are refused unchecked for now.
    pub fn auth_blocked(&self, ip: &str) -> Option<u64> {
        self.auth_ip.blocked(ip)
    }

    /// Spends one failed authentication from `ip`.
    pub fn auth_failed(&self, ip: &str) {
        self.auth_ip.fail(ip.to_string());
    }
}

/// Usernames are at most 64 characters; a longer one names no user, and keeping only its
/// first 256 bounds what a flood of long names holds in memory (they share a bucket).
fn login_key(ip: &str, username: &str) -> String {
    let name: String = username.chars().take(256).collect();
    format!("{ip}\0{}", name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_then_refuses() {
        let rl = RateLimits::new(3, 10, 10);
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
        let rl = RateLimits::new(60, 10, 10);
        rl.check("a", None).unwrap();
        rl.login_failed("127.0.0.1", "someone");
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
    fn failures_spend_a_budget_that_blocks_only_their_key() {
        let rl = RateLimits::new(60, 3, 2);
        for _ in 0..3 {
            assert_eq!(rl.login_blocked("10.0.0.1", "admin"), None);
            rl.login_failed("10.0.0.1", "admin");
        }
        assert!(rl
            .login_blocked("10.0.0.1", "admin")
            .is_some_and(|s| s >= 1));
        // The same username from another IP, and another username from the same IP.
        assert_eq!(rl.login_blocked("10.0.0.2", "admin"), None);
        assert_eq!(rl.login_blocked("10.0.0.1", "bob"), None);
        for _ in 0..2 {
            rl.auth_failed("10.0.0.3");
        }
        assert!(rl.auth_blocked("10.0.0.3").is_some());
        assert_eq!(rl.auth_blocked("10.0.0.4"), None);
    }

    #[test]
    fn override_applies() {
        let rl = RateLimits::new(60, 10, 10);
        assert_eq!(rl.check("k", Some(5)).unwrap().limit, 5);
    }
}
