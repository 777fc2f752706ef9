//! The SQLite backend of the Store contract (DESIGN §2–3; PITFALLS "Store mapping: SQLite"):
//! the embedded default store, where several processes on **one host** share one database file
//! (`sqlite:///var/lib/app/rebalanser.db`). Never put the file on a network file system.
//!
//! Thin by rule: this crate maps [`StoreOp`]s onto SQL and SQLite errors onto [`StoreError`]s,
//! and polls for changes. It holds no protocol logic. The semantics are `MemModel`'s, op by op.
//!
//! Mapping (schema in [`schema`]):
//! - A key is a row of `kv` (`TEXT` primary key, binary collation = `str` order). A session is
//!   a row of `sessions` (ids from `AUTOINCREMENT`: never reused); session-owned keys
//!   reference it (`ON DELETE CASCADE`).
//! - The revision is one counter row (`meta.rev`). Every committed transaction with writes
//!   bumps it by one and gives every key it creates `create_rev = rev`; writers are serialized
//!   by SQLite's write lock, so revisions strictly grow in commit order. A listing returns the
//!   counter read in the same snapshot.
//! - Every write is one `BEGIN IMMEDIATE` transaction that first reaps the expired sessions
//!   (deleting their keys and bumping the revision if it deleted any), then checks the
//!   conditions and applies the writes: all or nothing.
//! - Expiry runs on the host's CLOCK_BOOTTIME plus its boot id (module `clock`), never on a
//!   wall clock: a wall-clock step cannot shorten (or lengthen) a session, and a session of an
//!   earlier boot is expired. `KeepAlive` is one conditional `UPDATE … WHERE id = ? AND
//!   boot_id = ? AND expires_ns > now` under the write lock: it never revives an expired
//!   session, and it is applied by the only authority that expires sessions (the database
//!   under its write lock), so [`Store::keepalive_proves_previous`] is false. The TTL granted
//!   is the one requested, clamped into [`SqliteOptions::min_ttl`]..=[`SqliteOptions::max_ttl`].
//! - Reads are linearizable (one host; a read transaction sees every committed write) and hide
//!   keys of sessions that have expired but are not reaped yet, so they agree with what the
//!   next write transaction will see.
//! - Watches: one poller task per store polls `PRAGMA data_version` every
//!   [`SqliteOptions::poll_interval`] (backing off to [`SqliteOptions::max_poll_interval`] while
//!   nothing changes), reads the revision when the file changed, and wakes every watch when the
//!   revision moved (`Changed`; coarse: any change wakes every prefix). It also reaps expired
//!   sessions when it sees one, so an expiry is noticed and notified even when nobody writes.
//!   A new watch yields `Reset` once the poller has read its baseline.
//! - Errors: `SQLITE_BUSY`/`SQLITE_LOCKED` after the busy timeout are `Unavailable` (nothing
//!   was applied); a failed `COMMIT` is `Indeterminate`; a failure before `COMMIT` is
//!   `Unavailable` (the transaction is rolled back); a corrupt file or row is `Unavailable`
//!   with a message naming the file. Opening checks the file and fails with a typed
//!   [`SqliteError`] that names it.
//! - Read-only ([`SqliteOptions::read_only`], for tools that only look): every connection is
//!   `SQLITE_OPEN_READONLY`; nothing is upgraded or reaped (reads hide expired sessions' keys
//!   anyway, and the poller notifies an expiry by the count of expired sessions), every write
//!   is `Invalid`. Without [`SqliteOptions::create`] a missing file is
//!   [`SqliteError::NoSuchFile`] and nothing is created.
//!
//! rusqlite is blocking: every operation runs on `spawn_blocking`, on one writer connection
//! or one reader connection (each behind an async mutex, so waiting never holds a thread);
//! the poller has its own connection.
//!
//! Limits:
//! - One host. Processes of another host see their own boot id and treat every session of
//!   this one as expired: a file shared over a network file system breaks safety (and SQLite
//!   locking is unreliable there anyway).
//! - Watches are coarse (any change wakes every watch of the store) and notify within
//!   about `max_poll_interval` plus one poll.
//! - Between an expiry and its reaping (at most one poll if a watch is open, otherwise at the
//!   next write), reads already hide the expired session's keys but report the revision from
//!   before; the reaping then moves it forward.
//! - **Restoring a backup while members run is unsafe**: the restore brings back the file id
//!   and the lower session-id and revision counters of the copied file, so it is not seen as
//!   another file, a new session can get the id of an erased one, and tokens can repeat. Stop
//!   every member (and wait one TTL) before restoring a file.
//!
//! A file deleted or replaced under running processes (deleted, created again by another
//! process, renamed over, or another database copied over it in place) is detected: the store
//! remembers the identity of the file it adopted (device and inode of the path, and the random
//! `meta.file_id` drawn when the file was created) and checks it around every operation (a
//! `stat` of the path before and after, the file id inside every transaction) and at every
//! poll. On a change it retires the old file: sessions this store opened on it are answered
//! `SessionExpired` from then on (the member rejoins), an operation that overlapped the change
//! fails (`SessionExpired` if it names a session, `Unavailable` otherwise), every watch ends
//! (the runtime re-arms it and re-reads), and the store follows the path to the new file once
//! one of this schema is there (`Unavailable` while none is). The new file's counters start
//! above the old one's (see `schema::counter_floor` for why and its limits), so tokens and
//! session ids do not repeat. Members still hold their leases until their local deadline, as
//! in any session loss: the bound on double access after a replacement is the lease deadline,
//! and fenced resources see strictly larger tokens from the new file.

