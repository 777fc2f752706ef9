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
//! - A database file deleted or replaced under running processes is not detected; session ids
//!   of the new file start again from 1. **Restoring a backup while members run is unsafe**: the
//!   restore brings back the session-id and revision counters, so a new session can get the id
//!   of an erased one and the erased member's keepalives renew it. Stop every member (and wait
//!   one TTL) before restoring or replacing the file.

mod clock;
mod error;
mod ops;
pub mod schema;
mod url;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_store::{BoxFuture, Key, Store, StoreError, StoreOp, StoreResult, WatchEvent};
use rusqlite::Connection;
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
        Ok(())
    }
}

/// A Store on a SQLite database file shared by the processes of one host. Cloning shares the
/// connections and the poller.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

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
        let conn = schema::open(&path, opts.open_timeout)?;
        let file = path.display().to_string();
        {
            let ctx = ops::Ctx {
                clock: &clock,
                file: &file,
                min_ttl: opts.min_ttl,
                max_ttl: opts.max_ttl,
            };
            // One write transaction now: proves the file writable and the lock obtainable.
            if let Some(e) = ops::reap_txn(&conn, &ctx) {
                return Err(open_error(&path, opts.open_timeout, e));
            }
        }
        conn.busy_timeout(opts.busy_timeout)
            .map_err(|e| open_error(&path, opts.open_timeout, e))?;
        tracing::debug!(file = %file, boot_id = clock.boot_id(), "opened SQLite store");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                file,
                opts,
                clock,
                writer: Arc::new(tokio::sync::Mutex::new(Some(conn))),
                reader: Arc::new(tokio::sync::Mutex::new(None)),
                notify: Mutex::new(None),
                paused: AtomicBool::new(false),
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

    /// A keepalive is applied under the write lock by the only authority that expires
    /// sessions: its success proves itself.
    fn keepalive_proves_previous(&self) -> bool {
        false
    }
}

impl Inner {
    fn ctx(&self) -> ops::Ctx<'_> {
        ops::Ctx {
            clock: &self.clock,
            file: &self.file,
            min_ttl: self.opts.min_ttl,
            max_ttl: self.opts.max_ttl,
        }
    }

    async fn execute(self: &Arc<Self>, op: StoreOp) -> StoreResult {
        let write = op.is_write();
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

    fn execute_blocking(&self, slot: &mut Option<Connection>, op: &StoreOp) -> StoreResult {
        let conn = match slot {
            Some(c) => c,
            None => match schema::connect(&self.path, self.opts.busy_timeout) {
                Ok(c) => slot.insert(c),
                Err(e) => return Err(store_error(&self.file, Phase::BeforeCommit, &e)),
            },
        };
        let out = ops::execute(conn, &self.ctx(), op);
        if let Some(e) = &out.sql_error {
            if poisons_connection(e) {
                tracing::warn!(file = %self.file, error = %e, "reopening the SQLite connection");
                *slot = None;
            }
        }
        out.result
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

    /// One poll: the current revision, after reaping if a session has expired.
    fn poll_once(&self, st: &mut PollState) -> rusqlite::Result<u64> {
        let conn = match &mut st.conn {
            Some(c) => c,
            None => {
                st.data_version = None;
                st.conn
                    .insert(schema::connect(&self.path, self.opts.busy_timeout)?)
            }
        };
        let dv: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let now = self.clock.now_ns();
        let due = st.foreign_boot || st.next_expiry.is_some_and(|e| e <= now);
        if let (Some(rev), false, true) = (st.rev, due, st.data_version == Some(dv)) {
            return Ok(rev); // nobody committed anything, and no session is due to expire
        }
        let mut snapshot = read_snapshot(conn, &self.clock)?;
        if snapshot.expired(now) {
            if let Some(e) = ops::reap_txn(conn, &self.ctx()) {
                return Err(e); // busy: try again at the next tick (`due` stays set)
            }
            snapshot = read_snapshot(conn, &self.clock)?;
        }
        st.data_version = Some(dv);
        st.next_expiry = snapshot.next_expiry;
        st.foreign_boot = snapshot.foreign_boot;
        st.rev = Some(snapshot.rev);
        Ok(snapshot.rev)
    }
}

/// What the poller knows between ticks.
#[derive(Default)]
struct PollState {
    conn: Option<Connection>,
    /// `PRAGMA data_version` at the last full read (changes when another connection commits).
    data_version: Option<i64>,
    rev: Option<u64>,
    /// The earliest expiry among this boot's sessions.
    next_expiry: Option<i64>,
    /// A session of another boot exists (expired, to be reaped).
    foreign_boot: bool,
}

struct Snapshot {
    rev: u64,
    next_expiry: Option<i64>,
    foreign_boot: bool,
}

impl Snapshot {
    fn expired(&self, now: i64) -> bool {
        self.foreign_boot || self.next_expiry.is_some_and(|e| e <= now)
    }
}

fn read_snapshot(c: &Connection, clock: &HostClock) -> rusqlite::Result<Snapshot> {
    c.execute_batch("BEGIN DEFERRED")?;
    let r = (|| {
        let rev = ops::current_rev(c)?;
        let (next_expiry, foreign): (Option<i64>, i64) = c
            .prepare_cached(
                "SELECT min(CASE WHEN boot_id = ?1 THEN expires_ns END), \
                 count(CASE WHEN boot_id <> ?1 THEN 1 END) FROM sessions",
            )?
            .query_row([clock.boot_id()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Snapshot {
            rev,
            next_expiry,
            foreign_boot: foreign > 0,
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
    let mut last_rev: Option<u64> = None;
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
            Ok((mut state, Err(e))) => {
                if poisons_connection(&e) {
                    state.conn = None;
                }
                st = state;
                failures += 1;
                // Busy is routine (another process writes); say so only when it persists.
                if failures == 20 || (poisons_connection(&e) && failures == 1) {
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
