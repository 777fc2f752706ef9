//! Opening a SQLite store can wait (another process holds the file's write lock: up to the
//! open timeout, 2 s). `MemberBuilder::join` does that wait on tokio's blocking pool, so the
//! other tasks of the runtime keep running, even on a current_thread runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebalanser::{Admin, Error, Member};

const TICK: Duration = Duration::from_millis(10);

/// Counts ticks of a task on this runtime: a count that stands still means the thread is
/// blocked.
fn ticker() -> Arc<AtomicU64> {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            t.fetch_add(1, Ordering::SeqCst);
        }
    });
    ticks
}

#[tokio::test(flavor = "current_thread")]
async fn a_join_waiting_for_a_locked_file_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("g.db");
    let url = format!("sqlite://{}", path.display());
    let admin = Admin::connect(&url, "g").expect("create the file");
    admin.create_group().await.expect("create the group");

    // Another process's transaction holds the write lock the open needs.
    let other = rusqlite::Connection::open(&path).expect("a second connection");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let ticks = ticker();
    tokio::time::sleep(TICK * 3).await;

    // Baseline: the same open called in place blocks the runtime's only thread for the
    // whole wait, so the ticker stands still. This is what the test would see if `join`
    // opened in place.
    let before = ticks.load(Ordering::SeqCst);
    let start = Instant::now();
    let direct = rebalanser::open_store(&url);
    let blocked_for = start.elapsed();
    assert!(
        matches!(direct, Err(Error::StoreOpen { .. })),
        "{:?}",
        direct.map(|s| s.describe())
    );
    assert!(blocked_for >= Duration::from_secs(1), "{blocked_for:?}");
    assert_eq!(ticks.load(Ordering::SeqCst), before, "the ticker ran");

    // `join` waits just as long, and the ticker keeps ticking meanwhile.
    let before = ticks.load(Ordering::SeqCst);
    let start = Instant::now();
    let joined = Member::builder("g").store_url(&url).join().await;
    let waited = start.elapsed();
    let ticked = ticks.load(Ordering::SeqCst) - before;
    match joined {
        Err(e @ Error::StoreOpen { .. }) => assert!(e.to_string().contains("g.db"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("joined on a file locked by another connection"),
    }
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    // A free thread ticks every 10 ms (plus timer granularity); half of that is plenty.
    let expected = waited.as_millis() as u64 / TICK.as_millis() as u64;
    assert!(
        ticked >= expected / 4,
        "{ticked} ticks in {waited:?}: the runtime was blocked"
    );

    // The lock released, the same join works.
    other.execute_batch("COMMIT").expect("release the lock");
    let m = Member::builder("g")
        .store_url(&url)
        .join()
        .await
        .expect("join once the file is free");
    m.leave().await.expect("leave");
}
