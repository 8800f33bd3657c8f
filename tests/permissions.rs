//! The permission matrix: every route of the API, called by a principal lacking its
//! permission (403 naming it) and by one holding only it (plus what the input itself needs),
//! which gets exactly the status the route documents for that input: a 2xx, or its 4xx for
//! a missing object. The table must grow with the API: a test fails when the spec has a
//! secured operation the table does not list, and default-deny fails when an operation is
//! reachable without credentials that should not be.

mod common;

use std::collections::BTreeSet;

use common::expect_error;
use serde_json::{json, Value};

/// (method, path template, concrete path, permission, JSON body, expected status)
struct Row {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    permission: Option<&'static str>,
    body: Option<Value>,
    /// The status a principal holding the permission gets for this input.
    expect: u16,
    /// Permissions the input needs besides the route's (granting a role needs its
    /// permissions).
    extra: &'static [&'static str],
}

const ALL: [&str; 11] = [
    "read_models",
    "write_models",
    "delete_models",
    "run_inference",
    "manage_cache",
    "read_metrics",
    "write_config",
    "manage_users",
    "view_audit_logs",
    "use_streaming",
    "manage_queue",
];

fn rows() -> Vec<Row> {
    let r = |method, template, path, permission, body| Row {
        method,
        template,
        path,
        permission,
        body,
        expect: 0,
        extra: &[],
    };
    let rows = vec![
        // Any authenticated principal.
        r("get", "/api/v1/auth/me", "/api/v1/auth/me", None, None),
        r(
            "post",
            "/api/v1/auth/logout",
            "/api/v1/auth/logout",
            None,
            None,
        ),
        r(
            "post",
            "/api/v1/auth/password",
            "/api/v1/auth/password",
            None,
            Some(json!({"old_password": "x", "new_password": "y"})),
        ),
        r(
            "get",
            "/api/v1/auth/api-keys",
            "/api/v1/auth/api-keys",
            None,
            None,
        ),
        // With an API key, minting keys needs manage_users (a JWT needs nothing).
        r(
            "post",
            "/api/v1/auth/api-keys",
            "/api/v1/auth/api-keys",
            Some("manage_users"),
            Some(json!({"name": "n", "permissions": []})),
        ),
        r(
            "get",
            "/api/v1/auth/api-keys/{id}",
            "/api/v1/auth/api-keys/nokey",
            None,
            None,
        ),
        r(
            "delete",
            "/api/v1/auth/api-keys/{id}",
            "/api/v1/auth/api-keys/nokey",
            None,
            None,
        ),
        r(
            "post",
            "/api/v1/auth/api-keys/{id}/rotate",
            "/api/v1/auth/api-keys/nokey/rotate",
            None,
            None,
        ),
        // manage_users
        r(
            "get",
            "/api/v1/users",
            "/api/v1/users",
            Some("manage_users"),
            None,
        ),
        r(
            "post",
            "/api/v1/users",
            "/api/v1/users",
            Some("manage_users"),
            Some(json!({"username": "matrix-user", "password": "matrix-password-1"})),
        ),
        r(
            "get",
            "/api/v1/users/{id}",
            "/api/v1/users/nobody",
            Some("manage_users"),
            None,
        ),
        r(
            "patch",
            "/api/v1/users/{id}",
            "/api/v1/users/nobody",
            Some("manage_users"),
            Some(json!({})),
        ),
        r(
            "delete",
            "/api/v1/users/{id}",
            "/api/v1/users/nobody",
            Some("manage_users"),
            None,
        ),
        // view_audit_logs
        r(
            "get",
            "/api/v1/audit/events",
            "/api/v1/audit/events",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/events/{seq}",
            "/api/v1/audit/events/1",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/stream",
            "/api/v1/audit/stream",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/verify",
            "/api/v1/audit/verify",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/export",
            "/api/v1/audit/export",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/checkpoint",
            "/api/v1/audit/checkpoint",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/checkpoints",
            "/api/v1/audit/checkpoints",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/public-key",
            "/api/v1/audit/public-key",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/proof/inclusion",
            "/api/v1/audit/proof/inclusion?seq=1",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/proof/consistency",
            "/api/v1/audit/proof/consistency?from=1",
            Some("view_audit_logs"),
            None,
        ),
        r(
            "get",
            "/api/v1/audit/state",
            "/api/v1/audit/state?at=1",
            Some("view_audit_logs"),
            None,
        ),
        // models
        r(
            "get",
            "/api/v1/models",
            "/api/v1/models",
            Some("read_models"),
            None,
        ),
        r(
            "post",
            "/api/v1/models",
            "/api/v1/models?name=matrix",
            Some("write_models"),
            Some(json!({})),
        ),
        r(
            "get",
            "/api/v1/models/{id}",
            "/api/v1/models/none",
            Some("read_models"),
            None,
        ),
        r(
            "patch",
            "/api/v1/models/{id}",
            "/api/v1/models/none",
            Some("write_models"),
            Some(json!({})),
        ),
        r(
            "delete",
            "/api/v1/models/{id}",
            "/api/v1/models/none",
            Some("delete_models"),
            None,
        ),
        // inference
        r(
            "post",
            "/api/v1/inference",
            "/api/v1/inference",
            Some("run_inference"),
            Some(json!({"model": "none", "prompt": "x"})),
        ),
        // jobs
        r(
            "post",
            "/api/v1/jobs",
            "/api/v1/jobs",
            Some("run_inference"),
            Some(json!({"model": "none", "prompt": "x"})),
        ),
        r(
            "get",
            "/api/v1/jobs",
            "/api/v1/jobs",
            Some("run_inference"),
            None,
        ),
        r(
            "get",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/none",
            Some("run_inference"),
            None,
        ),
        r(
            "delete",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/none",
            Some("run_inference"),
            None,
        ),
        r(
            "get",
            "/api/v1/jobs/{id}/stream",
            "/api/v1/jobs/none/stream",
            Some("use_streaming"),
            None,
        ),
        // OpenAI-compatible routes
        r("get", "/v1/models", "/v1/models", Some("read_models"), None),
        r(
            "post",
            "/v1/completions",
            "/v1/completions",
            Some("run_inference"),
            Some(json!({"model": "none", "prompt": "x"})),
        ),
        r(
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some("run_inference"),
            Some(json!({"model": "none", "messages": [{"role": "user", "content": "x"}]})),
        ),
        // queue management
        r(
            "get",
            "/api/v1/queue",
            "/api/v1/queue",
            Some("manage_queue"),
            None,
        ),
        r(
            "get",
            "/api/v1/queue/jobs",
            "/api/v1/queue/jobs",
            Some("manage_queue"),
            None,
        ),
        r(
            "delete",
            "/api/v1/queue/jobs",
            "/api/v1/queue/jobs?status=completed",
            Some("manage_queue"),
            None,
        ),
        r(
            "post",
            "/api/v1/queue/jobs/{id}/cancel",
            "/api/v1/queue/jobs/none/cancel",
            Some("manage_queue"),
            None,
        ),
        r(
            "post",
            "/api/v1/queue/jobs/{id}/retry",
            "/api/v1/queue/jobs/none/retry",
            Some("manage_queue"),
            None,
        ),
        r(
            "post",
            "/api/v1/queue/jobs/{id}/priority",
            "/api/v1/queue/jobs/none/priority",
            Some("manage_queue"),
            Some(json!({"priority": "high"})),
        ),
        r(
            "post",
            "/api/v1/queue/pause",
            "/api/v1/queue/pause",
            Some("manage_queue"),
            None,
        ),
        r(
            "post",
            "/api/v1/queue/resume",
            "/api/v1/queue/resume",
            Some("manage_queue"),
            None,
        ),
        // metrics
        r("get", "/metrics", "/metrics", Some("read_metrics"), None),
        r(
            "get",
            "/api/v1/metrics",
            "/api/v1/metrics",
            Some("read_metrics"),
            None,
        ),
        // runtime configuration
        r(
            "get",
            "/api/v1/config",
            "/api/v1/config",
            Some("write_config"),
            None,
        ),
        r(
            "patch",
            "/api/v1/config",
            "/api/v1/config",
            Some("write_config"),
            Some(json!({"limits": {"requests_per_minute": 10_000}})),
        ),
        // caches
        r("get", "/api/v1/cache", "/api/v1/cache", Some("manage_cache"), None),
        r(
            "get",
            "/api/v1/cache/responses",
            "/api/v1/cache/responses",
            Some("manage_cache"),
            None,
        ),
        r(
            "delete",
            "/api/v1/cache/responses/{key}",
            "/api/v1/cache/responses/0000000000000000000000000000000000000000000000000000000000000000",
            Some("manage_cache"),
            None,
        ),
        r("delete", "/api/v1/cache", "/api/v1/cache", Some("manage_cache"), None),
    ];
    // The documented outcome of each row's input, in the same order.
    let expected: &[(u16, &'static [&'static str])] = &[
        (200, &[]), // me
        (400, &[]), // logout revokes JWTs; an API key is told how to revoke itself
        (400, &[]), // wrong old password
        (200, &[]), // list keys
        (201, &[]), // create a key
        (404, &[]), // get, revoke, rotate a key that does not exist
        (404, &[]),
        (404, &[]),
        (200, &[]),                                                // list users
        (201, &["read_models", "run_inference", "use_streaming"]), // create a `user`
        (404, &[]),
        (404, &[]),
        (404, &[]),
        (200, &[]), // audit events, one event, stream, verify, export
        (200, &[]),
        (200, &[]),
        (200, &[]),
        (200, &[]),
        (200, &[]), // checkpoint, checkpoints, public key, both proofs, state
        (200, &[]),
        (200, &[]),
        (200, &[]),
        (200, &[]),
        (200, &[]),
        (200, &[]), // list models
        (400, &[]), // upload of a body that is not a GGUF file
        (404, &[]), // get, patch, delete a model that does not exist
        (404, &[]),
        (404, &[]),
        (404, &[]), // inference on a model that does not exist
        (404, &[]), // a job on a model that does not exist
        (200, &[]), // your jobs
        (404, &[]), // get, cancel, stream a job that does not exist
        (404, &[]),
        (404, &[]),
        (200, &[]), // OpenAI: models; completions on a model that does not exist
        (404, &[]),
        (404, &[]),
        (200, &[]), // queue overview, every job, purge
        (200, &[]),
        (200, &[]),
        (404, &[]), // cancel, retry, reprioritise a job that does not exist
        (404, &[]),
        (404, &[]),
        (200, &[]), // pause, resume
        (200, &[]),
        (200, &[]), // the Prometheus exposition and its JSON summary
        (200, &[]),
        (200, &[]), // the configuration, and a patch that keeps the test's rate limit
        (200, &[]),
        (200, &[]), // both caches, the cached answers, one that does not exist, clear
        (200, &[]),
        (404, &[]),
        (200, &[]),
    ];
    assert_eq!(rows.len(), expected.len());
    rows.into_iter()
        .zip(expected)
        .map(|(row, (expect, extra))| Row {
            expect: *expect,
            extra,
            ..row
        })
        .collect()
}

