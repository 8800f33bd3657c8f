//! [`JobQueue`] on the embedded queue: each operation checks the job's state, commits its
//! event, then changes the in-memory state to match.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::oneshot;

use super::*;

#[async_trait::async_trait]
impl JobQueue for EmbeddedQueue {
    async fn enqueue(&self, ctx: &EventContext, job: NewJob) -> Result<Enqueued, QueueError> {
        if let Some(idem) = &job.idempotency {
            if let Some(hit) = self.idempotent_hit(idem)? {
                return Ok(hit);
            }
        }
        let idem = job.idempotency.as_ref().map(|i| i.key_sha256.clone());
        self.reserve(&job.owner, idem.as_deref())?;
        let job_id = uuid::Uuid::now_v7().to_string();
        let payload = serde_json::to_vec(&job.request).unwrap_or_default();
        let event = Event::JobQueued(ev::JobQueued {
            job_id: job_id.clone(),
            kind: "inference".into(),
            model: job.request.model.clone(),
            owner: job.owner.clone(),
            priority: job.priority.as_str().into(),
            params: job.params_record,
            prompt: job.prompt_record,
            idempotency: job.idempotency,
        });
        let side = vec![SideWrite::put(PAYLOADS, job_id.as_bytes(), payload)];
        let appended = self.store.append_with(ctx, vec![event], side).await;
        if appended.is_ok() && self.store.node_id().is_some() {
            // Cluster mode: only this node runs it (see `LOCAL_JOBS`).
            let _ = self
                .store
                .side_put_buffered(LOCAL_JOBS, job_id.as_bytes(), b"");
        }
        let mut s = self.lock();
        self.unreserve(&mut s, &job.owner, idem.as_deref());
        let ts = appended?.first().map_or_else(Utc::now, |e| e.ts);
        let mut record = JobRecord::queued(&job_id, &job.request.model, ts);
        record.owner = Some(job.owner.clone());
        record.priority = job.priority.as_str().into();
        if let Ok(mut p) = self.payloads.lock() {
            p.insert(job_id.clone(), Arc::new(job.request));
        }
        s.enqueued_at.insert(job_id.clone(), Instant::now());
        s.insert_ready(&record);
        let position = Some(s.position_of_newest(priority_rank(&record.priority)));
        drop(s);
        Ok(Enqueued {
            record,
            position,
            existing: false,
        })
    }

    fn wait(&self, job_id: &str) -> oneshot::Receiver<JobEnd> {
        let (tx, rx) = oneshot::channel();
        // Checked under the lock: a run commits its end before it takes the lock to wake
        // the waiters, so the job is either seen finished here or its run wakes this one.
        let mut s = self.lock();
        let finished = proj::get(&self.store, job_id)
            .ok()
            .flatten()
            .filter(|j| j.is_finished());
        match finished {
            Some(record) => {
                drop(s);
                let text = self.result_text(job_id).ok().flatten();
                let _ = tx.send(JobEnd {
                    record,
                    text,
                    completion: None,
                    error: None,
                });
            }
            None => s.waiters.entry(job_id.to_string()).or_default().push(tx),
        }
        rx
    }

    fn get(&self, job_id: &str) -> Result<Option<JobRecord>, QueueError> {
        Ok(proj::get(&self.store, job_id)?)
    }

    fn position(&self, job_id: &str) -> Option<usize> {
        self.lock().position(job_id)
    }

    fn result_text(&self, job_id: &str) -> Result<Option<String>, QueueError> {
        Ok(self
            .store
            .side_get(RESULTS, job_id.as_bytes())?
            .and_then(|b| String::from_utf8(b).ok()))
    }

    fn list(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        let before = |id: &str| cursor.is_none_or(|c| id < c);
        match &filter.owner {
            Some(owner) => {
                let mut ids = proj::owner_job_ids(&self.store, owner)?;
                ids.retain(|id| before(id));
                let jobs = ids
                    .into_iter()
                    .rev()
                    .filter_map(|id| proj::get(&self.store, &id).transpose());
                page_of(jobs, filter, limit)
            }
            None => {
                let mut jobs = proj::list(&self.store)?;
                jobs.retain(|j| before(&j.job_id));
                page_of(jobs.into_iter().rev().map(Ok), filter, limit)
            }
        }
    }

    async fn cancel(
        &self,
        ctx: &EventContext,
        job_id: &str,
        by: &str,
    ) -> Result<JobRecord, QueueError> {
        let j = self.record(job_id)?;
        if j.is_finished() {
            return Err(QueueError::Conflict(format!("job is already {}", j.status)));
        }
        if let Some(cancel) = self.running_cancel(job_id) {
            cancel.cancel(by);
            return self.record(job_id);
        }
        if !self.lock().remove_ready(&j) {
            return Err(QueueError::Conflict(format!("job is {}", j.status)));
        }
        let event = Event::JobCancelled(ev::JobCancelled {
            job_id: job_id.to_string(),
            by: by.to_string(),
            output: None,
            completion_tokens: None,
        });
        match self.change(ctx, job_id, vec![event]).await {
            Ok(after) => {
                self.lock().enqueued_at.remove(job_id);
                self.notify_end(&after);
                Ok(after)
            }
            Err(e) => {
                self.lock().insert_ready(&j);
                Err(e)
            }
        }
    }

