//! In-process engine benchmark: single-request decode speed, aggregate throughput at 4 and 8
//! concurrent requests, time to first token, and cancel latency (from cancelling a running
//! generation to its `Done`: at most about one decode step).
//!
//! usage: cargo run --example engine_bench -- [MODEL] [THREADS] [PARALLEL] [MAX_TOKENS] [PROMPTS_FILE] [ROUNDS] [MODE]
//! defaults: models/gemma-3-270m-q4_k_m.gguf, all cores, 8, 64, the built-in prompts, 1, all
//!
//! PROMPTS_FILE holds one prompt per non-empty line (`-` = the built-in prompts). With
//! ROUNDS above 1 the single-request figure is ROUNDS sequential requests (prompts 1..ROUNDS)
//! and each concurrency level runs ROUNDS batches; tokens/s is total completion tokens over
//! total wall time. The last line, `BENCH_JSON {...}`, repeats every figure for scripts
//! (`ops/bench-inference.sh`).
//!
//! MODE `stdin` keeps the model loaded and runs one phase per line read from standard input
//! (`single`, `concurrent4`, `concurrent8`, any `concurrentN`), answering each with a line
//! `PHASE_JSON {...}`; it prints `READY` once the model is loaded and warm, and exits at the
//! end of input. `load-tests/bench_inference.py` uses it to interleave the in-process engine
//! with the HTTP servers phase by phase.

use std::path::PathBuf;
use std::time::Instant;

use inferno::inference::{
    Engine, EngineConfig, FinishReason, GenEvent, GenerateRequest, LlamaEngine, ModelSpec, Prompt,
    SamplingParams, Timings,
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
    prompt_tokens: u32,
    ttft_ms: f64,
    /// The engine's own timings (the same figures the HTTP API reports).
    timings: Timings,
}

/// One measured phase: `requests` runs whose wall times add up to `secs`.
struct Phase {
    name: String,
    concurrency: usize,
    runs: Vec<Run>,
    secs: f64,
}

impl Phase {
    fn tokens(&self) -> u32 {
        self.runs.iter().map(|r| r.tokens).sum()
    }

    fn mean(&self, f: impl Fn(&Run) -> f64) -> f64 {
        self.runs.iter().map(f).sum::<f64>() / self.runs.len().max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.runs.len(),
            "completion_tokens": self.tokens(),
            "completion_tokens_each": self.runs.iter().map(|r| r.tokens).collect::<Vec<_>>(),
            "prompt_tokens_each": self.runs.iter().map(|r| r.prompt_tokens).collect::<Vec<_>>(),
            "wall_s": self.secs,
            "tokens_per_second": f64::from(self.tokens()) / self.secs,
            "client_ttft_ms_mean": self.mean(|r| r.ttft_ms),
            "queue_ms_mean": self.mean(|r| r.timings.queue_ms),
            "prompt_ms_mean": self.mean(|r| r.timings.prompt_ms),
            "server_ttft_ms_mean": self.mean(|r| r.timings.queue_ms + r.timings.prompt_ms),
            "decode_tokens_per_second_mean": self.mean(|r| r.timings.tokens_per_second),
        })
    }
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
                    prompt_tokens: done.prompt_tokens,
                    ttft_ms: ttft_ms.unwrap_or(f64::NAN),
                    timings: done.timings,
                }
            }
            GenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
}

async fn concurrent(
    engine: &LlamaEngine,
    spec: &ModelSpec,
    prompts: &[String],
    n: usize,
    max_tokens: u32,
    rounds: usize,
) -> Phase {
    let mut phase = Phase {
        name: format!("concurrent{n}"),
        concurrency: n,
        runs: Vec::new(),
        secs: 0.0,
    };
    for _ in 0..rounds {
        let start = Instant::now();
        let runs = futures::future::join_all(
            prompts
                .iter()
                .cycle()
                .take(n)
                .map(|p| one(engine, spec, p, max_tokens)),
        )
        .await;
        phase.secs += start.elapsed().as_secs_f64();
        phase.runs.extend(runs);
    }
    let tokens = phase.tokens();
    println!(
        "concurrency {n}: {tokens} tokens in {:.2} s = {:.1} tok/s aggregate, mean TTFT {:.0} ms",
        phase.secs,
        f64::from(tokens) / phase.secs,
        phase.mean(|r| r.ttft_ms)
    );
    phase
}

async fn single(
    engine: &LlamaEngine,
    spec: &ModelSpec,
    prompts: &[String],
    max_tokens: u32,
    rounds: usize,
) -> Phase {
    let mut phase = Phase {
        name: "single".into(),
        concurrency: 1,
        runs: Vec::new(),
        secs: 0.0,
    };
    for prompt in prompts.iter().cycle().take(rounds) {
        let start = Instant::now();
        let run = one(engine, spec, prompt, max_tokens).await;
        phase.secs += start.elapsed().as_secs_f64();
        phase.runs.push(run);
    }
    println!(
        "single: {} tokens in {:.2} s = {:.1} tok/s, TTFT {:.0} ms",
        phase.tokens(),
        phase.secs,
        f64::from(phase.tokens()) / phase.secs,
        phase.mean(|r| r.ttft_ms)
    );
    phase
}

