//! The PostgreSQL backend of the Store contract (DESIGN §2–3; PITFALLS "Store mapping"):
//! `postgres://user:password@host:port/database?schema=rebalanser`.
//!
//! Thin by rule: this crate maps [`StoreOp`]s onto SQL and PostgreSQL errors onto
//! [`StoreError`]s, and plumbs `LISTEN`/`NOTIFY` into watches. It holds no protocol logic; the
//! semantics are `MemModel`'s, op by op.
//!
//! Mapping (tables in [`schema`]; one schema per URL, created on first use):
//! - A key is a row of `kv`; a session a row of `sessions`; a session-owned key references its
//!   session (`ON DELETE CASCADE`, and deleted explicitly with it so the keys can be named).
//! - **Revisions and tokens**: one counter row (`meta.rev`). Every writing transaction locks it
//!   first (`SELECT … FOR UPDATE`), bumps it once if it writes, and gives every key it creates
//!   `create_rev` = the new value. Writers queue on the row, so revisions strictly grow in
//!   commit order. Never a sequence: sequence values are taken in call order, not commit order
//!   (PITFALLS 17).
//! - **Isolation: row locks, not `SERIALIZABLE`.** `READ COMMITTED` plus the counter-row lock
//!   serializes exactly the writers, which all touch that row anyway; under `SERIALIZABLE`
//!   they would all conflict on it and be aborted (`40001`) and retried instead of queued.
//!   After the lock, every statement of the transaction sees every earlier commit, so the
//!   conditions are checked against the latest state. Reads are single statements (one
//!   snapshot each, the revision read in the same statement), linearizable on the primary.
//! - **Expiry** ([`reaper`]): a session lives until its row is deleted; a process with a
//!   session of its own deletes rows whose renewal counter it watched stay the same for the
//!   TTL (plus slack) on its monotonic clock. No wall clock decides anything, the server's
//!   included (PITFALLS 4: a step of the database host's clock must not expire sessions early).
//!   `KeepAlive` is one autocommit `UPDATE … SET renewals = renewals + 1 WHERE id = $1` on a
//!   connection of its own: it never revives a deleted session (PITFALLS 5), takes no lock a
//!   writer holds, and never queues behind claim batches (PITFALLS 31). Its success proves
//!   itself (one primary decides), so [`Store::keepalive_proves_previous`] is false.
//! - **Watches** ([`listen`]): `NOTIFY` on the schema's channel from every writing transaction
//!   that changed keys (never from keepalives), naming them; a listener on its own connection;
//!   `Reset` on every (re)connection.
//! - **Errors**: anything before `COMMIT` is sent is `Unavailable` (an open transaction is
//!   rolled back when its connection ends); a failed `COMMIT` or autocommit write is
//!   `Indeterminate` unless the server refused it with an `ERROR`. A connection in an unknown
//!   state is dropped, never reused: an operation's future that is dropped midway drops its
//!   connection with it. A foreign or newer schema is `Invalid` with a message naming it (and a
//!   typed [`PostgresError`] from [`PostgresStore::connect`]).
//! - Server-side bounds on every connection: `idle_in_transaction_session_timeout` (a member
//!   that stalls or vanishes while holding the counter row releases it within
//!   [`PostgresOptions::idle_in_transaction`]) and `statement_timeout`.
//!
//! Durability: a failover to an asynchronous replica can lose committed claims (PITFALLS 14);
//! run synchronous replication to a quorum and promote only synchronous standbys, or treat a
//! failover like a restore (stop the group one TTL, `group bump-generation`). `LISTEN` does
//! not work through PgBouncer in transaction mode: point the URL at the server or a
//! session-mode pool.

mod error;
mod listen;
mod ops;
pub mod reaper;
pub mod schema;
mod url;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::BoxStream;
use rebalanser_store::{BoxFuture, Key, Store, StoreError, StoreOp, StoreResult, WatchEvent};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{poisons_connection, schema_missing};
use crate::listen::Note;
use crate::ops::Conn;
use crate::schema::Sql;