mod clock;
mod error;
mod ops;
pub mod schema;
mod url;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_core::SessionId;
use rebalanser_store::{
    BoxFuture, Cond, Key, SessionInfo, Store, StoreError, StoreOp, StoreReply, StoreResult,
    WatchEvent, Write,
};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::watch;

use crate::clock::HostClock;
use crate::error::{open_error, poisons_connection, store_error, Phase};

pub use error::SqliteError;

/// Settings of a [`SqliteStore`] beyond its path.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How often the watch poller looks for changes while they keep coming. Adds to the
    /// failover bound (DESIGN §1.4) and to notification latency.
    pub poll_interval: Duration,
    /// The poller backs off to this while nothing changes.
    pub max_poll_interval: Duration,
    /// Longest an operation waits for another process's write lock before it fails with
    /// `Unavailable`. Keep it well below the keepalive slack: a keepalive that waits longer
    /// is better retried.
    pub busy_timeout: Duration,
    /// Longest [`SqliteStore::open`] waits for other connections' locks.
    pub open_timeout: Duration,
    /// Granted session TTLs are the requested ones clamped into this range.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Open an existing file for reading only (tools that only look, e.g. `status`): the
    /// connections are opened `SQLITE_OPEN_READONLY`, so neither the file nor its sessions
    /// are ever changed (no schema upgrade, no reaping: reads already hide the keys of expired
    /// sessions); every write is refused with `StoreError::Invalid` naming the file. Needs
    /// `create` off. SQLite may still create the `-wal`/`-shm` companions of a file in WAL
    /// mode when none exist (a reader needs the shared-memory index), never the database.
    pub read_only: bool,
    /// Create and initialise the file when it is missing or empty (the default). Off: a
    /// missing file is [`SqliteError::NoSuchFile`] and nothing is created, so a mistyped path
    /// leaves no stray file behind.
    pub create: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            poll_interval: Duration::from_millis(25),
            max_poll_interval: Duration::from_millis(50),
            busy_timeout: Duration::from_millis(150),
            open_timeout: Duration::from_secs(2),
            min_ttl: Duration::from_millis(10),
            max_ttl: Duration::from_secs(3600),
            read_only: false,
            create: true,
        }
    }
}

impl SqliteOptions {
    fn validate(&self) -> Result<(), SqliteError> {
        let bad = |m: &str| Err(SqliteError::Options(m.to_string()));
        if self.poll_interval.is_zero() || self.max_poll_interval < self.poll_interval {
            return bad("need 0 < poll_interval <= max_poll_interval");
        }
        if self.busy_timeout.is_zero() || self.open_timeout.is_zero() {
            return bad("busy_timeout and open_timeout must be positive");
        }
        if self.min_ttl.is_zero() || self.max_ttl < self.min_ttl {
            return bad("need 0 < min_ttl <= max_ttl");
        }
        if self.max_ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
            return bad("max_ttl over a century");
        }
        if self.read_only && self.create {
            return bad("a read-only store cannot create its file: set create = false");
        }
        Ok(())
    }
}

