//! An in-process store over [`MemModel`]: for tests, examples and `memory://name` URLs.
//! Sessions expire on a real monotonic clock, checked on every operation and by a reaper
//! task, so watchers learn of expiries without polling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use rebalanser_core::ids::Time;
use rebalanser_core::store::{Key, StoreError, StoreOp, StoreResult};
use rebalanser_core::SessionId;
use tokio::sync::broadcast;

use crate::model::{MemModel, ModelConfig};
use crate::{BoxFuture, SessionInfo, Store, WatchEvent};

/// How often the reaper checks for expired sessions (the store's expiry granularity).
const REAP_INTERVAL: Duration = Duration::from_millis(20);

struct Inner {
    name: String,
    origin: Instant,
    model: Mutex<MemModel>,
    /// The keys each operation changed, shared by every watch (a copy per watch was most of
    /// a 1,000-member process's time, issue 10).
    changes: broadcast::Sender<Arc<Vec<Key>>>,
    /// While set, change notifications are lost, as on a real store whose client connection
    /// is down; clearing it tells every watch to re-read, as a real client does on reconnect.
    watches_cut: AtomicBool,
    reconnects: broadcast::Sender<()>,
}

/// An in-memory store. Cloning shares the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Weak<Inner>>> {
    static R: OnceLock<Mutex<BTreeMap<String, Weak<Inner>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl MemoryStore {
    /// A fresh, unnamed store.
    pub fn new() -> MemoryStore {
        Self::with_config("anonymous", ModelConfig::default())
    }

    pub fn with_config(name: &str, cfg: ModelConfig) -> MemoryStore {
        let (changes, _) = broadcast::channel(1024);
        let (reconnects, _) = broadcast::channel(16);
        let inner = Arc::new(Inner {
            name: name.to_string(),
            origin: Instant::now(),
            model: Mutex::new({
                let mut m = MemModel::new(cfg);
                m.record_changes();
                m
            }),
            changes,
            watches_cut: AtomicBool::new(false),
            reconnects,
        });
        let store = MemoryStore { inner };
        store.spawn_reaper();
        store
    }

    /// The store named `name` in this process (`memory://name`): created on first use, shared
    /// while any handle to it lives.
    pub fn named(name: &str) -> MemoryStore {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = reg.get(name).and_then(Weak::upgrade) {
            return MemoryStore { inner };
        }
        let s = Self::with_config(name, ModelConfig::default());
        reg.insert(name.to_string(), Arc::downgrade(&s.inner));
        s
    }

    fn now(&self) -> Time {
        Time::from_duration(self.inner.origin.elapsed())
    }

    fn spawn_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: expiry is still applied lazily on every operation
        };
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = MemoryStore { inner };
                store.reap();
            }
        });
    }

    fn reap(&self) {
        let now = self.now();
        let mut m = self.lock();
        m.expire(now);
        let gone = m.take_changes();
        drop(m);
        if !gone.is_empty() {
            let _ = self.inner.changes.send(Arc::new(gone));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemModel> {
        // A panic while holding the lock cannot leave the model half-applied: `apply` only
        // mutates after all checks passed. Keep serving.
        self.inner.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an operation synchronously.
    pub fn apply(&self, op: &StoreOp) -> StoreResult {
        let now = self.now();
        let mut m = self.lock();
        let res = m.apply(now, op);
        // What this op changed, and what expired on the way: O(what changed).
        let changed = m.take_changes();
        drop(m);
        if !changed.is_empty() {
            let _ = self.inner.changes.send(Arc::new(changed));
        }
        res
    }

    /// Cuts every watch off: notifications are lost until [`MemoryStore::restore_watches`].
    pub fn cut_watches(&self) {
        self.inner.watches_cut.store(true, Ordering::SeqCst);
    }

    /// Reconnects the watches: each reports `Reset`, since what happened meanwhile is lost.
    pub fn restore_watches(&self) {
        self.inner.watches_cut.store(false, Ordering::SeqCst);
        let _ = self.inner.reconnects.send(());
    }

    /// Direct access to the model, for tests that must inspect or corrupt it.
    pub fn with_model<T>(&self, f: impl FnOnce(&mut MemModel) -> T) -> T {
        f(&mut self.lock())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        let res = self.apply(&op);
        Box::pin(async move { res })
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        let rx = self.inner.changes.subscribe();
        let reconnects = self.inner.reconnects.subscribe();
        let inner = Arc::downgrade(&self.inner);
        futures::stream::unfold(
            (rx, reconnects, prefix),
            move |(mut rx, mut reconnects, prefix)| {
                let inner = inner.clone();
                async move {
                    loop {
                        let cut = || {
                            inner
                                .upgrade()
                                .is_some_and(|i| i.watches_cut.load(Ordering::SeqCst))
                        };
                        tokio::select! {
                            r = rx.recv() => match r {
                                Ok(_) if cut() => continue,
                                Ok(keys) => {
                                    let mine: Vec<Key> = keys
                                        .iter()
                                        .filter(|k| k.starts_with(&prefix))
                                        .cloned()
                                        .collect();
                                    if mine.is_empty() {
                                        continue;
                                    }
                                    let ev = WatchEvent::Keys(mine);
                                    return Some((ev, (rx, reconnects, prefix)));
                                }
                                Err(broadcast::error::RecvError::Lagged(_)) => {
                                    return Some((WatchEvent::Reset, (rx, reconnects, prefix)))
                                }
                                Err(broadcast::error::RecvError::Closed) => return None,
                            },
                            r = reconnects.recv() => match r {
                                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                                    return Some((WatchEvent::Reset, (rx, reconnects, prefix)))
                                }
                                Err(broadcast::error::RecvError::Closed) => return None,
                            },
                        }
                    }
                }
            },
        )
        .boxed()
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    /// From the model: a session expires `ttl` after the store last heard from it, so the
    /// time since then is the TTL minus the time left.
    fn session_info(
        &self,
        sessions: Vec<SessionId>,
    ) -> BoxFuture<'_, Result<BTreeMap<SessionId, SessionInfo>, StoreError>> {
        let now = self.now();
        let mut m = self.lock();
        // What is past its expiry but not reaped yet is not alive: apply expiry first.
        m.expire(now);
        let info = sessions
            .into_iter()
            .filter_map(|s| {
                let (at, ttl) = (m.expires_at(s)?, m.session_ttl(s)?);
                let left = at.saturating_since(now);
                Some((s, SessionInfo::new(ttl.saturating_sub(left), left)))
            })
            .collect();
        let gone = m.take_changes();
        drop(m);
        if !gone.is_empty() {
            let _ = self.inner.changes.send(Arc::new(gone));
        }
        Box::pin(async move { Ok(info) })
    }

    /// A keepalive is applied by the one authority that expires sessions.
    fn keepalive_proves_previous(&self) -> bool {
        false
    }

    /// Five reaper intervals: expiry is checked every 20 ms, and tokio's timers tick in
    /// milliseconds. Measured (tests/session_ttl.rs in `rebalanser`, two members, CLI
    /// timings): sessions lost at a 20 ms TTL, none from 50 ms up.
    fn min_session_ttl(&self) -> Duration {
        REAP_INTERVAL * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_info_tells_time_since_keepalive_and_until_expiry() {
        let store = MemoryStore::new();
        let open = store
            .execute(StoreOp::OpenSession {
                ttl: Duration::from_millis(400),
            })
            .await
            .expect("open");
        let crate::StoreReply::Session { session, .. } = open else {
            panic!("{open:?}")
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info = store.session_info(vec![session]).await.expect("info");
        let i = info[&session];
        assert!(i.since_keepalive >= Duration::from_millis(100), "{i:?}");
        assert!(i.expires_in <= Duration::from_millis(300), "{i:?}");
        assert_eq!(i.since_keepalive + i.expires_in, Duration::from_millis(400));
        store
            .execute(StoreOp::KeepAlive { session })
            .await
            .expect("keepalive");
        let i = store.session_info(vec![session]).await.expect("info")[&session];
        assert!(i.since_keepalive < Duration::from_millis(50), "{i:?}");
        // Past its expiry (not reaped yet): not reported.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let info = store.session_info(vec![session]).await.expect("info");
        assert!(info.is_empty(), "{info:?}");
    }
}
