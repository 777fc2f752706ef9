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

mod url;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_core::store::{key_error, txn_size_error, value_error};
use rebalanser_core::SessionId;
use rebalanser_store::{
    BoxFuture, Cond, Entry, Key, Store, StoreError, StoreOp, StoreReply, StoreResult, WatchEvent,
    Write,
};
use zookeeper_client as zk;

pub use url::{ZkUrl, ZkUrlError};

/// How long the shared connection's session lives without the server hearing from it. It owns
/// no keys, so its length only bounds how long a dead process's watches linger.
const SHARED_SESSION_TTL: Duration = Duration::from_secs(10);
/// Attempts of one transaction whose reads were overtaken by a concurrent change (not a failed
/// condition: that is a `Conflict` at once).
const TXN_ATTEMPTS: usize = 8;
/// Rounds of a listing whose set of keys keeps changing under it.
const LIST_ATTEMPTS: usize = 8;
/// Budget of one listing request, well under ZooKeeper's 1 MiB request limit, and the
/// per-read encoding overhead counted against it.
const LIST_REQUEST_BYTES: usize = 256 * 1024;
const LIST_OP_OVERHEAD: usize = 16;
/// Reconnect backoff of the shared connection: doubled from the first to the last, ±50 % jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);

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
/// third party deletes another session's ephemeral znode — which the protocol never does.
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
}

