//! Models and inference through the API, on the real model (loaded once for this binary and
//! shared by every test server).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::{expect_error, TestServer};
use inferno::inference::{Engine, EngineConfig, LlamaEngine};
use serde_json::{json, Value};

const MODEL: &str = "gemma-3-270m-q4_k_m";
/// Greedy continuation of "The capital of France is", 11 tokens (as in tests/engine.rs, where
/// the comment says why not longer).
const KNOWN: &str = " the capital of the country of France. It is the";

static ENGINE: LazyLock<Arc<LlamaEngine>> = LazyLock::new(|| {
    Arc::new(LlamaEngine::new(EngineConfig {
        parallel: 8,
        threads: 1,
        ctx_per_slot: 1024,
        max_loaded: 6,
        ..EngineConfig::default()
    }))
});

fn model_path() -> PathBuf {
    common::test_model_path()
}

/// A server whose models dir links the test model under each of `ids`.
async fn server_with(
    ids: &[&str],
    edit: impl FnOnce(&mut inferno::config::Config),
) -> (TestServer, String) {
    let engine: Arc<dyn Engine> = ENGINE.clone();
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let ts = common::start_with_engine(engine, move |c| {
        std::fs::create_dir_all(&c.models.dir).unwrap();
        for id in &ids {
            std::os::unix::fs::symlink(model_path(), c.models.dir.join(format!("{id}.gguf")))
                .unwrap();
        }
        edit(c);
    })
    .await;
    let token = ts.admin_token().await;
    (ts, token)
}

async fn server() -> (TestServer, String) {
    server_with(&[MODEL], |_| {}).await
}

/// Whether `model` has no request queued or running within 5 s.
async fn idle_soon(ts: &TestServer, model: &str) -> bool {
    for _ in 0..100 {
        if ts.state().engine().active_requests(model) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn infer(ts: &TestServer, token: &str, body: Value) -> reqwest::Response {
    ts.client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn infer_ok(ts: &TestServer, token: &str, body: Value) -> Value {
    let r = infer(ts, token, body).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Exact greedy text holds for a sequence decoded alone, so this test has a model id of its
/// own (other tests' requests would share its batch and shift the logits slightly).
#[tokio::test]
async fn greedy_output_stop_strings_and_max_tokens() {
    let (ts, token) = server_with(&["solo"], |_| {}).await;
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": "solo", "prompt": "The capital of France is", "max_tokens": 11}),
    )
    .await;
    assert_eq!(out["text"], KNOWN, "{out}");
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 11);
    assert_eq!(out["usage"]["prompt_tokens"], 6);
    assert_eq!(out["model"], "solo");
    for k in ["queue_ms", "prompt_ms", "generate_ms", "tokens_per_second"] {
        assert!(out["timings"][k].as_f64().unwrap() >= 0.0, "{k}");
    }
    // Events: queued and completed, prompt and output as hash + length only.
    let events = ts.events(&token, "job.queued,job.completed").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["payload"]["job_id"], out["id"]);
    assert_eq!(events[0]["payload"]["prompt"]["length"], 24);
    assert!(events[0]["payload"]["prompt"]["text"].is_null());
    assert_eq!(events[1]["payload"]["completion_tokens"], 11);
    assert!(
        !events[1].to_string().contains("country of France"),
        "output text is not recorded by default"
    );

    // A stop string ends generation before it, and is not returned.
    let out = infer_ok(&ts, &token, json!({"model": "solo", "prompt": "The capital of France is", "max_tokens": 32, "stop": [" It is"]})).await;
    assert_eq!(out["text"], " the capital of the country of France.");
    assert_eq!(out["finish_reason"], "stop");
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": "solo", "prompt": "The capital of France is", "max_tokens": 3}),
    )
    .await;
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn record_content_keeps_the_text() {
    let (ts, token) = server_with(&[MODEL], |c| c.audit.record_content = true).await;
    infer_ok(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}),
    )
    .await;
    let events = ts.events(&token, "job.queued").await;
    assert_eq!(
        events[0]["payload"]["prompt"]["text"],
        "The capital of France is"
    );
}

