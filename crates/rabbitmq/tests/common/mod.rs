//! Shared by the RabbitMQ tests: the ordering verifier (judged from what the handlers recorded
//! and what the publisher had confirmed, never from what a member believes) and a recording
//! handler.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the publisher sends: a key and its sequence number.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body {
    pub key: u32,
    pub seq: u64,
}

/// One processed delivery, as a handler recorded it.
#[derive(Debug, Clone)]
pub struct Processed {
    pub key: u32,
    pub seq: u64,
    pub queue: String,
    pub member: String,
    pub token: String,
    pub redelivered: bool,
    pub start: Instant,
    pub end: Instant,
}

/// Every handler appends here.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<Processed>>>);

impl Log {
    pub fn push(&self, p: Processed) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    pub fn snapshot(&self) -> Vec<Processed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Distinct (key, seq) processed so far.
    pub fn distinct(&self) -> usize {
        let v = self.snapshot();
        v.iter()
            .map(|p| (p.key, p.seq))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// The verifier's findings.
#[derive(Debug, Default)]
pub struct Report {
    /// Confirmed by the broker, never processed.
    pub lost: Vec<(u32, u64)>,
    /// A lower seq processed after a higher one of the same key, the later one not a
    /// redelivery.
    pub order_violations: Vec<String>,
    /// The same, but the later one was a redelivery of an unacked message.
    pub redelivery_reorders: usize,
    /// (key, seq) processed more than once.
    pub duplicates: usize,
    /// Two members inside the handler for one queue at the same time.
    pub concurrent: Vec<String>,
    /// Longest time between two consecutive processings of one key.
    pub max_key_stall: Duration,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.order_violations.is_empty() && self.concurrent.is_empty()
    }
}

/// Judges the processing log against what the publisher had confirmed.
pub fn verify(confirmed: &BTreeSet<(u32, u64)>, log: &[Processed]) -> Report {
    let mut r = Report::default();
    let mut by_time: Vec<&Processed> = log.iter().collect();
    by_time.sort_by_key(|p| p.start);
    let done: BTreeSet<(u32, u64)> = log.iter().map(|p| (p.key, p.seq)).collect();
    r.lost = confirmed.difference(&done).copied().collect();
    r.duplicates = log.len() - done.len();
    let mut last: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
    for p in &by_time {
        match last.get(&p.key) {
            Some(&(high, at)) => {
                r.max_key_stall = r.max_key_stall.max(p.start.saturating_duration_since(at));
                if p.seq < high {
                    if p.redelivered {
                        r.redelivery_reorders += 1;
                    } else {
                        r.order_violations.push(format!(
                            "key {}: seq {} processed by {} on {} after seq {high}",
                            p.key, p.seq, p.member, p.queue
                        ));
                    }
                }
                let high = high.max(p.seq);
                last.insert(p.key, (high, p.start));
            }
            None => {
                last.insert(p.key, (p.seq, p.start));
            }
        }
    }
    // Per queue, any two handler runs of different members that overlap in time.
    let mut per_queue: BTreeMap<&str, Vec<&Processed>> = BTreeMap::new();
    for p in &by_time {
        per_queue.entry(p.queue.as_str()).or_default().push(p);
    }
    for (q, runs) in per_queue {
        // Sorted by start: it is enough to compare each run with the latest-ending earlier one.
        let mut open: Option<&Processed> = None;
        for p in runs {
            if let Some(o) = open {
                if o.end > p.start && o.member != p.member {
                    r.concurrent.push(format!(
                        "{q}: {} (token {}) and {} (token {}) at once",
                        o.member, o.token, p.member, p.token
                    ));
                }
                if p.end > o.end {
                    open = Some(p);
                }
            } else {
                open = Some(p);
            }
        }
    }
    r
}
