//! The etcd backend of the Store contract (DESIGN §2–3; PITFALLS "Store mapping: etcd"):
//! `etcd://[user:password@]h1:2379,h2:2379[/prefix]`.
//!
//! Thin by rule: this crate maps [`StoreOp`]s onto etcd requests and gRPC errors onto
//! [`StoreError`]s, and plumbs watches. It holds no protocol logic; the semantics are
//! `MemModel`'s wherever the protocol can tell.
//!
//! Mapping (every key under `/<prefix>/`):
//! - A session is a lease. `OpenSession` grants one (TTLs are whole seconds, rounded up; the
//!   server may grant more, and the reply says what it granted). `KeepAlive` sends one request
//!   on the lease's keepalive stream and waits for its answer: a TTL ≤ 0 means the lease is gone
//!   (`SessionExpired`). The stream is taken out of the store while in use, so a keepalive
//!   abandoned by its caller takes its stream with it and a late answer can never be read as
//!   the answer to a later keepalive. `CloseSession` revokes the lease.
//! - Keepalives reach the leader, which alone revokes leases; but a leader that was already
//!   deposed (and does not know it yet) answers too, and its successor only promised the lease
//!   TTL + election timeout from its own election. So a keepalive's success is counted, like on
//!   ZooKeeper, as proof of the keepalive *before* it ([`Store::keepalive_proves_previous`]).
//! - A session-owned key is a key put with the lease. Create-if-absent is a `create_revision ==
//!   0` compare in the transaction; `Owned` is `lease == session` and the instance's revision.
//!   etcd forbids two operations on one key in one transaction, so a transaction's writes are
//!   folded into one final operation per key; a session-owned key replaced by another session's
//!   in one transaction is one put with the new lease, which keeps etcd's `create_revision`.
//!   That is why a session-owned key's creation revision is read from `mod_revision`: such keys
//!   are never rewritten (a put on one is refused), so its last modification *is* the creation
//!   of the instance, and tokens stay strictly growing per resource (PITFALLS 17). Persistent
//!   keys use `create_revision`; versions are etcd's minus one (etcd counts from 1).
//! - A refused transaction reads every key it names at the revision it failed at (nothing was
//!   written, so the revision did not move), and the refusal is decided from that snapshot by
//!   the core's `txn_refusal`, so a refusal names the same cause on every store. A transaction
//!   whose compares exceed etcd's 128 is decided from a read instead and committed only if none
//!   of its keys changed since.
//! - Reads are linearizable (etcd's default, never `serializable`). A `Read` of many keys is
//!   one transaction of gets, or several pinned to the first one's revision.
//! - Watches: one etcd watch per prefix, `Reset` once it is created; it ends on cancellation
//!   (compaction, no leader: the client requires a leader on every request) or a broken
//!   stream, and the runtime re-arms and re-reads (PITFALLS 27).
//! - Server versions: etcd before 3.4.31 / 3.5.13 can revoke a lease that is being kept alive
//!   after a leader stall (etcd #15247) and before 3.4.32 / 3.5.14 can move revisions back after
//!   a compaction panic (PITFALLS 3). The store reads the server version on its first connection
//!   ([`EtcdStore::check_version`]) and refuses a server with #15247 — every operation is
//!   `Invalid`, naming the bug and the fix — unless the URL accepts it with
//!   `?allow_server_bug=15247`; then it warns. The bug's revoke lets another member claim a
//!   resource before its owner hears of it (seen once in the chaos test: 8 resources, 19 ms),
//!   which no client can prevent; a user who accepts it should fence every access.

mod error;
mod url;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseKeepAliveStream,
    LeaseKeeper, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_core::store::{key_error, txn_refusal, txn_request_error, KeyMeta};
use rebalanser_core::SessionId;
use rebalanser_store::{
    BoxFuture, Cond, Entry, Key, SessionInfo, Store, StoreError, StoreOp, StoreReply, StoreResult,
    WatchEvent, Write,
};

