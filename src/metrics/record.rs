//! The recording helpers. Every label value they emit comes from a fixed set or from
//! something bounded the server itself names (route templates, model ids, permissions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use super::*;

/// One HTTP request: `route` is the route template (see `api::routes`), never the raw path.
pub fn http_request(method: &'static str, route: &'static str, status: u16, elapsed: Duration) {
    counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route).record(elapsed.as_secs_f64());
}

/// Which limit refused a request with 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// The principal's requests per minute.
    Principal,
    /// The client IP is over its budget of failed authentications.
    FailedAuth,
    /// Failed logins per username and client IP.
    Login,
    /// The owner's queued jobs are at `[queue] max_queued_per_principal`.
    QueueOwnerCap,
}

impl RateLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::Principal => "principal",
            RateLimit::FailedAuth => "failed_auth",
            RateLimit::Login => "login",
            RateLimit::QueueOwnerCap => "queue_owner_cap",
        }
    }
}

pub fn rate_limited(limit: RateLimit) {
    counter!(RATE_LIMITED, "limit" => limit.as_str()).increment(1);
}

/// What a failed authentication presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A login with username and password.
    Password,
    Jwt,
    ApiKey,
    /// No credential on a route that needs one.
    None,
    /// An unreadable `Authorization` or `X-API-Key` header.
    Header,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Password => "password",
            Credential::Jwt => "jwt",
            Credential::ApiKey => "api_key",
            Credential::None => "none",
            Credential::Header => "header",
        }
    }
}

/// The auth service's reason for a refusal as a fixed label value (anything unforeseen is
/// `invalid`), so neither a token nor a user name can reach a label.
pub fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "unknown user" => "unknown_user",
        "wrong password" => "wrong_password",
        "user disabled" => "user_disabled",
        "user no longer exists" => "user_deleted",
        "token expired" | "key expired" => "expired",
        "token revoked" | "key revoked" => "revoked",
        "key rotated" => "rotated",
        "malformed API key" | "malformed token" => "malformed",
        "unknown key id" => "unknown_key",
        "wrong secret" => "wrong_secret",
        "invalid token signature" => "bad_signature",
        "token algorithm not accepted" => "bad_algorithm",
        "missing" => "missing",
        "user lookup failed" | "key lookup failed" => "lookup_failed",
        r if r.starts_with("token issued before") => "superseded",
        _ => "invalid",
    }
}

/// A refused credential; `reason` is the auth service's text, mapped by [`failure_reason`].
pub fn auth_failed(credential: Credential, reason: &str) {
    counter!(
        AUTH_FAILURES,
        "credential" => credential.as_str(),
        "reason" => failure_reason(reason)
    )
    .increment(1);
}

/// An authenticated request refused for lack of `permission` (a permission's name).
pub fn permission_denied(permission: &'static str) {
    counter!(PERMISSION_DENIED, "permission" => permission).increment(1);
}

/// A worker started a job that waited `waited` in this process's queue.
pub fn job_started(model: &str, waited: Duration) {
    histogram!(QUEUE_WAIT, "model" => model.to_string()).record(waited.as_secs_f64());
}

/// A job completed: its time to first token and end-to-end latency, both from its enqueue.
pub fn job_completed(model: &str, first_token: Duration, end_to_end: Duration) {
    let model = model.to_string();
    histogram!(TTFT, "model" => model.clone()).record(first_token.as_secs_f64());
    histogram!(E2E, "model" => model).record(end_to_end.as_secs_f64());
}

/// How one run of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    Failed,
    Cancelled,
    /// Out of attempts.
    Dead,
    /// Queued again for another attempt.
    Retried,
    /// Handed back to the queue at shutdown.
    HandedBack,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Completed => "completed",
            JobOutcome::Failed => "failed",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Dead => "dead",
            JobOutcome::Retried => "retried",
            JobOutcome::HandedBack => "handed_back",
        }
    }
}

pub fn job_run(outcome: JobOutcome) {
    counter!(JOB_RUNS, "outcome" => outcome.as_str()).increment(1);
}

/// One group commit of the event log: `events` events made durable, taking `latency`.
/// Called by the event log's writer after each successful commit.
pub fn events_appended(events: usize, latency: Duration) {
    counter!(EVENTS_APPENDED).increment(events as u64);
    histogram!(EVENT_APPEND_DURATION).record(latency.as_secs_f64());
}

/// The last whole-chain verification found a break (process-wide, like the recorder).
static LAST_VERIFY_BROKEN: AtomicBool = AtomicBool::new(false);

/// A whole-chain verification finished; `broken` when it found a bad event.
pub fn chain_verified(broken: bool) {
    LAST_VERIFY_BROKEN.store(broken, Ordering::Release);
    let result = if broken { "broken" } else { "ok" };
    counter!(CHAIN_VERIFICATIONS, "result" => result).increment(1);
}

pub(super) fn last_verify_broken() -> bool {
    LAST_VERIFY_BROKEN.load(Ordering::Acquire)
}

/// A cacheable request looked up in the response cache.
pub fn response_cache(hit: bool) {
    if hit {
        counter!(RESPONSE_CACHE_HITS).increment(1);
    } else {
        counter!(RESPONSE_CACHE_MISSES).increment(1);
    }
}

/// Families that exist from the start (at 0 until something happens), the build info and
/// the start time.
pub(super) fn started() {
    for name in [RESPONSE_CACHE_HITS, RESPONSE_CACHE_MISSES, EVENTS_APPENDED] {
        counter!(name).absolute(0);
    }
    for result in ["ok", "broken"] {
        counter!(CHAIN_VERIFICATIONS, "result" => result).absolute(0);
    }
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "llama_cpp_system_info" => crate::inference::system_info()
    )
    .set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(START_TIME).set(now);
}

#[cfg(test)]
mod tests {
    use super::failure_reason;

    #[test]
    fn failure_reasons_are_a_fixed_set() {
        assert_eq!(failure_reason("wrong password"), "wrong_password");
        assert_eq!(failure_reason("key revoked"), "revoked");
        assert_eq!(
            failure_reason("token issued before the user's password change or disabling"),
            "superseded"
        );
        // Whatever else arrives never becomes a label value of its own.
        assert_eq!(failure_reason("inf_abc.secret-material"), "invalid");
        assert_eq!(failure_reason("alice@example.com"), "invalid");
    }
}