pub use error::PostgresError;
pub use url::{redact, DEFAULT_SCHEMA};

/// Settings of a [`PostgresStore`] beyond its URL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Longest a connection attempt takes.
    pub connect_timeout: Duration,
    /// Longest one operation takes (client side; the server's `statement_timeout` is the same).
    pub op_timeout: Duration,
    /// The server ends a connection idle inside a transaction for this long, releasing the
    /// counter row a stalled writer holds.
    pub idle_in_transaction: Duration,
    /// Granted session TTLs are the requested ones clamped into this range.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// A session is deleted after being seen unchanged for its TTL plus this percentage.
    pub expiry_slack_percent: u32,
    /// The reaper looks at the sessions every TTL/10, within these bounds.
    pub min_reap_interval: Duration,
    pub max_reap_interval: Duration,
    /// The listener pings its connection this often (a silent connection is replaced).
    pub listen_ping_interval: Duration,
    /// Base of the listener's reconnection back-off.
    pub retry_delay: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(2),
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_secs(3600),
            expiry_slack_percent: 1,
            min_reap_interval: Duration::from_millis(10),
            max_reap_interval: Duration::from_millis(100),
            listen_ping_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(100),
        }
    }
}

impl PostgresOptions {
    fn validate(&self) -> Result<(), PostgresError> {
        let bad = |m: &str| Err(PostgresError::Options(m.to_string()));
        let positive = [
            self.connect_timeout,
            self.op_timeout,
            self.idle_in_transaction,
            self.min_reap_interval,
            self.listen_ping_interval,
            self.retry_delay,
        ];
        if positive.iter().any(Duration::is_zero) {
            return bad("timeouts and intervals must be positive");
        }
        if self.min_ttl.is_zero() || self.max_ttl < self.min_ttl {
            return bad("need 0 < min_ttl <= max_ttl");
        }
        if self.max_reap_interval < self.min_reap_interval {
            return bad("need min_reap_interval <= max_reap_interval");
        }
        if self.max_ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
            return bad("max_ttl over a century");
        }
        Ok(())
    }
}

/// A Store on a PostgreSQL schema. Cloning shares the connections, the reaper and the listener.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

type Lane = tokio::sync::Mutex<Option<Conn>>;

/// A connection's driver, TLS or not (one type: `sslmode` decides whether TLS is used).
pub(crate) type PgConnection =
    Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

pub(crate) struct Inner {
    config: Config,
    tls: Option<rebalanser_store::TlsFiles>,
    /// `postgres://user:***@host/db?schema=s`, for logs and messages.
    at: String,
    sql: Sql,
    opts: PostgresOptions,
    /// `host:pid`, written to the sessions this store opens.
    client_name: String,
    /// The schema was created or checked (again after it went missing).
    ready: AtomicBool,
    reader: Lane,
    writer: Lane,
    /// Keepalives only: they never wait behind claims (PITFALLS 31).
    keepalive: Lane,
    reaper_conn: Lane,
    reaping: AtomicBool,
    reaper_paused: AtomicBool,
    notes: Mutex<Option<tokio::sync::broadcast::Sender<Note>>>,
    listening: AtomicBool,
    notifications_paused: AtomicBool,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("at", &self.inner.at)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only an Option is stored: consistent across a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PostgresStore {
    /// A store for `url` with default options. Connects lazily: the first operation connects
    /// and creates or checks the schema. Fails only on a malformed URL.
    pub fn from_url(url: &str) -> Result<PostgresStore, PostgresError> {
        Self::from_url_with(url, PostgresOptions::default())
    }

    pub fn from_url_with(url: &str, opts: PostgresOptions) -> Result<PostgresStore, PostgresError> {
        opts.validate()?;
        let parsed = url::parse(url)?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                config: parsed.config,
                tls: parsed.tls,
                at: parsed.redacted,
                sql: Sql::new(&parsed.schema),
                opts,
                client_name: format!("{host}:{}", std::process::id()),
                ready: AtomicBool::new(false),
                reader: Lane::default(),
                writer: Lane::default(),
                keepalive: Lane::default(),
                reaper_conn: Lane::default(),
                reaping: AtomicBool::new(false),
                reaper_paused: AtomicBool::new(false),
                notes: Mutex::new(None),
                listening: AtomicBool::new(false),
                notifications_paused: AtomicBool::new(false),
            }),
        })
    }

    /// A store for `url`, connected now, its schema created or checked: the typed error of a
    /// server that cannot be reached or a schema that cannot be used.
    pub async fn connect(url: &str) -> Result<PostgresStore, PostgresError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        opts: PostgresOptions,
    ) -> Result<PostgresStore, PostgresError> {
        let store = Self::from_url_with(url, opts)?;
        let conn = store.inner.open_checked("writer").await?;
        *store.inner.writer.lock().await = Some(conn);
        Ok(store)
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.sql.schema
    }

    pub fn options(&self) -> &PostgresOptions {
        &self.inner.opts
    }

    /// Fault injection for tests: the listener drops its connection and stays away until
    /// [`PostgresStore::resume_notifications`], which ends with a `Reset`.
    pub fn pause_notifications(&self) {
        self.inner
            .notifications_paused
            .store(true, Ordering::SeqCst);
    }

    pub fn resume_notifications(&self) {
        self.inner
            .notifications_paused
            .store(false, Ordering::SeqCst);
    }

    /// Fault injection for tests: this store's reaper stops deleting expired sessions.
    pub fn pause_reaper(&self, paused: bool) {
        self.inner.reaper_paused.store(paused, Ordering::SeqCst);
    }
}