use crate::error::{fail, Kind};

pub use crate::url::{redact, EtcdUrl, EtcdUrlError, TlsFiles, DEFAULT_PREFIX};

/// The first versions without etcd #15247 (a lease revoked while kept alive) in each line.
pub const SAFE_VERSIONS: [(u32, u32, u32); 2] = [(3, 4, 31), (3, 5, 13)];

/// etcd's limit on operations per transaction branch (`--max-txn-ops`, default 128).
const MAX_TXN_OPS: usize = 128;

/// Settings of an [`EtcdStore`] beyond its URL.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub connect_timeout: Duration,
    /// Longest one request takes (the gRPC deadline).
    pub op_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`EtcdStore::check_version`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// As the server reports it, e.g. `3.4.23`.
    pub version: String,
    /// Below [`SAFE_VERSIONS`]: leases may be revoked while kept alive.
    pub affected: bool,
}

/// A Store on etcd. Cloning shares the client and the keepalive streams.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: EtcdUrl,
    root: String,
    opts: EtcdOptions,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Each lease's keepalive stream while idle (see the crate docs).
    keepers: Mutex<BTreeMap<i64, (LeaseKeeper, LeaseKeepAliveStream)>>,
    version: Mutex<Option<ServerVersion>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only maps and options are stored: consistent across a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses `3.4.23` (and `3.5.0-alpha`) into numbers.
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Whether `v` has etcd #15247.
pub fn version_affected(v: &str) -> bool {
    match parse_version(v) {
        Some(v) => !SAFE_VERSIONS
            .iter()
            .any(|s| (v.0, v.1) == (s.0, s.1) && v >= *s || (v.0, v.1) > (3, 5)),
        None => true,
    }
}

impl EtcdStore {
    /// A store for `url`; connects on first use.
    pub fn from_url(url: &str) -> Result<EtcdStore, EtcdUrlError> {
        Self::from_url_with(url, EtcdOptions::default())
    }

    pub fn from_url_with(url: &str, opts: EtcdOptions) -> Result<EtcdStore, EtcdUrlError> {
        let url = EtcdUrl::parse(url)?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                root: url.root(),
                url,
                opts,
                client: tokio::sync::Mutex::new(None),
                keepers: Mutex::new(BTreeMap::new()),
                version: Mutex::new(None),
            }),
        })
    }

    /// `Invalid` for a server with etcd #15247 unless the URL accepts it: such a server can
    /// revoke a lease it keeps renewing, and another member can then claim a resource before
    /// its owner hears of it (seen: PITFALLS 3). Nothing the client does closes that window.
    fn refuse_affected(&self, v: &ServerVersion) -> Result<(), StoreError> {
        if v.affected && !self.inner.url.allow_15247 {
            return Err(StoreError::Invalid(format!(
                "{}: etcd server {} has etcd #15247 (it can revoke a lease that is being kept \
                 alive after a leader stall, and another member may then access a resource \
                 before its owner stops): upgrade to 3.4.31 / 3.5.13 or newer, or accept the \
                 risk with ?{}={} in the URL (and fence every access)",
                self.inner.url,
                v.version,
                url::ALLOW_BUG_PARAM,
                url::ALLOW_BUG_VALUE
            )));
        }
        Ok(())
    }

    /// The server version (read once per store) and whether it has the lease bug of PITFALLS 3.
    pub async fn check_version(&self) -> Result<ServerVersion, StoreError> {
        if let Some(v) = lock(&self.inner.version).clone() {
            return Ok(v);
        }
        let client = self.inner.client().await?;
        let status = client
            .maintenance_client()
            .status()
            .await
            .map_err(|e| fail(&self.inner.url, Kind::Read, e))?;
        let v = ServerVersion {
            version: status.version().to_string(),
            affected: version_affected(status.version()),
        };
        if v.affected && self.inner.url.allow_15247 {
            tracing::warn!(
                store = %self.inner.url,
                version = %v.version,
                "etcd server older than 3.4.31 / 3.5.13, accepted by allow_server_bug=15247: it \
                 can revoke a lease that is being kept alive after a leader stall (etcd #15247), \
                 and another member may then access a resource before its owner stops; upgrade \
                 the server, and fence every access"
            );
        }
        *lock(&self.inner.version) = Some(v.clone());
        Ok(v)
    }
}

