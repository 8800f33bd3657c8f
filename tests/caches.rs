//! The prompt-prefix KV cache and the response cache, through the API on the real model:
//! reuse and its figures, the same greedy text with and without reuse, response-cache hits
//! only for deterministic requests, the bypass flag, eviction by size, persistence over a
//! restart, and the `/api/v1/cache` routes.

mod common;

use std::sync::{Arc, LazyLock};

use common::{expect_error, TestServer, TEST_MODEL_ID as MODEL};
use inferno::inference::{Engine, EngineConfig, LlamaEngine};
use serde_json::{json, Value};

/// (With the cache off the sliding-window layers keep a windowed KV cache, which sums in
/// another order: greedy text may then differ on near-ties, so "without reuse" below is
/// the same engine with its cache cleared.)
fn engine() -> Arc<LlamaEngine> {
    Arc::new(LlamaEngine::new(EngineConfig {
        parallel: 2,
        threads: 1,
        ctx_per_slot: 1024,
        prompt_cache: true,
        ..EngineConfig::default()
    }))
}

// The prefix test has an engine of its own, so that no other test's request takes its
// slots or shares its decode steps; the response-cache tests share another.
static WARM: LazyLock<Arc<LlamaEngine>> = LazyLock::new(engine);
static SHARED: LazyLock<Arc<LlamaEngine>> = LazyLock::new(engine);

async fn server_on(
    engine: &Arc<LlamaEngine>,
    edit: impl FnOnce(&mut inferno::config::Config),
) -> (TestServer, String) {
    let engine: Arc<dyn Engine> = engine.clone();
    let ts = common::start_with_engine(engine, |c| {
        common::with_test_model(c);
        c.limits.requests_per_minute = 10_000;
        edit(c);
    })
    .await;
    let token = ts.admin_token().await;
    (ts, token)
}

/// A long shared system prompt (a few hundred tokens) and a short question after it.
fn prompt(question: &str) -> String {
    let facts: String = (1..=40)
        .map(|i| {
            format!(
                "Fact {i}: the river number {i} flows into lake {}. ",
                i * 7 % 13
            )
        })
        .collect();
    format!("You answer questions about rivers.\n{facts}\nQuestion: {question}\nAnswer:")
}

async fn infer(ts: &TestServer, token: &str, body: Value) -> Value {
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "inference");
    r.json().await.unwrap()
}