/// A ZooKeeper error on a read: nothing was applied, so anything transient is `Unavailable`.
fn read_err(e: zk::Error) -> StoreError {
    match e {
        zk::Error::SessionExpired => StoreError::SessionExpired,
        zk::Error::NoAuth | zk::Error::AuthFailed => {
            StoreError::Invalid(format!("not authorized: {e}"))
        }
        zk::Error::BadArguments(_) => StoreError::Invalid(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// A ZooKeeper error on a write. Only an answer from the server proves that nothing was
/// applied; anything the client library reports on its own (a lost or silent connection, a
/// timeout, a closed client, an undecodable reply) may have followed an applied write.
fn write_err(e: zk::Error) -> StoreError {
    match e {
        zk::Error::NoNode
        | zk::Error::NoAuth
        | zk::Error::AuthFailed
        | zk::Error::BadVersion
        | zk::Error::NoChildrenForEphemerals
        | zk::Error::NodeExists
        | zk::Error::NotEmpty
        | zk::Error::InvalidAcl
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::NotReadOnly
        | zk::Error::QuotaExceeded
        | zk::Error::Throttled
        | zk::Error::MarshallingError
        | zk::Error::BadArguments(_)
        | zk::Error::Unimplemented => read_err(e),
        e => StoreError::Indeterminate(e.to_string()),
    }
}

/// The znode path of a key (relative to the chroot): `ns/a/b` is the znode `/ns/a%2Fb`. Keys
/// are flat under one directory znode per namespace (their first component), so a key is never
/// a directory and a directory is never a key: no directory ever needs removing, and no key can
/// be created where a directory was (which would defeat version checks: a re-created znode
/// restarts at version 0).
fn path(key: &str) -> String {
    let (ns, rest) = key.split_once('/').unwrap_or((key, ""));
    format!("/{ns}/{}", escape(rest))
}

/// The key of the znode `name` in namespace `ns`; `None` for a name this store never writes.
fn key_of(ns: &str, name: &str) -> Option<String> {
    Some(format!("{ns}/{}", unescape(name)?))
}

/// `%` → `%25`, `/` → `%2F`: bijective, and the only characters a znode name cannot hold as-is
/// (besides the ones keys may not contain at all).
fn escape(rest: &str) -> String {
    rest.replace('%', "%25").replace('/', "%2F")
}

fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut it = name.split('%');
    out.push_str(it.next()?);
    for part in it {
        if let Some(r) = part.strip_prefix("25") {
            out.push('%');
            out.push_str(r);
        } else if let Some(r) = part.strip_prefix("2F") {
            out.push('/');
            out.push_str(r);
        } else {
            return None;
        }
    }
    Some(out)
}

/// The namespace directory of a znode path.
fn dir_of(p: &str) -> String {
    match p[1..].find('/') {
        Some(i) => p[..i + 1].to_string(),
        None => "/".to_string(),
    }
}

fn zxid(z: i64) -> u64 {
    u64::try_from(z).unwrap_or(0)
}

fn entry(value: Vec<u8>, stat: &zk::Stat) -> Entry {
    Entry {
        value,
        version: u64::try_from(stat.version).unwrap_or(0),
        create_rev: zxid(stat.czxid),
        mod_rev: zxid(stat.mzxid),
        // Session ids are signed in ZooKeeper (the server id sits in the top byte); the cast
        // is a bijection, and `open_session` uses the same one.
        owner: (stat.ephemeral_owner != 0).then_some(SessionId(stat.ephemeral_owner as u64)),
    }
}

/// The largest zxid a stat shows: creation, last data change, last child change.
fn stat_rev(stat: &zk::Stat) -> u64 {
    zxid(stat.czxid.max(stat.mzxid).max(stat.pzxid))
}

fn is_terminal(s: zk::SessionState) -> bool {
    matches!(
        s,
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

/// What the read phase of a transaction saw at a key's znode.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Absent,
    Key(zk::Stat),
}

/// Why an op of a `multi` is there, to map its failure back.
#[derive(Debug, Clone)]
enum Origin {
    /// A `Version` or `Owned` condition: its failure is `Conflict`.
    Cond(String),
    /// The create that checks an `Absent` condition: `NodeExists` is `Conflict`.
    Absent(String),
    /// A `Create` of the transaction: `NodeExists` is `Conflict`.
    Create(String),
    /// An assumption from the read phase: its failure means "read again and retry".
    Guess,
}

impl Inner {
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
                    let c = self.shared().await?;
                    if linearizable {
                        c.sync("/").await.map_err(read_err)?;
                    }
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
                    let c = self.shared().await?;
                    if linearizable {
                        c.sync("/").await.map_err(read_err)?;
                    }
                    let (entries, rev) = self.list(&c, &prefix).await?;
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

    /// Why `key` cannot live in this store beyond the contract's own rules: without a chroot,
    /// the namespace `zookeeper` is the server's own tree.
    fn reserved(&self, key: &str) -> Option<String> {
        let ns = key.split('/').next().unwrap_or(key);
        (self.url.chroot == "/" && ns == "zookeeper")
            .then(|| format!("{key:?}: the namespace `zookeeper` is ZooKeeper's own; use a chroot"))
    }

    fn connector(&self, ttl: Duration) -> zk::Connector {
        let c = zk::Client::connector()
            .with_session_timeout(ttl)
            .with_connection_timeout(self.opts.connect_timeout);
        match &self.url.digest {
            Some((user, password)) => {
                c.with_auth("digest", format!("{user}:{password}").as_bytes())
            }
            None => c,
        }
    }

    /// The ACL of every znode this store creates: all rights for our digest identity when
    /// credentials are configured (others can neither read nor write the group), open otherwise.
    fn create_options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'static> {
        match self.url.digest {
            Some(_) => mode.with_acls(zk::Acls::creator_all()),
            None => mode.with_acls(zk::Acls::anyone_all()),
        }
    }

    async fn connect(&self, ttl: Duration, chroot: bool) -> Result<zk::Client, StoreError> {
        self.connect_with(self.connector(ttl), chroot).await
    }

    async fn connect_with(
        &self,
        connector: zk::Connector,
        chroot: bool,
    ) -> Result<zk::Client, StoreError> {
        let mut cluster = self.url.connect_string();
        if chroot && self.url.chroot != "/" {
            cluster.push_str(&self.url.chroot);
        }
        let connect = connector.connect(&cluster);
        match tokio::time::timeout(self.opts.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(zk::Error::SessionExpired)) => Err(StoreError::SessionExpired),
            Ok(Err(e @ (zk::Error::AuthFailed | zk::Error::NoAuth))) => Err(StoreError::Invalid(
                format!("{}: authentication failed: {e}", self.url),
            )),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "cannot connect to {}: {e}",
                self.url
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to {} within {:?}",
                self.url, self.opts.connect_timeout
            ))),
        }
    }

    /// The shared connection, (re)connecting with backoff and jitter when it is gone. The
    /// chroot is created on first connect.
    async fn shared(&self) -> Result<zk::Client, StoreError> {
        let mut s = self.shared.lock().await;
        if let Some(c) = &s.client {
            if !is_terminal(c.state()) {
                return Ok(c.clone());
            }
            tracing::info!(store = %self.url, reason = "session ended", "zk shared connection lost; reconnecting");
            s.client = None;
        }
        if let Some(at) = s.retry_at {
            if Instant::now() < at {
                return Err(StoreError::Unavailable(format!(
                    "{}: reconnecting after {} failures",
                    self.url, s.failures
                )));
            }
        }
        match self.connect_shared().await {
            Ok(c) => {
                s.client = Some(c.clone());
                s.failures = 0;
                s.retry_at = None;
                Ok(c)
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                s.retry_at = Some(Instant::now() + backoff(s.failures));
                Err(e)
            }
        }
    }

    async fn connect_shared(&self) -> Result<zk::Client, StoreError> {
        if self.url.chroot != "/" {
            let root = self.connect(SHARED_SESSION_TTL, false).await?;
            let opts = self.create_options(zk::CreateMode::Persistent);
            root.mkdir(&self.url.chroot, &opts)
                .await
                .map_err(|e| match e {
                    zk::Error::NoAuth => StoreError::Invalid(format!(
                        "{}: not authorized to create the chroot",
                        self.url
                    )),
                    e => StoreError::Unavailable(format!("{}: creating the chroot: {e}", self.url)),
                })?;
        }
        self.connect(SHARED_SESSION_TTL, true).await
    }

    fn session_client(&self, s: SessionId) -> Result<zk::Client, StoreError> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(&s) {
            Some(c) if !is_terminal(c.state()) => Ok(c.clone()),
            Some(c) => {
                // Expired or closed as far as the client library knows; the library declares
                // expiry on its own after a silence, while a restarted ensemble may still hold
                // the session. Keep its credentials so `CloseSession` asks the server.
                lock(&self.closing).insert(s, (c.session().clone(), c.session_timeout()));
                sessions.remove(&s);
                Err(StoreError::SessionExpired)
            }
            // Not one of ours: closed, expired, or another process's.
            None => Err(StoreError::SessionExpired),
        }
    }

    async fn open_session(&self, ttl: Duration) -> StoreResult {
        // The chroot must exist before a chrooted session can use it.
        self.shared().await?;
        // Detached: a session whose handles are dropped without `CloseSession` (the member's
        // runtime died or abandoned it) expires after its timeout like a crashed process's,
        // instead of being closed by the library behind the protocol's back.
        let c = self
            .connect_with(self.connector(ttl).with_detached(), true)
            .await?;
        let id = SessionId(c.session_id().0 as u64);
        let granted = c.session_timeout();
        lock(&self.sessions).insert(id, c);
        tracing::debug!(store = %self.url, session = id.0, ttl = ?granted, "zk session opened");
        Ok(StoreReply::Session {
            session: id,
            ttl: granted,
        })
    }

    async fn keepalive(&self, s: SessionId) -> StoreResult {
        let c = self.session_client(s)?;
        let mut m = c.new_multi_writer();
        m.add_check_version("/", -1).map_err(read_err)?;
        match m.commit().await {
            Ok(_) => Ok(StoreReply::KeptAlive {
                ttl: c.session_timeout(),
            }),
            Err(e) => {
                let e = zk::Error::from(e);
                if e == zk::Error::SessionExpired {
                    // Possibly only the client library's verdict: keep the credentials so
                    // `CloseSession` asks the server (see `session_client`).
                    lock(&self.closing).insert(s, (c.session().clone(), c.session_timeout()));
                    lock(&self.sessions).remove(&s);
                }
                Err(write_err(e))
            }
        }
    }

    async fn close_session(&self, s: SessionId) -> StoreResult {
        // The session's own handle is detached, so dropping it closes nothing: drop it, attach
        // a handle to the same session and drop that. The server deletes the session's
        // ephemerals before it answers the close, and the client then reports `Closed`. The
        // session's credentials are kept until the close is confirmed, so a retry after an
        // unknown outcome closes again.
        let held = lock(&self.sessions).remove(&s);
        let (info, ttl) = match held {
            Some(c) => {
                let info = (c.session().clone(), c.session_timeout());
                drop(c);
                info
            }
            None => match lock(&self.closing).get(&s).cloned() {
                Some(info) => info,
                None => return Ok(StoreReply::Closed),
            },
        };
        lock(&self.closing).insert(s, (info.clone(), ttl));
        let closer = match self
            .connect_with(self.connector(ttl).with_session(info), true)
            .await
        {
            Ok(c) => c,
            // Already expired: its keys are gone too.
            Err(StoreError::SessionExpired) => {
                lock(&self.closing).remove(&s);
                return Ok(StoreReply::Closed);
            }
            Err(e) => return Err(StoreError::Indeterminate(format!("close: {e}"))),
        };
        let mut state = closer.state_watcher();
        drop(closer);
        if is_terminal(state.peek_state()) {
            lock(&self.closing).remove(&s);
            return Ok(StoreReply::Closed);
        }
        let done = async {
            loop {
                if is_terminal(state.changed().await) {
                    return;
                }
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, done).await {
            Ok(()) => {
                lock(&self.closing).remove(&s);
                Ok(StoreReply::Closed)
            }
            Err(_) => Err(StoreError::Indeterminate(format!(
                "{}: close of session {:#x} not confirmed",
                self.url, s.0
            ))),
        }
    }

    /// Drops the store's handle on session `s` without closing it: the server stops hearing
    /// from it and expires it after its timeout, as if its process had crashed. For fault
    /// injection in tests; the protocol closes sessions with `CloseSession`.
    fn abandon_session(&self, s: SessionId) {
        lock(&self.sessions).remove(&s);
    }

    /// Lists every key under `prefix` from one consistent snapshot.
    async fn list(
        &self,
        c: &zk::Client,
        prefix: &str,
    ) -> Result<(Vec<(Key, Entry)>, u64), StoreError> {
        if let Some((ns, _)) = prefix.split_once('/') {
            return self.list_ns(c, ns, prefix).await;
        }
        // The prefix ends inside a namespace name: every namespace it may start. (The
        // protocol always lists within one group; this keeps the contract whole.)
        let mut names = c.list_children("/").await.map_err(read_err)?;
        names.retain(|n| n.starts_with(prefix) && self.reserved(n).is_none());
        let (mut all, mut rev) = (Vec::new(), 0);
        for ns in names {
            let (entries, r) = self.list_ns(c, &ns, prefix).await?;
            all.extend(entries);
            rev = rev.max(r);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((all, rev))
    }

    /// Lists the keys of namespace `ns` under `prefix` with one `multiRead` (a snapshot on one
    /// server): the namespace's children and the data of those the previous round found,
    /// repeated until both agree. The last shape is cached, so a listing usually takes one
    /// round trip. The revision is the largest zxid in the snapshot, including the pzxid of
    /// the namespace directory and of the chroot, which deletes move forward too.
    async fn list_ns(
        &self,
        c: &zk::Client,
        ns: &str,
        prefix: &str,
    ) -> Result<(Vec<(Key, Entry)>, u64), StoreError> {
        if let Some(e) = key_error(&format!("{ns}/x")).or_else(|| self.reserved(ns)) {
            return Err(StoreError::Invalid(format!("prefix {prefix:?}: {e}")));
        }
        let dir = format!("/{ns}");
        let name_prefix = escape(prefix.split_once('/').map_or("", |(_, r)| r));
        let cache_key = format!("{dir}/{name_prefix}");
        let mut shape = lock(&self.shapes)
            .get(&cache_key)
            .cloned()
            .unwrap_or_default();
        for _ in 0..LIST_ATTEMPTS {
            // The names whose data each request reads: as many as fit one request (ZooKeeper
            // drops a connection whose request exceeds jute.maxbuffer, 1 MiB by default).
            let names: Vec<&String> = shape.iter().collect();
            let mut chunks: Vec<&[&String]> = Vec::new();
            let (mut start, mut bytes) = (0, 0);
            for (i, n) in names.iter().enumerate() {
                bytes += dir.len() + n.len() + LIST_OP_OVERHEAD;
                if bytes > LIST_REQUEST_BYTES && i > start {
                    chunks.push(&names[start..i]);
                    (start, bytes) = (i, dir.len() + n.len() + LIST_OP_OVERHEAD);
                }
            }
            chunks.push(&names[start..]);
            let mut r = c.new_multi_reader();
            r.add_get_data("/").map_err(read_err)?;
            r.add_get_data(&dir).map_err(read_err)?;
            r.add_get_children(&dir).map_err(read_err)?;
            for name in chunks[0] {
                r.add_get_data(&format!("{dir}/{name}")).map_err(read_err)?;
            }
            let mut results = r.commit().await.map_err(read_err)?.into_iter();
            let mut rev = 0;
            let mut dir_stat = None;
            for i in 0..2 {
                match results.next() {
                    Some(zk::MultiReadResult::Data { stat, .. }) => {
                        rev = rev.max(stat_rev(&stat));
                        if i == 1 {
                            dir_stat = Some(stat);
                        }
                    }
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => {}
                    other => return Err(unexpected(other)),
                }
            }
            let found: BTreeSet<String> = match results.next() {
                Some(zk::MultiReadResult::Children { children }) => children
                    .into_iter()
                    .filter(|n| n.starts_with(&name_prefix))
                    .collect(),
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }) => BTreeSet::new(),
                other => return Err(unexpected(other)),
            };
            let mut entries = Vec::new();
            let mut take = |ns: &str, name: &str, res: Option<zk::MultiReadResult>| {
                match res {
                    Some(zk::MultiReadResult::Data { data, stat }) => {
                        rev = rev.max(stat_rev(&stat));
                        // A name this store never writes (foreign, e.g. by hand) is skipped.
                        if let Some(key) = key_of(ns, name) {
                            entries.push((key, entry(data, &stat)));
                        }
                        Ok(())
                    }
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => Ok(()),
                    other => Err(unexpected(other)),
                }
            };
            for name in chunks[0] {
                take(ns, name, results.next())?;
            }
            // A namespace too large for one request is read in several: each key is then
            // current as of the listing, but one transaction's changes to several keys may be
            // seen half (the protocol conditions every write on the versions it read, so a torn
            // plan fails). The set of keys is still exact: the directory's child changes are
            // compared before and after.
            for chunk in &chunks[1..] {
                let mut r = c.new_multi_reader();
                for name in *chunk {
                    r.add_get_data(&format!("{dir}/{name}")).map_err(read_err)?;
                }
                for (name, res) in chunk.iter().zip(r.commit().await.map_err(read_err)?) {
                    take(ns, name, Some(res))?;
                }
            }
            let mut stable = true;
            if chunks.len() > 1 {
                let after = match c.check_stat(&dir).await {
                    Ok(st) => st,
                    Err(e) => return Err(read_err(e)),
                };
                stable =
                    after.map(|s| (s.pzxid, s.cversion)) == dir_stat.map(|s| (s.pzxid, s.cversion));
                if let Some(st) = after {
                    rev = rev.max(stat_rev(&st));
                }
            }
            if found == shape && stable {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                lock(&self.shapes).insert(cache_key, shape);
                return Ok((entries, rev));
            }
            // Children appeared or vanished since the shape was learnt: read the new one.
            shape = found;
        }
        Err(StoreError::Unavailable(format!(
            "{}: the keys under {prefix} kept changing during {LIST_ATTEMPTS} listing rounds",
            self.url
        )))
    }

    /// The client a transaction runs on: the session its owned creates and `Owned` conditions
    /// name (they must agree), else the shared connection.
    async fn txn_client(
        &self,
        conds: &[Cond],
        writes: &[Write],
    ) -> Result<(zk::Client, bool), StoreError> {
        let mut named = BTreeSet::new();
        let mut must_own = false;
        for w in writes {
            if let Write::Create { owner: Some(s), .. } = w {
                named.insert(*s);
                must_own = true;
            }
        }
        for c in conds {
            if let Cond::Owned { session, .. } = c {
                named.insert(*session);
            }
        }
        if named.len() > 1 {
            return Err(StoreError::Invalid(format!(
                "one transaction names several sessions: {named:?}"
            )));
        }
        match named.first() {
            Some(s) if must_own => Ok((self.session_client(*s)?, true)),
            Some(s) => match self.session_client(*s) {
                Ok(c) => Ok((c, true)),
                // `Owned` is exact only on the owner's own connection (see `ZkStore`). For a
                // session this store does not hold (closed, expired, abandoned, another
                // process's) it can only be refuted: a synced read showing another instance
                // or none is a `Conflict`; otherwise nothing can be decided here.
                Err(_) => {
                    let c = self.shared().await?;
                    c.sync("/").await.map_err(read_err)?;
                    for cond in conds {
                        if let Cond::Owned {
                            key,
                            session,
                            create_rev,
                        } = cond
                        {
                            let held = match c.check_stat(&path(key)).await {
                                Ok(Some(st)) => {
                                    st.ephemeral_owner as u64 == session.0
                                        && zxid(st.czxid) == *create_rev
                                }
                                Ok(None) => false,
                                Err(e) => return Err(shared_err(read_err(e))),
                            };
                            if !held {
                                return Err(StoreError::Conflict(format!("{cond:?}")));
                            }
                        }
                    }
                    Err(StoreError::Unavailable(format!(
                        "an ownership condition names session {:#x}, which this store does not hold",
                        s.0
                    )))
                }
            },
            None => Ok((self.shared().await?, false)),
        }
    }

    async fn txn(&self, c: &zk::Client, conds: Vec<Cond>, writes: Vec<Write>) -> StoreResult {
        for w in &writes {
            if let Some(e) = key_error(w.key()).or_else(|| self.reserved(w.key())) {
                return Err(StoreError::Invalid(e));
            }
            if let Write::Create { key, value, .. } | Write::Put { key, value } = w {
                if let Some(e) = value_error(key, value) {
                    return Err(StoreError::Invalid(e));
                }
            }
        }
        for c in &conds {
            if let Some(e) = key_error(cond_key(c)).or_else(|| self.reserved(cond_key(c))) {
                return Err(StoreError::Invalid(e));
            }
        }
        if let Some(e) = txn_size_error(&conds, &writes) {
            return Err(StoreError::Invalid(e));
        }
        let keys: BTreeSet<&str> = conds
            .iter()
            .map(cond_key)
            .chain(writes.iter().map(Write::key))
            .collect();
        for _ in 0..TXN_ATTEMPTS {
            // Read phase: what every key looks like now (synced, so an `Owned` check sees the
            // current instance).
            c.sync("/").await.map_err(read_err)?;
            let mut r = c.new_multi_reader();
            for k in &keys {
                r.add_get_data(&path(k)).map_err(read_err)?;
            }
            let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
            for (k, res) in keys.iter().zip(r.commit().await.map_err(read_err)?) {
                let s = match res {
                    zk::MultiReadResult::Data { stat, .. } => Seen::Key(stat),
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => Seen::Absent,
                    other => return Err(unexpected(Some(other))),
                };
                seen.insert(k, s);
            }
            if let Some(reply) = self.try_txn(c, &conds, &writes, &seen).await? {
                return Ok(reply);
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: keys kept changing during {TXN_ATTEMPTS} transaction attempts",
            self.url
        )))
    }

    /// One attempt: builds the `multi` from what the read phase saw. `Ok(None)` = retry.
    async fn try_txn(
        &self,
        c: &zk::Client,
        conds: &[Cond],
        writes: &[Write],
        seen: &BTreeMap<&str, Seen>,
    ) -> Result<Option<StoreReply>, StoreError> {
        let conflict = |c: &Cond| Err(StoreError::Conflict(format!("{c:?}")));
        let mut m = c.new_multi_writer();
        let mut origins: Vec<Origin> = Vec::new();
        // Znodes the multi creates: their parent directories must exist first.
        let mut created: Vec<String> = Vec::new();
        let dir_opts = self.create_options(zk::CreateMode::Persistent);
        let seen_of = |k: &str| seen.get(k).copied().unwrap_or(Seen::Absent);
        for cond in conds {
            let p = path(cond_key(cond));
            let what = format!("{cond:?}");
            match (cond, seen_of(cond_key(cond))) {
                (Cond::Absent(_), Seen::Key(_)) => return conflict(cond),
                (Cond::Absent(_), Seen::Absent) => {
                    // Fails atomically with NodeExists if the key appears meanwhile.
                    m.add_create(&p, b"", &dir_opts).map_err(read_err)?;
                    m.add_delete(&p, None).map_err(read_err)?;
                    origins.push(Origin::Absent(what));
                    origins.push(Origin::Guess);
                    created.push(p);
                }
                (Cond::Version(_, v), Seen::Key(stat)) => {
                    if i32::try_from(*v).ok() != Some(stat.version) {
                        return conflict(cond);
                    }
                    m.add_check_version(&p, stat.version).map_err(read_err)?;
                    origins.push(Origin::Cond(what));
                }
                (
                    Cond::Owned {
                        session,
                        create_rev,
                        ..
                    },
                    Seen::Key(stat),
                ) => {
                    if stat.ephemeral_owner as u64 != session.0 || zxid(stat.czxid) != *create_rev {
                        return conflict(cond);
                    }
                    m.add_check_version(&p, stat.version).map_err(read_err)?;
                    origins.push(Origin::Cond(what));
                }
                (Cond::Version(..) | Cond::Owned { .. }, Seen::Absent) => return conflict(cond),
            }
        }
        // Each key's state as the writes before it leave it, starting from the read phase.
        let mut state: BTreeMap<&str, Seen> = BTreeMap::new();
        let mut deleted_parents: Vec<String> = Vec::new();
        // Keys the transaction creates, with their owner: their czxid is its revision.
        let mut made: Vec<(String, Option<SessionId>)> = Vec::new();
        for w in writes {
            let key = w.key();
            let from_read = !state.contains_key(key);
            let now = *state.entry(key).or_insert_with(|| seen_of(key));
            let p = path(key);
            let (value, owner, create) = match w {
                Write::Create { value, owner, .. } => (Some(value), *owner, true),
                Write::Put { value, .. } => (Some(value), None, false),
                Write::Delete { .. } => (None, None, false),
            };
            match (value, now) {
                // Create or Put
                (Some(_), Seen::Key(_)) if create => {
                    return Err(StoreError::Conflict(format!("{key} exists")))
                }
                (Some(_), Seen::Key(s)) if s.ephemeral_owner != 0 => {
                    return Err(StoreError::Invalid(format!(
                        "{key} is session-owned and cannot be rewritten"
                    )))
                }
                (Some(v), Seen::Key(s)) => {
                    m.add_set_data(&p, v, Some(s.version)).map_err(read_err)?;
                    origins.push(Origin::Guess);
                    let mut after = s;
                    after.version += 1;
                    state.insert(key, Seen::Key(after));
                }
                (Some(v), Seen::Absent) => {
                    let mode = if owner.is_some() {
                        zk::CreateMode::Ephemeral
                    } else {
                        zk::CreateMode::Persistent
                    };
                    m.add_create(&p, v, &self.create_options(mode))
                        .map_err(read_err)?;
                    made.push((p.clone(), owner));
                    origins.push(if create {
                        Origin::Create(key.to_string())
                    } else {
                        Origin::Guess
                    });
                    created.push(p);
                    // Only its being a key matters for the writes after it.
                    let mut fresh = blank_stat();
                    fresh.version = 0;
                    fresh.ephemeral_owner = owner.map_or(0, |s| s.0 as i64);
                    state.insert(key, Seen::Key(fresh));
                }
                // Delete
                (None, Seen::Key(s)) => {
                    // Unversioned when the key was created by this transaction.
                    let version = (!from_read || s.ephemeral_owner == 0).then_some(s.version);
                    m.add_delete(&p, version.filter(|_| from_read))
                        .map_err(read_err)?;
                    origins.push(Origin::Guess);
                    deleted_parents.push(dir_of(&p));
                    state.insert(key, Seen::Absent);
                }
                (None, Seen::Absent) if from_read => {
                    // Deleting nothing must still fail if the key appears meanwhile.
                    m.add_create(&p, b"", &dir_opts).map_err(read_err)?;
                    m.add_delete(&p, None).map_err(read_err)?;
                    origins.push(Origin::Guess);
                    origins.push(Origin::Guess);
                    created.push(p);
                }
                (None, Seen::Absent) => {}
            }
        }
        if origins.is_empty() {
            // Nothing to apply: the revision is the newest the read phase saw.
            let rev = seen
                .values()
                .filter_map(|s| match s {
                    Seen::Key(st) => Some(stat_rev(st)),
                    Seen::Absent => None,
                })
                .max()
                .unwrap_or(0);
            return Ok(Some(StoreReply::Committed { rev }));
        }
        if let Some((first, _)) = made.first() {
            // ZooKeeper before 3.9 answers a create inside a multi without its stat
            // (ZOOKEEPER-4026); a write to the namespace directory (which stays empty and is
            // never checked) is answered with one, and its zxid is the transaction's.
            m.add_set_data(&dir_of(first), b"", None)
                .map_err(read_err)?;
            origins.push(Origin::Guess);
        }
        self.ensure_dirs(c, &created).await?;
        match m.commit().await {
            Ok(results) => {
                let rev = self
                    .commit_rev(c, &results, &made, &deleted_parents)
                    .await?;
                Ok(Some(StoreReply::Committed { rev }))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let origin = origins.get(index).cloned().unwrap_or(Origin::Guess);
                match (origin, source) {
                    (Origin::Cond(c), zk::Error::BadVersion | zk::Error::NoNode) => {
                        Err(StoreError::Conflict(c))
                    }
                    (Origin::Absent(c), zk::Error::NodeExists) => Err(StoreError::Conflict(c)),
                    (Origin::Create(k), zk::Error::NodeExists) => {
                        Err(StoreError::Conflict(format!("{k} exists")))
                    }
                    (_, zk::Error::NoNode) => {
                        // A namespace directory was removed by hand, or a guess was wrong.
                        self.forget_dirs(&created);
                        Ok(None)
                    }
                    (_, zk::Error::NodeExists | zk::Error::BadVersion | zk::Error::NotEmpty) => {
                        Ok(None)
                    }
                    (_, zk::Error::NoChildrenForEphemerals) => Err(StoreError::Invalid(
                        "a key cannot live under a session-owned key".to_string(),
                    )),
                    (_, e) => Err(write_err(e)),
                }
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(write_err(source)),
        }
    }

    fn forget_dirs(&self, created: &[String]) {
        let mut dirs = lock(&self.dirs);
        for p in created {
            dirs.remove(&dir_of(p));
        }
    }

    /// Creates the namespace directories the znodes in `created` live in.
    async fn ensure_dirs(&self, c: &zk::Client, created: &[String]) -> Result<(), StoreError> {
        let opts = self.create_options(zk::CreateMode::Persistent);
        for p in created {
            let dir = dir_of(p);
            if lock(&self.dirs).contains(&dir) {
                continue;
            }
            match c.create(&dir, b"", &opts).await {
                Ok(_) | Err(zk::Error::NodeExists) => {
                    lock(&self.dirs).insert(dir);
                }
                Err(e) => return Err(write_err(e)),
            }
        }
        Ok(())
    }

    /// The zxid of a committed `multi`: an updated znode's mzxid (all ops of a multi share one
    /// zxid; a creating transaction always updates its namespace directory for this). For
    /// deletes only, the pzxid of a directory it changed, read back on the same connection:
    /// the same or later, which the contract allows for a transaction that created nothing.
    async fn commit_rev(
        &self,
        c: &zk::Client,
        results: &[zk::MultiWriteResult],
        made: &[(String, Option<SessionId>)],
        deleted_parents: &[String],
    ) -> Result<u64, StoreError> {
        for r in results {
            match r {
                zk::MultiWriteResult::Create { stat, .. } if stat.czxid > 0 => {
                    return Ok(zxid(stat.czxid))
                }
                zk::MultiWriteResult::SetData { stat } if stat.mzxid > 0 => {
                    return Ok(zxid(stat.mzxid))
                }
                _ => {}
            }
        }
        if !made.is_empty() {
            return Err(StoreError::Indeterminate(
                "committed, but the server's reply carried no revision".to_string(),
            ));
        }
        let mut rev = 0;
        let mut probe: Vec<String> = deleted_parents.to_vec();
        probe.push("/".to_string());
        for p in probe {
            match c.check_stat(&p).await {
                Ok(Some(stat)) => rev = rev.max(stat_rev(&stat)),
                Ok(None) => {}
                Err(e) => return Err(StoreError::Indeterminate(format!("committed, but {e}"))),
            }
        }
        Ok(rev)
    }

    fn watch(self: Arc<Self>, prefix: Key) -> BoxStream<'static, WatchEvent> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        // One recursive watch on the namespace directory (or on everything for a prefix that
        // ends inside a namespace name); changes elsewhere in the namespace wake it too, which
        // costs a re-read, never a missed change.
        let dir = match prefix.split_once('/') {
            Some((ns, _)) => format!("/{ns}"),
            None => "/".to_string(),
        };
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                if tx.is_closed() {
                    return;
                }
                let armed = match self.shared().await {
                    Ok(c) => arm(&c, &dir).await.map(|w| (c, w)),
                    Err(e) => Err(e),
                };
                let (c, mut w) = match armed {
                    Ok(cw) => cw,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(store = %self.url, error = %e, "zk watch not armed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(failures)) => continue,
                            _ = tx.closed() => return,
                        }
                    }
                };
                failures = 0;
                // Armed before the reader re-reads, so nothing after the re-read is missed.
                if send(&tx, WatchEvent::Reset).is_err() {
                    return;
                }
                loop {
                    let ev = tokio::select! {
                        ev = w.changed() => ev,
                        _ = tx.closed() => return,
                    };
                    let sent = match (ev.event_type, ev.session_state) {
                        (zk::EventType::Session, s) if is_terminal(s) => break,
                        (zk::EventType::Session, zk::SessionState::Disconnected) => Ok(()),
                        // Reconnected. Events meanwhile are not replayed, and zookeeper-client
                        // 0.11 does not restore persistent watches on the new connection
                        // (`resend_watches` skips them): arm a new one before dropping the old,
                        // so the client never asks the server to remove the path's watch.
                        (zk::EventType::Session, _) => match arm(&c, &dir).await {
                            Ok(fresh) => {
                                w = fresh;
                                send(&tx, WatchEvent::Reset)
                            }
                            Err(_) => break,
                        },
                        _ => send(&tx, WatchEvent::Changed),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

async fn arm(c: &zk::Client, dir: &str) -> Result<zk::PersistentWatcher, StoreError> {
    c.watch(dir, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(read_err)
}

/// Queues a notification; a full queue already holds one, which is as good (the reader
/// re-reads everything either way), but a pending `Changed` is upgraded by nothing: a `Reset`
/// that finds the queue full is also fine for the same reason.
fn send(tx: &tokio::sync::mpsc::Sender<WatchEvent>, ev: WatchEvent) -> Result<(), ()> {
    match tx.try_send(ev) {
        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

fn blank_stat() -> zk::Stat {
    zk::Stat {
        czxid: -1,
        mzxid: -1,
        pzxid: -1,
        ctime: -1,
        mtime: -1,
        version: 0,
        cversion: 0,
        aversion: 0,
        ephemeral_owner: 0,
        data_length: 0,
        num_children: 0,
    }
}

/// The shared connection's session expiring says nothing about the caller's session: the
/// request was refused (nothing applied), and the next one reconnects.
fn shared_expiry(r: StoreResult) -> StoreResult {
    r.map_err(shared_err)
}

fn shared_err(e: StoreError) -> StoreError {
    match e {
        StoreError::SessionExpired => StoreError::Unavailable(
            "the shared connection's session expired; reconnecting".to_string(),
        ),
        e => e,
    }
}

fn cond_key(c: &Cond) -> &str {
    match c {
        Cond::Absent(k) | Cond::Version(k, _) | Cond::Owned { key: k, .. } => k,
    }
}

fn unexpected(r: Option<zk::MultiReadResult>) -> StoreError {
    match r {
        Some(zk::MultiReadResult::Error { err }) => read_err(err),
        other => StoreError::Unavailable(format!("unexpected multiRead result {other:?}")),
    }
}

/// Exponential backoff with ±50 % jitter (jitter from the clock's nanoseconds: enough to
/// spread a fleet reconnecting together, and no RNG dependency).
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_FIRST.saturating_mul(1 << failures.min(16).saturating_sub(1));
    let base = exp.min(BACKOFF_LAST);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = f64::from(nanos % 1000) / 1000.0; // 0..1
    base.mul_f64(0.5 + jitter)
}