/// A Store on a SQLite database file shared by the processes of one host. Cloning shares the
/// connections and the poller.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// A connection, with the generation of the file it was opened on.
struct Conn {
    conn: Connection,
    generation: u64,
}

/// Which file a store works on: the one found at its path when it opened or last followed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdent {
    dev: u64,
    ino: u64,
    file_id: i64,
}

/// The adopted file and its local generation, bumped whenever the file is retired: sessions
/// opened under an older generation belong to a file that is gone.
struct Adopted {
    generation: u64,
    /// `None` after the file was retired and before another one was adopted.
    file: Option<FileIdent>,
}

struct Inner {
    /// Absolute path of the database file.
    path: PathBuf,
    /// `path` for messages.
    file: String,
    opts: SqliteOptions,
    clock: HostClock,
    writer: Slot,
    reader: Slot,
    /// The live poller's channel: `None` until it read its first revision, then a counter of
    /// the changes it saw. Held here as a receiver (to subscribe more), so the poller's
    /// sender is the only one: when the poller ends, every watch ends.
    notify: Mutex<Option<watch::Receiver<Option<u64>>>>,
    /// Fault injection: while set the poller stops polling and drops its connection.
    paused: AtomicBool,
    adopted: Mutex<Adopted>,
    /// The sessions this store opened, with the file generation they belong to. Entries leave
    /// when a session is closed or its file reports it expired; those of a retired file stay
    /// (a few bytes each), so they are refused for good even if a new file reuses their ids.
    sessions: Mutex<BTreeMap<SessionId, u64>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only an Option is stored: consistent across a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options. Blocks for at
    /// most [`SqliteOptions::open_timeout`] plus the file checks; from async code, call it in
    /// `spawn_blocking` if that matters.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, SqliteError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens a store from `sqlite:///abs/path.db` or `sqlite://relative/path.db`.
    pub fn from_url(url: &str) -> Result<SqliteStore, SqliteError> {
        Self::from_url_with(url, SqliteOptions::default())
    }

    pub fn from_url_with(url: &str, opts: SqliteOptions) -> Result<SqliteStore, SqliteError> {
        Self::open_with(url::parse(url)?, opts)
    }

