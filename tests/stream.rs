//! Server-sent token streams through the API on the real model: event order and content,
//! resume with `Last-Event-ID` mid-run and after the end, disconnect cancels unless
//! `detach`, the `use_streaming` permission, 50 consumers of one job, queued positions and
//! the open-stream cap.

mod common;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::sse::{indices, joined, SseEvent, SseReader};
use common::{expect_error, TestServer, TEST_MODEL_ID as MODEL};
use inferno::inference::{Engine, EngineConfig, LlamaEngine};
use serde_json::{json, Value};

static ENGINE: LazyLock<Arc<LlamaEngine>> = LazyLock::new(|| {
    Arc::new(LlamaEngine::new(EngineConfig {
        parallel: 4,
        threads: 1,
        ctx_per_slot: 1024,
        max_loaded: 1,
        ..EngineConfig::default()
    }))
});

async fn server(edit: impl FnOnce(&mut inferno::config::Config)) -> (TestServer, String) {
    let engine: Arc<dyn Engine> = ENGINE.clone();
    let ts = common::start_with_engine(engine, |c| {
        common::with_test_model(c);
        c.limits.requests_per_minute = 100_000;
        edit(c);
    })
    .await;
    let token = ts.admin_token().await;
    (ts, token)
}

fn body(prompt: &str, max_tokens: u32, extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens});
    for (k, v) in extra.as_object().expect("object") {
        b[k] = v.clone();
    }
    b
}

async fn post(ts: &TestServer, token: &str, path: &str, b: &Value) -> reqwest::Response {
    ts.client
        .post(ts.at(path))
        .bearer_auth(token)
        .json(b)
        .send()
        .await
        .expect("POST")
}

/// `GET /api/v1/jobs/{job}/stream`, with `Last-Event-ID` when given.
async fn get_stream(
    ts: &TestServer,
    token: &str,
    job: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut req = ts
        .client
        .get(ts.at(&format!("/api/v1/jobs/{job}/stream")))
        .bearer_auth(token);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    req.send().await.expect("GET stream")
}

async fn open(ts: &TestServer, token: &str, job: &str, last: Option<&str>) -> SseReader {
    SseReader::new(get_stream(ts, token, job, last).await)
}

/// Polls the job until `done(job)` holds (at most 60 s) and returns it.
async fn job_until(ts: &TestServer, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let j = ts.get_json(token, &format!("/api/v1/jobs/{id}")).await;
        if done(&j) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not reach the expected state");
}