impl Store for EtcdStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        Box::pin(async move {
            // Best effort: a failure to read the version shows in the op itself.
            if let Ok(v) = self.check_version().await {
                self.refuse_affected(&v)?;
            }
            let r = self.inner.execute(op).await;
            if let Err(e) = &r {
                tracing::debug!(store = %self.inner.url, error = %e, "etcd op failed");
            }
            r
        })
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        self.inner.clone().watch_stream(prefix)
    }

    fn describe(&self) -> String {
        self.inner.url.to_string()
    }

    /// From each lease's `TimeToLive` (whole seconds, the leader's view): a keepalive sets the
    /// remaining TTL back to the granted one, so the time since it is their difference. A
    /// lease the server no longer has is left out; a session whose query fails is left out too
    /// (the answer is for people, never worth failing a status).
    fn session_info(
        &self,
        sessions: Vec<SessionId>,
    ) -> BoxFuture<'_, Result<BTreeMap<SessionId, SessionInfo>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let mut out = BTreeMap::new();
            for s in sessions {
                let Ok(r) = client.lease_client().time_to_live(to_i64(s.0), None).await else {
                    continue;
                };
                if r.ttl() <= 0 {
                    continue;
                }
                let (left, granted) = (to_u64(r.ttl()), to_u64(r.granted_ttl()));
                out.insert(
                    s,
                    SessionInfo::new(
                        Duration::from_secs(granted.saturating_sub(left)),
                        Duration::from_secs(left),
                    ),
                );
            }
            Ok(out)
        })
    }

    /// See the crate docs: an answer from a deposed leader proves nothing to its successor.
    fn keepalive_proves_previous(&self) -> bool {
        true
    }

    /// etcd raises a lease TTL below 1.5 election timeouts (rounded up to whole seconds: 2 s
    /// with the default 1 s election timeout) without saying so, and counts leases in whole
    /// seconds: a shorter TTL would not be the one the member's deadlines assume.
    fn min_session_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}

