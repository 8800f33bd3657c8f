//! One job's run with its events: `job.started`, the execution, then exactly one of
//! `job.completed`, `job.failed`, `job.cancelled`, `job.requeued` or `job.dead`.
//!
//! A run whose future is dropped before it recorded its end (the worker's timeout layer,
//! or a shutdown past its grace time) records it from a guard: `job.requeued` when the
//! queue is shutting down (not counted as an attempt), `job.failed` otherwise.

use std::sync::Arc;
use std::time::Duration;

use super::embedded::{EmbeddedQueue, RESULTS};
use super::*;
use crate::events::{self as ev, ContentRecord, Event, SideWrite};
use crate::inference::FinishReason;
use crate::metrics::{self, JobOutcome};

/// A retryable failure the worker's retry layer acts on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retryable(pub String);

/// Records the end of a run whose future was dropped before it could.
struct EndGuard {
    queue: Arc<EmbeddedQueue>,
    job_id: String,
    armed: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let queue = self.queue.clone();
        let job_id = std::mem::take(&mut self.job_id);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let draining = queue.lock().draining;
            metrics::job_run(if draining {
                JobOutcome::HandedBack
            } else {
                JobOutcome::Failed
            });
            let event = if draining {
                Event::JobRequeued(ev::JobRequeued {
                    job_id: job_id.clone(),
                    reason: "shutdown".into(),
                    counts_attempt: false,
                })
            } else {
                Event::JobFailed(ev::JobFailed {
                    job_id: job_id.clone(),
                    code: "INTERNAL_ERROR".into(),
                    error: format!(
                        "the job ran longer than [queue] job_timeout_secs ({} s)",
                        queue.settings().job_timeout.as_secs()
                    ),
                })
            };
            let _ = queue
                .store()
                .append(&EventContext::system(), vec![event])
                .await;
            if let Ok(Some(record)) = queue.get(&job_id) {
                queue.finish_run(record, None, None, None);
            }
            queue.streams().finish(&job_id);
        });
    }
}

fn failed(job_id: &str, e: &ExecError) -> Event {
    Event::JobFailed(ev::JobFailed {
        job_id: job_id.to_string(),
        code: e.code.to_string(),
        error: e.message.clone(),
    })
}