/// Cancel latency: a long generation is cancelled after its third token; the time from the
/// cancel to its `Done` (the engine stops at its next step), averaged over `rounds` runs.
async fn cancel_latency(engine: &LlamaEngine, spec: &ModelSpec, rounds: usize) -> f64 {
    let mut total_ms = 0.0;
    let mut measured = 0u32;
    let mut tokens_after = 0u32;
    for _ in 0..rounds {
        let params = SamplingParams {
            max_tokens: 400,
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let mut generation = engine
            .submit(
                spec,
                GenerateRequest {
                    prompt: Prompt::Text("Tell me a long story.".into()),
                    params,
                },
            )
            .expect("submit");
        let mut tokens = 0;
        let mut cancelled_at = None;
        loop {
            match generation.next().await.expect("event") {
                GenEvent::Started { .. } => {}
                GenEvent::Token(_) => {
                    tokens += 1;
                    if tokens == 3 {
                        generation.cancel();
                        cancelled_at = Some(Instant::now());
                    }
                }
                GenEvent::Done(done) => {
                    // A generation that ended on its own was not cancelled: not counted.
                    if let (Some(t), FinishReason::Cancelled) = (cancelled_at, done.finish_reason) {
                        total_ms += t.elapsed().as_secs_f64() * 1e3;
                        tokens_after += done.completion_tokens.saturating_sub(3);
                        measured += 1;
                    }
                    break;
                }
                GenEvent::Error(e) => panic!("generation failed: {e}"),
            }
        }
    }
    let mean_ms = total_ms / f64::from(measured.max(1));
    println!(
        "cancel latency: Done {mean_ms:.1} ms after cancel, {tokens_after} tokens generated after \
         it in all (mean of {measured})"
    );
    mean_ms
}

/// `MODE stdin`: one phase per input line, until the end of input.
async fn serve_phases(
    engine: &LlamaEngine,
    spec: &ModelSpec,
    prompts: &[String],
    max_tokens: u32,
    rounds: usize,
) {
    use std::io::{BufRead, Write};
    println!("READY");
    std::io::stdout().flush().expect("stdout");
    let mut lines = std::io::stdin().lock().lines();
    while let Some(line) = lines.next().transpose().expect("stdin") {
        let name = line.trim();
        let phase = if name == "single" {
            single(engine, spec, prompts, max_tokens, rounds).await
        } else if let Some(n) = name.strip_prefix("concurrent").and_then(|n| n.parse().ok()) {
            concurrent(engine, spec, prompts, n, max_tokens, rounds).await
        } else {
            panic!("unknown phase {name:?}: single or concurrentN");
        };
        println!("PHASE_JSON {}", phase.json());
        std::io::stdout().flush().expect("stdout");
    }
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
    let prompts: Vec<String> = match args.next().filter(|a| a != "-") {
        Some(file) => std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("PROMPTS_FILE {file}: {e}"))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => PROMPTS.iter().map(|p| (*p).to_string()).collect(),
    };
    assert!(!prompts.is_empty(), "PROMPTS_FILE has no prompts");
    let rounds: usize = args.next().map_or(1, |a| a.parse().expect("ROUNDS"));
    assert!(rounds >= 1, "ROUNDS must be at least 1");
    let mode = args.next().unwrap_or_else(|| "all".into());
    assert!(
        mode == "all" || mode == "stdin",
        "MODE must be all or stdin, not {mode:?}"
    );
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

    if mode == "stdin" {
        serve_phases(&engine, &spec, &prompts, max_tokens, rounds).await;
        return;
    }
    let single = single(&engine, &spec, &prompts, max_tokens, rounds).await;
    let c4 = concurrent(&engine, &spec, &prompts, 4, max_tokens, rounds).await;
    let c8 = concurrent(&engine, &spec, &prompts, 8, max_tokens, rounds).await;
    let cancel_ms = cancel_latency(&engine, &spec, rounds).await;
    let stats = engine.stats();
    println!(
        "decode steps {}, largest batch {} sequences, {} tokens generated",
        stats.decode_steps, stats.max_batch_sequences, stats.tokens_generated
    );
    let report = serde_json::json!({
        "threads": threads,
        "parallel": parallel,
        "ctx_per_slot": 1024,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "phases": [single.json(), c4.json(), c8.json()],
        "cancel_latency_ms": cancel_ms,
        "decode_steps": stats.decode_steps,
        "max_batch_sequences": stats.max_batch_sequences,
    });
    println!("BENCH_JSON {report}");
}
