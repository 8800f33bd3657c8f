//! The server's ground rules through the real server: health, readiness, the error body for
//! every kind of failure, body limits, request ids, CORS and TLS.

mod common;

use common::{expect_error, start, start_with};
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_ready() {
    let ts = start().await;
    let r = ts.client.get(ts.at("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let r = ts.client.get(ts.at("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_use_the_error_body() {
    let ts = start().await;
    let r = ts.client.get(ts.at("/api/v1/nope")).send().await.unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = ts.client.delete(ts.at("/health")).send().await.unwrap();
    expect_error(r, 405, "METHOD_NOT_ALLOWED").await;
}

#[tokio::test]
async fn bad_json_bodies_are_validation_errors() {
    let ts = start().await;
    let login = ts.at("/api/v1/auth/login");
    let send = |body: Vec<u8>, ct: &'static str| {
        ts.client
            .post(&login)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let malformed = send(b"{\"username\": ".to_vec(), "application/json")
        .await
        .unwrap();
    expect_error(malformed, 400, "VALIDATION_ERROR").await;
    let wrong_type = send(
        br#"{"username": ["a"], "password": {"x": 1}}"#.to_vec(),
        "application/json",
    )
    .await
    .unwrap();
    expect_error(wrong_type, 400, "VALIDATION_ERROR").await;
    let unknown_field = send(
        br#"{"username": "a", "password": "b", "admin": true}"#.to_vec(),
        "application/json",
    )
    .await
    .unwrap();
    expect_error(unknown_field, 400, "VALIDATION_ERROR").await;
    let empty = send(Vec::new(), "application/json").await.unwrap();
    expect_error(empty, 400, "VALIDATION_ERROR").await;
    let not_utf8 = send(vec![b'{', 0xff, 0xfe, b'}'], "application/json")
        .await
        .unwrap();
    expect_error(not_utf8, 400, "VALIDATION_ERROR").await;
    let wrong_ct = send(b"username=a".to_vec(), "text/plain").await.unwrap();
    expect_error(wrong_ct, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    // Still serving.
    let r = ts.client.get(ts.at("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn body_limit_counts_streamed_bytes() {
    let ts = start_with(|c| c.server.max_body_bytes = 1024).await;
    let login = ts.at("/api/v1/auth/login");
    let big = format!(r#"{{"username": "{}", "password": "x"}}"#, "a".repeat(4096));
    // With Content-Length.
    let r = ts
        .client
        .post(&login)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(body["error"]["details"]["limit_bytes"], 1024);
    // Chunked, without Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(256).map(|c| Ok(c.to_vec())).collect();
    let r = ts
        .client
        .post(&login)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
    // A small chunked body passes the limit (and fails only on credentials).
    let small: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(br#"{"username": "nobody", "#.to_vec()),
        Ok(br#""password": "wrong-password-123"}"#.to_vec()),
    ];
    let r = ts
        .client
        .post(&login)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(small)))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "AUTHENTICATION_FAILED").await;
    // GETs without a body are never refused.
    let r = ts.client.get(ts.at("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn request_ids_are_kept_or_refused() {
    let ts = start().await;
    let r = ts
        .client
        .get(ts.at("/health"))
        .header("x-request-id", "trace-42.a_b:c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42.a_b:c");
    let r = ts
        .client
        .get(ts.at("/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(generated, "bad id with spaces");
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["error"]["details"]["field"], "X-Request-Id");
    let long = "x".repeat(200);
    let r = ts
        .client
        .get(ts.at("/health"))
        .header("x-request-id", long)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let ts = start_with(|c| c.server.cors_origins = vec!["https://good.example".into()]).await;
    let preflight = |origin: &'static str| {
        ts.client
            .request(reqwest::Method::OPTIONS, ts.at("/api/v1/auth/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://good.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://good.example"
    );
    assert!(ok.headers().contains_key("access-control-allow-methods"));
    let bad = preflight("https://evil.example").await.unwrap();
    assert!(!bad.headers().contains_key("access-control-allow-origin"));
    expect_error(bad, 403, "PERMISSION_DENIED").await;
    // Real requests: headers for the allowed origin only.
    let r = ts
        .client
        .get(ts.at("/health"))
        .header("origin", "https://good.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://good.example"
    );
    let r = ts
        .client
        .get(ts.at("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    expect_error(r, 403, "PERMISSION_DENIED").await;

    // No origins configured: no CORS headers at all.
    let plain = start().await;
    let r = plain
        .client
        .get(plain.at("/health"))
        .header("origin", "https://good.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with("access-control-")));
}

mod tls {
    use super::*;
    use inferno::config::TlsConfig;
    use std::net::SocketAddr;

    struct Certs {
        cert_pem: String,
        dir: tempfile::TempDir,
    }

    fn make_certs() -> Certs {
        let ck = rcgen::generate_simple_self_signed(vec!["inferno.test".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        Certs {
            cert_pem: ck.cert.pem(),
            dir,
        }
    }

    fn client(certs: &Certs, addr: SocketAddr, version: reqwest::tls::Version) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(certs.cert_pem.as_bytes()).unwrap(),
            )
            .resolve("inferno.test", addr)
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap()
    }

    async fn tls_server(certs: &Certs, min: &str) -> common::TestServer {
        let cert = certs.dir.path().join("cert.pem");
        let key = certs.dir.path().join("key.pem");
        let min = min.to_string();
        start_with(move |c| {
            c.server.tls = Some(TlsConfig {
                cert,
                key,
                min_version: min,
            });
        })
        .await
    }

    async fn get_health(
        client: &reqwest::Client,
        addr: SocketAddr,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .get(format!("https://inferno.test:{}/health", addr.port()))
            .send()
            .await
    }

    #[tokio::test]
    async fn tls12_and_tls13_with_http2() {
        let certs = make_certs();
        let ts = tls_server(&certs, "1.2").await;
        let addr = ts.server.as_ref().unwrap().addr;
        for v in [
            reqwest::tls::Version::TLS_1_2,
            reqwest::tls::Version::TLS_1_3,
        ] {
            let r = get_health(&client(&certs, addr, v), addr).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
        }
    }

    #[tokio::test]
    async fn min_version_13_refuses_tls12() {
        let certs = make_certs();
        let ts = tls_server(&certs, "1.3").await;
        let addr = ts.server.as_ref().unwrap().addr;
        let old = get_health(&client(&certs, addr, reqwest::tls::Version::TLS_1_2), addr).await;
        assert!(old.is_err(), "a TLS 1.2-only client must be refused");
        let new = get_health(&client(&certs, addr, reqwest::tls::Version::TLS_1_3), addr)
            .await
            .unwrap();
        assert_eq!(new.status(), 200);
    }

    #[tokio::test]
    async fn untrusted_certificate_is_rejected_by_clients() {
        let certs = make_certs();
        let other = make_certs();
        let ts = tls_server(&certs, "1.2").await;
        let addr = ts.server.as_ref().unwrap().addr;
        let r = get_health(&client(&other, addr, reqwest::tls::Version::TLS_1_3), addr).await;
        assert!(r.is_err(), "clients validate certificates");
    }
}

#[tokio::test]
async fn spec_and_docs_are_served() {
    let ts = start().await;
    let r = ts
        .client
        .get(ts.at("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served: Value = r.json().await.unwrap();
    let generated: Value = serde_json::from_str(&inferno::api::spec_json()).unwrap();
    assert_eq!(served, generated);
    let r = ts.client.get(ts.at("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().to_lowercase().contains("<html"));
}
