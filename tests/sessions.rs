//! Sessions and credentials: what ends a JWT, what ends an audit tail, failed logins and
//! authentications that cannot flood the log or lock others out, and the secrets that never
//! reach events.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{expect_error, start, start_with, ADMIN_PASSWORD};
use futures::StreamExt;
use serde_json::{json, Value};

async fn me_with_jwt(ts: &common::TestServer, token: &str) -> u16 {
    ts.client
        .get(ts.at("/api/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A client whose requests come from `ip` (any 127.0.0.0/8 address reaches the server).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_password_change_or_disabling_ends_every_earlier_jwt() {
    let ts = start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    // The restart below replays a log that holds real inference events.
    ts.infer_once(&admin).await;
    let (id, before) = ts.user_with("sam", "user", &[]).await;
    assert_eq!(me_with_jwt(&ts, &before).await, 200);

    // Own password change: the token from before is refused, one from after works.
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/password"))
        .bearer_auth(&before)
        .json(&json!({"old_password": "sam-password-1234", "new_password": "sam-new-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let after = ts.login("sam", "sam-new-password-1").await;
    assert_eq!(me_with_jwt(&ts, &before).await, 401);
    assert_eq!(me_with_jwt(&ts, &after).await, 200);

    // A reset by an admin does the same.
    let patch = |body: Value| {
        let (ts, admin, id) = (&ts, admin.clone(), id.clone());
        async move {
            ts.client
                .patch(ts.at(&format!("/api/v1/users/{id}")))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        patch(json!({"password": "sam-reset-password-1"})).await,
        200
    );
    assert_eq!(me_with_jwt(&ts, &after).await, 401);
    let third = ts.login("sam", "sam-reset-password-1").await;
    assert_eq!(me_with_jwt(&ts, &third).await, 200);

    // Disabling ends it too, and enabling does not bring it back.
    assert_eq!(patch(json!({"disabled": true})).await, 200);
    assert_eq!(patch(json!({"disabled": false})).await, 200);
    assert_eq!(me_with_jwt(&ts, &third).await, 401);
    let fourth = ts.login("sam", "sam-reset-password-1").await;
    assert_eq!(me_with_jwt(&ts, &fourth).await, 200);

    // It holds across a restart (the rule is folded from the log).
    let ts = ts.restart().await;
    assert_eq!(me_with_jwt(&ts, &third).await, 401);
    assert_eq!(me_with_jwt(&ts, &fourth).await, 200);
}

/// Reads the SSE body until it ends; `true` when it ended within `within`.
async fn ends_within(r: reqwest::Response, within: Duration) -> bool {
    let mut body = r.bytes_stream();
    tokio::time::timeout(within, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn an_audit_tail_ends_when_its_credential_is_revoked_or_its_user_disabled() {
    let ts = start().await;
    let admin = ts.admin_token().await;
    let (key_id, key) = ts.api_key(&admin, &["view_audit_logs"]).await;
    let open = |header: (&'static str, String)| {
        let ts = &ts;
        async move {
            let r = ts
                .client
                .get(ts.at("/api/v1/audit/stream"))
                .header(header.0, header.1)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r
        }
    };

    // A tail opened with a key that is then revoked ends at once.
    let tail = open(("x-api-key", key.clone())).await;
    let still_open = open(("authorization", format!("Bearer {admin}"))).await;
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/auth/api-keys/{key_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        ends_within(tail, Duration::from_secs(10)).await,
        "the revoked key's tail ended"
    );
    // The admin's tail is not affected.
    assert!(!ends_within(still_open, Duration::from_millis(500)).await);

    // A JWT tail ends when its user is disabled.
    let (id, auditor) = ts.user_with("watcher", "auditor", &[]).await;
    let tail = open(("authorization", format!("Bearer {auditor}"))).await;
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(ends_within(tail, Duration::from_secs(10)).await);

    // And a rotated key's old secret loses its tail.
    let (key_id, key) = ts.api_key(&admin, &["view_audit_logs"]).await;
    let tail = open(("x-api-key", key)).await;
    let r = ts
        .client
        .post(ts.at(&format!("/api/v1/auth/api-keys/{key_id}/rotate")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(ends_within(tail, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_ip_and_recorded_in_aggregate() {
    let ts = start_with(|c| {
        c.auth.failed_auth_per_minute = 20;
        c.auth.failure_event_window_secs = 2;
    })
    .await;
    let admin = ts.admin_token().await;
    let (_, good) = ts.api_key(&admin, &["view_audit_logs"]).await;
    let stranger = client_from("127.0.0.9");

    // Given 300 bad keys from one IP
    let (mut refused, mut throttled) = (0, 0);
    for i in 0..300 {
        let bad = format!("inf_{:0>12}{:0>40}", i, "x");
        let r = stranger
            .get(ts.at("/api/v1/auth/me"))
            .header("x-api-key", bad)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => refused += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                expect_error(r, 429, "RATE_LIMITED").await;
                throttled += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Then most are throttled unchecked
    assert_eq!(refused, 20, "checked until the budget was spent");
    assert_eq!(refused + throttled, 300);
    // while the good key from another IP keeps working
    let r = ts
        .client
        .get(ts.at("/api/v1/auth/me"))
        .header("x-api-key", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // and the log holds a handful of events that count all 300, once the window is over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = ts.events(&admin, "auth.authentication_failed").await;
    assert!(events.len() <= 3, "{} events", events.len());
    let counted: u64 = events
        .iter()
        .map(|e| {
            e["payload"]["count"].as_u64().unwrap() + e["payload"]["throttled"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(counted, 300);
    assert!(events.iter().all(|e| e["client_ip"] == "127.0.0.9"));
    assert_eq!(events[0]["payload"]["key_id"], "000000000000");
}

#[tokio::test]
async fn login_failures_count_per_username_and_ip_and_successes_never_do() {
    let ts = start_with(|c| c.auth.login_attempts_per_minute = 3).await;
    let login = |client: reqwest::Client, password: &'static str| {
        let url = ts.at("/api/v1/auth/login");
        async move {
            client
                .post(url)
                .json(&json!({"username": "admin", "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    // Successful logins never spend the budget.
    for _ in 0..8 {
        assert_eq!(login(ts.client.clone(), ADMIN_PASSWORD).await.status(), 200);
    }
    // Guessing from one IP locks out that IP for that username
    let attacker = client_from("127.0.0.7");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            login(attacker.clone(), "wrong-guess-1234")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    let r = login(attacker.clone(), ADMIN_PASSWORD).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "RATE_LIMITED").await;
    // but not the admin, from elsewhere.
    assert_eq!(login(ts.client.clone(), ADMIN_PASSWORD).await.status(), 200);
    assert_eq!(
        login(client_from("127.0.0.8"), ADMIN_PASSWORD)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_username_that_looks_like_a_password_is_recorded_hashed() {
    let ts = start().await;
    let typed = "Tr0ub4dor&3 horse";
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .json(&json!({"username": typed, "password": "whatever-it-was"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    let admin = ts.admin_token().await;
    let events = ts.events(&admin, "auth.login_failed").await;
    let recorded = events[0]["payload"]["username"].as_str().unwrap();
    assert!(recorded.starts_with("sha256:"), "{recorded}");
    let all = ts
        .events(&admin, "auth.login_failed,auth.login_succeeded")
        .await;
    assert!(!serde_json::to_string(&all).unwrap().contains("Tr0ub4dor"));
}

#[tokio::test]
async fn password_hashes_never_enter_events() {
    let ts = start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    ts.infer_once(&admin).await;
    let (id, token) = ts.user_with("hashless", "user", &[]).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/password"))
        .bearer_auth(&token)
        .json(&json!({"old_password": "hashless-password-1234", "new_password": "hashless-password-5678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"password": "hashless-password-9999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ts.login("hashless", "hashless-password-9999").await;
    let events = ts
        .events(&admin, "user.created,user.password_changed")
        .await;
    assert_eq!(events.len(), 4, "admin and hashless created, two changes");
    for e in &events {
        assert_eq!(e["version"], 2);
        assert!(e["payload"].get("password_hash").is_none(), "{e}");
    }
    let r = ts
        .client
        .get(ts.at("/api/v1/audit/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let export = r.text().await.unwrap();
    assert!(!export.contains("$argon2"), "no argon2 hash in the export");
    // And the login works after a restart (credentials are durable beside the log).
    let ts = ts.restart().await;
    ts.login("hashless", "hashless-password-9999").await;
}

#[tokio::test]
async fn a_short_jwt_secret_is_a_start_up_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::inferno_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("INFERNO_AUTH__JWT_SECRET", "too-short-secret")
        .env("INFERNO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwt_secret"), "{err}");
    assert!(
        !err.contains("too-short-secret"),
        "the value is not shown: {err}"
    );
}
