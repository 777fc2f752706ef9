//! The suite can fail: deliberately broken stores (wrappers around the memory store, each
//! breaking one rule the way a naive backend would) are rejected by the check for that rule.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use futures::FutureExt;
use rebalanser_conformance::{self as suite, Subject};
use rebalanser_core::store::{Cond, StoreOp, StoreReply, StoreResult};
use rebalanser_store::{BoxFuture, MemoryStore, Store, WatchEvent};

#[derive(Clone, Copy)]
enum Bug {
    /// Checks ownership by data version only, as a naive ZooKeeper mapping would (ABA).
    OwnedAsVersion,
    /// Applies a transaction's writes one by one, keeping those before a failure.
    NotAtomic,
    /// Never notifies.
    SilentWatch,
    /// Enforces a third of the TTL it reports.
    EarlyExpiry,
    /// Re-arms its watch after a reconnect but does not say that events were missed.
    NoResetOnReconnect,
}

struct Broken {
    inner: MemoryStore,
    bug: Bug,
}

impl Store for Broken {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        let op = match (self.bug, op) {
            (Bug::OwnedAsVersion, StoreOp::Txn { conds, writes }) => StoreOp::Txn {
                conds: conds
                    .into_iter()
                    .map(|c| match c {
                        Cond::Owned { key, .. } => Cond::Version(key, 0),
                        c => c,
                    })
                    .collect(),
                writes,
            },
            (Bug::NotAtomic, StoreOp::Txn { conds, writes }) if writes.len() > 1 => {
                let mut last = self.inner.apply(&StoreOp::Txn {
                    conds,
                    writes: vec![],
                });
                if last.is_ok() {
                    for w in writes {
                        last = self.inner.apply(&StoreOp::Txn {
                            conds: vec![],
                            writes: vec![w],
                        });
                        if last.is_err() {
                            break;
                        }
                    }
                }
                return Box::pin(async move { last });
            }
            (Bug::EarlyExpiry, StoreOp::OpenSession { ttl }) => {
                let res = self.inner.apply(&StoreOp::OpenSession { ttl: ttl / 3 });
                let res = res.map(|r| match r {
                    StoreReply::Session { session, .. } => StoreReply::Session { session, ttl },
                    r => r,
                });
                return Box::pin(async move { res });
            }
            (_, op) => op,
        };
        self.inner.execute(op)
    }

    fn keepalive_proves_previous(&self) -> bool {
        false
    }

    fn watch(&self, prefix: String) -> BoxStream<'static, WatchEvent> {
        match self.bug {
            Bug::SilentWatch => stream::pending().boxed(),
            Bug::NoResetOnReconnect => self
                .inner
                .watch(prefix)
                .filter(|e| std::future::ready(*e != WatchEvent::Reset))
                .boxed(),
            _ => self.inner.watch(prefix),
        }
    }

    fn describe(&self) -> String {
        "broken://".into()
    }
}

fn subject(bug: Bug) -> Subject {
    let inner = MemoryStore::new();
    Subject {
        disruption: suite::memory_disruption(&inner),
        silence: suite::no_silence(),
        store: Arc::new(Broken { inner, bug }),
        prefix: "broken/".into(),
        short_ttl: Duration::from_millis(300),
        notify_within: Duration::from_millis(300),
    }
}

/// Runs a check and returns its panic message, or `None` if it passed.
async fn failure(f: impl std::future::Future<Output = ()>) -> Option<String> {
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
        Ok(()) => None,
        Err(p) => Some(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

#[tokio::test]
async fn an_aba_prone_owner_check_is_caught() {
    let s = subject(Bug::OwnedAsVersion);
    let msg = failure(suite::owner_checked_delete_cannot_remove_a_later_instance(
        &s,
    ))
    .await;
    assert!(msg.is_some_and(|m| m.contains("Conflict")));
    // The same store passes the checks it does not break.
    suite::transactions_are_all_or_nothing(&s).await;
}

#[tokio::test]
async fn a_non_atomic_transaction_is_caught() {
    let s = subject(Bug::NotAtomic);
    let msg = failure(suite::transactions_are_all_or_nothing(&s)).await;
    assert!(msg.is_some_and(|m| m.contains("not applied")));
}

#[tokio::test]
async fn a_store_that_expires_sessions_early_is_caught() {
    let s = subject(Bug::EarlyExpiry);
    let msg = failure(suite::sessions_live_their_granted_ttl(&s)).await;
    assert!(msg.is_some_and(|m| m.contains("expired before")));
}

#[tokio::test]
async fn a_silent_watch_is_caught() {
    let s = subject(Bug::SilentWatch);
    let msg = failure(suite::watch_notifies_changes_and_listings_are_current(&s)).await;
    assert!(msg.is_some_and(|m| m.contains("no notification")));
}

#[tokio::test]
async fn a_watch_that_loses_wake_ups_across_a_reconnect_is_caught() {
    let s = subject(Bug::NoResetOnReconnect);
    let msg = failure(suite::watch_wakes_up_after_a_reconnect(&s)).await;
    assert!(msg.is_some_and(|m| m.contains("no wake-up")));
    // It still notifies ordinary changes.
    suite::watch_notifies_changes_and_listings_are_current(&s).await;
}