    /// Opens the database at `path`: creates and initialises it if the file is missing or
    /// empty; refuses a file that is not a SQLite database, another application's database,
    /// a schema of another version or a damaged one; checks that it can take the write lock
    /// within the open timeout (and reaps sessions of earlier boots while it holds it).
    pub fn open_with(
        path: impl AsRef<Path>,
        opts: SqliteOptions,
    ) -> Result<SqliteStore, SqliteError> {
        opts.validate()?;
        let path = std::path::absolute(path.as_ref()).map_err(|e| SqliteError::Other {
            path: path.as_ref().to_path_buf(),
            detail: format!("cannot make the path absolute: {e}"),
        })?;
        let clock = HostClock::new().map_err(|detail| SqliteError::Clock {
            path: path.clone(),
            detail,
        })?;
        let conn = schema::open(&path, &opts)?;
        let file = path.display().to_string();
        let file_id =
            schema::file_id(&conn).map_err(|e| open_error(&path, opts.open_timeout, e))?;
        // Taken after the connection exists: if the path was replaced in between, the file id
        // check of the first transaction tells, and the store follows the path then.
        let (dev, ino) = stat(&path).map_err(|e| SqliteError::Other {
            path: path.clone(),
            detail: format!("the file vanished while opening it: {e}"),
        })?;
        // A read-only store never writes: it leaves expired sessions to the next writer (its
        // reads hide their keys meanwhile), and it cannot prove a lock it never takes.
        if !opts.read_only {
            let ctx = ops::Ctx {
                clock: &clock,
                file: &file,
                min_ttl: opts.min_ttl,
                max_ttl: opts.max_ttl,
                file_id,
            };
            // One write transaction now: proves the file writable and the lock obtainable.
            match ops::reap_txn(&conn, &ctx) {
                Ok(()) => {}
                Err(ops::ReapError::Sql(e)) => return Err(open_error(&path, opts.open_timeout, e)),
                // Cannot happen: the id was read on this connection (invariant of `file_id`).
                Err(ops::ReapError::Replaced) => {
                    return Err(SqliteError::Other {
                        path: path.clone(),
                        detail: "the file changed while opening it".into(),
                    })
                }
            }
        }
        conn.busy_timeout(opts.busy_timeout)
            .map_err(|e| open_error(&path, opts.open_timeout, e))?;
        tracing::debug!(file = %file, boot_id = clock.boot_id(), read_only = opts.read_only, "opened SQLite store");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                file,
                opts,
                clock,
                writer: Arc::new(tokio::sync::Mutex::new(Some(Conn {
                    conn,
                    generation: 0,
                }))),
                reader: Arc::new(tokio::sync::Mutex::new(None)),
                notify: Mutex::new(None),
                paused: AtomicBool::new(false),
                adopted: Mutex::new(Adopted {
                    generation: 0,
                    file: Some(FileIdent { dev, ino, file_id }),
                }),
                sessions: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The absolute path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn options(&self) -> &SqliteOptions {
        &self.inner.opts
    }

    /// Fault injection for tests: the poller stops polling and closes its connection, so this
    /// store's watches hear of nothing until [`SqliteStore::resume_notifications`]. Changes
    /// made meanwhile are noticed on resume (the poller compares revisions, not events).
    pub fn pause_notifications(&self) {
        self.inner.paused.store(true, Ordering::SeqCst);
    }

    /// Ends [`SqliteStore::pause_notifications`].
    pub fn resume_notifications(&self) {
        self.inner.paused.store(false, Ordering::SeqCst);
    }
}

impl Store for SqliteStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        Box::pin(async move {
            let write = op.is_write();
            let r = self.inner.execute(op).await;
            if let Err(e) = &r {
                tracing::debug!(file = %self.inner.file, error = %e, write, "sqlite op failed");
            }
            r
        })
    }

    fn watch(&self, _prefix: Key) -> BoxStream<'static, WatchEvent> {
        // Coarse: every watch wakes on any change of the file's revision.
        let start = Some(self.inner.clone());
        futures::stream::unfold(
            (start, None::<watch::Receiver<Option<u64>>>),
            |(start, rx)| async move {
                match rx {
                    None => {
                        // Subscribed on the first poll (inside the runtime); `Reset` only
                        // once the poller has its baseline, so a re-read after it misses
                        // nothing the poller will not report as `Changed`.
                        let mut rx = start?.subscribe();
                        rx.wait_for(|v| v.is_some()).await.ok()?;
                        Some((WatchEvent::Reset, (None, Some(rx))))
                    }
                    Some(mut rx) => {
                        rx.changed().await.ok()?;
                        Some((WatchEvent::Changed, (None, Some(rx))))
                    }
                }
            },
        )
        .boxed()
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.file)
    }

    /// From the `sessions` rows, on this host's CLOCK_BOOTTIME (the clock that decides their
    /// expiry): a keepalive sets `expires_ns = now + ttl_ns`, so the time since it is
    /// `ttl_ns` minus the time left. Sessions of another boot or past their expiry are left
    /// out, as reads hide them.
    fn session_info(
        &self,
        sessions: Vec<SessionId>,
    ) -> BoxFuture<'_, Result<BTreeMap<SessionId, SessionInfo>, StoreError>> {
        Box::pin(async move {
            let guard = self.inner.reader.clone().lock_owned().await;
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                let mut guard = guard;
                inner.session_info_blocking(&mut guard, &sessions)
            })
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable(format!(
                    "{}: the session query's thread failed: {e}",
                    self.inner.file
                )))
            })
        })
    }

    /// A keepalive is applied under the write lock by the only authority that expires
    /// sessions: its success proves itself.
    fn keepalive_proves_previous(&self) -> bool {
        false
    }

    /// Every keepalive is a `BEGIN IMMEDIATE` transaction with an fsync, queued behind every
    /// other process's writes for up to the busy timeout (150 ms by default). Measured (two
    /// members, the CLI's timings, a loaded 2-core host; tests/session_ttl.rs in
    /// `rebalanser`): 35 lost sessions in 5 s at a 50 ms TTL, 21 at 100 ms, one suspension at
    /// 200 ms, none from 300 ms up. 500 ms leaves that margin, and at least three busy waits.
    fn min_session_ttl(&self) -> Duration {
        Duration::from_millis(500).max(self.inner.opts.busy_timeout * 3)
    }
}