/// Our error body, or on `/v1` OpenAI's (its `code` is ours in lower case).
async fn expect_denied(r: reqwest::Response, status: u16, code: &str, openai: bool) -> Value {
    if !openai {
        return expect_error(r, status, code).await;
    }
    assert_eq!(r.status().as_u16(), status);
    let body: Value = r.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code.to_lowercase(), "{body}");
    assert!(
        body["error"]["type"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );
    body
}

async fn call(ts: &common::TestServer, row: &Row, key: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(row.method.to_uppercase().as_bytes()).unwrap();
    let mut req = ts
        .client
        .request(method, ts.at(row.path))
        .header("x-api-key", key);
    if let Some(b) = &row.body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_route_enforces_its_permission() {
    let ts = common::start_with(|c| c.limits.requests_per_minute = 10_000).await;
    let admin = ts.admin_token().await;
    // Per permission, one key holding everything but P.
    let mut without = std::collections::HashMap::new();
    for p in ALL {
        let rest: Vec<&str> = ALL.iter().copied().filter(|q| *q != p).collect();
        without.insert(p, ts.api_key(&admin, &rest).await.1);
    }

    for row in rows() {
        let openai = row.path.starts_with("/v1/");
        if let Some(p) = row.permission {
            let r = call(&ts, &row, &without[p]).await;
            let body = expect_denied(r, 403, "PERMISSION_DENIED", openai).await;
            if openai {
                let m = body["error"]["message"].as_str().unwrap();
                assert!(
                    m.contains(&format!("`{p}`")),
                    "{} {}: {m}",
                    row.method,
                    row.path
                );
            } else {
                assert_eq!(
                    body["error"]["details"]["required"], p,
                    "{} {}",
                    row.method, row.path
                );
            }
        }
        // A key holding only the route's permission (and what the input needs) gets the
        // documented status: a 500 or any other status fails.
        let mut holding: Vec<&str> = row.permission.into_iter().collect();
        holding.extend(row.extra.iter().copied());
        let (_, key) = ts.api_key(&admin, &holding).await;
        let r = call(&ts, &row, &key).await;
        let status = r.status().as_u16();
        // An SSE tail never ends by itself: its status is enough.
        let text = if row.path.ends_with("/stream") && status == 200 {
            String::new()
        } else {
            r.text().await.unwrap_or_default()
        };
        assert_eq!(
            status, row.expect,
            "{} {} holding {holding:?}: {text}",
            row.method, row.path
        );
        if status >= 400 {
            let body: Value = serde_json::from_str(&text).expect("error body");
            assert!(body["error"]["code"].is_string(), "{text}");
        }
        // Without any credential: 401 everywhere.
        let method = reqwest::Method::from_bytes(row.method.to_uppercase().as_bytes()).unwrap();
        let r = ts
            .client
            .request(method, ts.at(row.path))
            .send()
            .await
            .unwrap();
        expect_denied(r, 401, "AUTHENTICATION_FAILED", openai).await;
    }
}

#[test]
fn the_table_covers_every_secured_operation_and_the_spec_names_each_permission() {
    let spec: Value = serde_json::from_str(&inferno::api::spec_json()).unwrap();
    let table = rows();
    let listed: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    let mut secured = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op
                .get("security")
                .is_some_and(|s| !s.as_array().unwrap().is_empty())
            {
                secured.insert((method.clone(), path.clone()));
            }
        }
    }
    let missing: Vec<_> = secured.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "secured operations missing from the matrix: {missing:?}"
    );
    for row in &table {
        let op = &spec["paths"][row.template][row.method];
        assert!(
            op.is_object(),
            "{} {} is in the spec",
            row.method,
            row.template
        );
        if let Some(p) = row.permission {
            let text = format!(
                "{} {}",
                op["summary"].as_str().unwrap_or(""),
                op["description"].as_str().unwrap_or("")
            );
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                text.contains(&format!("Requires permission `{p}`")),
                "{} {} does not state `{p}` in the spec: {text}",
                row.method,
                row.template
            );
        }
    }
}

