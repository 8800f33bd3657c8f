//! The workers: one apalis worker (`WorkerBuilder` with concurrency, retry and timeout
//! layers) under a `Monitor`, plus the queue's housekeeping: heartbeats, lease expiry and
//! retention.
//!
//! Shutdown ([`WorkerHandle::shutdown`]): nothing more starts; running jobs get the grace
//! time to finish; those still running are cancelled and handed back to the queue
//! (`job.requeued`, reason `shutdown`, not counted as an attempt); then the monitor stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::layers::retry::RetryPolicy;
use apalis::layers::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backend::{ClaimBackend, JobTask};
use super::embedded::EmbeddedQueue;
use super::run::{run_job, Retryable};
use super::{Executor, JobQueue, FINISHED};
use crate::events::EventContext;

/// The service apalis calls with each claimed job.
#[derive(Clone)]
struct JobService {
    queue: Arc<EmbeddedQueue>,
    executor: Arc<dyn Executor>,
}

impl tower_service::Service<Task<JobTask>> for JobService {
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<JobTask>) -> Self::Future {
        let (queue, executor) = (self.queue.clone(), self.executor.clone());
        let job_id = task.args.job_id;
        Box::pin(async move {
            run_job(queue, executor, job_id)
                .await
                .map_err(|e| Box::new(e) as BoxDynError)
        })
    }
}

/// Stops the workers and the housekeeping.
pub struct WorkerHandle {
    queue: Arc<EmbeddedQueue>,
    stop: Option<oneshot::Sender<()>>,
    monitor: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
}

impl WorkerHandle {
    /// Lets running jobs finish for up to `grace`, hands the rest back, stops the monitor.
    pub async fn shutdown(mut self, grace: Duration) {
        self.queue.drain(false);
        let deadline = tokio::time::Instant::now() + grace;
        while self.queue.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.queue.running_count() > 0 {
            tracing::info!(
                jobs = self.queue.running_count(),
                "handing running jobs back to the queue"
            );
            self.queue.drain(true);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.queue.running_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.housekeeping.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.monitor).await;
    }
}

/// Hands jobs left running by a previous process back to the queue, then starts the worker
/// and the housekeeping on the current runtime.
pub async fn spawn_workers(
    queue: Arc<EmbeddedQueue>,
    executor: Arc<dyn Executor>,
) -> Result<WorkerHandle, super::QueueError> {
    let recovered = queue.recover(Duration::ZERO).await?;
    if recovered > 0 {
        tracing::warn!(
            jobs = recovered,
            "jobs left running by a previous process went back to the queue"
        );
    }
    let settings = queue.settings().clone();
    let service = JobService {
        queue: queue.clone(),
        executor,
    };
    let backend = ClaimBackend {
        queue: queue.clone(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let name = settings.worker_name.clone();
    let monitor = Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(name.as_str())
                .backend(backend.clone())
                .concurrency(settings.concurrency)
                .retry(
                    RetryPolicy::retries(settings.max_attempts as usize)
                        .retry_if(|e: &BoxDynError| e.is::<Retryable>()),
                )
                .timeout(settings.job_timeout)
                .build(service.clone())
        })
        .shutdown_timeout(Duration::from_secs(5));
    let monitor = tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.await;
            Ok(())
        };
        if let Err(e) = monitor.run_with_signal(signal).await {
            tracing::error!(error = %e, "the queue's worker monitor stopped");
        }
    });
    let housekeeping = tokio::spawn(housekeeping(queue.clone()));
    Ok(WorkerHandle {
        queue,
        stop: Some(stop),
        monitor,
        housekeeping,
    })
}

/// Heartbeats, lease expiry (jobs whose worker stopped answering) and retention.
async fn housekeeping(queue: Arc<EmbeddedQueue>) {
    let settings = queue.settings().clone();
    let beat = (settings.lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(beat);
    let mut last_retention = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tick.tick().await;
        queue.heartbeat(&settings.worker_name);
        if let Err(e) = queue.recover(settings.lease).await {
            tracing::warn!(error = %e, "re-queueing jobs with expired leases");
        }
        if last_retention.elapsed() >= Duration::from_secs(3600) {
            last_retention = tokio::time::Instant::now();
            let statuses: Vec<String> = FINISHED.iter().map(|s| s.to_string()).collect();
            match queue
                .purge(&EventContext::system(), &statuses, settings.retention, true)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "purged finished jobs past retention"),
                Err(e) => tracing::warn!(error = %e, "purging finished jobs past retention"),
            }
        }
    }
}
