//! The ZooKeeper backend of the Store contract (DESIGN §3; PITFALLS "Store mapping: ZooKeeper").
//!
//! Thin by rule: this crate maps [`StoreOp`]s onto ZooKeeper requests and ZooKeeper errors onto
//! [`StoreError`]s, and turns watch events into [`WatchEvent`]s. It holds no protocol logic.
//!
//! Mapping:
//! - A key `ns/a/b` is the znode `<chroot>/ns/a%2Fb`: flat under one persistent directory
//!   znode per namespace (a key's first component, the group), created on demand and never
//!   removed. A key is never a directory and a directory never a key, so no version check can
//!   be fooled by a znode re-created in a directory's place.
//! - A store session is a ZooKeeper session: one client connection per session; session-owned
//!   keys are ephemeral znodes created through that connection. A separate shared connection
//!   serves reads, watches and writes that no session owns.
//! - `KeepAlive` is a `multi` holding one `check` of the chroot: a write, so it is answered only
//!   after the leader has checked the session (a ping or a read is answered by whichever server
//!   the client is connected to, PITFALLS 1). It may still not prove the touch that reached the
//!   leader, so [`Store::keepalive_proves_previous`] is true.
//! - `Txn` is one `multi`. `Version` conditions are `check`s; `Absent` is a create followed by a
//!   delete of the same znode (fails atomically if it exists); `Owned` is a synced read of the
//!   znode's `ephemeralOwner` and `czxid` plus a `check` of its version, run on the owning
//!   session's own connection (see [`ZkStore`] for why that closes the ABA window). `Put` and
//!   `Delete` read the znode first and condition on what they saw, retrying when it changed.
//! - Revisions are zxids: `create_rev` = czxid, `mod_rev` = mzxid, and a listing's revision is
//!   the largest zxid of any znode in its snapshot, including the `pzxid` (last child change) of
//!   the namespace directory and of the chroot, so a delete moves it forward too.
//! - A listing is one `multiRead` (a consistent snapshot on one server) of the namespace's
//!   children and their data, repeated until the children it reveals are the ones it read.
//! - Connection loss while a write is in flight is `Indeterminate`; session expiry is
//!   `SessionExpired` and final for that session; only an answer from the server proves a write
//!   was not applied. Every reconnect of the shared connection re-arms the watches (the client
//!   library does not restore persistent ones) and reports `Reset`, because ZooKeeper does not
//!   replay missed events.

mod backoff;
mod connect;
mod error;
mod list;
mod multi;
mod path;
mod session;
mod txn;
mod url;
mod watch;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use rebalanser_core::store::key_error;
use rebalanser_core::SessionId;
use rebalanser_store::{
    BoxFuture, Key, Store, StoreError, StoreOp, StoreReply, StoreResult, WatchEvent,
};
use zookeeper_client as zk;

use crate::error::{read_err, shared_expiry};
use crate::path::{entry, path};

pub use url::{ZkUrl, ZkUrlError};

/// Settings of a [`ZkStore`] beyond its URL.
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// Bound on establishing one connection (all hosts tried).
    pub connect_timeout: Duration,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A Store on a ZooKeeper ensemble (3.6 or newer: persistent watches, `multiRead`, CREATE2).
///
/// `Cond::Owned` is a synced read of `ephemeralOwner`/`czxid` and a version `check`; ZooKeeper
/// cannot compare the owner inside a `multi`. It runs on the owning session's connection, so
/// between the read and the `multi` the znode can be replaced by another instance only if the
/// owner session itself deletes it (its own requests are applied in order, so not while this
/// one waits), if the session expires (then the `multi` fails with `SessionExpired`), or if a
/// third party deletes another session's ephemeral znode — which the protocol does only when a
/// static member takes its previous session's member record over. That transaction runs on
/// the new session's connection, so its `Owned` condition on the old session cannot tell the
/// record it read from one a racing instance of the same static member created in its place
/// (same version): the race replaces that record, whose instance is then told it was
/// replaced. Member records never decide who may access a resource (claims do).
///
/// Limits: a listing must fit one `multiRead` reply; groups of tens of thousands of keys need
/// sharded directories (not built). Timeout renegotiation on reconnect is not visible through
/// the client library: the servers of an ensemble must share `minSessionTimeout` and
/// `maxSessionTimeout` (then a reconnect can only be granted at least the timeout in force).
#[derive(Clone)]
pub struct ZkStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: ZkUrl,
    opts: ZkOptions,
    shared: tokio::sync::Mutex<Shared>,
    sessions: Mutex<HashMap<SessionId, zk::Client>>,
    /// Sessions being closed whose close is not confirmed yet: (credentials, timeout).
    closing: Mutex<HashMap<SessionId, (zk::SessionInfo, Duration)>>,
    /// Directories known to exist (so creates skip `mkdir`); cleared for a path on `NoNode`.
    dirs: Mutex<HashSet<String>>,
    /// The last tree shape seen per listed directory, to list it again in one round trip.
    shapes: Mutex<HashMap<String, BTreeSet<String>>>,
}

