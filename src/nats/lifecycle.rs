//! Job lifecycle to core NATS: follows the committed log from its head at start-up and
//! publishes every `job.*` event to `inferno.jobs.<job_id>.events`, in log order. A follower
//! that falls behind the live tail catches up from storage; while NATS is down the events
//! are dropped and counted (core NATS is at-most-once; JetStream has the full log).

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{lifecycle_subject, subject_token_ok, Counters, Link};
use crate::events::{format_ts, Envelope, EventStore};

/// Events read from storage at a time while catching up.
const CATCH_UP_CHUNK: usize = 1024;

pub(crate) async fn follow(
    store: EventStore,
    client: async_nats::Client,
    link: Arc<Link>,
    counts: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut live = store.subscribe();
    // Subscribed first: everything committed after this head reaches `live`.
    let mut last = store.head().0;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            r = live.recv() => r,
        };
        match next {
            Ok(env) if env.seq <= last => {}
            Ok(env) if env.seq == last + 1 => {
                publish(&client, &link, &counts, &env).await;
                last = env.seq;
            }
            // A gap (should not happen) or a lagging receiver: read what was missed.
            Ok(_) | Err(RecvError::Lagged(_)) => {
                last = catch_up(&store, &client, &link, &counts, last).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Publishes the committed events after `last` from storage; returns the last seq done.
async fn catch_up(
    store: &EventStore,
    client: &async_nats::Client,
    link: &Link,
    counts: &Counters,
    mut last: u64,
) -> u64 {
    loop {
        let s = store.clone();
        let after = last;
        let chunk = tokio::task::spawn_blocking(move || {
            s.range(after)
                .take(CATCH_UP_CHUNK)
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        let chunk = match chunk {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "NATS lifecycle: reading the log to catch up");
                return last;
            }
            Err(_) => return last,
        };
        if chunk.is_empty() {
            return last;
        }
        for env in &chunk {
            publish(client, link, counts, env).await;
            last = env.seq;
        }
    }
}

async fn publish(client: &async_nats::Client, link: &Link, counts: &Counters, env: &Envelope) {
    let Some((subject, body)) = message(env) else {
        return;
    };
    if !link.is_up() {
        counts.dropped();
        return;
    }
    match client.publish(subject, body.into()).await {
        Ok(()) => counts.published(),
        Err(_) => counts.dropped(),
    }
}

/// The subject and JSON body for a `job.*` event: `job_id`, `type`, `seq`, `ts`,
/// `version`, then the event's payload fields. `None` for every other event.
pub(crate) fn message(env: &Envelope) -> Option<(String, Vec<u8>)> {
    if !env.r#type.starts_with("job.") {
        return None;
    }
    let shown = env.shown();
    let payload = shown.payload.as_object()?;
    let job_id = payload.get("job_id")?.as_str()?;
    if !subject_token_ok(job_id) {
        return None;
    }
    let mut body = Map::new();
    body.insert("job_id".into(), Value::from(job_id));
    body.insert("type".into(), Value::from(env.r#type.as_str()));
    body.insert("seq".into(), Value::from(env.seq));
    body.insert("ts".into(), Value::from(format_ts(&env.ts)));
    body.insert("version".into(), Value::from(env.version));
    for (k, v) in payload {
        body.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let bytes = serde_json::to_vec(&Value::Object(body)).ok()?;
    Some((lifecycle_subject(job_id), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, GENESIS_HASH};

    fn env(event_type: &str, payload: Value) -> Envelope {
        Envelope {
            seq: 42,
            id: uuid::Uuid::now_v7(),
            ts: chrono::Utc::now(),
            r#type: event_type.into(),
            version: 1,
            actor: Actor::system(),
            request_id: None,
            client_ip: Some("127.0.0.1".into()),
            payload,
            prev_hash: GENESIS_HASH.into(),
            hash: GENESIS_HASH.into(),
        }
    }

    #[test]
    fn job_events_carry_their_payload_and_place_in_the_log() {
        let e = env(
            "job.failed",
            serde_json::json!({"job_id": "j-1", "code": "INTERNAL_ERROR", "error": "boom"}),
        );
        let (subject, body) = message(&e).unwrap();
        assert_eq!(subject, "inferno.jobs.j-1.events");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["job_id"], "j-1");
        assert_eq!(v["type"], "job.failed");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["version"], 1);
        assert_eq!(v["ts"], format_ts(&e.ts));
        assert_eq!(v["code"], "INTERNAL_ERROR");
        assert_eq!(v["error"], "boom");
        // The envelope's actor and client address stay in the log.
        assert!(v.get("client_ip").is_none() && v.get("actor").is_none());
    }

    #[test]
    fn only_job_events_with_a_usable_id_are_published() {
        let user = env("user.created", serde_json::json!({"user_id": "u"}));
        assert!(message(&user).is_none());
        let odd = env("job.started", serde_json::json!({"job_id": "a.b"}));
        assert!(message(&odd).is_none());
        let none = env("job.started", serde_json::json!({}));
        assert!(message(&none).is_none());
    }
}
