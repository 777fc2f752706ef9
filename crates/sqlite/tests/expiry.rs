//! Session expiry runs on the host's CLOCK_BOOTTIME and boot id, never on a wall clock
//! (PITFALLS 4–5).
//!
//! Why a wall-clock step cannot shorten a session: the only instants the store compares are
//! `sessions.expires_ns` and "now", and both are CLOCK_BOOTTIME readings (set by the keepalive
//! under the write lock, read by every reaper under the write lock). No step of
//! CLOCK_REALTIME (NTP, `date -s`, a VM resuming with a corrected clock) moves CLOCK_BOOTTIME,
//! so such a step changes neither side of the comparison. The wall-clock columns
//! (`renewed_wall_ms`, `created_wall_ms`) exist for people reading the table; the tests below
//! show that rewriting them to any value changes nothing, that `expires_ns` is a BOOTTIME
//! instant, and that rows of another boot (where BOOTTIME instants mean nothing) are expired.
//! `tests/processes.rs` shows processes with shifted BOOTTIME (time namespaces) agreeing.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use rebalanser_core::SessionId;
use rebalanser_sqlite::SqliteStore;
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, WatchEvent};
use rusqlite::Connection;

mod common;
use common::{boottime_ns, create, expires_ns, get, keepalive, new_store};

/// Opens a session, and checks that the TTL granted is the one asked.
async fn open_session(store: &SqliteStore, ttl: Duration) -> SessionId {
    let (session, t) = common::open_session_granted(store, ttl).await;
    assert_eq!(t, ttl, "the TTL granted is the one asked");
    session
}

async fn present(store: &SqliteStore, key: &str) -> bool {
    get(store, key).await.is_some()
}

fn raw(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

fn session_rows(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_a_boottime_instant() {
    let (_dir, path, store) = new_store("t.db");
    let ttl = Duration::from_secs(7);
    let before = boottime_ns();
    let s = open_session(&store, ttl).await;
    let after = boottime_ns();
    let (expires, boot): (i64, String) = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT expires_ns, boot_id FROM sessions WHERE id = ?1",
            [s.0 as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let ttl_ns = ttl.as_nanos() as i64;
    assert!(
        (before + ttl_ns..=after + ttl_ns).contains(&expires),
        "expires_ns {expires} is not BOOTTIME + TTL ({before}..{after} + {ttl_ns})"
    );
    assert_eq!(
        boot,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_stored_wall_time_changes_nothing() {
    let (_dir, path, store) = new_store("t.db");
    let ttl = Duration::from_millis(600);
    let s = open_session(&store, ttl).await;
    create(&store, "ns/k", Some(s)).await.unwrap();
    // Wall time as if the clock had jumped a year ahead, then to the epoch.
    for wall in [i64::MAX / 2, 0, -1] {
        raw(
            &path,
            &format!("UPDATE sessions SET renewed_wall_ms = {wall}; UPDATE meta SET created_wall_ms = {wall};"),
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            present(&store, "ns/k").await,
            "expired after wall time {wall}"
        );
        let r = keepalive(&store, s).await;
        assert!(matches!(r, Ok(StoreReply::KeptAlive { .. })), "{r:?}");
    }
    // Far-future wall time does not keep the session alive either: it expires on BOOTTIME.
    raw(
        &path,
        &format!("UPDATE sessions SET renewed_wall_ms = {};", i64::MAX / 2),
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(!present(&store, "ns/k").await, "alive past its TTL");
    let r = keepalive(&store, s).await;
    assert_eq!(r, Err(StoreError::SessionExpired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_another_boot_is_expired_at_once_and_notified() {
    let (_dir, path, store) = new_store("t.db");
    let s = open_session(&store, Duration::from_secs(600)).await;
    let keep = open_session(&store, Duration::from_secs(600)).await;
    create(&store, "ns/old", Some(s)).await.unwrap();
    create(&store, "ns/kept", Some(keep)).await.unwrap();
    let mut watch = store.watch("ns/".into());
    assert_eq!(watch.next().await, Some(WatchEvent::Reset));
    // As if the file had outlived a reboot: BOOTTIME instants of that boot mean nothing,
    // however far ahead they are.
    raw(
        &path,
        &format!(
            "UPDATE sessions SET boot_id = '00000000-0000-0000-0000-000000000000', \
             expires_ns = {} WHERE id = {};",
            i64::MAX / 2,
            s.0
        ),
    );
    assert!(!present(&store, "ns/old").await, "hidden at once");
    assert!(present(&store, "ns/kept").await);
    // The poller reaps it (nobody writes) and wakes the watch.
    let ev = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
    assert_eq!(ev, Ok(Some(WatchEvent::Changed)));
    assert_eq!(session_rows(&path), 1, "reaped");
    let r = keepalive(&store, s).await;
    assert_eq!(r, Err(StoreError::SessionExpired));
    assert_eq!(
        create(&store, "ns/late", Some(s)).await,
        Err(StoreError::SessionExpired)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_never_revived() {
    let (_dir, path, store) = new_store("t.db");
    let s = open_session(&store, Duration::from_millis(100)).await;
    create(&store, "ns/k", Some(s)).await.unwrap();
    // No watch, no writes: nobody reaps, the row stays, and reads already hide its key.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(session_rows(&path), 1, "not reaped yet");
    assert!(!present(&store, "ns/k").await);
    // A late keepalive finds it expired (the conditional UPDATE), and reaps it.
    let r = keepalive(&store, s).await;
    assert_eq!(r, Err(StoreError::SessionExpired));
    assert_eq!(session_rows(&path), 0);
    // Even a row that is somehow still there but expired is not renewed: only the
    // conditional UPDATE decides.
    let t = open_session(&store, Duration::from_millis(100)).await;
    raw(
        &path,
        "CREATE TRIGGER no_reap BEFORE DELETE ON sessions BEGIN SELECT RAISE(IGNORE); END;",
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = keepalive(&store, t).await;
    assert_eq!(r, Err(StoreError::SessionExpired));
    assert!(
        expires_ns(&path, t) < boottime_ns(),
        "the expired row was renewed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_keepalive_of_unknown_sessions_match_the_model() {
    let (_dir, path, store) = new_store("t.db");
    for session in [SessionId(424242), SessionId(u64::MAX)] {
        assert_eq!(
            store.execute(StoreOp::KeepAlive { session }).await,
            Err(StoreError::SessionExpired)
        );
        assert_eq!(
            store.execute(StoreOp::CloseSession { session }).await,
            Ok(StoreReply::Closed)
        );
        assert_eq!(
            create(&store, "ns/x", Some(session)).await,
            Err(StoreError::SessionExpired)
        );
    }
    // Session ids are never reused, even after the newest one is closed.
    let a = open_session(&store, Duration::from_secs(5)).await;
    store
        .execute(StoreOp::CloseSession { session: a })
        .await
        .unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let b = open_session(&store, Duration::from_secs(5)).await;
    assert!(b.0 > a.0, "{b:?} after {a:?}");
}