#[tokio::test]
async fn chat_messages_use_the_gemma_template() {
    let (ts, token) = server().await;
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": MODEL, "max_tokens": 8, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}
        ]}),
    )
    .await;
    let reason = out["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length");
    // The rendered prompt holds the turn markers, so it is longer than the words alone.
    assert!(
        out["usage"]["prompt_tokens"].as_u64().unwrap() > 12,
        "{out}"
    );
    let r = infer(
        &ts,
        &token,
        json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
    )
    .await;
    expect_error(r, 400, "VALIDATION_ERROR").await;
    let r = infer(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    expect_error(r, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn eight_concurrent_requests_complete_in_shared_batches() {
    let (ts, token) = server().await;
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "The best way to learn",
        "Water boils at",
        "My favourite food is",
        "The sun rises in the",
        "In the year 2000",
        "A good friend is",
    ];
    let mut tasks = Vec::new();
    for p in prompts {
        let (client, url, token) = (ts.client.clone(), ts.at("/api/v1/inference"), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"model": MODEL, "prompt": p, "max_tokens": 24}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(!out["text"].as_str().unwrap().is_empty());
    }
    let stats = ts.state().engine().stats();
    assert!(stats.max_batch_sequences > 1, "batched decoding: {stats:?}");
}

#[tokio::test]
async fn a_disconnected_request_is_cancelled_and_frees_its_slot() {
    let (ts, token) = server_with(&["cancel-me"], |_| {}).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let r = client.post(ts.at("/api/v1/inference")).bearer_auth(&token)
        .json(&json!({"model": "cancel-me", "prompt": "Write a very long story about a dragon.", "max_tokens": 900}))
        .send().await;
    assert!(r.is_err(), "the client gave up before the end");
    assert!(
        idle_soon(&ts, "cancel-me").await,
        "the slot is freed after the disconnect"
    );
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": "cancel-me", "prompt": "The capital of France is", "max_tokens": 4}),
    )
    .await;
    assert_eq!(out["usage"]["completion_tokens"], 4);
    let mut found = false;
    for _ in 0..50 {
        if ts
            .events(&token, "job.cancelled")
            .await
            .iter()
            .any(|e| e["payload"]["by"] == "client")
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the cancellation is recorded");
}

#[tokio::test]
async fn limits_unknown_disabled_and_overflowing_requests() {
    let (ts, token) = server().await;
    let r = infer(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "a".repeat(10_001)}),
    )
    .await;
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["error"]["details"]["field"], "prompt");
    assert!(body["error"]["message"].as_str().unwrap().contains("10000"));
    // Within the character limit but over the 1024-token slot.
    let r = infer(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "hello world ".repeat(800)}),
    )
    .await;
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["prompt_tokens"].as_u64().unwrap() > 1023);
    assert_eq!(body["error"]["details"]["max_prompt_tokens"], 1023);
    let r = infer(
        &ts,
        &token,
        json!({"model": "no-such-model", "prompt": "x"}),
    )
    .await;
    expect_error(r, 404, "NOT_FOUND").await;
    let r = infer(&ts, &token, json!({"prompt": "x"})).await;
    expect_error(r, 400, "VALIDATION_ERROR").await;
    let r = infer(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "x", "temperature": -1.0}),
    )
    .await;
    expect_error(r, 400, "VALIDATION_ERROR").await;
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/models/{MODEL}")))
        .bearer_auth(&token)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = infer(&ts, &token, json!({"model": MODEL, "prompt": "x"})).await;
    expect_error(r, 409, "CONFLICT").await;
}

