//! Folding the log into projections: start-up catch-up and replay into a fresh generation.

use std::collections::HashMap;
use std::sync::Arc;

use fjall::{Keyspace, PersistMode};

use super::envelope::Envelope;
use super::error::EventError;
use super::projections::{Projection, ProjectionTx};
use super::raw::RawEnvelope;
use super::store::{checkpoint_key, key_seq, seq_key, Handles};
use super::types::Event;

const CATCH_UP_CHUNK: usize = 32768;

/// Folds events `after+1..` into `projections`, committing every [`CATCH_UP_CHUNK`] events.
/// Each projection starts after its own checkpoint when `checkpoints` is given (start-up
/// catch-up) or at `after` (replay into a fresh generation, which writes no checkpoints).
///
/// Two threads: one reads and decodes envelopes (the JSON work), the caller's thread folds
/// them in seq order and writes the batches.
pub(crate) fn fold_log(
    h: &Handles,
    projection_ks: &HashMap<String, Keyspace>,
    projections: &[Arc<dyn Projection>],
    checkpoints: Option<&[u64]>,
    after: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, EventError> {
    let mut tx = ProjectionTx::new(projection_ks);
    let mut in_chunk = 0usize;
    let mut folded = 0u64;
    let mut last = after;
    let flush = |tx: &mut ProjectionTx<'_>, last: u64| -> Result<(), EventError> {
        let mut batch = h.db.batch();
        // No record cache to invalidate: folds run at open, before anything is cached, or
        // offline (replay).
        tx.drain_into(&mut batch);
        if let Some(cps) = checkpoints {
            for (p, cp) in projections.iter().zip(cps) {
                if last > *cp {
                    batch.insert(&h.meta, checkpoint_key(p.name()), seq_key(last).to_vec());
                }
            }
        }
        batch.commit()?;
        Ok(())
    };
    std::thread::scope(|s| -> Result<(), EventError> {
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<DecodedChunk>(4);
        // Folded chunks go back to the decoder to be freed there: memory freed by the
        // thread that allocated it avoids contention in the allocator.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<(Envelope, Event)>>();
        let payload = projections.iter().any(|p| p.reads_payload());
        s.spawn(move || decode_log(h, after, payload, &decoded_tx, &done_rx));
        for chunk in decoded_rx {
            let chunk = chunk?;
            for (env, event) in &chunk {
                let seq = env.seq;
                for (i, p) in projections.iter().enumerate() {
                    if checkpoints.is_some_and(|cps| cps[i] >= seq) {
                        continue;
                    }
                    tx.apply(p.as_ref(), env, event)?;
                }
                tx.commit_request();
                last = seq;
                folded += 1;
                in_chunk += 1;
                if in_chunk >= CATCH_UP_CHUNK {
                    flush(&mut tx, last)?;
                    in_chunk = 0;
                    progress(folded);
                }
            }
            let _ = done_tx.send(chunk);
        }
        // Returning early drops the receiver, which stops the decoder.
        Ok(())
    })?;
    flush(&mut tx, last)?;
    h.db.persist(PersistMode::SyncAll)?;
    progress(folded);
    Ok(folded)
}

/// Envelopes decoded ahead of the fold, in seq order; an error ends the stream.
type DecodedChunk = Result<Vec<(Envelope, Event)>, EventError>;
const DECODE_CHUNK: usize = 1024;

/// Reads events `after+1..` and sends them decoded, until the end or until the receiver
/// is gone. Without `payload`, envelopes in the usual layout carry a `Null` payload and
/// their event is decoded straight from the stored text (see [`Projection::reads_payload`]).
fn decode_log(
    h: &Handles,
    after: u64,
    payload: bool,
    out: &std::sync::mpsc::SyncSender<DecodedChunk>,
    done: &std::sync::mpsc::Receiver<Vec<(Envelope, Event)>>,
) {
    let mut chunk = Vec::with_capacity(DECODE_CHUNK);
    for item in h.events.range(seq_key(after + 1)..) {
        let decoded = (|| -> Result<(Envelope, Event), EventError> {
            let (k, v) = item.into_inner()?;
            let seq = key_seq(&k)?;
            if !payload {
                if let Some(raw) = RawEnvelope::parse(&v) {
                    if let Some(env) = raw.to_envelope_without_payload() {
                        let event = Event::decode_slice(&env.r#type, env.version, raw.payload)?;
                        return Ok((env, event));
                    }
                }
            }
            let env = Envelope::from_stored_bytes(seq, &v)?;
            let event = env.event()?;
            Ok((env, event))
        })();
        match decoded {
            Ok(d) => chunk.push(d),
            Err(e) => {
                if !chunk.is_empty() && out.send(Ok(chunk)).is_err() {
                    return;
                }
                let _ = out.send(Err(e));
                return;
            }
        }
        if chunk.len() >= DECODE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(DECODE_CHUNK));
            if out.send(Ok(full)).is_err() {
                return;
            }
            while let Ok(folded) = done.try_recv() {
                drop(folded);
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send(Ok(chunk));
    }
}