/// Default-deny: exactly these operations are reachable without credentials; every other
/// operation of the spec answers 401 to a request without any.
#[tokio::test]
async fn only_health_readiness_and_login_are_open() {
    const OPEN: [(&str, &str); 3] = [
        ("get", "/health"),
        ("get", "/ready"),
        ("post", "/api/v1/auth/login"),
    ];
    let spec: Value = serde_json::from_str(&inferno::api::spec_json()).unwrap();
    let ts = common::start().await;
    let mut open = BTreeSet::new();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let secured = op
                .get("security")
                .is_some_and(|s| !s.as_array().unwrap().is_empty());
            if !secured {
                open.insert((method.clone(), path.clone()));
            }
            let concrete = path.replace("{id}", "x").replace("{seq}", "1");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = ts
                .client
                .request(m, ts.at(&concrete))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            if OPEN.contains(&(method.as_str(), path.as_str())) {
                assert_ne!(r.status(), 401, "{method} {path} is open");
            } else {
                expect_denied(r, 401, "AUTHENTICATION_FAILED", path.starts_with("/v1/")).await;
            }
            checked += 1;
        }
    }
    let expected: BTreeSet<(String, String)> = OPEN
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(open, expected, "operations without a security requirement");
    assert!(
        checked > 20,
        "the spec lists the API ({checked} operations)"
    );
    // The spec and the interactive docs are served without credentials too.
    for path in ["/api/v1/openapi.json", "/docs"] {
        let r = ts.client.get(ts.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}