#[tokio::test]
async fn default_model_aliases_and_default_params() {
    let (ts, token) = server_with(&[MODEL], |c| c.models.default = Some(MODEL.into())).await;
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/models/{MODEL}")))
        .bearer_auth(&token)
        .json(&json!({"aliases": ["tiny"], "defaults": {"max_tokens": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = ts
        .client
        .get(ts.at("/api/v1/models/tiny"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["id"], MODEL);
    assert_eq!(m["aliases"], json!(["tiny"]));
    assert_eq!(m["metadata"]["architecture"], "gemma3");
    assert_eq!(m["metadata"]["quantization"], "Q4_K_M");
    let out = infer_ok(&ts, &token, json!({"prompt": "The capital of France is"})).await;
    assert_eq!(
        out["usage"]["completion_tokens"], 3,
        "the model's default max_tokens"
    );
    assert_eq!(out["model"], MODEL);
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": "tiny", "prompt": "The capital of France is", "max_tokens": 5}),
    )
    .await;
    assert_eq!(out["usage"]["completion_tokens"], 5);
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/models/{MODEL}")))
        .bearer_auth(&token)
        .json(&json!({"defaults": {"top_p": 7.0}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(ts.events(&token, "model.updated").await.len(), 1);
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn uploads_good_bad_and_oversized() {
    let (ts, token) = server().await;
    let models_dir = ts.cfg.models.dir.clone();
    let upload = |name: &str, body: reqwest::Body| {
        ts.client
            .post(ts.at(&format!("/api/v1/models?name={name}")))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    // Not GGUF: 400, nothing left behind.
    let r = upload("junk", reqwest::Body::from(vec![b'x'; 4096]))
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(files_in(&models_dir), [format!("{MODEL}.gguf")]);
    // A good file, streamed (chunked, no Content-Length).
    let file = tokio::fs::File::open(model_path()).await.unwrap();
    let stream = tokio_util::io::ReaderStream::new(file);
    let r = upload("uploaded", reqwest::Body::wrap_stream(stream))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["id"], "uploaded");
    assert_eq!(
        m["sha256"],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    assert_eq!(
        files_in(&models_dir),
        [format!("{MODEL}.gguf"), "uploaded.gguf".to_string()]
    );
    // The digest computed during the upload is cached under the model's final path (so the
    // next start-up does not read the file again), and the temporary file left no entry.
    let cache: Value =
        serde_json::from_slice(&std::fs::read(ts.data_dir().join("model-hashes.json")).unwrap())
            .unwrap();
    let placed = std::fs::canonicalize(models_dir.join("uploaded.gguf")).unwrap();
    assert_eq!(
        cache[placed.to_string_lossy().as_ref()]["sha256"],
        m["sha256"]
    );
    let keys: Vec<&String> = cache.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| !k.contains(".upload-")),
        "temporary upload path left in the hash cache: {keys:?}"
    );
    let r = upload("uploaded", reqwest::Body::from(b"GGUF".to_vec()))
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = upload("../evil", reqwest::Body::from(b"GGUF".to_vec()))
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(ts.events(&token, "model.registered").await.len(), 2);

    // Oversized, with and without Content-Length: 413 and nothing left.
    let (small, token2) = server_with(&[MODEL], |c| c.models.max_upload_bytes = 1 << 20).await;
    let mut big = b"GGUF".to_vec();
    big.resize(2 << 20, 0);
    for chunked in [false, true] {
        let body = if chunked {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                big.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        } else {
            reqwest::Body::from(big.clone())
        };
        let r = small
            .client
            .post(small.at("/api/v1/models?name=big"))
            .bearer_auth(&token2)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
        assert_eq!(
            files_in(&small.cfg.models.dir),
            [format!("{MODEL}.gguf")],
            "chunked={chunked}"
        );
    }
}

#[tokio::test]
async fn delete_with_and_without_running_work() {
    let (ts, token) = server_with(&["victim", "spare"], |_| {}).await;
    // Idle: deleted at once.
    let r = ts
        .client
        .delete(ts.at("/api/v1/models/spare"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = ts
        .client
        .get(ts.at("/api/v1/models/spare"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    assert!(!ts.cfg.models.dir.join("spare.gguf").exists());

    // Busy: 409, then force cancels the running request.
    let (client, url, t) = (ts.client.clone(), ts.at("/api/v1/inference"), token.clone());
    let running = tokio::spawn(async move {
        client.post(url).bearer_auth(t)
            .json(&json!({"model": "victim", "prompt": "Write a very long story about a dragon.", "max_tokens": 900}))
            .send().await.unwrap().json::<Value>().await.unwrap()
    });
    // Wait until the model is loaded and the request holds a slot.
    let engine = ts.state().engine().clone();
    for _ in 0..400 {
        let stats = engine.stats();
        if engine.active_requests("victim") > 0 && stats.loaded_models.iter().any(|m| m == "victim")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        engine.active_requests("victim") > 0,
        "the request is running"
    );
    let r = ts
        .client
        .delete(ts.at("/api/v1/models/victim"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = ts
        .client
        .delete(ts.at("/api/v1/models/victim?force=true"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let out = running.await.unwrap();
    assert_eq!(out["finish_reason"], "cancelled", "{out}");
    let deleted = ts.events(&token, "model.deleted").await;
    assert_eq!(deleted.len(), 2);
    assert_eq!(deleted[1]["payload"]["forced"], true);
}

/// A TLS client that closes properly sends close_notify before its FIN; those bytes sit
/// unread in the server's socket while the request runs, and the close must still be seen.
#[tokio::test]
async fn a_clean_tls_close_mid_request_cancels_it() {
    use tokio::io::AsyncWriteExt;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let (ts, token) = server_with(&["cancel-tls"], move |c| {
        c.server.tls = Some(inferno::config::TlsConfig {
            cert,
            key,
            min_version: "1.2".into(),
        });
    })
    .await;
    let addr = ts.server.as_ref().unwrap().addr;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let body = json!({"model": "cancel-tls", "prompt": "Write a very long story about a dragon.", "max_tokens": 900}).to_string();
    let request = format!(
        "POST /api/v1/inference HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let engine = ts.state().engine().clone();
    for _ in 0..200 {
        if engine.active_requests("cancel-tls") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        engine.active_requests("cancel-tls") > 0,
        "the request is running"
    );
    // close_notify, then FIN.
    tls.shutdown().await.unwrap();
    assert!(
        idle_soon(&ts, "cancel-tls").await,
        "the slot is freed after the TLS client closed"
    );
}

/// A GGUF header with one key whose value is arrays nested `depth` deep, one item each
/// (llama.cpp reads one level; a reader that recurses per level overflows its stack).
fn nested_arrays_gguf(depth: usize) -> Vec<u8> {
    let mut b = gguf_header_one_key("evil", 9);
    for _ in 1..depth {
        b.extend_from_slice(&9u32.to_le_bytes()); // array of ...
        b.extend_from_slice(&1u64.to_le_bytes()); // ... one item
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // u8
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(7);
    b
}

/// A GGUF header with one string key claiming 1 GiB, in a file of a few bytes.
fn string_bomb_gguf() -> Vec<u8> {
    let mut b = gguf_header_one_key("general.name", 8);
    b.extend_from_slice(&(1u64 << 30).to_le_bytes());
    b.extend_from_slice(b"short");
    b
}

/// Magic, version 3, no tensors, one key/value: `key` of value type `t` (value follows).
fn gguf_header_one_key(key: &str, t: u32) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&t.to_le_bytes());
    b
}

#[tokio::test]
async fn hostile_gguf_files_are_refused_and_the_server_keeps_serving() {
    let evil = nested_arrays_gguf(100_000);
    let dropped = evil.clone();
    // Dropped into the models dir before start-up: skipped with a warning.
    let (ts, token) = server_with(&[MODEL], move |c| {
        std::fs::write(c.models.dir.join("dropped.gguf"), dropped).unwrap();
    })
    .await;
    let list = |ts: &TestServer, token: &str| {
        let r = ts
            .client
            .get(ts.at("/api/v1/models"))
            .bearer_auth(token)
            .send();
        async move {
            let models: Value = r.await.unwrap().json().await.unwrap();
            models["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(&ts, &token).await, [MODEL]);

    // Uploaded: 400, nothing registered or left behind.
    let models_dir = ts.cfg.models.dir.clone();
    for (body, why) in [(evil, "nested array"), (string_bomb_gguf(), "does not fit")] {
        let r = ts
            .client
            .post(ts.at("/api/v1/models?name=evil"))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        let body = expect_error(r, 400, "VALIDATION_ERROR").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{body}");
        // The server's own paths stay out of error messages.
        assert!(
            !message.contains(".partial") && !message.contains(models_dir.to_str().unwrap()),
            "{body}"
        );
        assert_eq!(
            files_in(&models_dir),
            ["dropped.gguf".to_string(), format!("{MODEL}.gguf")]
        );
    }
    assert_eq!(ts.events(&token, "model.registered").await.len(), 1);

    // Still serving: the good model lists and runs.
    assert_eq!(list(&ts, &token).await, [MODEL]);
    let out = infer_ok(
        &ts,
        &token,
        json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2}),
    )
    .await;
    assert_eq!(out["usage"]["completion_tokens"], 2);
}
