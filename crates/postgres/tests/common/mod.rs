//! Shared set-up of the PostgreSQL store's tests: unique schemas on the shared server and
//! store operations in one call each.
// Each test binary that declares `mod common;` uses only a subset of these helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rebalanser_core::SessionId;
use rebalanser_postgres::PostgresStore;
use rebalanser_store::{Entry, Store, StoreOp, StoreReply, StoreResult, Write};
use rebalanser_testkit::Postgres;

/// A schema name no other test of this run uses.
pub fn unique_schema(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The URL of `schema` on `pg`, connecting directly.
pub fn url(pg: &Postgres, schema: &str) -> String {
    format!("{}?schema={schema}", pg.url())
}

/// A store on a new schema of the shared server.
pub fn new_store(what: &str) -> (String, PostgresStore) {
    let schema = unique_schema(what);
    let store = PostgresStore::from_url(&url(Postgres::shared(), &schema)).expect("url");
    (schema, store)
}

/// Opens a session; returns it and the TTL granted.
pub async fn open_session(store: &dyn Store, ttl: Duration) -> (SessionId, Duration) {
    match store.execute(StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, ttl }) => (session, ttl),
        other => panic!("open session: {other:?}"),
    }
}

/// Creates `key` (value `v`), owned by `owner` if given.
pub async fn create(store: &dyn Store, key: &str, owner: Option<SessionId>) -> StoreResult {
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
pub async fn get(store: &dyn Store, key: &str) -> Option<Entry> {
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

pub async fn keepalive(store: &dyn Store, session: SessionId) -> StoreResult {
    store.execute(StoreOp::KeepAlive { session }).await
}
