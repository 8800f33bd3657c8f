//! Filtered, paged reads: seqs come from the `events_by_type` / `events_by_actor` indexes
//! (or the log itself), and time bounds become seq bounds by binary search because `ts`
//! never decreases along the log.

use super::envelope::Envelope;
use super::error::EventError;
use super::store::{index_key, key_seq, EventPage, EventQuery, Handles, MAX_QUERY_LIMIT};
use chrono::{DateTime, Utc};
use fjall::Keyspace;
use std::iter::Peekable;

type Seqs = Box<dyn Iterator<Item = Result<u64, EventError>>>;

pub(crate) fn run(h: &Handles, q: &EventQuery) -> Result<EventPage, EventError> {
    let limit = q.limit.clamp(1, MAX_QUERY_LIMIT);
    let (head, _, _) = h.head()?;
    let mut lo = q.after.map_or(1, |a| a.saturating_add(1));
    let mut hi = match q.before {
        Some(0) => return Ok(EventPage::default()),
        Some(b) => (b - 1).min(head),
        None => head,
    };
    if let Some(since) = q.since {
        lo = lo.max(first_at_or_after(h, since, head)?);
    }
    if let Some(until) = q.until {
        hi = hi.min(last_at_or_before(h, until, head)?);
    }
    if lo > hi {
        return Ok(EventPage::default());
    }
    let desc = q.newest_first;
    let mut types = q.types.clone();
    types.sort_unstable();
    types.dedup();
    let candidates: Seqs = if !types.is_empty() {
        let streams = types
            .iter()
            .map(|t| index_seqs(&h.by_type, t, lo, hi, desc))
            .collect();
        Box::new(Merge::new(streams, desc))
    } else if let Some(actor) = &q.actor {
        index_seqs(&h.by_actor, actor, lo, hi, desc)
    } else if desc {
        Box::new((lo..=hi).rev().map(Ok))
    } else {
        Box::new((lo..=hi).map(Ok))
    };

    let mut page = EventPage::default();
    for seq in candidates {
        let seq = seq?;
        let env: Envelope = h
            .get(seq)?
            .ok_or_else(|| EventError::Corrupt(format!("indexed event {seq} is missing")))?;
        if q.actor.as_ref().is_some_and(|a| *a != env.actor.id) {
            continue;
        }
        if page.events.len() == limit {
            page.next_cursor = page.events.last().map(|e| e.seq);
            break;
        }
        page.events.push(env);
    }
    Ok(page)
}

fn index_seqs(ks: &Keyspace, prefix: &str, lo: u64, hi: u64, desc: bool) -> Seqs {
    let range = ks.range(index_key(prefix, lo)..=index_key(prefix, hi));
    let map = |g: fjall::Guard| -> Result<u64, EventError> { key_seq(&g.key()?) };
    if desc {
        Box::new(range.rev().map(map))
    } else {
        Box::new(range.map(map))
    }
}

fn ts_of(h: &Handles, seq: u64) -> Result<DateTime<Utc>, EventError> {
    h.get(seq)?
        .map(|e| e.ts)
        .ok_or_else(|| EventError::Corrupt(format!("event {seq} is missing below the head")))
}

/// Smallest seq whose ts >= `since` (head + 1 if none).
fn first_at_or_after(h: &Handles, since: DateTime<Utc>, head: u64) -> Result<u64, EventError> {
    let (mut lo, mut hi) = (1u64, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ts_of(h, mid)? >= since {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Largest seq whose ts <= `until` (0 if none).
fn last_at_or_before(h: &Handles, until: DateTime<Utc>, head: u64) -> Result<u64, EventError> {
    let (mut lo, mut hi) = (1u64, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ts_of(h, mid)? > until {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo - 1)
}

/// Lazy k-way merge of sorted seq streams (one per requested type).
struct Merge {
    streams: Vec<Peekable<Seqs>>,
    desc: bool,
}

impl Merge {
    fn new(streams: Vec<Seqs>, desc: bool) -> Merge {
        Merge {
            streams: streams.into_iter().map(Iterator::peekable).collect(),
            desc,
        }
    }
}

impl Iterator for Merge {
    type Item = Result<u64, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, u64)> = None;
        for (i, s) in self.streams.iter_mut().enumerate() {
            match s.peek() {
                None => {}
                Some(Err(_)) => return s.next(),
                Some(Ok(seq)) => {
                    let better =
                        best.is_none_or(|(_, b)| if self.desc { *seq > b } else { *seq < b });
                    if better {
                        best = Some((i, *seq));
                    }
                }
            }
        }
        let (i, _) = best?;
        self.streams[i].next()
    }
}
