//! Tokens to core NATS: generation puts each token into a bounded channel without ever
//! waiting, and one task drains it into the client. A full channel or a NATS outage drops
//! tokens (counted); the order of one job's tokens is kept.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{token_subject, Counters, Link};

/// Tokens waiting for the client at most, over all jobs.
pub(crate) const CAPACITY: usize = 8192;

/// One token as consumers receive it.
#[derive(Debug, Serialize)]
struct TokenPayload<'a> {
    job_id: &'a str,
    index: u64,
    text: &'a str,
}

#[derive(Debug)]
pub(crate) struct TokenMsg {
    subject: String,
    payload: Bytes,
}

/// The generation side of the channel.
#[derive(Debug, Clone)]
pub(crate) struct TokenSender(mpsc::Sender<TokenMsg>);

pub(crate) fn channel() -> (TokenSender, mpsc::Receiver<TokenMsg>) {
    with_capacity(CAPACITY)
}

fn with_capacity(n: usize) -> (TokenSender, mpsc::Receiver<TokenMsg>) {
    let (tx, rx) = mpsc::channel(n);
    (TokenSender(tx), rx)
}

impl TokenSender {
    /// Queues the token; `false` when the channel is full or closed (nothing is encoded
    /// then).
    pub(crate) fn try_send(&self, job_id: &str, index: u64, text: &str) -> bool {
        let Ok(permit) = self.0.try_reserve() else {
            return false;
        };
        let Ok(payload) = serde_json::to_vec(&TokenPayload {
            job_id,
            index,
            text,
        }) else {
            return false;
        };
        permit.send(TokenMsg {
            subject: token_subject(job_id),
            payload: payload.into(),
        });
        true
    }
}

/// Publishes queued tokens until `stop`, then what is still queued.
pub(crate) async fn drain(
    mut rx: mpsc::Receiver<TokenMsg>,
    client: async_nats::Client,
    link: Arc<Link>,
    counts: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        publish(&client, &link, &counts, msg).await;
    }
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        publish(&client, &link, &counts, msg).await;
    }
}

async fn publish(client: &async_nats::Client, link: &Link, counts: &Counters, msg: TokenMsg) {
    // Queued while NATS was up, but it went down since: at-most-once, so drop rather
    // than deliver late.
    if !link.is_up() {
        counts.dropped();
        return;
    }
    match client.publish(msg.subject, msg.payload).await {
        Ok(()) => counts.published(),
        Err(_) => counts.dropped(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_encoded_in_order_and_a_full_channel_refuses() {
        let (tx, mut rx) = with_capacity(2);
        assert!(tx.try_send("job-1", 0, "Hello"));
        assert!(tx.try_send("job-1", 1, " \"world\"\n"));
        assert!(!tx.try_send("job-1", 2, "dropped"), "the channel is full");
        let first = rx.try_recv().unwrap();
        assert_eq!(first.subject, "inferno.jobs.job-1.tokens");
        let v: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"job_id": "job-1", "index": 0, "text": "Hello"})
        );
        let second: serde_json::Value =
            serde_json::from_slice(&rx.try_recv().unwrap().payload).unwrap();
        assert_eq!(second["index"], 1);
        assert_eq!(second["text"], " \"world\"\n");
        // Room again once drained.
        assert!(tx.try_send("job-1", 3, "again"));
    }
}
