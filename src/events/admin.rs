//! Offline maintenance for the CLI (`inferno audit verify|export|replay`): each function
//! takes the data directory lock itself, so the server must be stopped.
//!
//! Long runs show an indicatif progress bar when stderr is a terminal and plain progress
//! lines otherwise (logs, CI).

use super::error::EventError;
use super::fold::fold_log;
use super::migrate::META_GENERATION;
use super::projections::{default_projections, Projection};
use super::store::{
    checkpoint_key, export_form, key_seq, lock_dir, logical_keyspaces, physical_name, seq_key,
    EventStore, Handles, LOG_DIR,
};
use super::verify::VerifyReport;
use fjall::{KeyspaceCreateOptions, PersistMode};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `replay` rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Events folded.
    pub events: u64,
    /// The projection generation now live.
    pub generation: u64,
    /// Records per logical keyspace in the new generation.
    pub records: BTreeMap<String, u64>,
    pub elapsed_ms: u64,
}

/// Progress reporting: a bar on a terminal, a line every few seconds elsewhere.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: &'static str,
    last_line: Instant,
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool, label: &'static str, total: u64) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        });
        Progress {
            bar,
            label,
            last_line: Instant::now(),
            enabled,
        }
    }

    pub fn set(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.enabled && self.last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{}: {done}/{total} events", self.label);
            self.last_line = Instant::now();
        }
    }

    pub fn finish(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.enabled {
            eprintln!("{}: {done} events done", self.label);
        }
    }
}

fn open_existing(data_dir: &Path) -> Result<(std::fs::File, Handles), EventError> {
    if !data_dir.join(LOG_DIR).exists() {
        return Err(EventError::Invalid(format!(
            "no event log in {}",
            data_dir.display()
        )));
    }
    let lock = lock_dir(data_dir)?;
    let h = Handles::open(data_dir, &default_projections())?;
    Ok((lock, h))
}

/// Recomputes the whole chain of a stopped server's log.
pub fn verify_dir(data_dir: &Path, progress: bool) -> Result<VerifyReport, EventError> {
    let (_lock, h) = open_existing(data_dir)?;
    let head = h.head_seq()?;
    let mut p = Progress::new(progress, "verify", head);
    let report = h.verify_from(1, true, |n| p.set(n, head));
    p.finish(report.events);
    Ok(report)
}

/// Writes envelopes with `seq > after` (optionally only `types`) as NDJSON: one stored
/// envelope per line, byte for byte as stored, so an auditor can recompute every hash
/// (see the hash rule on [`super::Envelope`]); old events with fields readers must not see
/// are written as [`super::Envelope::export_line`] says. Returns the number of lines written.
pub fn export(
    data_dir: &Path,
    after: u64,
    types: &[String],
    out: &mut dyn Write,
    progress: bool,
) -> Result<u64, EventError> {
    let (_lock, h) = open_existing(data_dir)?;
    let head = h.head_seq()?;
    let mut p = Progress::new(progress, "export", head);
    let mut n = 0;
    for g in h.events.range(seq_key(after.saturating_add(1))..) {
        let (k, v) = g.into_inner()?;
        let seq = key_seq(&k)?;
        if seq.is_multiple_of(65_536) {
            p.set(seq, head);
        }
        let (event_type, line) = export_form(seq, &v)?;
        if !types.is_empty() && !types.iter().any(|x| *x == *event_type) {
            continue;
        }
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    p.finish(head);
    Ok(n)
}

/// Rebuilds every default projection from the log into a fresh keyspace generation, then
/// swaps the generation pointer and all checkpoints in one atomic batch and drops the old
/// generation. A crash before the swap leaves the old generation live (the half-built one
/// is dropped at the next open).
pub fn replay(data_dir: &Path, progress: bool) -> Result<ReplayReport, EventError> {
    replay_with(data_dir, &default_projections(), progress)
}

/// [`replay`] for an explicit projection set.
pub fn replay_with(
    data_dir: &Path,
    projections: &[Arc<dyn Projection>],
    progress: bool,
) -> Result<ReplayReport, EventError> {
    let started = Instant::now();
    let (_lock, h) = open_existing(data_dir)?;
    h.drop_stale_generations()?;
    let (head, _, _) = h.head()?;
    let generation = h.generation + 1;
    let mut fresh = HashMap::new();
    for logical in logical_keyspaces(projections) {
        let ks = h.db.keyspace(
            &physical_name(generation, logical),
            KeyspaceCreateOptions::default,
        )?;
        fresh.insert(logical.to_string(), ks);
    }

    let mut p = Progress::new(progress, "replay", head);
    let events = fold_log(&h, &fresh, projections, None, 0, |n| p.set(n, head))?;
    p.finish(events);

    let mut swap = h.db.batch().durability(Some(PersistMode::SyncAll));
    swap.insert(&h.meta, META_GENERATION, generation.to_be_bytes().to_vec());
    for proj in projections {
        swap.insert(&h.meta, checkpoint_key(proj.name()), seq_key(head).to_vec());
    }
    swap.commit()?;
    for ks in h.projection_ks.values() {
        h.db.delete_keyspace(ks.clone())?;
    }
    h.db.persist(PersistMode::SyncAll)?;

    let mut records = BTreeMap::new();
    for (logical, ks) in &fresh {
        records.insert(logical.clone(), ks.len()? as u64);
    }
    Ok(ReplayReport {
        events,
        generation,
        records,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Every record of one projection, keyed `logical_keyspace || 0x00 || key`, for comparing
/// live and replayed contents.
pub fn projection_snapshot(
    store: &EventStore,
    projection_name: &str,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, EventError> {
    let p = store
        .projections()
        .iter()
        .find(|p| p.name() == projection_name)
        .ok_or_else(|| EventError::Invalid(format!("unknown projection {projection_name:?}")))?;
    let mut out = BTreeMap::new();
    for ks in p.keyspaces() {
        for (k, v) in store.projection_scan(ks, b"")? {
            let mut key = ks.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(&k);
            out.insert(key, v);
        }
    }
    Ok(out)
}