    async fn retry(&self, ctx: &EventContext, job_id: &str) -> Result<JobRecord, QueueError> {
        let j = self.record(job_id)?;
        if !matches!(j.status.as_str(), "failed" | "dead" | "cancelled") {
            return Err(QueueError::Conflict(format!(
                "only failed, dead or cancelled jobs can be retried; this one is {}",
                j.status
            )));
        }
        if self.store.side_get(PAYLOADS, job_id.as_bytes())?.is_none() {
            return Err(QueueError::Conflict(
                "this job's request is no longer stored".into(),
            ));
        }
        let event = Event::JobRetried(ev::JobRetried {
            job_id: job_id.to_string(),
            attempt: 0,
        });
        let after = self.change(ctx, job_id, vec![event]).await?;
        self.lock().insert_ready(&after);
        Ok(after)
    }

    async fn set_priority(
        &self,
        ctx: &EventContext,
        job_id: &str,
        priority: Priority,
    ) -> Result<JobRecord, QueueError> {
        let j = self.record(job_id)?;
        if j.is_finished() {
            return Err(QueueError::Conflict(format!("job is already {}", j.status)));
        }
        if j.priority == priority.as_str() {
            return Ok(j);
        }
        let queued = self.lock().remove_ready(&j);
        let event = Event::JobPriorityChanged(ev::JobPriorityChanged {
            job_id: job_id.to_string(),
            from: j.priority.clone(),
            to: priority.as_str().into(),
        });
        match self.change(ctx, job_id, vec![event]).await {
            Ok(after) => {
                if queued {
                    self.lock().insert_ready(&after);
                }
                Ok(after)
            }
            Err(e) => {
                if queued {
                    self.lock().insert_ready(&j);
                }
                Err(e)
            }
        }
    }

    async fn pause(&self, ctx: &EventContext) -> Result<(), QueueError> {
        if self.lock().paused {
            return Ok(());
        }
        let event = Event::QueuePaused(ev::QueuePaused { reason: None });
        self.store.append(ctx, vec![event]).await?;
        self.lock().paused = true;
        Ok(())
    }

    async fn resume(&self, ctx: &EventContext) -> Result<(), QueueError> {
        if !self.lock().paused {
            return Ok(());
        }
        self.store
            .append(ctx, vec![Event::QueueResumed(ev::QueueResumed {})])
            .await?;
        let mut s = self.lock();
        s.paused = false;
        s.wake();
        Ok(())
    }

    async fn purge(
        &self,
        ctx: &EventContext,
        statuses: &[String],
        older_than: Duration,
        automatic: bool,
    ) -> Result<u64, QueueError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let doomed: Vec<JobRecord> = proj::list(&self.store)?
            .into_iter()
            .filter(|j| statuses.contains(&j.status))
            .filter(|j| j.finished_at.is_some_and(|t| t < cutoff))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let side = doomed
            .iter()
            .flat_map(|j| {
                [
                    SideWrite::delete(PAYLOADS, j.job_id.as_bytes()),
                    SideWrite::delete(RESULTS, j.job_id.as_bytes()),
                ]
            })
            .collect();
        let event = Event::QueuePurged(ev::QueuePurged {
            statuses: statuses.to_vec(),
            finished_before: cutoff,
            count: doomed.len() as u64,
            automatic,
        });
        self.store.append_with(ctx, vec![event], side).await?;
        for j in &doomed {
            if let Err(e) = self.streams.purge(&j.job_id) {
                tracing::warn!(job_id = j.job_id, error = %e, "dropping a purged job's tokens failed");
            }
        }
        Ok(doomed.len() as u64)
    }

    fn stats(&self) -> Result<QueueStats, QueueError> {
        let by_status = STATUSES
            .iter()
            .map(|st| Ok((st.to_string(), proj::count(&self.store, st)?)))
            .collect::<Result<Vec<_>, EventError>>()?;
        let mut by_model: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        let mut oldest: Option<chrono::DateTime<Utc>> = None;
        for id in proj::queued_ids(&self.store)? {
            if let Some(j) = proj::get(&self.store, &id)? {
                by_model.entry(j.model.clone()).or_default().0 += 1;
                oldest = Some(oldest.map_or(j.updated_at, |o| o.min(j.updated_at)));
            }
        }
        for id in proj::running_ids(&self.store)? {
            if let Some(j) = proj::get(&self.store, &id)? {
                by_model.entry(j.model.clone()).or_default().1 += 1;
            }
        }
        let mut s = self.lock();
        s.trim_recent();
        let workers = s
            .heartbeats
            .iter()
            .map(|(name, at)| WorkerInfo {
                name: name.clone(),
                last_heartbeat: *at,
                running_jobs: s.running.keys().cloned().collect(),
            })
            .collect();
        Ok(QueueStats {
            by_status,
            by_model: by_model.into_iter().map(|(m, (q, r))| (m, q, r)).collect(),
            oldest_queued_age: oldest.map(|o| (Utc::now() - o).to_std().unwrap_or_default()),
            workers,
            completed_last_minute: s.recent.len() as u64,
            tokens_last_minute: s.recent.iter().map(|(_, t)| t).sum(),
            paused: s.paused,
            max_depth: self.max_depth(),
        })
    }
}
