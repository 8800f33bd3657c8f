//! In-process engine benchmark: single-request decode speed, aggregate throughput at 4 and 8
//! concurrent requests, and time to first token.
//!
//! usage: cargo run --example engine_bench -- [MODEL] [THREADS] [PARALLEL] [MAX_TOKENS]
//! defaults: models/gemma-3-270m-q4_k_m.gguf, all cores, 8, 64

use std::path::PathBuf;
use std::time::Instant;

use inferno::inference::{
    Engine, EngineConfig, GenEvent, GenerateRequest, LlamaEngine, ModelSpec, Prompt, SamplingParams,
};

const PROMPTS: [&str; 8] = [
    "The history of the Roman Empire begins",
    "Photosynthesis is the process by which",
    "In computer science, a hash table is",
    "The best way to learn a new language is",
    "Mount Everest is the highest mountain",
    "A recipe for pancakes: first,",
    "The theory of relativity states that",
    "Once upon a time in a small village,",
];

struct Run {
    tokens: u32,
    ttft_ms: f64,
}

async fn one(engine: &LlamaEngine, spec: &ModelSpec, prompt: &str, max_tokens: u32) -> Run {
    let start = Instant::now();
    let params = SamplingParams {
        max_tokens,
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut generation = engine
        .submit(
            spec,
            GenerateRequest {
                prompt: Prompt::Text(prompt.into()),
                params,
            },
        )
        .expect("submit");
    let mut ttft_ms = None;
    loop {
        match generation.next().await.expect("event") {
            GenEvent::Started { .. } => {}
            GenEvent::Token(_) => {
                ttft_ms.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
            }
            GenEvent::Done(done) => {
                return Run {
                    tokens: done.completion_tokens,
                    ttft_ms: ttft_ms.unwrap_or(f64::NAN),
                }
            }
            GenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
}

async fn concurrent(engine: &LlamaEngine, spec: &ModelSpec, n: usize, max_tokens: u32) {
    let start = Instant::now();
    let runs = futures::future::join_all(
        PROMPTS
            .iter()
            .cycle()
            .take(n)
            .map(|p| one(engine, spec, p, max_tokens)),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    let tokens: u32 = runs.iter().map(|r| r.tokens).sum();
    let mean_ttft = runs.iter().map(|r| r.ttft_ms).sum::<f64>() / n as f64;
    println!(
        "concurrency {n}: {tokens} tokens in {secs:.2} s = {:.1} tok/s aggregate, mean TTFT {mean_ttft:.0} ms",
        f64::from(tokens) / secs
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/gemma-3-270m-q4_k_m.gguf".into()),
    );
    let defaults = EngineConfig::default();
    let threads = args
        .next()
        .map_or(defaults.threads, |a| a.parse().expect("THREADS"));
    let parallel = args.next().map_or(8, |a| a.parse().expect("PARALLEL"));
    let max_tokens: u32 = args.next().map_or(64, |a| a.parse().expect("MAX_TOKENS"));
    assert!(
        path.is_file(),
        "{} missing: run ops/fetch-model.sh",
        path.display()
    );

    let engine = LlamaEngine::new(EngineConfig {
        threads,
        parallel,
        ctx_per_slot: 1024,
        ..defaults
    });
    let spec = ModelSpec {
        id: "bench".into(),
        path,
    };
    println!("threads={threads} parallel={parallel} max_tokens={max_tokens}");

    let load = Instant::now();
    one(&engine, &spec, "Hello", 1).await;
    println!(
        "load + first token: {:.0} ms",
        load.elapsed().as_secs_f64() * 1e3
    );

    let start = Instant::now();
    let run = one(&engine, &spec, PROMPTS[0], max_tokens).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "single: {} tokens in {secs:.2} s = {:.1} tok/s, TTFT {:.0} ms",
        run.tokens,
        f64::from(run.tokens) / secs,
        run.ttft_ms
    );
    concurrent(&engine, &spec, 4, max_tokens).await;
    concurrent(&engine, &spec, 8, max_tokens).await;
    let stats = engine.stats();
    println!(
        "decode steps {}, largest batch {} sequences, {} tokens generated",
        stats.decode_steps, stats.max_batch_sequences, stats.tokens_generated
    );
}
