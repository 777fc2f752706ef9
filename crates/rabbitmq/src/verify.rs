//! The ordering verifier: judges what consumers did from what they recorded and what the
//! broker confirmed to the publisher, never from what a member believes. Used by this crate's
//! tests and the multi-process chaos test (`rebalanser rabbitmq-consumer` records one
//! [`Processed`] per line).
//!
//! Findings ([`Report`]): messages lost (confirmed, never processed); per-key order violations
//! (a lower seq processed after a higher one, the later not a redelivery); reorders by
//! redelivery of unacked messages (reported apart: the broker redelivers what a consumer
//! received but did not ack, and the application sees `redelivered`); duplicates; and two
//! members inside the handler for one queue at once (never allowed). Times are nanoseconds on
//! one host clock (CLOCK_BOOTTIME) shared by every process.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What the test publisher sends: a key, its sequence number and when it was published.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body {
    pub key: u32,
    pub seq: u64,
    #[serde(default)]
    pub sent_ns: u64,
}

/// One processed delivery, as a handler recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Processed {
    pub key: u32,
    pub seq: u64,
    pub queue: String,
    pub member: String,
    pub token: String,
    pub redelivered: bool,
    #[serde(default)]
    pub sent_ns: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The verifier's findings.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub published: usize,
    pub processed: usize,
    /// Confirmed by the broker, never processed.
    pub lost: Vec<(u32, u64)>,
    pub order_violations: Vec<String>,
    pub redelivery_reorders: usize,
    /// Processings of a (key, seq) beyond its first.
    pub duplicates: usize,
    /// Two members inside the handler for one queue at the same time.
    pub concurrent: Vec<String>,
    /// Longest publish → first processing of any message, ns.
    pub max_latency_ns: u64,
}

impl Report {
    /// Nothing lost, nothing out of order outside redeliveries, no queue in two handlers.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.order_violations.is_empty() && self.concurrent.is_empty()
    }
}

/// Judges the processing log against the set of confirmed (key, seq).
pub fn verify(confirmed: &BTreeSet<(u32, u64)>, log: &[Processed]) -> Report {
    let mut r = Report {
        published: confirmed.len(),
        processed: log.len(),
        ..Report::default()
    };
    let mut by_time: Vec<&Processed> = log.iter().collect();
    by_time.sort_by_key(|p| (p.start_ns, p.end_ns));
    let mut first: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for p in &by_time {
        first.entry((p.key, p.seq)).or_insert(p.end_ns);
    }
    r.lost = confirmed
        .iter()
        .filter(|k| !first.contains_key(k))
        .copied()
        .collect();
    r.duplicates = log.len() - first.len();
    r.max_latency_ns = by_time
        .iter()
        .filter(|p| p.sent_ns > 0)
        .map(|p| first[&(p.key, p.seq)].saturating_sub(p.sent_ns))
        .max()
        .unwrap_or(0);
    let mut high: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    for p in &by_time {
        let h = high.entry(p.key).or_insert(p.seq);
        let again = !seen.insert((p.key, p.seq));
        if p.seq < *h {
            // Excused only as a repeat: a redelivery of a message processed before (its ack
            // was lost with a consumer). A redelivered message processed for the first time
            // after a later one is an order violation like any other.
            if p.redelivered && again {
                r.redelivery_reorders += 1;
            } else {
                r.order_violations.push(format!(
                    "key {}: seq {} processed by {} on {} after seq {}",
                    p.key, p.seq, p.member, p.queue, *h
                ));
            }
        }
        *h = (*h).max(p.seq);
    }
    let mut per_queue: BTreeMap<&str, Vec<&Processed>> = BTreeMap::new();
    for p in &by_time {
        per_queue.entry(p.queue.as_str()).or_default().push(p);
    }
    for (q, runs) in per_queue {
        // Sorted by start: compare each run with the latest-ending one before it.
        let mut open: Option<&Processed> = None;
        for p in runs {
            if let Some(o) = open {
                // Identity is the lease: two tokens in one member are two owners too.
                if o.end_ns > p.start_ns && (&o.member, &o.token) != (&p.member, &p.token) {
                    r.concurrent.push(format!(
                        "{q}: {} (token {}) until {} and {} (token {}) from {}",
                        o.member, o.token, o.end_ns, p.member, p.token, p.start_ns
                    ));
                }
            }
            if open.is_none_or(|o| p.end_ns > o.end_ns) {
                open = Some(p);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: u32, seq: u64, member: &str, start: u64, end: u64, redelivered: bool) -> Processed {
        Processed {
            key,
            seq,
            queue: "q".into(),
            member: member.into(),
            token: "1".into(),
            redelivered,
            sent_ns: 0,
            start_ns: start,
            end_ns: end,
        }
    }

    #[test]
    fn a_clean_handover_is_clean() {
        let confirmed = [(1, 0), (1, 1), (1, 2)].into_iter().collect();
        let log = vec![
            p(1, 0, "a", 0, 10, false),
            p(1, 1, "a", 10, 20, false),
            p(1, 2, "b", 30, 40, false),
        ];
        let r = verify(&confirmed, &log);
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.duplicates, 0);
    }

    #[test]
    fn loss_reorder_duplicate_and_overlap_are_each_found() {
        let confirmed = [(1, 0), (1, 1), (1, 2), (2, 0)].into_iter().collect();
        let log = vec![
            p(1, 1, "a", 0, 10, false),
            p(1, 0, "b", 5, 15, false),
            p(1, 0, "b", 20, 25, true),
            p(1, 2, "a", 30, 40, false),
        ];
        let r = verify(&confirmed, &log);
        assert_eq!(r.lost, vec![(2, 0)]);
        assert_eq!(r.order_violations.len(), 1, "{r:?}");
        assert_eq!(r.redelivery_reorders, 1);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.concurrent.len(), 1, "{r:?}");
    }

    /// A redelivery is excused only as a repeat: the first processing of a message after a
    /// later one is a violation even when the broker marked it redelivered (what a consumer
    /// that released before its channel closed produces).
    #[test]
    fn a_first_processing_out_of_order_is_a_violation_even_if_redelivered() {
        let confirmed = [(1, 0), (1, 1)].into_iter().collect();
        let log = vec![p(1, 1, "b", 0, 10, false), p(1, 0, "b", 20, 30, true)];
        let r = verify(&confirmed, &log);
        assert_eq!(r.order_violations.len(), 1, "{r:?}");
        assert_eq!(r.redelivery_reorders, 0);
    }
}
