//! Authentication and authorization exactly as the user documentation describes them.

mod common;

use base64::Engine as _;
use common::{expect_error, start, start_with, ADMIN_PASSWORD};
use serde_json::{json, Value};

const SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn me(ts: &common::TestServer, auth: (&str, &str)) -> reqwest::Response {
    ts.client
        .get(ts.at("/api/v1/auth/me"))
        .header(auth.0, auth.1)
        .send()
        .await
        .unwrap()
}

/// The credential is refused: 401 in the error body.
async fn assert_refused(ts: &common::TestServer, auth: (&str, &str)) {
    expect_error(me(ts, auth).await, 401, "AUTHENTICATION_FAILED").await;
}

#[tokio::test]
async fn documented_login_and_jwt_use() {
    let ts = start().await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"username": "admin", "password": "{ADMIN_PASSWORD}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("eyJ") && token.split('.').count() == 3);
    let exp = body["expires_at"].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(exp).expect("RFC 3339");
    assert!(exp.ends_with('Z'), "UTC: {exp}");
    let hours = (parsed.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!(
        (23 * 60..=24 * 60).contains(&hours),
        "24 h lifetime, got {hours} min"
    );

    let r = me(&ts, ("authorization", &format!("Bearer {token}"))).await;
    assert_eq!(r.status(), 200);
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["username"], "admin");
    assert_eq!(who["permissions"].as_array().unwrap().len(), 11);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_alike() {
    let ts = start().await;
    let attempt = |u: &'static str| {
        ts.client
            .post(ts.at("/api/v1/auth/login"))
            .json(&json!({"username": u, "password": "not-the-password"}))
            .send()
    };
    let a = expect_error(
        attempt("admin").await.unwrap(),
        401,
        "AUTHENTICATION_FAILED",
    )
    .await;
    let b = expect_error(
        attempt("ghost").await.unwrap(),
        401,
        "AUTHENTICATION_FAILED",
    )
    .await;
    assert_eq!(a, b, "same body for both failures");
    let admin = ts.admin_token().await;
    let failed = ts.events(&admin, "auth.login_failed").await;
    assert_eq!(failed.len(), 2);
    let reasons: Vec<&str> = failed
        .iter()
        .map(|e| e["payload"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"wrong password") && reasons.contains(&"unknown user"));
    for e in &failed {
        assert!(!e.to_string().contains("not-the-password"));
    }
    // No credentials at all.
    let r = ts
        .client
        .get(ts.at("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
}

#[tokio::test]
async fn documented_api_key_flow_both_headers_revocation_and_restart() {
    let ts = common::start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    // The restart below replays a log that holds real inference events.
    ts.infer_once(&admin).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(r#"{"name": "production-key", "permissions": ["read_models", "run_inference"], "expires_in_days": 90}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    for field in [
        "id",
        "key",
        "name",
        "permissions",
        "created_at",
        "expires_at",
    ] {
        assert!(!created[field].is_null(), "{field} in {created}");
    }
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("inf_") && key.len() >= 36);
    assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        created["permissions"],
        json!(["read_models", "run_inference"])
    );

    // Both headers work, and the key carries exactly its permissions.
    for (h, v) in [
        ("x-api-key", key.clone()),
        ("authorization", format!("Bearer {key}")),
    ] {
        let r = me(&ts, (h, &v)).await;
        assert_eq!(r.status(), 200, "via {h}");
        let who: Value = r.json().await.unwrap();
        assert_eq!(who["permissions"], json!(["read_models", "run_inference"]));
    }
    // The listing shows last use but never the secret.
    let r = ts
        .client
        .get(ts.at(&format!("/api/v1/auth/api-keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let shown: Value = r.json().await.unwrap();
    assert!(shown["last_used_at"].is_string(), "{shown}");
    assert!(!shown.to_string().contains(&key[16..]));

    // A second key that stays valid across the restart.
    let (_, other) = ts.api_key(&admin, &["read_models"]).await;

    // Documented revocation: 204, effective at once.
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/auth/api-keys/{id}")))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = me(&ts, ("x-api-key", &key)).await;
    let body = expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    assert_eq!(body["error"]["message"], "Invalid API key");

    // And after a restart.
    let ts = ts.restart().await;
    let r = me(&ts, ("x-api-key", &key)).await;
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    assert_eq!(me(&ts, ("x-api-key", &other)).await.status(), 200);
    assert_eq!(
        me(&ts, ("authorization", &format!("Bearer {admin}")))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn rotation_replaces_the_secret() {
    let ts = start().await;
    let admin = ts.admin_token().await;
    let (id, old) = ts.api_key(&admin, &["read_models"]).await;
    let r = ts
        .client
        .post(ts.at(&format!("/api/v1/auth/api-keys/{id}/rotate")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let new = body["key"].as_str().unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["permissions"], json!(["read_models"]));
    assert_ne!(new, old);
    assert_refused(&ts, ("x-api-key", &old)).await;
    assert_eq!(me(&ts, ("x-api-key", new)).await.status(), 200);
    let rotated = ts.events(&admin, "api_key.rotated").await;
    assert_eq!(rotated.len(), 1);
    assert!(
        !rotated[0].to_string().contains(&new[16..]),
        "no secret in events"
    );
}

#[tokio::test]
async fn expired_credentials_are_refused() {
    let ts = start_with(|c| {
        c.auth.jwt_secret = Some(inferno::config::Secret::new(SECRET));
        c.auth.failure_event_window_secs = 1;
    })
    .await;
    let admin = ts.admin_token().await;
    let who: Value = me(&ts, ("authorization", &format!("Bearer {admin}")))
        .await
        .json()
        .await
        .unwrap();
    let admin_id = who["id"].as_str().unwrap();

    // Given a key whose expiry has passed (written as the event the service would write).
    let material = inferno::auth::credentials::ApiKeyMaterial::generate();
    ts.state()
        .store()
        .append(
            &inferno::events::EventContext::system(),
            vec![inferno::events::Event::ApiKeyCreated(
                inferno::events::ApiKeyCreated {
                    key_id: material.id.clone(),
                    user_id: admin_id.to_string(),
                    name: "old".into(),
                    permissions: vec!["read_models".into()],
                    expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(5)),
                    secret_sha256: material.secret_sha256(),
                    rate_limit_per_minute: None,
                },
            )],
        )
        .await
        .unwrap();
    assert_refused(&ts, ("x-api-key", &material.token())).await;

    // An expired JWT signed with the right secret.
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": admin_id, "jti": "expired-1", "iat": now - 7200, "exp": now - 3600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(&ts, ("authorization", &format!("Bearer {token}"))).await;
    // The same claims, unexpired, are accepted: the refusal above is the expiry.
    let fresh = json!({"sub": admin_id, "jti": "fresh-1", "iat": now, "exp": now + 3600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &fresh,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        me(&ts, ("authorization", &format!("Bearer {token}")))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let ts = start_with(|c| {
        c.auth.jwt_secret = Some(inferno::config::Secret::new(SECRET));
        c.auth.failure_event_window_secs = 1;
    })
    .await;
    let admin = ts.admin_token().await;
    let who: Value = me(&ts, ("authorization", &format!("Bearer {admin}")))
        .await
        .json()
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": who["id"], "jti": "x1", "iat": now, "exp": now + 3600});

    // alg: none
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    assert_refused(&ts, ("authorization", &format!("Bearer {none}"))).await;
    // Another algorithm with the right secret.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(&ts, ("authorization", &format!("Bearer {hs512}"))).await;
    // A tampered payload under the original signature.
    let parts: Vec<&str> = admin.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["exp"] = json!(now + 999_999);
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert_refused(&ts, ("authorization", &format!("Bearer {tampered}"))).await;
    // Signed with another secret.
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-0123456789abcdef"),
    )
    .unwrap();
    assert_refused(&ts, ("authorization", &format!("Bearer {other}"))).await;
    // Recorded in aggregate once the (1 s) window is over: all four counted.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let failures = ts.events(&admin, "auth.authentication_failed").await;
    let counted: u64 = failures
        .iter()
        .map(|e| e["payload"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 4, "{failures:?}");
    assert!(failures.len() <= 2);
}

#[tokio::test]
async fn disabled_and_deleted_users_lose_access() {
    let ts = start().await;
    let admin = ts.admin_token().await;
    let (bob, bob_token) = ts.user_with("bob", "user", &[]).await;
    let (_, bob_key) = ts.api_key(&bob_token, &["read_models"]).await;
    assert_eq!(me(&ts, ("x-api-key", &bob_key)).await.status(), 200);

    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{bob}")))
        .bearer_auth(&admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_refused(&ts, ("authorization", &format!("Bearer {bob_token}"))).await;
    assert_refused(&ts, ("x-api-key", &bob_key)).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .json(&json!({"username": "bob", "password": "bob-password-1234"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;

    // Enabled again, then deleted.
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{bob}")))
        .bearer_auth(&admin)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(me(&ts, ("x-api-key", &bob_key)).await.status(), 200);
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/users/{bob}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_refused(&ts, ("authorization", &format!("Bearer {bob_token}"))).await;
    assert_refused(&ts, ("x-api-key", &bob_key)).await;
}

#[tokio::test]
async fn keys_carry_a_subset_of_their_owners_permissions() {
    let ts = start().await;
    let (_, carol) = ts.user_with("carol", "user", &[]).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(&carol)
        .json(&json!({"name": "k", "permissions": ["read_models", "manage_users", "write_config"]}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    let entries: Vec<String> =
        serde_json::from_value(body["error"]["details"]["entries"].clone()).unwrap();
    let mut sorted = entries.clone();
    sorted.sort();
    assert_eq!(sorted, ["manage_users", "write_config"]);

    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(&carol)
        .json(&json!({"name": "k", "permissions": ["read_models", "fly"]}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["error"]["details"]["entries"], json!(["fly"]));

    for days in [0, 3651] {
        let r = ts
            .client
            .post(ts.at("/api/v1/auth/api-keys"))
            .bearer_auth(&carol)
            .json(&json!({"name": "k", "permissions": [], "expires_in_days": days}))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "VALIDATION_ERROR").await;
    }

    // A key cannot mint keys unless it holds manage_users.
    let (_, key) = ts.api_key(&carol, &["read_models"]).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .header("x-api-key", &key)
        .json(&json!({"name": "k2", "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "manage_users");
    let admin = ts.admin_token().await;
    let (_, admin_key) = ts.api_key(&admin, &["manage_users", "read_models"]).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .header("x-api-key", &admin_key)
        .json(&json!({"name": "k3", "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let ts = start_with(|c| c.limits.requests_per_minute = 3).await;
    let admin = ts.admin_token().await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = me(&ts, ("authorization", &format!("Bearer {admin}"))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        let reset: u64 = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset >= chrono::Utc::now().timestamp() as u64);
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = me(&ts, ("authorization", &format!("Bearer {admin}"))).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    expect_error(r, 429, "RATE_LIMITED").await;
    // Errors carry the headers too (an authenticated 404).
    let ts2 = start_with(|c| c.limits.requests_per_minute = 100).await;
    let admin2 = ts2.admin_token().await;
    let r = ts2
        .client
        .get(ts2.at("/api/v1/users/nobody"))
        .bearer_auth(&admin2)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-ratelimit-remaining"));
    expect_error(r, 404, "NOT_FOUND").await;
    // A per-key override.
    let r = ts2
        .client
        .post(ts2.at("/api/v1/auth/api-keys"))
        .bearer_auth(&admin2)
        .json(&json!({"name": "slow", "permissions": [], "rate_limit_per_minute": 1}))
        .send()
        .await
        .unwrap();
    let key: Value = r.json().await.unwrap();
    let key = key["key"].as_str().unwrap();
    let r = me(&ts2, ("x-api-key", key)).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "1");
    expect_error(me(&ts2, ("x-api-key", key)).await, 429, "RATE_LIMITED").await;
}

#[tokio::test]
async fn login_is_throttled_per_ip_and_username() {
    let ts = start_with(|c| c.auth.login_attempts_per_minute = 3).await;
    for _ in 0..3 {
        let r = ts
            .client
            .post(ts.at("/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": "guess-guess-guess"}))
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    }
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "RATE_LIMITED").await;
}

#[tokio::test]
async fn logout_revokes_the_token_across_restarts() {
    let ts = common::start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    let keep = ts.admin_token().await;
    ts.infer_once(&keep).await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/logout"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_refused(&ts, ("authorization", &format!("Bearer {admin}"))).await;
    let ts = ts.restart().await;
    assert_refused(&ts, ("authorization", &format!("Bearer {admin}"))).await;
    assert_eq!(
        me(&ts, ("authorization", &format!("Bearer {keep}")))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn users_api_and_own_password() {
    let ts = start().await;
    let admin = ts.admin_token().await;
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "dave", "password": "short"}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["error"]["details"]["field"], "password");
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .bearer_auth(&admin)
        .json(
            &json!({"username": "dave", "password": "dave-password-1234", "role": "auditor",
                      "extra_permissions": ["read_models"], "email": "dave@example.com"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let dave: Value = r.json().await.unwrap();
    assert_eq!(dave["email"], "dave@example.com");
    let mut perms: Vec<String> = serde_json::from_value(dave["permissions"].clone()).unwrap();
    perms.sort();
    assert_eq!(perms, ["read_metrics", "read_models", "view_audit_logs"]);
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "dave", "password": "dave-password-1234"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "eve", "password": "eve-password-1234", "role": "root"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;

    let id = dave["id"].as_str().unwrap();
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "operator", "email": null}))
        .send()
        .await
        .unwrap();
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["role"], "operator");
    assert!(patched["email"].is_null());
    let list: Value = ts
        .client
        .get(ts.at("/api/v1/users"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["users"].as_array().unwrap().len(), 2);

    // Own password change needs the old one.
    let dave_token = ts.login("dave", "dave-password-1234").await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/password"))
        .bearer_auth(&dave_token)
        .json(&json!({"old_password": "wrong-wrong-wrong", "new_password": "dave-new-password-99"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/password"))
        .bearer_auth(&dave_token)
        .json(
            &json!({"old_password": "dave-password-1234", "new_password": "dave-new-password-99"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The change ends the token from before it.
    let r = me(&ts, ("authorization", &format!("Bearer {dave_token}"))).await;
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    let dave_token = ts.login("dave", "dave-new-password-99").await;

    // Events name what happened and never the email or passwords.
    let created = ts.events(&admin, "user.created").await;
    let text = serde_json::to_string(&created).unwrap();
    assert!(!text.contains("dave@example.com") && !text.contains("dave-password-1234"));
    assert_eq!(created.len(), 2, "admin and dave");
    assert_eq!(ts.events(&admin, "user.password_changed").await.len(), 1);
    let denied_before = ts.events(&admin, "auth.permission_denied").await.len();
    let r = ts
        .client
        .get(ts.at("/api/v1/users"))
        .bearer_auth(&dave_token)
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "manage_users");
    let denied = ts.events(&admin, "auth.permission_denied").await;
    assert_eq!(denied.len(), denied_before + 1);
    let last = denied.last().unwrap();
    assert_eq!(last["payload"]["permission"], "manage_users");
    assert_eq!(last["payload"]["route"], "/api/v1/users");
    assert!(last["request_id"].is_string() && last["client_ip"].is_string());
}

/// Credentials that authenticated are remembered until the next commit, and `/auth/me`
/// bodies too: a remembered credential still ends at its expiry with no commit in
/// between, and a change of role shows in the very next `/auth/me`.
#[tokio::test]
async fn remembered_credentials_end_at_expiry_and_views_follow_changes() {
    let ts = start_with(|c| c.auth.jwt_secret = Some(inferno::config::Secret::new(SECRET))).await;
    let admin = ts.admin_token().await;
    let (bob, bob_token) = ts.user_with("bob", "user", &[]).await;
    let (_, bob_key) = ts.api_key(&bob_token, &["read_models"]).await;

    // A JWT and a key that expire in two seconds work, repeatedly, until then.
    let now = chrono::Utc::now();
    let claims =
        json!({"sub": bob, "jti": "short-1", "iat": now.timestamp(), "exp": now.timestamp() + 2});
    let short_jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let material = inferno::auth::credentials::ApiKeyMaterial::generate();
    ts.state()
        .store()
        .append(
            &inferno::events::EventContext::system(),
            vec![inferno::events::Event::ApiKeyCreated(
                inferno::events::ApiKeyCreated {
                    key_id: material.id.clone(),
                    user_id: bob.clone(),
                    name: "short".into(),
                    permissions: vec!["read_models".into()],
                    expires_at: Some(now + chrono::Duration::seconds(2)),
                    secret_sha256: material.secret_sha256(),
                    rate_limit_per_minute: None,
                },
            )],
        )
        .await
        .unwrap();
    let short_key = material.token();
    let jwt_auth = format!("Bearer {short_jwt}");
    for _ in 0..3 {
        assert_eq!(me(&ts, ("authorization", &jwt_auth)).await.status(), 200);
        assert_eq!(me(&ts, ("x-api-key", &short_key)).await.status(), 200);
    }
    let until = now + chrono::Duration::milliseconds(2100);
    while chrono::Utc::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_refused(&ts, ("authorization", &jwt_auth)).await;
    assert_refused(&ts, ("x-api-key", &short_key)).await;

    // The identity view follows a change of role at once, for a JWT and for a key.
    let perms = |v: Value| v["permissions"].as_array().unwrap().len();
    let bob_jwt = format!("Bearer {bob_token}");
    let before: Value = me(&ts, ("authorization", &bob_jwt))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["role"], "user");
    let key_before: Value = me(&ts, ("x-api-key", &bob_key)).await.json().await.unwrap();
    assert_eq!(perms(key_before), 1);
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/users/{bob}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "auditor", "extra_permissions": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after: Value = me(&ts, ("authorization", &bob_jwt))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["role"], "auditor");
    assert_ne!(after["permissions"], before["permissions"]);
    // The key carried read_models, which an auditor lacks: the key is left with none.
    let key_after: Value = me(&ts, ("x-api-key", &bob_key)).await.json().await.unwrap();
    assert_eq!(key_after["role"], "auditor");
    assert_eq!(perms(key_after), 0);
}
