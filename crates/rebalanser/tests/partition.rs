//! A member cut off from the store stops before its deadline; the others take over only after
//! its session expired; healed, it rejoins with a new session.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fast, group, url, wait_balanced, Monitor, Worker};
use futures::stream::BoxStream;
use rebalanser::{Member, MemberEvent, MemoryStore, Store};
use rebalanser_store::{BoxFuture, StoreOp, StoreResult, WatchEvent};

/// A store whose operations never answer while `cut` is set, like a partitioned network.
struct Partition {
    inner: Arc<dyn Store>,
    cut: Arc<AtomicBool>,
}

impl Store for Partition {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        if self.cut.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.inner.execute(op)
    }
    fn watch(&self, prefix: String) -> BoxStream<'static, WatchEvent> {
        self.inner.watch(prefix)
    }
    fn describe(&self) -> String {
        format!("partition({})", self.inner.describe())
    }

    fn keepalive_proves_previous(&self) -> bool {
        false
    }

    fn min_session_ttl(&self) -> Duration {
        self.inner.min_session_ttl()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_member_stops_in_time_and_rejoins_after_healing() {
    common::logs();
    let ttl = Duration::from_secs(1);
    let url = url("partition");
    let admin = group(&url, 4).await;
    let mon = Monitor::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::named(url.trim_start_matches("memory://")));
    let cut = Arc::new(AtomicBool::new(false));
    let a = fast(Member::builder("g").name("a"), ttl)
        .store(Arc::new(Partition {
            inner: store,
            cut: cut.clone(),
        }))
        .join()
        .await
        .expect("join a");
    let mut a_events = a.events();
    let a = Worker::start(a, "a", &mon);
    let b = Worker::join(&url, "b", ttl, &mon).await;
    wait_balanced(&mon, &[("a", 2), ("b", 2)], Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let start = Instant::now();
    cut.store(true, Ordering::SeqCst);
    wait_balanced(&mon, &[("b", 4)], Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let moved = start.elapsed();
    assert!(
        moved >= ttl / 2,
        "moved after {moved:?}, before a's session expired"
    );
    mon.assert_clean();

    cut.store(false, Ordering::SeqCst);
    wait_balanced(&mon, &[("a", 2), ("b", 2)], Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    mon.assert_clean();

    let mut seen = Vec::new();
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(100), a_events.recv()).await
    {
        seen.push(s);
    }
    let count = |f: &dyn Fn(&MemberEvent) -> bool| seen.iter().filter(|s| f(s)).count();
    assert_eq!(
        count(&|s| matches!(s, MemberEvent::Suspended { .. })),
        1,
        "{seen:#?}"
    );
    assert_eq!(
        count(&|s| matches!(s, MemberEvent::SessionLost { .. })),
        1,
        "{seen:#?}"
    );
    assert_eq!(
        count(&|s| matches!(s, MemberEvent::Joined { .. })),
        2,
        "{seen:#?}"
    );
    assert_eq!(
        count(&|s| matches!(s, MemberEvent::StopDeadlineMissed { .. })),
        0,
        "the workers stopped on revoke: {seen:#?}"
    );
    let status = admin.status().await.expect("status");
    assert!(status.is_settled(), "{status:#?}");
    common::leave_all(vec![a, b]).await;
}
