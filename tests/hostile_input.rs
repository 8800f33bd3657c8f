//! Inputs that would cost the engine or the log more than they should are refused at the
//! edge with the documented error body, naming the field.

mod common;

use common::{expect_error, start_with};
use serde_json::{json, Value};

#[tokio::test]
async fn stop_takes_at_most_eight_strings_of_at_most_sixty_four_characters() {
    let ts = start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    let infer = |stop: Value| {
        let (ts, admin) = (&ts, admin.clone());
        async move {
            ts.client
                .post(ts.at("/api/v1/inference"))
                .bearer_auth(admin)
                .json(&json!({"model": common::TEST_MODEL_ID, "prompt": "Hi", "max_tokens": 2, "stop": stop}))
                .send()
                .await
                .unwrap()
        }
    };
    let nine: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    for stop in [json!(nine), json!(["x".repeat(65)])] {
        let body = expect_error(infer(stop).await, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["error"]["details"]["field"], "stop", "{body}");
    }
    // The same bound holds for a model's defaults.
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/models/{}", common::TEST_MODEL_ID)))
        .bearer_auth(&admin)
        .json(&json!({"defaults": {"stop": nine}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    // At the bound it runs, and the event records the stop strings as digests only.
    let eight: Vec<String> = (0..8).map(|i| format!("{i}").repeat(64)).collect();
    assert_eq!(infer(json!(eight)).await.status(), 200);
    let events = ts.events(&admin, "job.queued").await;
    let stop = &events[0]["payload"]["params"]["stop"];
    assert_eq!(stop.as_array().unwrap().len(), 8);
    assert!(
        stop[0]["sha256"].is_string() && stop[0]["text"].is_null(),
        "{stop}"
    );
    assert!(!events[0].to_string().contains(&eight[0]));
}

mod connections {
    use super::common;
    use serde_json::Value;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn guarded() -> common::TestServer {
        common::start_with(|c| {
            c.server.header_timeout_secs = 1;
            c.server.idle_timeout_secs = 1;
            c.server.body_timeout_secs = 1;
        })
        .await
    }

    fn addr(ts: &common::TestServer) -> String {
        ts.url.trim_start_matches("http://").to_string()
    }

    /// Everything the server sends until it closes (bounded by 10 s).
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The status and the error body of a raw HTTP/1.1 response.
    fn status_and_body(raw: &str) -> (u16, Value) {
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {raw:?}"));
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn slow_heads_get_408_and_idle_connections_are_closed() {
        let ts = guarded().await;
        let mut slow = Vec::new();
        for _ in 0..200 {
            let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
            s.write_all(b"GET /health HT").await.unwrap();
            slow.push(s);
        }
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(TcpStream::connect(addr(&ts)).await.unwrap());
        }
        // The server keeps answering others meanwhile.
        let r = ts.client.get(ts.at("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let started = Instant::now();
        for s in &mut slow {
            let (status, body) = status_and_body(&read_all(s).await);
            assert_eq!(status, 408);
            assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT", "{body}");
        }
        for s in &mut silent {
            assert_eq!(
                read_all(s).await,
                "",
                "a silent connection is closed without a word"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        ts.stop().await;
    }

    #[tokio::test]
    async fn header_floods_get_431_in_the_error_body() {
        let ts = guarded().await;
        let many: String = (0..10_000).map(|i| format!("x-h{i}: v\r\n")).collect();
        let huge = format!("x-big: {}\r\n", "a".repeat(1024 * 1024));
        for headers in [many, huge] {
            let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
            let req = format!("GET /health HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
            // The server may close before it has read everything.
            let _ = s.write_all(req.as_bytes()).await;
            let (status, body) = status_and_body(&read_all(&mut s).await);
            assert_eq!(status, 431);
            assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
        }
        // 100 headers are still fine.
        let hundred: String = (0..98).map(|i| format!("x-h{i}: v\r\n")).collect();
        let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
        let req = format!("GET /health HTTP/1.1\r\nhost: x\r\n{hundred}connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(status_and_body(&read_all(&mut s).await).0, 200);
        ts.stop().await;
    }

    #[tokio::test]
    async fn a_stalled_body_gets_408_and_an_idle_keep_alive_connection_closes() {
        let ts = guarded().await;
        let token = ts.admin_token().await;
        let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
        let req = format!(
            "POST /api/v1/inference HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"prompt\":"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let raw = read_all(&mut s).await;
        let (status, body) = status_and_body(&raw);
        assert_eq!(status, 408, "{raw}");
        assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT");

        // A served keep-alive connection that then stays silent is closed.
        let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let raw = read_all(&mut s).await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "closed before the idle timeout"
        );
        ts.stop().await;
    }
}
