//! Shared set-up of the SQLite store's tests (`expiry`, `redteam`, `replaced`): a store on a
//! fresh file, store operations in one call each, and the session table read directly.
// Each test binary that declares `mod common;` uses only a subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rebalanser_core::SessionId;
use rebalanser_sqlite::SqliteStore;
use rebalanser_store::{Entry, Store, StoreOp, StoreReply, StoreResult, Write};
use rusqlite::Connection;

/// CLOCK_BOOTTIME now (ns), the clock the store's `expires_ns` is on.
pub fn boottime_ns() -> i64 {
    rebalanser_testkit::boottime_ns() as i64
}

/// A store on a new database `file` in a new temporary directory, which lives as long as the
/// returned guard: keep it (`_dir`, not `_`).
pub fn new_store(file: &str) -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    let store = SqliteStore::open(&path).unwrap();
    (dir, path, store)
}

/// Opens a session; returns it and the TTL granted.
pub async fn open_session_granted(store: &SqliteStore, ttl: Duration) -> (SessionId, Duration) {
    match store.execute(StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, ttl }) => (session, ttl),
        other => panic!("open session: {other:?}"),
    }
}

/// Opens a session, whatever TTL is granted.
pub async fn open_session(store: &SqliteStore, ttl: Duration) -> SessionId {
    open_session_granted(store, ttl).await.0
}

/// Creates `key` (value `v`), owned by `owner` if given.
pub async fn create(store: &SqliteStore, key: &str, owner: Option<SessionId>) -> StoreResult {
    store
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: key.into(),
                value: b"v".to_vec(),
                owner,
            }],
        })
        .await
}

/// A linearizable `Get` that must succeed.
pub async fn get(store: &SqliteStore, key: &str) -> Option<Entry> {
    match store
        .execute(StoreOp::Get {
            key: key.into(),
            linearizable: true,
        })
        .await
    {
        Ok(StoreReply::Got(e)) => e,
        other => panic!("get {key}: {other:?}"),
    }
}

pub async fn keepalive(store: &SqliteStore, s: SessionId) -> StoreResult {
    store.execute(StoreOp::KeepAlive { session: s }).await
}

/// The `expires_ns` of session `s`, read from the file at `path`.
pub fn expires_ns(path: &Path, s: SessionId) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT expires_ns FROM sessions WHERE id = ?1",
            [s.0 as i64],
            |r| r.get(0),
        )
        .unwrap()
}
