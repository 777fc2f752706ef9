//! The database file: its schema, how a connection is set up, and how a file is recognised as
//! ours (or refused) when a store opens it.
//!
//! ```sql
//! meta(id = 1, rev, schema_version, created_wall_ms, file_id)   -- the revision counter row
//! sessions(id AUTOINCREMENT, ttl_ns, expires_ns, boot_id, opened_ns, renewals, pid,
//!          renewed_wall_ms)
//! kv(key TEXT PRIMARY KEY, value BLOB NOT NULL, version, create_rev, mod_rev,
//!    owner NULL REFERENCES sessions(id) ON DELETE CASCADE)   -- WITHOUT ROWID
//! ```
//!
//! `expires_ns` and `opened_ns` are instants of the host's CLOCK_BOOTTIME during the boot
//! `boot_id` (see the crate docs); `renewed_wall_ms` is wall-clock time for people reading the
//! table and is never used to decide anything. The file carries `PRAGMA application_id` =
//! [`APPLICATION_ID`] and `PRAGMA user_version` = [`SCHEMA_VERSION`].
//!
//! Identity and counters of a new file (schema version 2): `meta.file_id` is a random 63-bit
//! number drawn when the file is created, so a store can tell the file it opened from another
//! one later found at the same path (with the path's device and inode; see the crate docs).
//! The revision counter and the session-id sequence of a new file start at [`counter_floor`],
//! the wall clock in microseconds, not at 0: a file deleted and created again must not issue
//! revisions (fencing tokens) or session ids the old file already issued. A file of version 1
//! is upgraded when a store opens it: it gets a file id and both counters are raised to the
//! floor (they only grow).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{open_error, SqliteError};
use crate::SqliteOptions;

/// `PRAGMA application_id` of a Rebalanser database: "RBLN".
pub const APPLICATION_ID: i32 = 0x5242_4C4E;
/// `PRAGMA user_version` of the schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 2;
/// The one older version this build upgrades in place.
const UPGRADABLE_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rev INTEGER NOT NULL CHECK (rev >= 0),
    schema_version INTEGER NOT NULL,
    created_wall_ms INTEGER NOT NULL,
    file_id INTEGER NOT NULL
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl_ns INTEGER NOT NULL CHECK (ttl_ns > 0),
    expires_ns INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    opened_ns INTEGER NOT NULL,
    renewals INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL,
    renewed_wall_ms INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_ns);
CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL CHECK (length(value) > 0),
    version INTEGER NOT NULL CHECK (version >= 0),
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    owner INTEGER REFERENCES sessions (id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX kv_owner ON kv (owner) WHERE owner IS NOT NULL;
";

/// Statements every later operation relies on: preparing them proves the tables and columns
/// are there.
const PROBES: [&str; 3] = [
    "SELECT rev, schema_version, file_id FROM meta WHERE id = 1",
    "SELECT id, ttl_ns, expires_ns, boot_id, opened_ns, renewals, pid, renewed_wall_ms FROM sessions LIMIT 0",
    "SELECT key, value, version, create_rev, mod_rev, owner FROM kv LIMIT 0",
];

pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where the revision counter and the session-id sequence of a new (or upgraded) file start:
/// CLOCK_REALTIME in microseconds since the Unix epoch (about 1.8e15 in 2027; i64 lasts
/// ~290,000 years, and JSON's exact integers, 2^53, until about 2255).
///
/// Why it works: an older file at the same path started at its own creation time T0 and
/// bumps by one per committed write. Each write is a `synchronous=FULL` commit (an fsync,
/// ~0.1–10 ms), far slower than one per microsecond, so at any later time T1 the old file's
/// revision is below T1 in microseconds, which is where a file created at T1 starts. Limits:
/// it trusts the wall clock at creation time. A clock set back (to before the old file's
/// creation plus its number of writes in microseconds) between the two creations can let the
/// new file repeat old revisions; so can a backup restored over the file (it brings back its
/// lower counter with the old file id) and files created by builds before schema version 2
/// (they start at 0; opening one here upgrades it).
pub(crate) fn counter_floor() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2))
        .unwrap_or(0)
}