/// Device and inode of the file at `path` now.
fn stat(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// An operation's kind, for the refusal of a read-only store.
fn op_name(op: &StoreOp) -> &'static str {
    match op {
        StoreOp::OpenSession { .. } => "OpenSession",
        StoreOp::KeepAlive { .. } => "KeepAlive",
        StoreOp::CloseSession { .. } => "CloseSession",
        StoreOp::Txn { .. } => "a write transaction",
        StoreOp::Get { .. } | StoreOp::List { .. } | StoreOp::Read { .. } => "a read",
    }
}

/// The sessions an operation acts for.
fn sessions_of(op: &StoreOp) -> Vec<SessionId> {
    match op {
        StoreOp::KeepAlive { session } | StoreOp::CloseSession { session } => vec![*session],
        StoreOp::Txn { conds, writes } => conds
            .iter()
            .filter_map(|c| match c {
                Cond::Owned { session, .. } => Some(*session),
                _ => None,
            })
            .chain(writes.iter().filter_map(|w| match w {
                Write::Create { owner, .. } => *owner,
                _ => None,
            }))
            .collect(),
        StoreOp::OpenSession { .. }
        | StoreOp::Get { .. }
        | StoreOp::List { .. }
        | StoreOp::Read { .. } => Vec::new(),
    }
}

