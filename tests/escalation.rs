//! Privilege escalation through the API: a narrower key reaching a broader sibling, granting
//! more than one holds, raising one's own rate limit, multiplying keys. Each test fails on
//! a server without the rule it names.

mod common;

use common::{expect_error, start, start_with};
use serde_json::{json, Value};

async fn create_key(ts: &common::TestServer, token: &str, permissions: &[&str]) -> Value {
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "k", "permissions": permissions}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn with_key(
    ts: &common::TestServer,
    method: reqwest::Method,
    path: &str,
    key: &str,
) -> reqwest::Response {
    ts.client
        .request(method, ts.at(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_narrower_key_cannot_read_rotate_or_revoke_a_broader_sibling() {
    use reqwest::Method;
    let ts = start().await;
    let admin = ts.admin_token().await;
    let narrow = create_key(&ts, &admin, &["read_models"]).await;
    let broad = create_key(
        &ts,
        &admin,
        &["read_models", "run_inference", "write_config"],
    )
    .await;
    let (n, n_id) = (
        narrow["key"].as_str().unwrap(),
        narrow["id"].as_str().unwrap(),
    );
    let (b, b_id) = (
        broad["key"].as_str().unwrap(),
        broad["id"].as_str().unwrap(),
    );

    // The narrow key reaches none of the broad key's operations.
    for (method, path) in [
        (Method::GET, format!("/api/v1/auth/api-keys/{b_id}")),
        (Method::POST, format!("/api/v1/auth/api-keys/{b_id}/rotate")),
        (Method::DELETE, format!("/api/v1/auth/api-keys/{b_id}")),
    ] {
        let r = with_key(&ts, method.clone(), &path, n).await;
        let body = expect_error(r, 403, "PERMISSION_DENIED").await;
        assert!(body["error"]["details"]["required"].is_string(), "{body}");
    }
    // and does not even see it listed
    let r = with_key(&ts, Method::GET, "/api/v1/auth/api-keys", n).await;
    let listed: Value = r.json().await.unwrap();
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [n_id]);
    // The broad key is untouched and works.
    assert_eq!(
        with_key(&ts, Method::GET, "/api/v1/auth/me", b)
            .await
            .status(),
        200
    );

    // A key reaches itself: read, rotate (the new secret works, the old does not).
    let r = with_key(
        &ts,
        Method::GET,
        &format!("/api/v1/auth/api-keys/{n_id}"),
        n,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = with_key(
        &ts,
        Method::POST,
        &format!("/api/v1/auth/api-keys/{n_id}/rotate"),
        n,
    )
    .await;
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    let n2 = rotated["key"].as_str().unwrap();
    assert_eq!(
        with_key(&ts, Method::GET, "/api/v1/auth/me", n2)
            .await
            .status(),
        200
    );
    assert_eq!(
        with_key(&ts, Method::GET, "/api/v1/auth/me", n)
            .await
            .status(),
        401
    );

    // The broad key reaches the narrow one (a subset of its own): read, rotate, revoke.
    let r = with_key(
        &ts,
        Method::GET,
        &format!("/api/v1/auth/api-keys/{n_id}"),
        b,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = with_key(
        &ts,
        Method::DELETE,
        &format!("/api/v1/auth/api-keys/{n_id}"),
        b,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        with_key(&ts, Method::GET, "/api/v1/auth/me", n2)
            .await
            .status(),
        401
    );

    // manage_users may revoke another key, but rotating (which hands over the secret) also
    // needs the rotated key's permissions.
    let manager = create_key(&ts, &admin, &["manage_users"]).await;
    let m = manager["key"].as_str().unwrap();
    let r = with_key(
        &ts,
        Method::POST,
        &format!("/api/v1/auth/api-keys/{b_id}/rotate"),
        m,
    )
    .await;
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "read_models");
    let r = with_key(
        &ts,
        Method::DELETE,
        &format!("/api/v1/auth/api-keys/{b_id}"),
        m,
    )
    .await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn manage_users_cannot_grant_or_reach_beyond_its_own_permissions() {
    let ts = start().await;
    let admin = ts.admin_token().await;
    // A user manager holding the `user` role plus manage_users.
    let (um_id, um) = ts.user_with("manager", "user", &["manage_users"]).await;
    let (target_id, _) = ts.user_with("plain", "user", &[]).await;
    let admin_id = {
        let r = ts
            .client
            .get(ts.at("/api/v1/auth/me"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let create = |body: Value| {
        let (ts, um) = (&ts, um.clone());
        async move {
            ts.client
                .post(ts.at("/api/v1/users"))
                .bearer_auth(um)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let patch = |id: String, body: Value| {
        let (ts, um) = (&ts, um.clone());
        async move {
            ts.client
                .patch(ts.at(&format!("/api/v1/users/{id}")))
                .bearer_auth(um)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let pw = "a-long-password-1234";

    // Creating an admin, or granting a permission not held: refused, naming it.
    let r = create(json!({"username": "evil", "password": pw, "role": "admin"})).await;
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert!(body["error"]["details"]["required"].is_string());
    let r = create(
        json!({"username": "evil2", "password": pw, "extra_permissions": ["view_audit_logs"]}),
    )
    .await;
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "view_audit_logs");
    // Within its own permissions: allowed.
    let r = create(json!({"username": "fine", "password": pw, "role": "user"})).await;
    assert_eq!(r.status(), 201);

    // PATCH: giving itself more, moving someone to a role it does not hold, or touching a
    // broader user (resetting the admin's password would take the admin over).
    let r = patch(
        um_id.clone(),
        json!({"extra_permissions": ["manage_users", "write_config"]}),
    )
    .await;
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "write_config");
    let r = patch(target_id.clone(), json!({"role": "auditor"})).await;
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = patch(admin_id.clone(), json!({"password": "taken-over-password"})).await;
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = ts
        .client
        .delete(ts.at(&format!("/api/v1/users/{admin_id}")))
        .bearer_auth(&um)
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    // The admin still logs in with its password; the plain user is still a `user`.
    ts.admin_token().await;
    let r = ts
        .client
        .get(ts.at(&format!("/api/v1/users/{target_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "user");
    // Within its permissions it manages others.
    let r = patch(target_id.clone(), json!({"disabled": true})).await;
    assert_eq!(r.status(), 200);

    // With an API key the key's permissions are the bound: a manage_users-only key of
    // the manager cannot create even a `user`.
    let r = ts
        .client
        .post(ts.at("/api/v1/auth/api-keys"))
        .bearer_auth(&um)
        .json(&json!({"name": "um-key", "permissions": ["manage_users"]}))
        .send()
        .await
        .unwrap();
    let key: Value = r.json().await.unwrap();
    let r = ts
        .client
        .post(ts.at("/api/v1/users"))
        .header("x-api-key", key["key"].as_str().unwrap())
        .json(&json!({"username": "via-key", "password": pw, "role": "user"}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "read_models");
}

#[tokio::test]
async fn only_manage_users_raises_a_key_limit_and_live_keys_are_capped() {
    let ts = start_with(|c| {
        c.limits.requests_per_minute = 60;
        c.auth.max_keys_per_user = 3;
    })
    .await;
    let admin = ts.admin_token().await;
    let (_, user) = ts.user_with("limited", "user", &[]).await;
    let post = |token: String, body: Value| {
        let ts = &ts;
        async move {
            ts.client
                .post(ts.at("/api/v1/auth/api-keys"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // Raising above the owner's 60/min: refused for a plain user, naming manage_users.
    let r = post(
        user.clone(),
        json!({"name": "fast", "permissions": [], "rate_limit_per_minute": 1_000_000}),
    )
    .await;
    let body = expect_error(r, 403, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["details"]["required"], "manage_users");
    // Lowering is anyone's right.
    let r = post(
        user.clone(),
        json!({"name": "slow", "permissions": [], "rate_limit_per_minute": 10}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let slow: Value = r.json().await.unwrap();
    let r = ts
        .client
        .get(ts.at("/api/v1/auth/me"))
        .header("x-api-key", slow["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit"], "10");
    // manage_users (holding it) may raise.
    let r = post(
        admin.clone(),
        json!({"name": "fast", "permissions": [], "rate_limit_per_minute": 1_000_000}),
    )
    .await;
    assert_eq!(r.status(), 201);

    // At most 3 live keys per user: the 4th is a conflict until one is revoked.
    for _ in 0..2 {
        let r = post(user.clone(), json!({"name": "more", "permissions": []})).await;
        assert_eq!(r.status(), 201);
    }
    let r = post(
        user.clone(),
        json!({"name": "one-too-many", "permissions": []}),
    )
    .await;
    expect_error(r, 409, "CONFLICT").await;
    let r = ts
        .client
        .delete(ts.at(&format!(
            "/api/v1/auth/api-keys/{}",
            slow["id"].as_str().unwrap()
        )))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = post(user.clone(), json!({"name": "again", "permissions": []})).await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn lists_are_paged_with_a_cursor() {
    let ts = start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    for i in 0..4 {
        ts.user_with(&format!("paged-{i}"), "user", &[]).await;
    }
    for _ in 0..3 {
        ts.api_key(&admin, &[]).await;
    }
    for (path, field, total) in [
        ("/api/v1/users", "users", 5),
        ("/api/v1/auth/api-keys", "keys", 3),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=2&cursor={c}"),
                None => format!("{path}?limit=2"),
            };
            let r = ts
                .client
                .get(ts.at(&url))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let page: Value = r.json().await.unwrap();
            let items = page[field].as_array().unwrap();
            assert!(items.len() <= 2);
            seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen.len(), total, "{path}: {seen:?}");
        assert_eq!(seen, sorted, "{path}: in id order, no repeats");
        for bad in ["0", "1001"] {
            let r = ts
                .client
                .get(ts.at(&format!("{path}?limit={bad}")))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let body = expect_error(r, 400, "VALIDATION_ERROR").await;
            assert_eq!(body["error"]["details"]["field"], "limit");
        }
    }
    let r = ts
        .client
        .get(ts.at("/api/v1/models?limit=1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["models"][0]["id"], common::TEST_MODEL_ID);
    assert!(page["next_cursor"].is_null(), "{page}");
}
