//! Shared fixtures of the ZooKeeper backend's red-team tests (`redteam`, `redteam2`): stores on
//! the shared test server (direct or through a fault proxy), store operations in one call each,
//! and `step`, which drives a hand-held `execute` future one round trip at a time.
// Each test binary that declares `mod common;` uses only a subset of these helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rebalanser_core::SessionId;
use rebalanser_store::{BoxFuture, Entry, Store, StoreOp, StoreReply, StoreResult, Write};
use rebalanser_testkit::{FaultProxy, ZkEnsemble};
use rebalanser_zk::ZkStore;

/// A chroot no other test (of this binary or another) uses: `/BINARY-TAG-PID-N`.
pub fn chroot(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/{}-{tag}-{}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store straight to the shared server (tickTime 200 ms, sessions 0.4 s ..= 4 s).
pub fn direct(chroot: &str) -> ZkStore {
    let zk = ZkEnsemble::shared();
    ZkStore::from_url(&format!("zk://{}{chroot}", zk.connect_string())).expect("url")
}

/// A store through a fault proxy in front of the shared server.
pub fn proxied(chroot: &str) -> (ZkStore, Arc<FaultProxy>) {
    let zk = ZkEnsemble::shared();
    let proxy = Arc::new(FaultProxy::start(zk.client_addr(0)).expect("proxy"));
    let store = ZkStore::from_url(&format!("zk://{}{chroot}", proxy.addr())).expect("url");
    (store, proxy)
}

pub async fn exec(s: &ZkStore, op: StoreOp) -> StoreResult {
    s.execute(op).await
}

pub fn txn(writes: Vec<Write>) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes,
    }
}

pub fn create_w(key: &str, owner: Option<SessionId>) -> Write {
    Write::Create {
        key: key.to_string(),
        value: b"v".to_vec(),
        owner,
    }
}

/// A transaction that creates `key` (value `v`), owned by `owner` if given.
pub fn create(key: &str, owner: Option<SessionId>) -> StoreOp {
    txn(vec![create_w(key, owner)])
}

pub fn put(key: &str, value: &[u8]) -> Write {
    Write::Put {
        key: key.to_string(),
        value: value.to_vec(),
    }
}

pub fn delete(key: &str) -> Write {
    Write::Delete {
        key: key.to_string(),
    }
}

/// Opens a session; returns it and the TTL granted.
pub async fn open(s: &ZkStore, ttl: Duration) -> (SessionId, Duration) {
    match exec(s, StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, ttl }) => (session, ttl),
        other => panic!("OpenSession: {other:?}"),
    }
}

/// A linearizable `Get`, its result as it comes.
pub async fn try_get(s: &ZkStore, key: &str) -> StoreResult {
    exec(
        s,
        StoreOp::Get {
            key: key.to_string(),
            linearizable: true,
        },
    )
    .await
}

/// A linearizable `Get` that must succeed.
pub async fn get(s: &ZkStore, key: &str) -> Option<Entry> {
    match try_get(s, key).await {
        Ok(StoreReply::Got(e)) => e,
        other => panic!("Get {key}: {other:?}"),
    }
}

/// A linearizable `List`, its result as it comes.
pub async fn list(s: &ZkStore, prefix: &str) -> StoreResult {
    exec(
        s,
        StoreOp::List {
            prefix: prefix.to_string(),
            linearizable: true,
        },
    )
    .await
}

/// The revision of a commit; panics on any other result.
pub fn committed(r: &StoreResult, what: &str) -> u64 {
    match r {
        Ok(StoreReply::Committed { rev }) => *rev,
        other => panic!("{what}: expected a commit, got {other:?}"),
    }
}

/// One round trip of a hand-driven `execute`: poll once; if it is still pending, give the
/// request it just sent time to be answered. Returns the result once it is ready.
pub async fn step(f: &mut BoxFuture<'_, StoreResult>) -> Option<StoreResult> {
    match futures::poll!(f) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            None
        }
    }
}

/// Drives `f` `n` round trips (or until it completes).
pub async fn steps(f: &mut BoxFuture<'_, StoreResult>, n: usize) -> Option<StoreResult> {
    for _ in 0..n {
        if let Some(r) = step(f).await {
            return Some(r);
        }
    }
    None
}
