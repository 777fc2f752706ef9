//! Shared set-up of the PostgreSQL store's tests: unique schemas on the shared server and
//! store operations in one call each.
// Each test binary that declares `mod common;` uses only a subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_core::SessionId;
use rebalanser_postgres::{PostgresOptions, PostgresStore};
use rebalanser_store::{
    Entry, Store, StoreError, StoreOp, StoreReply, StoreResult, WatchEvent, Write,
};
use rebalanser_testkit::Postgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

// ---------------------------------------------------------------------------------------------
// Fault and red-team helpers (faults.rs, schema.rs).
// ---------------------------------------------------------------------------------------------

/// Options with short client-side bounds, so a fault shows within a test's time.
pub fn quick_opts() -> PostgresOptions {
    PostgresOptions {
        connect_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    }
}

/// `postgres://postgres@ADDR/postgres?schema=SCHEMA` (plus `extra` parameters, `&k=v...`).
pub fn url_at(addr: SocketAddr, schema: &str, extra: &str) -> String {
    format!("postgres://postgres@{addr}/postgres?schema={schema}{extra}")
}

pub fn store_at(addr: SocketAddr, schema: &str, opts: PostgresOptions) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::from_url_with(&url_at(addr, schema, ""), opts).expect("url"))
}

/// One SQL statement through `psql` (blocking, off the runtime's worker).
pub fn psql(pg: &Postgres, sql: &str) -> String {
    tokio::task::block_in_place(|| pg.psql(sql)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A plain tokio-postgres connection to `pg` (outside any store), its driver spawned.
pub async fn raw_client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Backend pids of the connections named `app` (`application_name`).
pub fn backends(pg: &Postgres, app: &str) -> Vec<i32> {
    psql(
        pg,
        &format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' ORDER BY pid"),
    )
    .lines()
    .map(|l| l.trim().parse().expect("pid"))
    .collect()
}

/// Waits until `f` answers true, polling; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `key` = `value` (unowned).
pub async fn put(store: &dyn Store, key: &str, value: &[u8]) -> StoreResult {
    store
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Put {
                key: key.into(),
                value: value.to_vec(),
            }],
        })
        .await
}

/// The next event of `w` within `within` (`None`: none came; panics if the watch ended).
pub async fn next_event(
    w: &mut BoxStream<'static, WatchEvent>,
    within: Duration,
) -> Option<WatchEvent> {
    match tokio::time::timeout(within, w.next()).await {
        Ok(Some(ev)) => Some(ev),
        Ok(None) => panic!("the watch ended"),
        Err(_) => None,
    }
}

/// Skips events until a `Reset`; panics after `within`.
pub async fn await_reset(w: &mut BoxStream<'static, WatchEvent>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(w, left).await {
            Some(WatchEvent::Reset) => return,
            Some(_) => {}
            None => panic!("no Reset within {within:?}"),
        }
    }
}

/// Skips events until one that names `key` (or `Changed`, which may be it); panics after
/// `within`. A `Reset` does not count: it says a change may be missed, not that it was seen.
pub async fn await_change(w: &mut BoxStream<'static, WatchEvent>, key: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(w, left).await {
            Some(WatchEvent::Keys(keys)) if keys.iter().any(|k| k == key) => return,
            Some(WatchEvent::Changed) => return,
            Some(_) => {}
            None => panic!("no notification of {key} within {within:?}"),
        }
    }
}

/// Whether `r` is one of the answers a fault may give (nothing applied, or unknown).
pub fn is_fault(r: &StoreResult) -> bool {
    matches!(
        r,
        Err(StoreError::Unavailable(_) | StoreError::Indeterminate(_))
    )
}

/// One linearizable listing as a reader saw it.
pub struct Obs {
    pub sent: Instant,
    pub replied: Instant,
    pub keys: BTreeSet<String>,
}

/// Lists `prefix` through `store` in a loop until `stop`, recording every answered listing.
pub fn observe(
    store: Arc<dyn Store>,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Obs>> {
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let r = store
                .execute(StoreOp::List {
                    prefix: prefix.clone(),
                    linearizable: true,
                })
                .await;
            let replied = Instant::now();
            if let Ok(StoreReply::Listed { entries, .. }) = r {
                seen.push(Obs {
                    sent,
                    replied,
                    keys: entries.into_iter().map(|(k, _)| k).collect(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    })
}

/// One session's life as its owner saw it.
#[derive(Debug)]
pub struct Life {
    pub session: SessionId,
    pub ttl: Duration,
    /// Its key (created owned by it) and when the create was answered.
    pub key: String,
    pub created: Instant,
    /// Send times of the `OpenSession` and of every successful `KeepAlive`.
    pub ok_sends: Vec<Instant>,
    /// When the first `SessionExpired` answer came.
    pub expired: Option<Instant>,
    /// `KeptAlive` answers after a `SessionExpired` (a revival).
    pub revived: usize,
}

/// L3 as a reader sees it (PITFALLS 4, 5): a session's key may look absent only in a listing
/// answered at or after (send time of the last successful keepalive) + TTL, and once the
/// store answered `SessionExpired`, every later listing lacks it. Returns how many listings
/// saw the key absent.
pub fn check_l3(life: &Life, obs: &[Obs]) -> usize {
    assert_eq!(life.revived, 0, "{life:?}: a keepalive revived the session");
    let last_ok = *life.ok_sends.iter().max().expect("open send");
    let mut absent = 0;
    for o in obs.iter().filter(|o| o.sent >= life.created) {
        if !o.keys.contains(&life.key) {
            absent += 1;
            assert!(
                o.replied >= last_ok + life.ttl,
                "{}: session {:?} (TTL {:?}) deleted {:?} before its last successful \
                 keepalive's send time + TTL",
                life.key,
                life.session,
                life.ttl,
                (last_ok + life.ttl).duration_since(o.replied)
            );
        } else if let Some(e) = life.expired {
            assert!(
                o.sent < e,
                "{}: present in a listing sent after KeepAlive answered SessionExpired",
                life.key
            );
        }
    }
    absent
}

/// A proxy in front of a PostgreSQL server that, while `mute` is set when a connection
/// arrives, forwards that connection's start-up up to the server's first `ReadyForQuery` and
/// then nothing more towards the client (the connection stays open): a server that goes
/// silent right after accepting a connection. Other connections are forwarded untouched.
pub struct MuteAfterStartup {
    pub addr: SocketAddr,
    pub mute: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MuteAfterStartup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MuteAfterStartup {
    pub async fn start(upstream: SocketAddr) -> MuteAfterStartup {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mute = Arc::new(AtomicBool::new(false));
        let m = mute.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let muted = m.load(Ordering::SeqCst);
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut pending: Vec<u8> = Vec::new();
                        let mut silent = false;
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if silent {
                                continue;
                            }
                            if !muted {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            // Forward whole messages (type byte, length) through the first
                            // ReadyForQuery ('Z'), then fall silent.
                            pending.extend_from_slice(&buf[..n]);
                            while pending.len() >= 5 {
                                let len = u32::from_be_bytes(pending[1..5].try_into().unwrap());
                                let end = 1 + len as usize;
                                if pending.len() < end {
                                    break;
                                }
                                let msg: Vec<u8> = pending.drain(..end).collect();
                                if cw.write_all(&msg).await.is_err() {
                                    return;
                                }
                                if msg[0] == b'Z' {
                                    silent = true;
                                    break;
                                }
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        MuteAfterStartup { addr, mute, task }
    }
}