/// Every key a transaction names, each once.
fn named_keys(conds: &[Cond], writes: &[Write]) -> Vec<Key> {
    let keys: BTreeSet<&str> = conds
        .iter()
        .map(Cond::key)
        .chain(writes.iter().map(Write::key))
        .collect();
    keys.into_iter().map(str::to_string).collect()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Inner {
    async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.opts.connect_timeout)
            .with_timeout(self.opts.op_timeout)
            // Every request fails fast on a member cut off from the leader (PITFALLS 27):
            // a watch there would otherwise stay silent.
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some((user, pw)) = &self.url.credentials {
            opts = opts.with_user(user.clone(), pw.clone());
        }
        let scheme = match &self.url.tls {
            Some(t) => {
                opts = opts.with_tls(self.tls_options(t)?);
                "https"
            }
            None => "http",
        };
        let endpoints: Vec<String> = self
            .url
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let connect = Client::connect(endpoints, Some(opts));
        let client = match tokio::time::timeout(self.opts.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&self.url, Kind::Connect, e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: no connection within {:?}",
                    self.url, self.opts.connect_timeout
                )))
            }
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// TLS from the URL's files, read now (they may have been rotated since the URL was
    /// parsed). A file that cannot be read is `Invalid`: no retry will help.
    fn tls_options(&self, t: &TlsFiles) -> Result<etcd_client::TlsOptions, StoreError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| StoreError::Invalid(format!("{}: {}: {e}", self.url, p.display())))
        };
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca)?));
        if let Some((cert, key)) = &t.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.root).into_bytes()
    }

    /// The store key of an etcd key, if it is under the root and UTF-8.
    fn unkey(&self, raw: &[u8]) -> Option<Key> {
        let s = std::str::from_utf8(raw).ok()?;
        s.strip_prefix(self.root.as_str()).map(str::to_string)
    }

    fn entry(kv: &KeyValue) -> Entry {
        let owned = kv.lease() != 0;
        Entry {
            value: kv.value().to_vec(),
            // Session-owned keys are never rewritten: see the crate docs.
            version: if owned { 0 } else { to_u64(kv.version() - 1) },
            create_rev: to_u64(if owned {
                kv.mod_revision()
            } else {
                kv.create_revision()
            }),
            mod_rev: to_u64(kv.mod_revision()),
            owner: owned.then(|| SessionId(kv.lease() as u64)),
        }
    }

    fn entries(&self, kvs: &[KeyValue], into: &mut BTreeMap<Key, Entry>) {
        for kv in kvs {
            if let Some(k) = self.unkey(kv.key()) {
                into.insert(k, Self::entry(kv));
            }
        }
    }

    async fn execute(&self, op: StoreOp) -> StoreResult {
        match op {
            StoreOp::Get { key, .. } => {
                if let Some(e) = key_error(&key) {
                    return Err(StoreError::Invalid(e));
                }
                let mut kv = self.client().await?.kv_client();
                let r = kv
                    .get(self.key(&key), None)
                    .await
                    .map_err(|e| fail(&self.url, Kind::Read, e))?;
                Ok(StoreReply::Got(r.kvs().first().map(Self::entry)))
            }
            StoreOp::List { prefix, .. } => self.read(&[], &[prefix]).await,
            StoreOp::Read { keys, prefixes, .. } => {
                if let Some(e) = keys.iter().find_map(|k| key_error(k)) {
                    return Err(StoreError::Invalid(e));
                }
                self.read(&keys, &prefixes).await
            }
            StoreOp::OpenSession { ttl } => {
                let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
                let mut lease = self.client().await?.lease_client();
                let r = lease
                    .grant(to_i64(secs.max(1)), None)
                    .await
                    .map_err(|e| fail(&self.url, Kind::Write, e))?;
                Ok(StoreReply::Session {
                    session: SessionId(r.id() as u64),
                    ttl: Duration::from_secs(to_u64(r.ttl())),
                })
            }
            StoreOp::KeepAlive { session } => self.keepalive(session).await,
            StoreOp::CloseSession { session } => {
                let id = to_i64(session.0);
                lock(&self.keepers).remove(&id);
                let mut lease = self.client().await?.lease_client();
                match lease.revoke(id).await {
                    Ok(_) => Ok(StoreReply::Closed),
                    Err(e) => match fail(&self.url, Kind::Write, e) {
                        // Gone already: closing it is done.
                        StoreError::SessionExpired => Ok(StoreReply::Closed),
                        other => Err(other),
                    },
                }
            }
            StoreOp::Txn { conds, writes } => {
                if let Some(e) = txn_request_error(&conds, &writes) {
                    return Err(StoreError::Invalid(e));
                }
                self.txn(&conds, &writes).await
            }
        }
    }

    async fn keepalive(&self, session: SessionId) -> StoreResult {
        let id = to_i64(session.0);
        // Taken out while in use (see the crate docs); put back only after a clean answer.
        let taken = lock(&self.keepers).remove(&id);
        let (mut keeper, mut stream) = match taken {
            Some(pair) => pair,
            // Opening a stream renews once and answers inside the client library, which keeps
            // that answer's TTL to itself; the renewal below asks again (harmless).
            None => {
                let mut lease = self.client().await?.lease_client();
                lease
                    .keep_alive(id)
                    .await
                    .map_err(|e| fail(&self.url, Kind::Write, e))?
            }
        };
        keeper
            .keep_alive()
            .await
            .map_err(|e| fail(&self.url, Kind::Write, e))?;
        let ttl = stream
            .message()
            .await
            .map_err(|e| fail(&self.url, Kind::Write, e))?
            .ok_or_else(|| {
                StoreError::Indeterminate(format!("{}: keepalive stream ended", self.url))
            })?
            .ttl();
        if ttl <= 0 {
            return Err(StoreError::SessionExpired);
        }
        lock(&self.keepers).insert(id, (keeper, stream));
        Ok(StoreReply::KeptAlive {
            ttl: Duration::from_secs(to_u64(ttl)),
        })
    }

    /// Gets of these keys and prefixes, as one transaction per `MAX_TXN_OPS`, the later ones
    /// pinned to the first one's revision: one snapshot.
    async fn read(&self, keys: &[Key], prefixes: &[Key]) -> StoreResult {
        self.read_at(keys, prefixes, None).await
    }

    /// [`Inner::read`] at revision `at` if given (a snapshot of the past, while not compacted).
    async fn read_at(&self, keys: &[Key], prefixes: &[Key], at: Option<i64>) -> StoreResult {
        let mut gets: Vec<(Vec<u8>, bool)> = keys.iter().map(|k| (self.key(k), false)).collect();
        gets.extend(prefixes.iter().map(|p| (self.key(p), true)));
        let mut kv = self.client().await?.kv_client();
        let mut rev: Option<i64> = at;
        let mut all = BTreeMap::new();
        if gets.is_empty() && rev.is_none() {
            let r = kv
                .get(self.key(""), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| fail(&self.url, Kind::Read, e))?;
            rev = r.header().map(|h| h.revision());
        }
        for chunk in gets.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, prefix)| {
                    let mut o = GetOptions::new();
                    if *prefix {
                        o = o.with_prefix();
                    }
                    if let Some(r) = rev {
                        o = o.with_revision(r);
                    }
                    TxnOp::get(k.clone(), Some(o))
                })
                .collect();
            let r = kv
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(|e| fail(&self.url, Kind::Read, e))?;
            if rev.is_none() {
                rev = r.header().map(|h| h.revision());
            }
            for resp in r.op_responses() {
                if let TxnOpResponse::Get(g) = resp {
                    self.entries(g.kvs(), &mut all);
                }
            }
        }
        Ok(StoreReply::Listed {
            entries: all.into_iter().collect(),
            rev: to_u64(rev.unwrap_or(0)),
        })
    }

    async fn txn(&self, conds: &[Cond], writes: &[Write]) -> StoreResult {
        // Keys whose conditions already rule out a session-owned key (absent, or a version
        // compare that comes with `lease == 0`): their first write needs no compare of its own.
        let mut covered: BTreeSet<&str> = BTreeSet::new();
        let mut compares = Vec::new();
        for c in conds {
            match c {
                Cond::Absent(k) => {
                    covered.insert(k);
                    compares.push(Compare::create_revision(self.key(k), CompareOp::Equal, 0))
                }
                Cond::Version(k, v) => {
                    let Some(v) = v.checked_add(1).and_then(|v| i64::try_from(v).ok()) else {
                        return Err(StoreError::Conflict(format!("{c:?}")));
                    };
                    compares.push(Compare::version(self.key(k), CompareOp::Equal, v));
                    // A session-owned key has version 0 whatever etcd counts (crate docs).
                    compares.push(Compare::lease(self.key(k), CompareOp::Equal, 0));
                    covered.insert(k);
                }
                Cond::Owned {
                    key,
                    session,
                    create_rev,
                } => {
                    compares.push(Compare::lease(
                        self.key(key),
                        CompareOp::Equal,
                        to_i64(session.0),
                    ));
                    compares.push(Compare::mod_revision(
                        self.key(key),
                        CompareOp::Equal,
                        to_i64(*create_rev),
                    ));
                }
            }
        }
        // One final operation per key (etcd refuses two on one key); the precondition of the
        // first write of each key is a compare, unless a condition already covers it.
        let mut last: BTreeMap<&str, &Write> = BTreeMap::new();
        for w in writes {
            let k = w.key();
            if !last.contains_key(k) {
                match w {
                    Write::Create { .. } if !covered.contains(k) => {
                        compares.push(Compare::create_revision(self.key(k), CompareOp::Equal, 0))
                    }
                    Write::Put { .. } if !covered.contains(k) => {
                        compares.push(Compare::lease(self.key(k), CompareOp::Equal, 0))
                    }
                    _ => {}
                }
            }
            last.insert(k, w);
        }
        let mut ops = Vec::new();
        for (k, w) in &last {
            ops.push(match w {
                Write::Create { value, owner, .. } => {
                    let mut o = etcd_client::PutOptions::new();
                    if let Some(s) = owner {
                        o = o.with_lease(to_i64(s.0));
                    }
                    TxnOp::put(self.key(k), value.clone(), Some(o))
                }
                Write::Put { value, .. } => TxnOp::put(self.key(k), value.clone(), None),
                Write::Delete { .. } => TxnOp::delete(self.key(k), None),
            });
        }
        if compares.len() > MAX_TXN_OPS {
            // etcd takes at most MAX_TXN_OPS compares in a transaction, nested ones included.
            return self.txn_optimistic(conds, writes, ops).await;
        }
        let mut kv = self.client().await?.kv_client();
        let r = kv
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| fail(&self.url, Kind::Write, e))?;
        let rev = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            return Ok(StoreReply::Committed { rev: to_u64(rev) });
        }
        // Nothing was written, so the revision did not move: the keys as the compares saw them.
        let named = named_keys(conds, writes);
        let state = match self.read_at(&named, &[], Some(rev)).await? {
            StoreReply::Listed { entries, .. } => entries.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Err(self.refusal(conds, writes, &state).await)
    }

    /// A transaction whose compares would not fit in one etcd transaction, decided from a read
    /// instead: read every key it names, decide as `MemModel` would on that state, and commit
    /// only if none of those keys changed since (one compare per key, which the contract's
    /// `MAX_TXN_KEYS` keeps within etcd's limit). A key changed in between: read and decide
    /// again, a few times.
    async fn txn_optimistic(
        &self,
        conds: &[Cond],
        writes: &[Write],
        ops: Vec<TxnOp>,
    ) -> StoreResult {
        let named = named_keys(conds, writes);
        for _ in 0..5 {
            let state: BTreeMap<Key, Entry> = match self.read_at(&named, &[], None).await? {
                StoreReply::Listed { entries, .. } => entries.into_iter().collect(),
                _ => BTreeMap::new(),
            };
            let refused = txn_refusal(conds, writes, |k| state.get(k).map(KeyMeta::from), |_| true);
            if refused.is_some() {
                // With the owners' liveness looked up, in case a dead owner comes first.
                return Err(self.refusal(conds, writes, &state).await);
            }
            let unchanged: Vec<Compare> = named
                .iter()
                .map(|k| match state.get(k) {
                    Some(e) => {
                        Compare::mod_revision(self.key(k), CompareOp::Equal, to_i64(e.mod_rev))
                    }
                    None => Compare::create_revision(self.key(k), CompareOp::Equal, 0),
                })
                .collect();
            let mut kv = self.client().await?.kv_client();
            let r = kv
                .txn(Txn::new().when(unchanged).and_then(ops.clone()))
                .await
                .map_err(|e| fail(&self.url, Kind::Write, e))?;
            if r.succeeded() {
                let rev = r.header().map_or(0, |h| h.revision());
                return Ok(StoreReply::Committed { rev: to_u64(rev) });
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: the transaction's keys kept changing while it was decided",
            self.url
        )))
    }

    /// Why a transaction whose compares failed was refused, decided from the snapshot its
    /// failure branch read, in `MemModel`'s order.
    async fn refusal(
        &self,
        conds: &[Cond],
        writes: &[Write],
        state: &BTreeMap<Key, Entry>,
    ) -> StoreError {
        // The owners a `Create` names, looked up only now (a refusal is the rare path).
        let mut alive = BTreeSet::new();
        for w in writes {
            if let Write::Create { owner: Some(s), .. } = w {
                if self.lease_alive(*s).await {
                    alive.insert(*s);
                }
            }
        }
        txn_refusal(
            conds,
            writes,
            |k| state.get(k).map(KeyMeta::from),
            |s| alive.contains(&s),
        )
        // The compares failed on a state in which every check passes: something changed
        // between (a key's instance replaced) — nothing was applied, the caller re-reads.
        .unwrap_or_else(|| {
            StoreError::Conflict("the transaction's conditions no longer hold".into())
        })
    }

    async fn lease_alive(&self, s: SessionId) -> bool {
        let Ok(client) = self.client().await else {
            return true;
        };
        match client.lease_client().time_to_live(to_i64(s.0), None).await {
            Ok(r) => r.ttl() > 0,
            Err(e) => !matches!(fail(&self.url, Kind::Read, e), StoreError::SessionExpired),
        }
    }

    /// Watches `prefix` for as long as the stream is polled: an etcd watch, `Reset` each time
    /// one is (re)created, then the keys of each change; a broken or canceled watch (lost
    /// connection, compaction, no leader) is created again after a short back-off, and the
    /// `Reset` that follows makes the caller re-read what it may have missed.
    fn watch_stream(self: Arc<Self>, prefix: Key) -> BoxStream<'static, WatchEvent> {
        struct State {
            inner: Arc<Inner>,
            prefix: Key,
            stream: Option<etcd_client::WatchStream>,
            failures: u32,
        }
        let start = State {
            inner: self,
            prefix,
            stream: None,
            failures: 0,
        };
        futures::stream::unfold(start, |mut st| async move {
            loop {
                let Some(stream) = st.stream.as_mut() else {
                    if st.failures > 0 {
                        let backoff = Duration::from_millis(100 * u64::from(st.failures.min(20)));
                        tokio::time::sleep(backoff).await;
                    }
                    match st.inner.open_watch(&st.prefix).await {
                        Ok(s) => st.stream = Some(s),
                        Err(e) => {
                            st.failures += 1;
                            if st.failures == 1 || st.failures % 50 == 0 {
                                tracing::warn!(store = %st.inner.url, error = %e, failures = st.failures, "etcd watch cannot start; retrying");
                            }
                        }
                    }
                    continue;
                };
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => {
                        st.stream = None;
                        st.failures += 1;
                        continue;
                    }
                };
                if msg.canceled() {
                    tracing::debug!(store = %st.inner.url, reason = msg.cancel_reason(), "etcd watch canceled; creating it again");
                    st.stream = None;
                    st.failures += 1;
                    continue;
                }
                if msg.created() {
                    st.failures = 0;
                    return Some((WatchEvent::Reset, st));
                }
                let keys: BTreeSet<Key> = msg
                    .events()
                    .iter()
                    .filter_map(|e| e.kv().and_then(|kv| st.inner.unkey(kv.key())))
                    .collect();
                if !keys.is_empty() {
                    return Some((WatchEvent::Keys(keys.into_iter().collect()), st));
                }
            }
        })
        .boxed()
    }

    async fn open_watch(&self, prefix: &str) -> Result<etcd_client::WatchStream, StoreError> {
        let client = self.client().await?;
        client
            .watch_client()
            .watch(self.key(prefix), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| fail(&self.url, Kind::Read, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_the_lease_bug() {
        for v in ["3.4.23", "3.4.30", "3.5.0", "3.5.12", "3.3.25", "garbage"] {
            assert!(version_affected(v), "{v}");
        }
        for v in ["3.4.31", "3.4.35", "3.5.13", "3.5.17", "3.6.0"] {
            assert!(!version_affected(v), "{v}");
        }
    }
}