/// Runs `job_id`, which this process claimed. `Err` asks the retry layer for another
/// attempt (the job is `queued` again in the log meanwhile).
pub(super) async fn run_job(
    queue: Arc<EmbeddedQueue>,
    executor: Arc<dyn Executor>,
    job_id: String,
) -> Result<(), Retryable> {
    let system = EventContext::system();
    let Some(cancel) = queue.running_cancel(&job_id) else {
        return Ok(());
    };
    let record = match queue.get(&job_id) {
        Ok(Some(r)) => r,
        _ => {
            queue.lock().running.remove(&job_id);
            return Ok(());
        }
    };
    // Cancelled between claim and start.
    if cancel.is_cancelled() {
        let by = cancel.by().unwrap_or_default();
        if by == SHUTDOWN {
            queue.finish_run(record, None, None, None);
            return Ok(());
        }
        let event = Event::JobCancelled(ev::JobCancelled {
            job_id: job_id.clone(),
            by,
            output: None,
            completion_tokens: None,
        });
        metrics::job_run(JobOutcome::Cancelled);
        let _ = queue.store().append(&system, vec![event]).await;
        if let Ok(Some(after)) = queue.get(&job_id) {
            queue.finish_run(after, None, None, None);
        }
        return Ok(());
    }
    let attempt = record.attempts + 1;
    let started = Event::JobStarted(ev::JobStarted {
        job_id: job_id.clone(),
        worker: queue.settings().worker_name.clone(),
        attempt,
    });
    if let Err(e) = queue.store().append(&system, vec![started]).await {
        // The log refused: leave the job queued for a later attempt.
        tracing::error!(job_id, error = %e, "recording job.started failed");
        queue.finish_run(record, None, None, None);
        return Ok(());
    }
    let mut guard = EndGuard {
        queue: queue.clone(),
        job_id: job_id.clone(),
        armed: true,
    };
    let waited = queue.take_wait(&job_id);
    if let Some(w) = waited {
        metrics::job_started(&record.model, w);
    }
    let waited = waited.unwrap_or_default();
    let mut tokens = queue.streams().begin(&job_id, attempt);
    let result = match queue.payload(&job_id) {
        Ok(Some(request)) => executor.execute(&request, &cancel, &mut tokens).await,
        _ => Err(ExecError {
            status: 500,
            code: "INTERNAL_ERROR",
            message: "the job's request is no longer stored".into(),
            details: None,
            retryable: false,
        }),
    };
    let record_content = queue.record_content();
    let mut side = Vec::new();
    let mut retry = None;
    let (event, text, completion, error, outcome) = match result {
        Ok((text, c)) if c.finish_reason == FinishReason::Cancelled => {
            let by = cancel.by().unwrap_or_else(|| "system".into());
            let outcome = if by == SHUTDOWN {
                JobOutcome::HandedBack
            } else {
                JobOutcome::Cancelled
            };
            let event = if by == SHUTDOWN {
                Event::JobRequeued(ev::JobRequeued {
                    job_id: job_id.clone(),
                    reason: "shutdown".into(),
                    counts_attempt: false,
                })
            } else {
                side.push(SideWrite::put(RESULTS, job_id.as_bytes(), text.clone()));
                Event::JobCancelled(ev::JobCancelled {
                    job_id: job_id.clone(),
                    by,
                    output: Some(ContentRecord::new(&text, record_content)),
                    completion_tokens: Some(c.completion_tokens as u64),
                })
            };
            (event, Some(text), Some(c), None, outcome)
        }
        Ok((text, mut c)) => {
            c.timings.queue_ms += waited.as_secs_f64() * 1000.0;
            let t = &c.timings;
            let ms = |v: f64| std::time::Duration::from_secs_f64(v.max(0.0) / 1000.0);
            metrics::job_completed(
                &record.model,
                ms(t.queue_ms + t.prompt_ms),
                ms(t.queue_ms + t.prompt_ms + t.generate_ms),
            );
            side.push(SideWrite::put(RESULTS, job_id.as_bytes(), text.clone()));
            let event = Event::JobCompleted(ev::JobCompleted {
                job_id: job_id.clone(),
                finish_reason: crate::inference::runner::finish_name(c.finish_reason).into(),
                prompt_tokens: c.prompt_tokens as u64,
                completion_tokens: c.completion_tokens as u64,
                timings: c.timings.record(),
                output: ContentRecord::new(&text, record_content),
                cached: c.cached,
            });
            (event, Some(text), Some(c), None, JobOutcome::Completed)
        }
        Err(e) if e.retryable && attempt < queue.settings().max_attempts => {
            retry = Some(Retryable(e.message.clone()));
            let event = Event::JobRequeued(ev::JobRequeued {
                job_id: job_id.clone(),
                reason: "retry".into(),
                counts_attempt: true,
            });
            (event, None, None, Some(e), JobOutcome::Retried)
        }
        Err(e) if e.retryable => {
            let event = Event::JobDead(ev::JobDead {
                job_id: job_id.clone(),
                error: e.message.clone(),
            });
            (event, None, None, Some(e), JobOutcome::Dead)
        }
        Err(e) => (failed(&job_id, &e), None, None, Some(e), JobOutcome::Failed),
    };
    metrics::job_run(outcome);
    let appended = queue.store().append_with(&system, vec![event], side).await;
    guard.armed = false;
    if let Err(e) = appended {
        tracing::error!(job_id, error = %e, "recording the end of a job failed");
    }
    if let Some(r) = retry {
        // Stays claimed by this process: the retry layer runs it again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Err(r);
    }
    drop(tokens);
    match queue.get(&job_id) {
        Ok(Some(after)) => queue.finish_run(after, text, completion, error),
        _ => {
            queue.lock().running.remove(&job_id);
        }
    }
    queue.streams().finish(&job_id);
    Ok(())
}