async fn finished(ts: &TestServer, token: &str, id: &str) -> Value {
    job_until(ts, token, id, |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await
}

/// Checks the shape every complete stream has and returns the job id.
fn check_complete(events: &[SseEvent], first_index: u64) -> String {
    assert_eq!(events[0].event, "job", "first event: {:?}", events[0]);
    let job = events[0].data["job_id"]
        .as_str()
        .expect("job_id")
        .to_string();
    let last = events.last().expect("events");
    assert_eq!(last.event, "done", "last event: {last:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "done" || e.event == "error")
            .count(),
        1,
        "exactly one end event"
    );
    let idx = indices(events);
    let expected: Vec<u64> = (first_index..first_index + idx.len() as u64).collect();
    assert_eq!(idx, expected, "token indices are gap-free and in order");
    for e in events.iter().filter(|e| e.event == "token") {
        let i = e.data["index"].as_u64().unwrap();
        assert_eq!(e.id.as_deref(), Some(format!("{job}:{i}").as_str()));
    }
    let n = first_index + idx.len() as u64;
    assert_eq!(last.id.as_deref(), Some(format!("{job}:{n}").as_str()));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_event_order_and_content_match_the_job_and_the_plain_answer() {
    let (ts, token) = server(|_| {}).await;
    let prompt = "Write a list of three fruits:\n1.";
    let resp = post(
        &ts,
        &token,
        "/api/v1/inference",
        &body(prompt, 24, json!({"stream": true})),
    )
    .await;
    let events = SseReader::new(resp).rest().await;
    let job = check_complete(&events, 0);
    let done = &events.last().unwrap().data;
    assert!(
        matches!(done["finish_reason"].as_str(), Some("stop" | "length")),
        "{done}"
    );
    let completion = done["usage"]["completion_tokens"].as_u64().unwrap();
    let pieces = indices(&events).len() as u64;
    assert!(
        pieces >= 1 && pieces <= completion,
        "{pieces} pieces, {completion} tokens"
    );
    assert!(done["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(done["timings"]["generate_ms"].as_f64().is_some(), "{done}");

    // The joined pieces are the job's result, and the non-streamed answer (greedy, alone).
    let text = joined(&events);
    let j = ts.get_json(&token, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["status"], "completed");
    assert_eq!(j["result"]["text"].as_str().unwrap(), text);
    let plain = post(
        &ts,
        &token,
        "/api/v1/inference",
        &body(prompt, 24, json!({})),
    )
    .await;
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(
        plain["text"].as_str().unwrap(),
        text,
        "streamed equals non-streamed"
    );

    // POST /api/v1/jobs with stream answers with the same events.
    let resp = post(
        &ts,
        &token,
        "/api/v1/jobs",
        &body(prompt, 24, json!({"stream": true})),
    )
    .await;
    let again = SseReader::new(resp).rest().await;
    check_complete(&again, 0);
    assert_eq!(joined(&again), text);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_last_event_id_mid_run_and_after_the_end_has_no_gap_or_duplicate() {
    let (ts, token) = server(|_| {}).await;
    let b = body(
        "Once upon a time, in a small village,",
        160,
        json!({"stream": true, "detach": true}),
    );
    let mut first = SseReader::new(post(&ts, &token, "/api/v1/jobs", &b).await);
    let mut head = Vec::new();
    while indices(&head).len() < 3 {
        head.push(first.next().await.expect("early events"));
    }
    drop(first);
    let job = head[0].data["job_id"].as_str().unwrap().to_string();
    let last_id = head.iter().rev().find_map(|e| e.id.clone()).unwrap();
    assert_eq!(last_id, format!("{job}:2"));

    // Mid-run: the job is still running (detached), the rest comes from index 3.
    let running = ts.get_json(&token, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(running["status"], "running", "{running}");
    let tail = open(&ts, &token, &job, Some(&last_id)).await.rest().await;
    check_complete(&tail, 3);
    let result = finished(&ts, &token, &job).await;
    assert_eq!(result["status"], "completed");
    let text = result["result"]["text"].as_str().unwrap().to_string();
    assert_eq!(format!("{}{}", joined(&head), joined(&tail)), text);

    // After the end: a full replay, and a resume from the middle.
    let replay = open(&ts, &token, &job, None).await.rest().await;
    check_complete(&replay, 0);
    assert_eq!(joined(&replay), text);
    let n = indices(&replay).len() as u64;
    let mid = n / 2;
    let rest = open(&ts, &token, &job, Some(&format!("{job}:{mid}")))
        .await
        .rest()
        .await;
    check_complete(&rest, mid + 1);
    let before: String = replay
        .iter()
        .filter(|e| e.event == "token" && e.data["index"].as_u64().unwrap() <= mid)
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(format!("{before}{}", joined(&rest)), text);
    // From the done event's id: nothing but done.
    let done_id = replay.last().unwrap().id.clone().unwrap();
    let end = open(&ts, &token, &job, Some(&done_id)).await.rest().await;
    assert_eq!(end.len(), 2, "{end:?}");
    assert_eq!(end[1].event, "done");

    // A Last-Event-ID of another job, or not an index, is a 400.
    for bad in ["someone-else:3", &format!("{job}:x")] {
        let r = get_stream(&ts, &token, &job, Some(bad)).await;
        expect_error(r, 400, "VALIDATION_ERROR").await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_cancels_the_job_and_detach_does_not() {
    let (ts, token) = server(|_| {}).await;
    let long = "Tell me a very long story about a dragon who learns to cook.";
    for (path, detach) in [
        ("/api/v1/inference", false),
        ("/api/v1/jobs", false),
        ("/api/v1/jobs", true),
    ] {
        let b = body(long, 400, json!({"stream": true, "detach": detach}));
        let mut r = SseReader::new(post(&ts, &token, path, &b).await);
        let mut seen = Vec::new();
        while indices(&seen).len() < 2 {
            seen.push(r.next().await.expect("events"));
        }
        let job = seen[0].data["job_id"].as_str().unwrap().to_string();
        drop(r);
        let end = finished(&ts, &token, &job).await;
        if detach {
            assert_eq!(end["status"], "completed", "{path} detached: {end}");
            assert!(end["cancelled_by"].is_null());
        } else {
            assert_eq!(end["status"], "cancelled", "{path}: {end}");
            assert_eq!(end["cancelled_by"], "client");
            assert_eq!(end["result"]["finish_reason"], "cancelled");
            // The partial text starts with what the client saw.
            let partial = end["result"]["text"].as_str().unwrap();
            assert!(partial.starts_with(&joined(&seen)), "{partial:?}");
        }
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_needs_use_streaming_and_streams_are_private() {
    let (ts, admin) = server(|_| {}).await;
    let (_, no_stream) = ts.api_key(&admin, &["run_inference"]).await;
    let (_, user) = ts.user_with("streamer", "user", &[]).await;
    let b = body("Hello", 2, json!({"stream": true}));
    for path in ["/api/v1/inference", "/api/v1/jobs"] {
        let r = post(&ts, &no_stream, path, &b).await;
        let e = expect_error(r, 403, "PERMISSION_DENIED").await;
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("use_streaming"),
            "{e}"
        );
    }
    // Nothing was queued by the refused requests.
    let queued = ts.events(&admin, "job.queued").await;
    assert!(queued.is_empty(), "{queued:?}");

    // The key may queue a plain job but not watch its stream.
    let job = ts.queue_job(&no_stream, &body("Hello", 2, json!({}))).await;
    let r = get_stream(&ts, &no_stream, &job, None).await;
    expect_error(r, 403, "PERMISSION_DENIED").await;
    // Another user (who holds use_streaming) gets 404; the admin (manage_queue) sees it.
    let r = get_stream(&ts, &user, &job, None).await;
    expect_error(r, 404, "NOT_FOUND").await;
    let events = open(&ts, &admin, &job, None).await.rest().await;
    check_complete(&events, 0);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_consumers_of_one_job_all_receive_every_token() {
    // A live channel of 4 pieces: the slow consumer below falls behind and must continue
    // from storage.
    let (ts, token) = server(|c| c.stream.max_lag = 4).await;
    let job = ts
        .queue_job(
            &token,
            &body("The history of the printing press", 96, json!({})),
        )
        .await;
    let ts = Arc::new(ts);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (ts, token, job) = (ts.clone(), token.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            open(&ts, &token, &job, None).await.rest().await
        }));
    }
    let slow = {
        let (ts, token, job) = (ts.clone(), token.clone(), job.clone());
        tokio::spawn(async move {
            let mut r = open(&ts, &token, &job, None).await;
            let mut events = Vec::new();
            while let Some(e) = r.next().await {
                events.push(e);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            events
        })
    };
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all.push(slow.await.unwrap());
    let result = finished(&ts, &token, &job).await;
    let text = result["result"]["text"].as_str().unwrap();
    for events in &all {
        check_complete(events, 0);
        assert_eq!(joined(events), text);
    }
    Arc::into_inner(ts).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_streams_its_position_and_keep_alives_and_the_stream_cap_is_503() {
    let (ts, token) = server(|c| {
        c.stream.max_streams = 2;
        c.stream.keep_alive_secs = 1;
    })
    .await;
    let r = post(&ts, &token, "/api/v1/queue/pause", &json!({})).await;
    assert_eq!(r.status(), 200);
    let mut jobs = Vec::new();
    for _ in 0..2 {
        jobs.push(ts.queue_job(&token, &body("Say hello", 4, json!({}))).await);
    }
    let mut second = open(&ts, &token, &jobs[1], None).await;
    let e = second.next().await.unwrap();
    assert_eq!(e.event, "job");
    let e = second.next().await.unwrap();
    assert_eq!(e.event, "queued");
    assert_eq!(e.data["position"], 2);
    // Nothing happens while paused but keep-alive comments (every second here).
    let quiet = tokio::time::timeout(Duration::from_millis(2500), second.next()).await;
    assert!(quiet.is_err(), "no event while paused: {quiet:?}");
    assert!(
        second.comments >= 2,
        "{} keep-alive comments",
        second.comments
    );
    // Two streams open: the third is refused, and a streamed POST queues nothing.
    let _first = open(&ts, &token, &jobs[0], None).await;
    let r = get_stream(&ts, &token, &jobs[0], None).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 503, "SERVICE_UNAVAILABLE").await;
    let before = ts.events(&token, "job.queued").await.len();
    let r = post(
        &ts,
        &token,
        "/api/v1/jobs",
        &body("Say hello", 4, json!({"stream": true})),
    )
    .await;
    expect_error(r, 503, "SERVICE_UNAVAILABLE").await;
    assert_eq!(ts.events(&token, "job.queued").await.len(), before);

    let r = post(&ts, &token, "/api/v1/queue/resume", &json!({})).await;
    assert_eq!(r.status(), 200);
    let rest = second.rest().await;
    assert_eq!(rest.last().unwrap().event, "done", "{rest:?}");
    assert!(indices(&rest).first() == Some(&0), "{rest:?}");
    ts.stop().await;
}