impl Store for PostgresStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        Box::pin(async move {
            let write = op.is_write();
            let r = self.inner.execute(&op).await;
            if let Err(e) = &r {
                tracing::debug!(store = %self.inner.at, error = %e, write, "postgres op failed");
            }
            if matches!((&op, &r), (StoreOp::OpenSession { .. }, Ok(_))) {
                reaper::ensure_running(&self.inner);
            }
            r
        })
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        listen::watch(&self.inner, prefix)
    }

    fn describe(&self) -> String {
        self.inner.at.clone()
    }

    /// One primary applies keepalives and decides expiry (by deleting the row): a keepalive's
    /// success proves itself.
    fn keepalive_proves_previous(&self) -> bool {
        false
    }

    /// Expiry is observed, not scheduled: a reaper polls the renewal counters every
    /// `min_reap_interval`..`max_reap_interval` (100 ms by default), so a session ends up to
    /// one poll after its TTL; five polls keep that below a fifth of the TTL. Never below the
    /// store's own `min_ttl` clamp.
    fn min_session_ttl(&self) -> Duration {
        (self.inner.opts.max_reap_interval * 5).max(self.inner.opts.min_ttl)
    }
}

impl Inner {
    fn ctx(&self) -> ops::Ctx<'_> {
        ops::Ctx {
            sql: &self.sql,
            at: &self.at,
            min_ttl: self.opts.min_ttl,
            max_ttl: self.opts.max_ttl,
            client_name: &self.client_name,
        }
    }

    /// The TLS connector: from the URL's files, read now (a rotated certificate is picked up by
    /// the next connection); without TLS one that is never used (`sslmode` is `disable`).
    fn tls(&self) -> Result<MakeRustlsConnect, String> {
        // The process's provider if the application installed one, else ring (the one this
        // crate compiles; rustls marks it deprecated only for lacking post-quantum key
        // exchange, which a database connection here does not need).
        #[allow(deprecated)]
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        let Some(t) = &self.tls else {
            return Ok(MakeRustlsConnect::new(
                builder.with_root_certificates(roots).with_no_client_auth(),
            ));
        };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let file = |p: &std::path::Path, e: &dyn std::fmt::Display| {
            format!("TLS file {}: {e}", p.display())
        };
        for cert in CertificateDer::pem_file_iter(&t.ca).map_err(|e| file(&t.ca, &e))? {
            roots
                .add(cert.map_err(|e| file(&t.ca, &e))?)
                .map_err(|e| file(&t.ca, &e))?;
        }
        let builder = builder.with_root_certificates(roots);
        let config = match &t.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file(cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file(cert, &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// A new connection (its driver task spawned) with the server-side bounds set.
    async fn connect_raw(&self, lane: &str) -> Result<(Client, PgConnection), String> {
        let mut cfg = self.config.clone();
        if cfg.get_application_name().is_none() {
            cfg.application_name(format!("rebalanser/{lane}"));
        }
        let limit = self.opts.connect_timeout;
        if cfg.get_connect_timeout().is_none_or(|t| *t > limit) {
            cfg.connect_timeout(limit);
        }
        let tls = self.tls()?;
        let (client, connection) = tokio::time::timeout(limit, cfg.connect(tls))
            .await
            .map_err(|_| format!("no connection within {limit:?}"))?
            .map_err(|e| e.to_string())?;
        Ok((client, connection))
    }

    /// A connection for ops: bounds set, schema created or checked once per store.
    async fn open_checked(&self, lane: &str) -> Result<Conn, PostgresError> {
        let connect = |detail: String| PostgresError::Connect {
            url: self.at.clone(),
            detail,
        };
        let (mut client, connection) = self.connect_raw(lane).await.map_err(connect)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let ms = |d: Duration| d.as_millis().max(1);
        // Bounded on the client too: a server (or network) that falls silent right after the
        // start-up would otherwise hold this forever (no server-side timeout is in force yet,
        // and TCP notices a silent peer only after many minutes): an operation that needed a
        // new connection would hang, and so would the reaper, which then never reaps again
        // (found by tests/faults.rs `a_server_silent_after_the_startup_does_not_hang_the_store`).
        let setup = async {
            client
                .batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {}; SET statement_timeout = {}",
                    ms(self.opts.idle_in_transaction),
                    ms(self.opts.op_timeout)
                ))
                .await
                .map_err(|e| connect(e.to_string()))?;
            if !self.ready.load(Ordering::SeqCst) {
                schema::ensure(&mut client, &self.at, &self.sql.schema).await?;
                self.ready.store(true, Ordering::SeqCst);
            }
            Ok::<_, PostgresError>(())
        };
        let limit = self.opts.op_timeout;
        tokio::time::timeout(limit, setup).await.map_err(|_| {
            connect(format!(
                "no answer to the connection's set-up within {limit:?}"
            ))
        })??;
        Ok(Conn::new(client))
    }

    async fn connect(&self, lane: &str) -> Result<Conn, StoreError> {
        self.open_checked(lane).await.map_err(|e| e.to_store())
    }

    fn lane(&self, op: &StoreOp) -> (&Lane, &'static str) {
        match op {
            StoreOp::KeepAlive { .. } => (&self.keepalive, "keepalive"),
            StoreOp::Get { .. } | StoreOp::List { .. } | StoreOp::Read { .. } => {
                (&self.reader, "reader")
            }
            _ => (&self.writer, "writer"),
        }
    }

    async fn execute(&self, op: &StoreOp) -> StoreResult {
        let (lane, name) = self.lane(op);
        let mut slot = lane.lock().await;
        // Taken out while in use: if this future is dropped midway (a caller's timeout), the
        // connection goes with it and the server rolls back whatever was open.
        let mut conn = match slot.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => self.connect(name).await?,
        };
        let ctx = self.ctx();
        let r = tokio::time::timeout(self.opts.op_timeout, ops::execute(&mut conn, &ctx, op)).await;
        let Ok((result, raw)) = r else {
            let why = format!("{}: no answer within {:?}", self.at, self.opts.op_timeout);
            return Err(if op.is_write() {
                StoreError::Indeterminate(why)
            } else {
                StoreError::Unavailable(why)
            });
        };
        match &raw {
            Some(e) if schema_missing(e) => {
                // Dropped under us: create or check it again on the next connection.
                self.ready.store(false, Ordering::SeqCst);
                tracing::warn!(store = %self.at, "the schema's tables are missing");
            }
            Some(e) if poisons_connection(e) => {}
            _ => *slot = Some(conn),
        }
        result
    }
}