#[derive(Default)]
struct Shared {
    client: Option<zk::Client>,
    failures: u32,
    retry_at: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these mutexes stays consistent across a panic (single inserts/removes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ZkStore {
    /// A store for `url` (`zk://[user:password@]h1:p1,h2:p2[/chroot]`). Connects lazily: a bad
    /// URL fails here, an unreachable ensemble at the first operation.
    pub fn from_url(url: &str) -> Result<ZkStore, ZkUrlError> {
        Ok(ZkStore::new(ZkUrl::parse(url)?, ZkOptions::default()))
    }

    pub fn new(url: ZkUrl, opts: ZkOptions) -> ZkStore {
        ZkStore {
            inner: Arc::new(Inner {
                url,
                opts,
                shared: tokio::sync::Mutex::new(Shared::default()),
                sessions: Mutex::new(HashMap::new()),
                closing: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashSet::new()),
                shapes: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn url(&self) -> &ZkUrl {
        &self.inner.url
    }

    /// Forgets session `session` without closing it: the server stops hearing from it and
    /// expires it after its timeout, exactly as when the process holding it dies. For fault
    /// injection in tests (a "crashed" member inside a test process).
    pub fn abandon_session(&self, session: SessionId) {
        self.inner.abandon_session(session);
    }
}

impl Store for ZkStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        Box::pin(async move {
            let write = op.is_write();
            let r = self.inner.execute(op).await;
            if let Err(e) = &r {
                tracing::debug!(store = %self.inner.url, error = %e, write, "zk op failed");
            }
            r
        })
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        self.inner.clone().watch(prefix)
    }

    fn describe(&self) -> String {
        self.inner.url.to_string()
    }

    fn keepalive_proves_previous(&self) -> bool {
        // A follower forwards a write at once but reports session touches to the leader only
        // in its next ping reply; a keepalive answered through it proves only the one before.
        true
    }

    /// The server grants at least 2 × tickTime (4 s with the default tickTime of 2 s) and
    /// checks expiry once per tick, and a keepalive is a quorum write through the leader.
    /// 800 ms is the shortest session the ZooKeeper suites run (servers with tickTime 200 ms,
    /// i.e. four ticks); below it one tick's jitter is a quarter of the TTL and more.
    fn min_session_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(800)
    }
}

impl Inner {
    /// The shared connection for a read; synced first when the read must be linearizable.
    async fn reader(&self, linearizable: bool) -> Result<zk::Client, StoreError> {
        let c = self.shared().await?;
        if linearizable {
            c.sync("/").await.map_err(read_err)?;
        }
        Ok(c)
    }

    async fn execute(self: &Arc<Self>, op: StoreOp) -> StoreResult {
        match op {
            StoreOp::OpenSession { ttl } => self.open_session(ttl).await,
            StoreOp::KeepAlive { session } => self.keepalive(session).await,
            StoreOp::CloseSession { session } => self.close_session(session).await,
            StoreOp::Get { key, linearizable } => shared_expiry(
                async {
                    if let Some(e) = key_error(&key) {
                        return Err(StoreError::Invalid(e));
                    }
                    let c = self.reader(linearizable).await?;
                    match c.get_data(&path(&key)).await {
                        Ok((v, _)) if v.is_empty() => Ok(StoreReply::Got(None)),
                        Ok((v, stat)) => Ok(StoreReply::Got(Some(entry(v, &stat)))),
                        Err(zk::Error::NoNode) => Ok(StoreReply::Got(None)),
                        Err(e) => Err(read_err(e)),
                    }
                }
                .await,
            ),
            StoreOp::List {
                prefix,
                linearizable,
            } => shared_expiry(
                async {
                    let c = self.reader(linearizable).await?;
                    let (entries, rev) = self.list(&c, &prefix).await?;
                    Ok(StoreReply::Listed { entries, rev })
                }
                .await,
            ),
            StoreOp::Read {
                keys,
                prefixes,
                linearizable,
            } => shared_expiry(
                async {
                    let c = self.reader(linearizable).await?;
                    let (entries, rev) = self.read_many(&c, &keys, &prefixes).await?;
                    Ok(StoreReply::Listed { entries, rev })
                }
                .await,
            ),
            StoreOp::Txn { conds, writes } => {
                let (c, own) = self.txn_client(&conds, &writes).await?;
                let r = self.txn(&c, conds, writes).await;
                if own {
                    r
                } else {
                    shared_expiry(r)
                }
            }
        }
    }
}
