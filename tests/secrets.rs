//! No password, API key, JWT or email address reaches any log line or event: the real
//! binary runs the whole auth surface with JSON logs to a file and to stderr, then both
//! logs and the exported event log are searched for every secret used.

mod common;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_emails_never_reach_logs_or_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    let logs_str = logs.to_str().unwrap().to_string();
    let server = common::spawn_server(
        &data,
        &[
            ("INFERNO_LOGGING__FORMAT", "json"),
            ("INFERNO_LOGGING__DIR", &logs_str),
            ("INFERNO_LOGGING__LEVEL", "debug"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let mut secrets: Vec<String> = vec![common::ADMIN_PASSWORD.to_string()];

    // While it runs, the offline CLI refuses the locked data dir and says why.
    let out = common::run_cli(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");

    let login = |u: &str, p: &str| {
        c.post(server.at("/api/v1/auth/login"))
            .json(&json!({"username": u, "password": p}))
            .send()
    };
    let admin: Value = login("admin", common::ADMIN_PASSWORD)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = admin["token"].as_str().unwrap().to_string();
    secrets.push(admin.clone());
    let r = login("admin", "a-wrong-password-guess").await.unwrap();
    assert_eq!(r.status(), 401);
    secrets.push("a-wrong-password-guess".into());
    // Someone types their email as the username.
    let r = login("someone@example.net", "another-password-guess")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    secrets.extend([
        "someone@example.net".into(),
        "another-password-guess".into(),
    ]);

    let r = c.post(server.at("/api/v1/users")).bearer_auth(&admin)
        .json(&json!({"username": "frank", "password": "frank-password-5678", "email": "frank@example.org"}))
        .send().await.unwrap();
    assert_eq!(r.status(), 201);
    secrets.extend(["frank-password-5678".into(), "frank@example.org".into()]);
    let frank: Value = login("frank", "frank-password-5678")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let frank = frank["token"].as_str().unwrap().to_string();
    secrets.push(frank.clone());

    let r = c
        .post(server.at("/api/v1/auth/api-keys"))
        .bearer_auth(&frank)
        .json(&json!({"name": "k", "permissions": ["read_models"]}))
        .send()
        .await
        .unwrap();
    let key: Value = r.json().await.unwrap();
    let (key_id, key) = (
        key["id"].as_str().unwrap().to_string(),
        key["key"].as_str().unwrap().to_string(),
    );
    secrets.push(key.clone());
    for (h, v) in [
        ("x-api-key", key.clone()),
        ("authorization", format!("Bearer {key}")),
    ] {
        let r = c
            .get(server.at("/api/v1/auth/me"))
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(server.at(&format!("/api/v1/auth/api-keys/{key_id}/rotate")))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    let rotated: Value = r.json().await.unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_string();
    secrets.push(new_key.clone());
    // Bad credentials of every shape, including a key in the query string.
    let r = c
        .get(server.at(&format!("/api/v1/auth/me?api_key={key}")))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old secret stopped working");
    let r = c
        .get(server.at("/api/v1/auth/me"))
        .bearer_auth("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(server.at("/api/v1/auth/password"))
        .bearer_auth(&frank)
        .json(
            &json!({"old_password": "frank-password-5678", "new_password": "frank-new-password-9"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    secrets.push("frank-new-password-9".into());
    // The change ended the token from before it; a new login gets one that works.
    let r = c
        .get(server.at("/api/v1/auth/me"))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let frank: Value = login("frank", "frank-new-password-9")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let frank = frank["token"].as_str().unwrap().to_string();
    secrets.push(frank.clone());
    let r = c
        .patch(server.at("/api/v1/users/nobody"))
        .bearer_auth(&admin)
        .json(&json!({"password": "reset-password-000", "email": "x@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    secrets.extend(["reset-password-000".into(), "x@example.com".into()]);
    let r = c
        .delete(server.at(&format!("/api/v1/auth/api-keys/{key_id}")))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .post(server.at("/api/v1/auth/logout"))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let stderr_log = server.stderr_log.clone();
    assert!(server.terminate().success(), "graceful exit on SIGTERM");

    let mut haystack = std::fs::read_to_string(&stderr_log).unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(&logs).expect("log dir written") {
        haystack.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        files += 1;
    }
    assert!(files >= 1, "a rolling log file exists");
    assert!(
        haystack.contains("\"route\":\"/api/v1/auth/login\""),
        "access log present"
    );
    assert!(haystack.contains("\"user_id\""), "access log names users");
    let out = common::run_cli(&["audit", "export", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success());
    let events = String::from_utf8(out.stdout).unwrap();
    assert!(events.lines().count() > 10, "events were recorded");
    for secret in &secrets {
        common::leak::secret("secret", secret);
        assert!(!haystack.contains(secret.as_str()), "log leaked {secret}");
        assert!(
            !events.contains(secret.as_str()),
            "event log leaked {secret}"
        );
    }
    // Key secrets are not even partially present (the id part is public by design).
    for k in [&key, &new_key] {
        assert!(!haystack.contains(&k[16..]) && !events.contains(&k[16..]));
    }
}
