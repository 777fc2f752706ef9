//! A store wrapper that counts what the members ask of the store: operations by kind, and
//! the bytes of keys and values read and written. The bench reports its deltas per scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use rebalanser::{txn_bytes, BoxFuture, Key, Store, StoreOp, StoreReply, StoreResult, WatchEvent};
use serde_json::json;

/// Operation and byte counts, shared by every clone of one [`CountingStore`].
#[derive(Default)]
pub struct Counters {
    reads: AtomicU64,
    read_entries: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    keepalives: AtomicU64,
    sessions: AtomicU64,
    watches: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads: u64,
    pub read_entries: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub keepalives: u64,
    pub sessions: u64,
    pub watches: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            reads: g(&self.reads),
            read_entries: g(&self.read_entries),
            bytes_read: g(&self.bytes_read),
            writes: g(&self.writes),
            bytes_written: g(&self.bytes_written),
            keepalives: g(&self.keepalives),
            sessions: g(&self.sessions),
            watches: g(&self.watches),
        }
    }
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            reads: self.reads - earlier.reads,
            read_entries: self.read_entries - earlier.read_entries,
            bytes_read: self.bytes_read - earlier.bytes_read,
            writes: self.writes - earlier.writes,
            bytes_written: self.bytes_written - earlier.bytes_written,
            keepalives: self.keepalives - earlier.keepalives,
            sessions: self.sessions - earlier.sessions,
            watches: self.watches - earlier.watches,
        }
    }

    /// Both counts added up (the counts of several member processes).
    pub fn plus(&self, o: &Counts) -> Counts {
        Counts {
            reads: self.reads + o.reads,
            read_entries: self.read_entries + o.read_entries,
            bytes_read: self.bytes_read + o.bytes_read,
            writes: self.writes + o.writes,
            bytes_written: self.bytes_written + o.bytes_written,
            keepalives: self.keepalives + o.keepalives,
            sessions: self.sessions + o.sessions,
            watches: self.watches + o.watches,
        }
    }

    /// The counts as the words a member process prints (`c` and eight numbers).
    pub fn to_line(self) -> String {
        format!(
            "c {} {} {} {} {} {} {} {}",
            self.reads,
            self.read_entries,
            self.bytes_read,
            self.writes,
            self.bytes_written,
            self.keepalives,
            self.sessions,
            self.watches
        )
    }

    /// Reads the eight numbers after the `c` of [`Counts::to_line`].
    pub fn from_words<'a>(words: impl Iterator<Item = &'a str>) -> Option<Counts> {
        let n: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
        let [reads, read_entries, bytes_read, writes, bytes_written, keepalives, sessions, watches] =
            n[..]
        else {
            return None;
        };
        Some(Counts {
            reads,
            read_entries,
            bytes_read,
            writes,
            bytes_written,
            keepalives,
            sessions,
            watches,
        })
    }

    pub fn to_json(self) -> serde_json::Value {
        json!({
            "reads": self.reads,
            "read_entries": self.read_entries,
            "bytes_read": self.bytes_read,
            "writes": self.writes,
            "bytes_written": self.bytes_written,
            "keepalives": self.keepalives,
            "sessions": self.sessions,
            "watches": self.watches,
        })
    }
}

/// Counts every operation on its way to `inner`.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> (Arc<CountingStore>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let store = Arc::new(CountingStore {
            inner,
            counters: counters.clone(),
        });
        (store, counters)
    }
}

fn add(a: &AtomicU64, n: usize) {
    a.fetch_add(n as u64, Ordering::Relaxed);
}

impl Store for CountingStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        let c = &self.counters;
        match &op {
            StoreOp::Get { .. } | StoreOp::List { .. } | StoreOp::Read { .. } => add(&c.reads, 1),
            StoreOp::Txn { conds, writes } => {
                add(&c.writes, 1);
                add(&c.bytes_written, txn_bytes(conds, writes));
            }
            StoreOp::KeepAlive { .. } => add(&c.keepalives, 1),
            StoreOp::OpenSession { .. } | StoreOp::CloseSession { .. } => add(&c.sessions, 1),
        }
        Box::pin(async move {
            let res = self.inner.execute(op).await;
            match &res {
                Ok(StoreReply::Listed { entries, .. }) => {
                    add(&c.read_entries, entries.len());
                    let bytes: usize = entries.iter().map(|(k, e)| k.len() + e.value.len()).sum();
                    add(&c.bytes_read, bytes);
                }
                Ok(StoreReply::Got(Some(e))) => {
                    add(&c.read_entries, 1);
                    add(&c.bytes_read, e.value.len());
                }
                _ => {}
            }
            res
        })
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        add(&self.counters.watches, 1);
        self.inner.watch(prefix)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn keepalive_proves_previous(&self) -> bool {
        self.inner.keepalive_proves_previous()
    }

    fn min_session_ttl(&self) -> std::time::Duration {
        self.inner.min_session_ttl()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_line_a_member_process_prints() {
        let c = Counts {
            reads: 1,
            read_entries: 2,
            bytes_read: 3,
            writes: 4,
            bytes_written: 5,
            keepalives: 6,
            sessions: 7,
            watches: 8,
        };
        let line = c.to_line();
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("c"));
        assert_eq!(Counts::from_words(words), Some(c));
        assert_eq!(Counts::from_words("1 2 3".split(' ')), None);
        assert_eq!(c.plus(&c).since(&c), c);
    }
}