async fn delete(ts: &TestServer, token: &str, path: &str) -> reqwest::Response {
    ts.client
        .delete(ts.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn patch_config(ts: &TestServer, token: &str, body: Value) -> reqwest::Response {
    ts.client
        .patch(ts.at("/api/v1/config"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn greedy(prompt: &str) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0})
}

fn cached_tokens(answer: &Value) -> u64 {
    answer["timings"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens")
}

fn prompt_tokens(answer: &Value) -> u64 {
    answer["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn a_shared_prefix_is_reused_and_greedy_text_is_the_same_as_without_reuse() {
    let (warm, token) = server_on(&WARM, |_| {}).await;
    // Nothing else runs on these engines meanwhile: one sequence at a time.
    let first = infer(&warm, &token, greedy(&prompt("Where does river 3 flow?"))).await;
    let second = infer(&warm, &token, greedy(&prompt("Where does river 9 flow?"))).await;
    let again = infer(&warm, &token, greedy(&prompt("Where does river 9 flow?"))).await;

    let n = prompt_tokens(&second);
    assert!(n > 300, "the prompt is long: {n} tokens");
    let reused = cached_tokens(&second);
    assert!(
        reused > 0 && reused < n && reused + 20 >= n,
        "all but the question is reused: {reused} of {n}"
    );
    // The same prompt again: everything but the last token, which gives the first logits.
    assert_eq!(cached_tokens(&again), prompt_tokens(&again) - 1, "{again}");
    assert_eq!(again["text"], second["text"]);

    // The figures: hits, reused tokens and what the free slots hold.
    let view = warm.get_json(&token, "/api/v1/cache").await;
    assert_eq!(view["prefix"]["enabled"], true);
    let m = view["prefix"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == MODEL)
        .unwrap_or_else(|| panic!("{view}"))
        .clone();
    assert!(m["hits"].as_u64().unwrap() >= 2, "{m}");
    assert!(m["reused_tokens"].as_u64().unwrap() >= reused, "{m}");
    assert!(m["cached_tokens"].as_u64().unwrap() >= n, "{m}");

    // OpenAI's shape reports them too.
    let r = warm
        .client
        .post(warm.at("/v1/completions"))
        .bearer_auth(&token)
        .json(
            &json!({"model": MODEL, "prompt": prompt("Where does river 9 flow?"),
                      "max_tokens": 4, "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 300,
        "{v}"
    );

    // Without reuse (the cache cleared before each), the same greedy text.
    for (answer, question) in [
        (&second, "Where does river 9 flow?"),
        (&first, "Where does river 3 flow?"),
    ] {
        let r = delete(&warm, &token, "/api/v1/cache").await;
        assert_eq!(r.status(), 200);
        let cleared: Value = r.json().await.unwrap();
        assert!(cleared["prefix_models"].as_u64().unwrap() >= 1, "{cleared}");
        // The clear is a command to the model thread; the next request queues behind it.
        let reference = infer(&warm, &token, greedy(&prompt(question))).await;
        assert_eq!(cached_tokens(&reference), 0, "{reference}");
        assert_eq!(answer["text"], reference["text"], "{question}");
    }
    let events = warm.events(&token, "cache.cleared").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e["payload"]["scope"] == "all"));

    // The metric moved.
    let r = warm
        .client
        .get(warm.at("/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let hits = text
        .lines()
        .find(|l| {
            l.starts_with("inferno_prefix_cache_hits_total{") && l.contains(&format!("\"{MODEL}\""))
        })
        .unwrap_or_else(|| panic!("no prefix-cache hits line in\n{text}"));
    let value: f64 = hits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 3.0, "{hits}");
}

async fn cache_view(ts: &TestServer, token: &str) -> Value {
    ts.get_json(token, "/api/v1/cache").await["responses"].clone()
}

#[tokio::test]
async fn only_deterministic_answers_are_cached_and_a_hit_still_is_a_job() {
    let (ts, token) = server_on(&SHARED, |c| c.cache.responses = true).await;
    let body = greedy("The capital of France is");
    let miss = infer(&ts, &token, body.clone()).await;
    assert_eq!(miss["cached"], false, "{miss}");
    let hit = infer(&ts, &token, body.clone()).await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["text"], miss["text"]);
    assert_eq!(hit["usage"], miss["usage"]);
    assert_ne!(hit["id"], miss["id"], "a hit is a job of its own");

    // The hit's job is recorded like any other, marked cached.
    let job = ts
        .get_json(
            &token,
            &format!("/api/v1/jobs/{}", hit["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["cached"], true, "{job}");
    assert_eq!(job["result"]["text"], miss["text"]);
    let completed = ts.events(&token, "job.completed").await;
    let mine = completed
        .iter()
        .find(|e| e["payload"]["job_id"] == hit["id"])
        .unwrap_or_else(|| panic!("{completed:?}"));
    assert_eq!(mine["payload"]["cached"], true);

    // `"cache": false` neither reads nor writes.
    let mut bypass = body.clone();
    bypass["cache"] = json!(false);
    let fresh = infer(&ts, &token, bypass).await;
    assert_eq!(fresh["cached"], false, "{fresh}");

    // Random sampling without a seed is never cached; with a seed it is.
    let random = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6,
                        "temperature": 0.9});
    for _ in 0..2 {
        assert_eq!(infer(&ts, &token, random.clone()).await["cached"], false);
    }
    let mut seeded = random.clone();
    seeded["seed"] = json!(11);
    let first = infer(&ts, &token, seeded.clone()).await;
    assert_eq!(first["cached"], false);
    let second = infer(&ts, &token, seeded.clone()).await;
    assert_eq!(second["cached"], true);
    assert_eq!(second["text"], first["text"]);
    // Any other sampling field is another entry.
    let mut other = seeded.clone();
    other["max_tokens"] = json!(5);
    assert_eq!(infer(&ts, &token, other).await["cached"], false);

    let view = cache_view(&ts, &token).await;
    assert_eq!(view["enabled"], true);
    assert_eq!(view["entries"], 3, "{view}");
    assert_eq!(view["hits"], 2, "{view}");
    // Misses: the first greedy one, the first seeded one and the max_tokens variant (the
    // bypass and the random ones were not cacheable lookups).
    assert_eq!(view["misses"], 3, "{view}");

    // Streaming a hit sends its text as tokens.
    let r = ts
        .client
        .post(ts.at("/api/v1/inference"))
        .bearer_auth(&token)
        .json(
            &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12,
                      "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let events = common::sse::SseReader::new(r).rest().await;
    let streamed = common::sse::joined(&events);
    assert_eq!(streamed, miss["text"].as_str().unwrap());
}

#[tokio::test]
async fn the_response_cache_is_off_by_default() {
    let (ts, token) = server_on(&SHARED, |_| {}).await;
    let body = greedy("Two plus two is");
    for _ in 0..2 {
        assert_eq!(infer(&ts, &token, body.clone()).await["cached"], false);
    }
    let view = cache_view(&ts, &token).await;
    assert_eq!(view["enabled"], false);
    assert_eq!(view["entries"], 0);
    assert_eq!(view["misses"], 0);
}

#[tokio::test]
async fn entries_survive_a_restart_are_evicted_least_recently_used_first_and_can_be_removed() {
    let (ts, token) = server_on(&SHARED, |c| c.cache.responses = true).await;
    let questions: Vec<String> = (1..=6).map(|i| format!("List {i} colours:")).collect();
    let body = |q: &str| json!({"model": MODEL, "prompt": q, "max_tokens": 24, "temperature": 0});
    for q in &questions {
        assert_eq!(infer(&ts, &token, body(q)).await["cached"], false);
    }
    // Kept in the data dir.
    let ts = ts.restart().await;
    let token = ts.admin_token().await;
    let view = cache_view(&ts, &token).await;
    assert_eq!(view["entries"], 6, "{view}");
    let total = view["bytes"].as_u64().unwrap();
    assert!(total > 1024, "{view}");
    // The first one is used again, so it is now the most recently used.
    assert_eq!(
        infer(&ts, &token, body(&questions[0])).await["cached"],
        true
    );

    // A lower bound, live: the least recently used go until the rest fit.
    let r = patch_config(&ts, &token, json!({"cache": {"max_bytes": 1024}})).await;
    assert_eq!(r.status(), 200);
    let view = cache_view(&ts, &token).await;
    assert!(view["bytes"].as_u64().unwrap() <= 1024, "{view}");
    let left = view["entries"].as_u64().unwrap();
    assert!((1..6).contains(&left), "{view}");
    assert_eq!(view["max_bytes"], 1024);
    // Survivors: the first question and the newest ones; question 2 (least recently used)
    // is gone.
    assert_eq!(
        infer(&ts, &token, body(&questions[0])).await["cached"],
        true
    );
    assert_eq!(
        infer(&ts, &token, body(&questions[1])).await["cached"],
        false
    );

    // Listing and removing one entry.
    let r = patch_config(&ts, &token, json!({"cache": {"max_bytes": null}})).await;
    assert_eq!(r.status(), 200);
    let page = ts.get_json(&token, "/api/v1/cache/responses?limit=1").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["model"], MODEL);
    let key = items[0]["key"].as_str().unwrap().to_string();
    let all = ts.get_json(&token, "/api/v1/cache/responses").await;
    let before = all["items"].as_array().unwrap().len();
    assert!(before >= 2, "{all}");
    assert!(page["next_cursor"].is_string(), "{page}");
    let path = format!("/api/v1/cache/responses/{key}");
    let r = delete(&ts, &token, &path).await;
    assert_eq!(r.status(), 204);
    let r = delete(&ts, &token, &path).await;
    expect_error(r, 404, "NOT_FOUND").await;
    let all = ts.get_json(&token, "/api/v1/cache/responses").await;
    assert_eq!(all["items"].as_array().unwrap().len(), before - 1);
    let r = ts
        .client
        .get(ts.at("/api/v1/cache/responses?cursor=nope"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    let events = ts.events(&token, "cache.cleared").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"]["scope"], "response");

    // A bound too small to be useful is refused, naming the field.
    let r = patch_config(&ts, &token, json!({"cache": {"max_bytes": 10}})).await;
    let body = expect_error(r, 400, "VALIDATION_ERROR").await;
    assert_eq!(
        body["error"]["details"]["fields"][0]["field"],
        "cache.max_bytes"
    );

    // Clearing everything empties it; turning it off live stops hits.
    let r = delete(&ts, &token, "/api/v1/cache").await;
    assert_eq!(r.status(), 200);
    let cleared: Value = r.json().await.unwrap();
    assert_eq!(
        cleared["responses_removed"].as_u64().unwrap() as usize,
        before - 1
    );
    assert_eq!(cache_view(&ts, &token).await["entries"], 0);
}
