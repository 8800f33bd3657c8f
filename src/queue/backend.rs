//! The apalis 1.0 [`Backend`] of the embedded queue.
//!
//! apalis polls `poll_next` only when the worker's service (behind its concurrency layer)
//! can take a task, so a claim never runs ahead of a free slot and priorities hold at the
//! moment a slot frees. `poll_next` pops the best ready job; with none (or while paused or
//! shutting down) it leaves the worker's waker with the queue, which wakes it on the next
//! push, resume or hand-back: pick-up is woken by the push, never by a polling interval.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use tower_layer::Identity;

use super::embedded::EmbeddedQueue;

/// What a worker receives: the job id (the request is read from the queue's store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTask {
    pub job_id: String,
}

/// Claims jobs from an [`EmbeddedQueue`] for one apalis worker.
#[derive(Clone)]
pub struct ClaimBackend {
    pub(super) queue: Arc<EmbeddedQueue>,
}

/// Claims cannot fail: the ready set is in memory.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub struct NoError(Infallible);

impl Backend for ClaimBackend {
    type Task = Task<JobTask>;
    type Error = NoError;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, NoError>>> {
        match self.queue.claim(cx.waker()) {
            Some((job_id, _)) => {
                let task = TaskBuilder::new(JobTask {
                    job_id: job_id.clone(),
                })
                .task_id(TaskId::from_string(job_id))
                .build();
                Poll::Ready(Some(Ok(task)))
            }
            None => Poll::Pending,
        }
    }

    fn poll_close(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoError>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for ClaimBackend {
    type Args = JobTask;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
