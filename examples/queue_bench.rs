//! Job queue benchmark, in-process on the embedded (fjall) backend, with an executor that
//! returns at once (the queue's own cost, not inference):
//!
//! 1. push-to-pickup latency over N jobs pushed one at a time: from `enqueue` returning (the
//!    `job.queued` event committed) to the worker's executor being called (the job claimed
//!    and its `job.started` event committed), p50/p99, and the enqueue latency itself;
//! 2. durable enqueue throughput with 64 concurrent submitters (the queue paused, so nothing
//!    runs meanwhile), jobs/s.
//!
//! `cargo run --example queue_bench -- [N]` (N defaults to 1000). The HTTP figures are
//! `load-tests/queue_load.sh`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferno::events::{ContentRecord, EventContext, EventStore, StoreOptions};
use inferno::inference::{Completion, FinishReason, SamplingParams, Timings};
use inferno::queue::{
    spawn_workers, EmbeddedQueue, ExecError, Executor, JobCancel, JobQueue, JobRequest, NewJob,
    Priority, QueueSettings, StoredPrompt, TokenSink,
};
use tokio::sync::mpsc;

/// Reports when it was called and finishes at once.
struct Probe(mpsc::UnboundedSender<Instant>);

#[async_trait::async_trait]
impl Executor for Probe {
    async fn execute(
        &self,
        _: &JobRequest,
        _: &JobCancel,
        _: &mut TokenSink,
    ) -> Result<(String, Completion), ExecError> {
        let _ = self.0.send(Instant::now());
        Ok((
            String::new(),
            Completion {
                finish_reason: FinishReason::Stop,
                prompt_tokens: 1,
                completion_tokens: 1,
                timings: Timings::default(),
                cached: false,
            },
        ))
    }
}

fn job(i: usize) -> NewJob {
    let prompt = format!("bench prompt {i}");
    let params = SamplingParams::default();
    NewJob {
        owner: format!("user-{}", i % 64),
        priority: Priority::Normal,
        request: JobRequest {
            model: "tiny".into(),
            prompt: StoredPrompt::Text(prompt.clone()),
            params: params.clone(),
            no_cache: false,
        },
        prompt_record: ContentRecord::new(&prompt, false),
        params_record: params.record(false),
        idempotency: None,
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn settings() -> QueueSettings {
    QueueSettings {
        max_depth: 10_000_000,
        max_queued_per_principal: 10_000_000,
        max_attempts: 3,
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(168 * 3600),
        job_timeout: Duration::from_secs(600),
        concurrency: 4,
        worker_name: "bench-worker".into(),
        record_content: false,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let store = EventStore::open(
        dir.path(),
        inferno::events::default_projections(),
        StoreOptions::default(),
    )?;
    let streams = inferno::stream::StreamHub::new(store.clone(), Default::default());
    let queue = EmbeddedQueue::open(store.clone(), settings(), streams)?;
    let (tx, mut picked) = mpsc::unbounded_channel();
    let workers = spawn_workers(queue.clone(), Arc::new(Probe(tx))).await?;
    let ctx = EventContext::system();

    // 1. One at a time.
    let (mut enqueue, mut pickup) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t0 = Instant::now();
        queue.enqueue(&ctx, job(i)).await?;
        let t1 = Instant::now();
        let at = picked.recv().await.expect("executor called");
        enqueue.push(t1 - t0);
        pickup.push(at.saturating_duration_since(t1));
    }
    enqueue.sort();
    pickup.sort();
    println!("push-to-pickup over {n} jobs pushed one at a time (embedded fjall backend):");
    println!(
        "  enqueue (job.queued durable)   p50 {:.3} ms  p99 {:.3} ms",
        pct(&enqueue, 0.5),
        pct(&enqueue, 0.99)
    );
    println!(
        "  push-to-pickup (claimed, job.started durable, executor called)  p50 {:.3} ms  p99 {:.3} ms",
        pct(&pickup, 0.5),
        pct(&pickup, 0.99)
    );

    // 2. 64 submitters, the queue paused.
    queue.pause(&ctx).await?;
    let total = (n * 20).max(10_000);
    let per = total / 64;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..64 {
        let q = queue.clone();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                q.enqueue(&ctx, job(s * per + i)).await.expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "durable enqueue, 64 concurrent submitters: {} jobs in {secs:.2} s = {:.0} jobs/s (in-process)",
        per * 64,
        (per * 64) as f64 / secs
    );
    workers.shutdown(Duration::from_secs(1)).await;
    store.shutdown().await;
    Ok(())
}
