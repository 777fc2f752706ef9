//! Measured numbers (printed; run with `--nocapture`), with loose bounds so that a gross
//! regression fails: transaction and keepalive latency, change-notification latency between
//! two stores on one file, and how soon after its TTL an expiry is notified.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rebalanser_sqlite::SqliteStore;
use rebalanser_store::{Store, StoreOp, StoreReply, WatchEvent, Write};

fn create(key: String) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Create {
            key,
            value: b"value".to_vec(),
            owner: None,
        }],
    }
}

fn summary(name: &str, mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let p = |q: f64| xs[((xs.len() - 1) as f64 * q) as usize];
    let total: Duration = xs.iter().sum();
    eprintln!(
        "{name}: n={} p50={:?} p99={:?} max={:?} ({:.0}/s sequential)",
        xs.len(),
        p(0.5),
        p(0.99),
        xs[xs.len() - 1],
        xs.len() as f64 / total.as_secs_f64()
    );
    xs[xs.len() - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = SqliteStore::open(&path).unwrap();

    let mut txn = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        store.execute(create(format!("m/k{i}"))).await.unwrap();
        txn.push(t.elapsed());
    }
    summary("create txn (fsync per commit)", txn);

    let session = match store
        .execute(StoreOp::OpenSession {
            ttl: Duration::from_secs(10),
        })
        .await
    {
        Ok(StoreReply::Session { session, .. }) => session,
        other => panic!("{other:?}"),
    };
    let mut ka = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        store.execute(StoreOp::KeepAlive { session }).await.unwrap();
        ka.push(t.elapsed());
    }
    summary("keepalive", ka);

    let mut list = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        store
            .execute(StoreOp::List {
                prefix: "m/".into(),
                linearizable: true,
            })
            .await
            .unwrap();
        list.push(t.elapsed());
    }
    summary("list of 300 keys", list);

    // Notification latency: another store (own connections, own poller) writes.
    let writer = SqliteStore::open(&path).unwrap();
    let mut watch = store.watch("n/".into());
    assert_eq!(watch.next().await, Some(WatchEvent::Reset));
    let mut lat = Vec::new();
    for i in 0..60u64 {
        // Vary the phase against the poll interval.
        tokio::time::sleep(Duration::from_millis(7 * (i % 11))).await;
        writer.execute(create(format!("n/k{i}"))).await.unwrap();
        let t = Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
        assert_eq!(ev, Ok(Some(WatchEvent::Changed)), "write {i}");
        lat.push(t.elapsed());
    }
    let worst = summary("notification after the writer's commit reply", lat);
    assert!(worst < Duration::from_millis(500), "{worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_notification_lag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut watch = store.watch("e/".into());
    assert_eq!(watch.next().await, Some(WatchEvent::Reset));
    let ttl = Duration::from_millis(200);
    let mut lags = Vec::new();
    for i in 0..10 {
        let sent = Instant::now();
        let session = match store.execute(StoreOp::OpenSession { ttl }).await {
            Ok(StoreReply::Session { session, .. }) => session,
            other => panic!("{other:?}"),
        };
        let r = store
            .execute(StoreOp::Txn {
                conds: vec![],
                writes: vec![Write::Create {
                    key: format!("e/k{i}"),
                    value: b"v".to_vec(),
                    owner: Some(session),
                }],
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        // Drain the create's own notification.
        let ev = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
        assert_eq!(ev, Ok(Some(WatchEvent::Changed)));
        let ev = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
        assert_eq!(ev, Ok(Some(WatchEvent::Changed)), "expiry {i} notified");
        let at = sent.elapsed();
        assert!(
            at >= ttl,
            "notified {at:?} after open, before the {ttl:?} TTL"
        );
        lags.push(at - ttl);
    }
    let worst = summary("expiry notified after the TTL (no writes)", lags);
    assert!(worst < Duration::from_millis(500), "{worst:?}");
}