/// A random file id drawn by SQLite (seeded from the OS), kept non-negative.
const RANDOM_FILE_ID: &str = "(random() & 9223372036854775807)";

/// The file's id (`meta.file_id`) as `c` sees it now.
pub(crate) fn file_id(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT file_id FROM meta WHERE id = 1")?
        .query_row([], |r| r.get(0))
}

/// The id of the file `c` is open on, if it is a Rebalanser database of this schema (for a
/// store following its path to a new file: a foreign or half-created file is not adopted).
pub(crate) fn identify_ours(c: &Connection) -> Result<i64, String> {
    let read = || -> rusqlite::Result<(i32, i64)> {
        Ok((
            c.pragma_query_value(None, "application_id", |r| r.get(0))?,
            c.pragma_query_value(None, "user_version", |r| r.get(0))?,
        ))
    };
    match read() {
        Ok((APPLICATION_ID, SCHEMA_VERSION)) => file_id(c).map_err(|e| e.to_string()),
        Ok((app, version)) => Err(format!(
            "the file now at the path is not a Rebalanser database of schema version \
             {SCHEMA_VERSION} (application_id {app:#010x}, version {version}); reopen the store"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Opens a connection to an existing file (read-only if asked) and applies the
/// per-connection settings.
pub(crate) fn connect(
    path: &Path,
    busy_timeout: Duration,
    read_only: bool,
) -> rusqlite::Result<Connection> {
    let c = if read_only {
        open_read_only_conn(path)?
    } else {
        Connection::open_with_flags(path, flags(false, false))?
    };
    configure(&c, busy_timeout)?;
    Ok(c)
}

/// A read-only connection. A reader of a WAL database needs its `-wal`/`-shm` companions;
/// when no process has the database open they do not exist, and in a directory this process
/// may not write SQLite cannot create them (`SQLITE_READONLY_CANTINIT`). Then, and only then,
/// the file is read as immutable: with no `-wal` file nobody has it open, so the main file
/// holds every commit. Limit: a writer that opens the file later is not seen by this
/// connection (no locks, no change counter); a later connection, after the writer created the
/// `-wal` file, reads normally.
fn open_read_only_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(path, flags(true, false))?;
    // The first read of page 1 is where a missing WAL index shows.
    let probe = c.pragma_query_value(None, "application_id", |r| r.get::<_, i32>(0));
    match probe {
        Err(e)
            if crate::error::code(&e) == Some(rusqlite::ErrorCode::ReadOnly)
                && !wal_path(path).exists() =>
        {
            drop(c);
            tracing::debug!(file = %path.display(), "no -wal file and none can be created: reading the database as immutable");
            Connection::open_with_flags(
                immutable_uri(path),
                flags(true, false) | OpenFlags::SQLITE_OPEN_URI,
            )
        }
        _ => Ok(c),
    }
}

fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

/// `file:PATH?immutable=1`, the path escaped as a URI path (`%`, `?`, `#` and every byte
/// outside printable ASCII).
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("?immutable=1");
    out
}

fn configure(c: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    c.busy_timeout(busy_timeout)?;
    // Per connection: enforce the owner reference (and its cascade), and never let a crash
    // lose a commit that was reported (FULL syncs the WAL at every commit).
    c.pragma_update(None, "foreign_keys", true)?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// The open flags of a connection: read-only connections can never write the file, and
/// without `create` SQLite refuses a missing file instead of creating it.
fn flags(read_only: bool, create: bool) -> OpenFlags {
    let access = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else if create {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_EXRESCODE
}

/// Opens `path` and checks that it is a Rebalanser database of this schema: as
/// [`SqliteOptions`] say, creating and initialising it if it is new, or only reading it.
/// Waits at most `open_timeout` for other connections' locks.
pub(crate) fn open(path: &Path, opts: &SqliteOptions) -> Result<Connection, SqliteError> {
    let open_timeout = opts.open_timeout;
    let err = |e| open_error(path, open_timeout, e);
    let missing = || matches!(path.try_exists(), Ok(false));
    if !opts.create && missing() {
        return Err(SqliteError::NoSuchFile {
            path: path.to_path_buf(),
        });
    }
    let opened = if opts.read_only {
        open_read_only_conn(path)
    } else {
        Connection::open_with_flags(path, flags(false, opts.create))
    };
    let c = opened.map_err(|e| {
        // Deleted between the look and the open.
        if !opts.create && missing() {
            SqliteError::NoSuchFile {
                path: path.to_path_buf(),
            }
        } else {
            err(e)
        }
    })?;
    c.busy_timeout(open_timeout).map_err(err)?;
    // Read the header before changing anything: a foreign file must stay untouched.
    let (app_id, tables) = identify(&c).map_err(err)?;
    if opts.read_only {
        return open_read_only(c, path, app_id, &tables);
    }
    ours_or_empty(path, app_id, &tables)?;
    // WAL: readers never wait for the writer, and a commit is one append (+ fsync).
    let mode: String = c
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::Other {
            path: path.to_path_buf(),
            detail: format!("cannot switch to WAL mode (journal_mode stays {mode:?})"),
        });
    }
    configure(&c, open_timeout).map_err(err)?;
    if app_id == 0 {
        initialise(&c, path).map_err(err)?;
    } else {
        upgrade(&c, path).map_err(err)?;
    }
    check(&c, path)?;
    Ok(c)
}

/// The read-only end of [`open`]: a file is used as it is (never initialised or upgraded).
fn open_read_only(
    c: Connection,
    path: &Path,
    app_id: i32,
    tables: &[String],
) -> Result<Connection, SqliteError> {
    if ours_or_empty(path, app_id, tables)? {
        return Err(SqliteError::Other {
            path: path.to_path_buf(),
            detail: "an empty database without the Rebalanser schema (opened read-only, so it \
                     is not created)"
                .into(),
        });
    }
    // Only the per-connection settings: they change nothing in the file.
    c.pragma_update(None, "foreign_keys", true)
        .map_err(|e| open_error(path, Duration::ZERO, e))?;
    check(&c, path)?;
    Ok(c)
}

/// Whether the file is empty (`true`: no application id, no tables) or ours (`false`);
/// anything else is another application's file, never touched.
fn ours_or_empty(path: &Path, app_id: i32, tables: &[String]) -> Result<bool, SqliteError> {
    match app_id {
        APPLICATION_ID => Ok(false),
        0 if tables.is_empty() => Ok(true),
        0 => Err(SqliteError::Foreign {
            path: path.to_path_buf(),
            detail: format!("it has tables {}", tables.join(", ")),
        }),
        other => Err(SqliteError::Foreign {
            path: path.to_path_buf(),
            detail: format!(
                "application_id {other:#010x}, not Rebalanser's {APPLICATION_ID:#010x}"
            ),
        }),
    }
}

/// The application id and the tables, from one snapshot (another process may be
/// initialising the file meanwhile: both or neither of its changes are seen).
fn identify(c: &Connection) -> rusqlite::Result<(i32, Vec<String>)> {
    c.execute_batch("BEGIN DEFERRED")?;
    let r = (|| {
        let app_id: i32 = c.pragma_query_value(None, "application_id", |r| r.get(0))?;
        Ok((app_id, user_tables(c)?))
    })();
    let end = c.execute_batch("COMMIT");
    match (r, end) {
        (Ok(found), Ok(())) => Ok(found),
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn user_tables(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = st.query_map([], |r| r.get(0))?;
    names.collect()
}

/// Creates the schema in an empty file. Two processes may race here: the loser finds the
/// schema created under the write lock and leaves it alone.
fn initialise(c: &Connection, path: &Path) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        let app_id: i32 = c.pragma_query_value(None, "application_id", |r| r.get(0))?;
        if app_id != 0 || !user_tables(c)?.is_empty() {
            return Ok(());
        }
        tracing::info!(file = %path.display(), "creating a Rebalanser database");
        c.execute_batch(SCHEMA)?;
        let floor = counter_floor();
        c.execute(
            &format!(
                "INSERT INTO meta (id, rev, schema_version, created_wall_ms, file_id) \
                 VALUES (1, ?1, ?2, ?3, {RANDOM_FILE_ID})"
            ),
            (floor, SCHEMA_VERSION, wall_ms()),
        )?;
        raise_session_ids(c, floor)?;
        c.pragma_update(None, "application_id", APPLICATION_ID)?;
        c.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(())
    })();
    match r {
        Ok(()) => c.execute_batch("COMMIT"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The next session id is above `floor` (AUTOINCREMENT continues from `sqlite_sequence`).
fn raise_session_ids(c: &Connection, floor: i64) -> rusqlite::Result<()> {
    let updated = c.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'sessions'",
        [floor],
    )?;
    if updated == 0 {
        c.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('sessions', ?1)",
            [floor],
        )?;
    }
    Ok(())
}

/// Upgrades a version-1 file in place (a file id, counters raised to the floor); leaves any
/// other version to [`check`]. Racing openers: the loser finds it done under the write lock.
fn upgrade(c: &Connection, path: &Path) -> rusqlite::Result<()> {
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != UPGRADABLE_VERSION {
        return Ok(());
    }
    c.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != UPGRADABLE_VERSION {
            return Ok(());
        }
        tracing::info!(file = %path.display(), "upgrading the Rebalanser database to schema version 2");
        let floor = counter_floor();
        c.execute_batch("ALTER TABLE meta ADD COLUMN file_id INTEGER NOT NULL DEFAULT 0")?;
        c.execute(
            &format!(
                "UPDATE meta SET file_id = {RANDOM_FILE_ID}, rev = max(rev, ?1), \
                 schema_version = ?2 WHERE id = 1"
            ),
            (floor, SCHEMA_VERSION),
        )?;
        raise_session_ids(c, floor)?;
        c.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(())
    })();
    match r {
        Ok(()) => c.execute_batch("COMMIT"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Checks that an open file is a Rebalanser database of this schema.
fn check(c: &Connection, path: &Path) -> Result<(), SqliteError> {
    let path_buf = path.to_path_buf();
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| open_error(path, Duration::ZERO, e))?;
    if version != SCHEMA_VERSION {
        // Our application id with another version: newer (or damaged) — never guess.
        return Err(SqliteError::SchemaVersion {
            path: path_buf,
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let corrupt = |detail: String| SqliteError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    for probe in PROBES {
        c.prepare(probe)
            .map_err(|e| corrupt(format!("malformed schema ({e})")))?;
    }
    let meta: Option<(i64, i64)> = c
        .query_row(PROBES[0], [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| corrupt(format!("unreadable revision row ({e})")))?;
    match meta {
        Some((rev, v)) if rev >= 0 && v == SCHEMA_VERSION => {}
        Some((rev, v)) => {
            return Err(corrupt(format!(
                "revision row holds rev {rev}, schema version {v}"
            )))
        }
        None => return Err(corrupt("the revision row is missing".into())),
    }
    // The file is small (keys of a few groups): a full page check costs little and turns a
    // damaged file into an error now instead of at some later operation.
    let verdict: String = c
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| open_error(path, Duration::ZERO, e))?;
    if verdict != "ok" {
        return Err(corrupt(verdict));
    }
    Ok(())
}