impl Inner {
    fn ctx(&self, file_id: i64) -> ops::Ctx<'_> {
        ops::Ctx {
            clock: &self.clock,
            file: &self.file,
            min_ttl: self.opts.min_ttl,
            max_ttl: self.opts.max_ttl,
            file_id,
        }
    }

    /// The file at the path now and the generation it belongs to. Retires the adopted file if
    /// the path no longer leads to it, and adopts the file found there if it is ours.
    fn current(&self) -> (u64, Result<FileIdent, StoreError>) {
        let mut a = lock(&self.adopted);
        let found = stat(&self.path);
        if let (Some(f), Ok(at)) = (&a.file, &found) {
            if (f.dev, f.ino) == *at {
                return (a.generation, Ok(*f));
            }
        }
        if a.file.is_some() {
            Self::retire_locked(&mut a, &self.file);
        }
        let r = match found {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Unavailable(
                format!("{}: the database file is missing (deleted?)", self.file),
            )),
            Err(e) => Err(StoreError::Unavailable(format!("{}: {e}", self.file))),
            Ok(at) => self.adopt(at).inspect(|f| {
                tracing::info!(file = %self.file, "following the database file now at the path");
                a.file = Some(*f);
            }),
        };
        (a.generation, r)
    }

    /// Identifies the file at the path, which was at `at` a moment ago.
    fn adopt(&self, at: (u64, u64)) -> Result<FileIdent, StoreError> {
        let unavailable = |why: String| StoreError::Unavailable(format!("{}: {why}", self.file));
        let conn = schema::connect(&self.path, self.opts.busy_timeout, self.opts.read_only)
            .map_err(|e| store_error(&self.file, Phase::BeforeCommit, &e))?;
        let file_id = schema::identify_ours(&conn).map_err(unavailable)?;
        // Between two equal stats, the connection is on the file they saw.
        match stat(&self.path) {
            Ok(again) if again == at => Ok(FileIdent {
                dev: at.0,
                ino: at.1,
                file_id,
            }),
            _ => Err(unavailable("the database file is changing; retry".into())),
        }
    }

    /// Retires generation `generation`'s file, unless another thread already did.
    fn retire(&self, generation: u64) {
        let mut a = lock(&self.adopted);
        if a.generation == generation && a.file.is_some() {
            Self::retire_locked(&mut a, &self.file);
        }
    }

    fn retire_locked(a: &mut Adopted, file: &str) {
        tracing::warn!(
            file = %file,
            "the database file was deleted or replaced: sessions opened on it are expired"
        );
        a.file = None;
        a.generation += 1;
    }

    /// `SessionExpired` if `op` acts for a session this store opened on a retired file.
    fn stale_session(&self, op: &StoreOp, generation: u64) -> Option<StoreResult> {
        let named = sessions_of(op);
        if named.is_empty() {
            return None;
        }
        let mut sessions = lock(&self.sessions);
        let stale = named
            .iter()
            .any(|s| sessions.get(s).is_some_and(|g| *g != generation));
        if !stale {
            return None;
        }
        if let StoreOp::CloseSession { session } = op {
            // Gone with its file: closing it is done.
            sessions.remove(session);
            return Some(Ok(StoreReply::Closed));
        }
        Some(Err(StoreError::SessionExpired))
    }

    /// Keeps [`Inner::sessions`] up to date with a successful or refused operation.
    fn note_sessions(&self, op: &StoreOp, result: &StoreResult, generation: u64) {
        let mut sessions = lock(&self.sessions);
        match (op, result) {
            (StoreOp::OpenSession { .. }, Ok(StoreReply::Session { session, .. })) => {
                sessions.insert(*session, generation);
            }
            (StoreOp::CloseSession { session }, Ok(_))
            | (StoreOp::KeepAlive { session }, Err(StoreError::SessionExpired)) => {
                sessions.remove(session);
            }
            _ => {}
        }
    }

    async fn execute(self: &Arc<Self>, op: StoreOp) -> StoreResult {
        let write = op.is_write();
        if write && self.opts.read_only {
            // Refused before any connection is touched: the file stays exactly as it was.
            return Err(StoreError::Invalid(format!(
                "{}: the store was opened read-only; refusing {}",
                self.file,
                op_name(&op)
            )));
        }
        let slot = if write { &self.writer } else { &self.reader };
        let guard = slot.clone().lock_owned().await;
        let inner = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            inner.execute_blocking(&mut guard, &op)
        })
        .await;
        match r {
            Ok(r) => r,
            Err(e) if write => Err(StoreError::Indeterminate(format!(
                "{}: the operation's thread failed: {e}",
                self.file
            ))),
            Err(e) => Err(StoreError::Unavailable(format!(
                "{}: the operation's thread failed: {e}",
                self.file
            ))),
        }
    }

    /// The slot's connection to the file of `generation`, opened when the slot is empty or
    /// holds one to a retired file.
    fn connection<'a>(
        &self,
        slot: &'a mut Option<Conn>,
        generation: u64,
    ) -> Result<&'a Connection, StoreError> {
        if slot.as_ref().is_some_and(|c| c.generation != generation) {
            *slot = None; // open on a retired file
        }
        match slot {
            Some(c) => Ok(&c.conn),
            None => {
                match schema::connect(&self.path, self.opts.busy_timeout, self.opts.read_only) {
                    Ok(conn) => Ok(&slot.insert(Conn { conn, generation }).conn),
                    Err(e) => Err(store_error(&self.file, Phase::BeforeCommit, &e)),
                }
            }
        }
    }

    fn execute_blocking(&self, slot: &mut Option<Conn>, op: &StoreOp) -> StoreResult {
        let (generation, file) = self.current();
        if let Some(r) = self.stale_session(op, generation) {
            return r;
        }
        let file = file?;
        let conn = self.connection(slot, generation)?;
        let out = ops::execute(conn, &self.ctx(file.file_id), op);
        // Checked after the op too: a success must mean the commit went to the file that was
        // at the path after it, the one every other process works on.
        let changed = out.replaced || stat(&self.path).ok() != Some((file.dev, file.ino));
        if changed {
            *slot = None;
            self.retire(generation);
            if !sessions_of(op).is_empty() {
                // Whatever it did, it did to a file nobody uses any more.
                return Err(StoreError::SessionExpired);
            }
            return Err(StoreError::Unavailable(format!(
                "{}: the database file was replaced during the operation",
                self.file
            )));
        }
        if let Some(e) = &out.sql_error {
            if poisons_connection(e) {
                tracing::warn!(file = %self.file, error = %e, "reopening the SQLite connection");
                *slot = None;
            }
        }
        self.note_sessions(op, &out.result, generation);
        out.result
    }

    fn session_info_blocking(
        &self,
        slot: &mut Option<Conn>,
        sessions: &[SessionId],
    ) -> Result<BTreeMap<SessionId, SessionInfo>, StoreError> {
        let (generation, file) = self.current();
        file?;
        let conn = self.connection(slot, generation)?;
        let now = self.clock.now_ns();
        let query = || -> rusqlite::Result<BTreeMap<SessionId, SessionInfo>> {
            let mut st = conn.prepare_cached(
                "SELECT ttl_ns, expires_ns FROM sessions \
                 WHERE id = ?1 AND boot_id = ?2 AND expires_ns > ?3",
            )?;
            let mut out = BTreeMap::new();
            for s in sessions {
                let Ok(id) = i64::try_from(s.0) else { continue };
                let row: Option<(i64, i64)> = st
                    .query_row((id, self.clock.boot_id(), now), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                if let Some((ttl, expires)) = row {
                    let left = u64::try_from(expires - now).unwrap_or(0);
                    let since = u64::try_from(ttl).unwrap_or(0).saturating_sub(left);
                    out.insert(
                        *s,
                        SessionInfo::new(Duration::from_nanos(since), Duration::from_nanos(left)),
                    );
                }
            }
            Ok(out)
        };
        query().map_err(|e| {
            if poisons_connection(&e) {
                *slot = None;
            }
            store_error(&self.file, Phase::BeforeCommit, &e)
        })
    }

    /// A receiver of the live poller, starting one if none runs.
    fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<u64>> {
        let mut slot = lock(&self.notify);
        if let Some(rx) = slot.as_ref() {
            if rx.has_changed().is_ok() {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(None);
        *slot = Some(rx.clone());
        tokio::spawn(poll_loop(Arc::downgrade(self), tx));
        rx
    }

    /// One poll: the current revision and the number of expired sessions not reaped yet,
    /// after reaping them (unless read-only). A read-only store cannot reap, so the count is
    /// what tells its watches that a session expired.
    fn poll_once(&self, st: &mut PollState) -> Result<(u64, u64), PollError> {
        let (generation, file) = self.current();
        if st.generation.is_some_and(|g| g != generation) {
            return Err(PollError::Replaced);
        }
        let file = file.map_err(PollError::NoFile)?;
        st.generation = Some(generation);
        let conn = match &mut st.conn {
            Some(c) => c,
            None => {
                st.data_version = None;
                st.conn.insert(schema::connect(
                    &self.path,
                    self.opts.busy_timeout,
                    self.opts.read_only,
                )?)
            }
        };
        if schema::file_id(conn)? != file.file_id {
            self.retire(generation);
            return Err(PollError::Replaced);
        }
        let dv: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let now = self.clock.now_ns();
        let due = st.expired > 0 || st.next_expiry.is_some_and(|e| e <= now);
        if let (Some(rev), false, true) = (st.rev, due, st.data_version == Some(dv)) {
            return Ok((rev, st.expired)); // nobody committed anything, no session is due to expire
        }
        let mut snapshot = read_snapshot(conn, &self.clock, now)?;
        if snapshot.expired > 0 && !self.opts.read_only {
            match ops::reap_txn(conn, &self.ctx(file.file_id)) {
                Ok(()) => {}
                // Busy: try again at the next tick (`due` stays set).
                Err(ops::ReapError::Sql(e)) => return Err(e.into()),
                Err(ops::ReapError::Replaced) => {
                    self.retire(generation);
                    return Err(PollError::Replaced);
                }
            }
            snapshot = read_snapshot(conn, &self.clock, now)?;
        }
        st.data_version = Some(dv);
        st.next_expiry = snapshot.next_expiry;
        st.expired = snapshot.expired;
        st.rev = Some(snapshot.rev);
        Ok((snapshot.rev, snapshot.expired))
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    /// Retry at the next tick (reopening the connection if `poisons_connection`).
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// No file of ours at the path: retry at the next tick.
    #[error(transparent)]
    NoFile(StoreError),
    /// The file this poller watched was retired: end every watch (they re-arm and re-read).
    #[error("the database file was deleted or replaced")]
    Replaced,
}

/// What the poller knows between ticks.
#[derive(Default)]
struct PollState {
    /// The file generation this poller watches; it ends when the store retires it.
    generation: Option<u64>,
    conn: Option<Connection>,
    /// `PRAGMA data_version` at the last full read (changes when another connection commits).
    data_version: Option<i64>,
    rev: Option<u64>,
    /// The earliest expiry among this boot's sessions still alive at the last read.
    next_expiry: Option<i64>,
    /// Sessions expired (or of another boot) but not reaped at the last read.
    expired: u64,
}

struct Snapshot {
    rev: u64,
    next_expiry: Option<i64>,
    expired: u64,
}

fn read_snapshot(c: &Connection, clock: &HostClock, now: i64) -> rusqlite::Result<Snapshot> {
    c.execute_batch("BEGIN DEFERRED")?;
    let r = (|| {
        let rev = ops::current_rev(c)?;
        let (next_expiry, expired): (Option<i64>, i64) = c
            .prepare_cached(
                "SELECT min(CASE WHEN boot_id = ?1 AND expires_ns > ?2 THEN expires_ns END), \
                 count(CASE WHEN boot_id <> ?1 OR expires_ns <= ?2 THEN 1 END) FROM sessions",
            )?
            .query_row((clock.boot_id(), now), |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Snapshot {
            rev,
            next_expiry,
            expired: u64::try_from(expired).unwrap_or(0),
        })
    })();
    let end = c.execute_batch("COMMIT");
    match (r, end) {
        (Ok(s), Ok(())) => Ok(s),
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The poller: runs while some watch listens and the store lives.
async fn poll_loop(store: Weak<Inner>, tx: watch::Sender<Option<u64>>) {
    let mut st = PollState::default();
    let mut last_rev: Option<(u64, u64)> = None;
    let mut interval = Duration::ZERO;
    let mut failures: u32 = 0;
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = store.upgrade() else { return };
        {
            // Only the store's own receiver is left: stop (under the lock `subscribe` takes,
            // so a new watch either sees this poller alive or starts another).
            let mut slot = lock(&inner.notify);
            if tx.receiver_count() <= 1 {
                *slot = None;
                return;
            }
        }
        let (min, max) = (inner.opts.poll_interval, inner.opts.max_poll_interval);
        if inner.paused.load(Ordering::SeqCst) {
            st.conn = None;
            interval = min;
            continue;
        }
        let worker = inner.clone();
        let mut state = std::mem::take(&mut st);
        let r = tokio::task::spawn_blocking(move || {
            let r = worker.poll_once(&mut state);
            (state, r)
        })
        .await;
        match r {
            Ok((state, Ok(rev))) => {
                st = state;
                failures = 0;
                if last_rev != Some(rev) {
                    last_rev = Some(rev);
                    tx.send_modify(|v| *v = Some(v.map_or(0, |n| n.wrapping_add(1))));
                    interval = min;
                } else {
                    interval = (interval * 2).clamp(min, max);
                }
            }
            Ok((_, Err(PollError::Replaced))) => {
                tracing::info!(file = %inner.file, "database file replaced: ending its watches");
                let mut slot = lock(&inner.notify);
                *slot = None;
                return;
            }
            Ok((mut state, Err(e))) => {
                if matches!(&e, PollError::Sql(e) if poisons_connection(e)) {
                    state.conn = None;
                }
                st = state;
                failures += 1;
                // Busy is routine (another process writes); say so only when it persists.
                let poisoned = matches!(&e, PollError::Sql(e) if poisons_connection(e));
                if failures == 20 || (poisoned && failures == 1) {
                    tracing::warn!(file = %inner.file, error = %e, failures, "sqlite watch poll failing");
                }
                interval = min;
            }
            Err(e) => {
                tracing::warn!(file = %inner.file, error = %e, "sqlite watch poll panicked");
                interval = max;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller_running(store: &SqliteStore) -> bool {
        lock(&store.inner.notify).is_some()
    }

    async fn next(w: &mut BoxStream<'static, WatchEvent>) -> Option<WatchEvent> {
        tokio::time::timeout(Duration::from_secs(2), w.next())
            .await
            .expect("no event within 2 s")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_poller_serves_every_watch_and_ends_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
        let mut a = store.watch("a/".into());
        let mut b = store.watch("b/".into());
        assert!(!poller_running(&store), "started only when polled");
        assert_eq!(next(&mut a).await, Some(WatchEvent::Reset));
        assert_eq!(next(&mut b).await, Some(WatchEvent::Reset));
        assert!(poller_running(&store));
        drop(a);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(poller_running(&store), "b still listens");
        drop(b);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!poller_running(&store), "no watch left: the poller ended");
        // A new watch starts a new poller; dropping the store ends the watch.
        let mut c = store.watch("c/".into());
        assert_eq!(next(&mut c).await, Some(WatchEvent::Reset));
        drop(store);
        assert_eq!(next(&mut c).await, None);
    }
}
