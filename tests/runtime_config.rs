//! Live configuration through the API: `GET /api/v1/config` shows every effective value and
//! its source, `PATCH /api/v1/config` changes the live settings without a restart (checked
//! as a whole, recorded as `config.changed` events, kept over restarts).

mod common;

use common::expect_error;
use serde_json::{json, Value};

async fn get_config(ts: &common::TestServer, token: &str) -> Value {
    ts.get_json(token, "/api/v1/config").await
}

fn setting<'a>(config: &'a Value, key: &str) -> &'a Value {
    config["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no setting {key} in {config}"))
}

async fn patch(ts: &common::TestServer, token: &str, body: Value) -> reqwest::Response {
    ts.client
        .patch(ts.at("/api/v1/config"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn me(ts: &common::TestServer, key: &str) -> reqwest::Response {
    ts.client
        .get(ts.at("/api/v1/auth/me"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lowered_rate_limit_holds_from_the_next_request_and_over_a_restart() {
    let ts = common::start_with(|c| c.limits.requests_per_minute = 1000).await;
    let admin = ts.admin_token().await;
    let (_, key) = ts.api_key(&admin, &["read_models"]).await;
    for _ in 0..3 {
        let r = me(&ts, &key).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "1000");
    }

    let r = patch(&ts, &admin, json!({"limits": {"requests_per_minute": 2}})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["changed"], json!(["limits.requests_per_minute"]));
    let s = setting(&body, "limits.requests_per_minute");
    assert_eq!(s["value"], 2);
    assert_eq!(s["source"], "runtime");
    assert_eq!(s["live"], true);

    // The very next requests count against the new limit.
    for _ in 0..2 {
        let r = me(&ts, &key).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    }
    expect_error(me(&ts, &key).await, 429, "RATE_LIMITED").await;

    // Recorded with the old and the new value.
    let events = ts.events(&admin, "config.changed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let p = &events[0]["payload"];
    assert_eq!(p["key"], "limits.requests_per_minute");
    assert_eq!(p["old"], 1000);
    assert_eq!(p["value"], 2);

    // Kept over a restart, over what the config says (the admin is held to 2 per minute
    // too, so it makes few requests from here on).
    let ts = ts.restart().await;
    let admin = ts.admin_token().await;
    let config = get_config(&ts, &admin).await;
    let s = setting(&config, "limits.requests_per_minute");
    assert_eq!(s["value"], 2);
    assert_eq!(s["source"], "runtime");
    assert_eq!(me(&ts, &key).await.headers()["x-ratelimit-limit"], "2");

    // null puts the configured value back, also over a restart.
    let r = patch(&ts, &admin, json!({"limits.requests_per_minute": null})).await;
    assert_eq!(r.status(), 200);
    let ts = ts.restart().await;
    let admin = ts.admin_token().await;
    let config = get_config(&ts, &admin).await;
    let s = setting(&config, "limits.requests_per_minute");
    assert_eq!(s["value"], 1000);
    assert_eq!(s["source"], "default");
    let events = ts.events(&admin, "config.changed").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["payload"]["old"], 2);
    assert!(events[1]["payload"]["value"].is_null());
    ts.stop().await;
}

#[tokio::test]
async fn an_invalid_patch_names_every_bad_key_and_changes_nothing() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    let before = get_config(&ts, &admin).await;
    let r = patch(
        &ts,
        &admin,
        json!({
            "limits": {"requests_per_minute": "30", "max_prompt_chars": 5},
            "server": {"bind": "0.0.0.0:9999", "max_body_bytes": 0},
            "queue": {"max_depth": -1},
            "logging": {"level": "not a [filter"},
            "no_such": {"key": 1},
        }),
    )
    .await;
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    let fields: Vec<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "limits.requests_per_minute",
            "logging.level",
            "no_such.key",
            "queue.max_depth",
            "server.bind",
            "server.max_body_bytes",
        ],
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("server.bind: cannot change while the server runs"),
        "{message}"
    );
    assert!(
        message.contains("no_such.key: unknown setting"),
        "{message}"
    );
    // The valid key of the refused patch was not applied either.
    assert_eq!(get_config(&ts, &admin).await, before);
    assert!(ts.events(&admin, "config.changed").await.is_empty());

    for bad in [json!([1, 2]), json!({}), json!("limits")] {
        expect_error(patch(&ts, &admin, bad).await, 400, "VALIDATION_ERROR").await;
    }
    ts.stop().await;
}

#[tokio::test]
async fn prompt_body_cors_and_queue_limits_change_live() {
    let ts = common::start().await;
    let admin = ts.admin_token().await;
    let preflight = |ts: &common::TestServer| {
        ts.client
            .request(reqwest::Method::OPTIONS, ts.at("/api/v1/models"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .send()
    };
    let r = preflight(&ts).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let r = patch(
        &ts,
        &admin,
        json!({
            "limits": {"max_prompt_chars": 5},
            "server": {"max_body_bytes": 200, "cors_origins": ["https://app.example.com"]},
            "queue": {"max_depth": 3, "max_queued_per_principal": 2},
            "audit": {"record_content": true},
            "logging": {"level": "inferno=debug,info"},
        }),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // A prompt over the new limit is refused before any model is looked up.
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&admin)
        .json(&json!({"prompt": "123456", "model": "none"}))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt exceeds 5 characters"),
        "{body}"
    );
    // A body over the new limit gets 413.
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&admin)
        .json(&json!({"prompt": "x".repeat(500)}))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
    // CORS answers the new origin.
    let r = preflight(&ts).await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // The queue reports its new depth.
    let q = ts.get_json(&admin, "/api/v1/queue").await;
    assert_eq!(q["max_depth"], 3, "{q}");

    let config = get_config(&ts, &admin).await;
    for (key, value) in [
        ("server.cors_origins", json!(["https://app.example.com"])),
        ("queue.max_queued_per_principal", json!(2)),
        ("audit.record_content", json!(true)),
        ("logging.level", json!("inferno=debug,info")),
    ] {
        let s = setting(&config, key);
        assert_eq!(s["value"], value, "{key}");
        assert_eq!(s["source"], "runtime", "{key}");
    }
    assert_eq!(ts.events(&admin, "config.changed").await.len(), 7);
    ts.stop().await;
}

#[tokio::test]
async fn settings_show_file_env_and_cli_sources_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inferno.toml");
    std::fs::write(&file, "[limits]\nmax_prompt_chars = 4321\n").unwrap();
    let secret = "env-jwt-secret-0123456789abcdefghijklmnop";
    let server = common::spawn_server(
        &dir.path().join("data"),
        &[
            ("INFERNO_CONFIG", file.to_str().unwrap()),
            ("INFERNO_QUEUE__MAX_DEPTH", "77"),
            ("INFERNO_AUTH__JWT_SECRET", secret),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await;
    let r = client
        .get(server.at("/api/v1/config"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(secret), "the JWT secret is shown");
    let config: Value = serde_json::from_str(&text).unwrap();
    let s = setting(&config, "limits.max_prompt_chars");
    assert_eq!((&s["value"], &s["source"]), (&json!(4321), &json!("file")));
    let s = setting(&config, "queue.max_depth");
    assert_eq!((&s["value"], &s["source"]), (&json!(77), &json!("env")));
    let s = setting(&config, "auth.jwt_secret");
    assert_eq!((&s["value"], &s["source"]), (&json!("***"), &json!("env")));
    assert_eq!(s["live"], false);
    assert_eq!(setting(&config, "server.bind")["source"], "cli");
    assert_eq!(
        setting(&config, "limits.requests_per_minute")["source"],
        "default"
    );
    server.terminate();
}
