//! Errors of opening a database ([`SqliteError`]) and the mapping of SQLite errors during
//! operations onto [`StoreError`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rebalanser_store::StoreError;
use rusqlite::ErrorCode;

/// Why a database could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    #[error("bad SQLite URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid SQLite store options: {0}")]
    Options(String),
    /// The file does not exist, and the store was told not to create it
    /// ([`crate::SqliteOptions::create`] off, or read-only).
    #[error("no such store file {} (not created: this store opens existing files only)", path.display())]
    NoSuchFile { path: PathBuf },
    /// The file is not a SQLite database, or its header is damaged.
    #[error("{}: not a SQLite database (or its header is damaged): {detail}", path.display())]
    NotADatabase { path: PathBuf, detail: String },
    /// A Rebalanser database whose pages or schema are damaged.
    #[error("{}: the database is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// A SQLite database that belongs to someone else: it is never written to.
    #[error("{}: a SQLite database of another application ({detail}); refusing to use it", path.display())]
    Foreign { path: PathBuf, detail: String },
    /// A Rebalanser database of a schema this build does not know.
    #[error("{}: schema version {found}, but this build supports only version {supported}", path.display())]
    SchemaVersion {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Another connection held the database locked for longer than the open timeout.
    #[error("{}: locked by another connection for longer than {waited:?}", path.display())]
    Locked { path: PathBuf, waited: Duration },
    /// The file, or its `-wal`/`-shm` companions, cannot be created or written.
    #[error("{}: cannot create or write the database or its -wal/-shm files (does {} exist, and is it writable?): {detail}", path.display(), dir.display())]
    Unwritable {
        path: PathBuf,
        dir: PathBuf,
        detail: String,
    },
    /// This host's boot id or CLOCK_BOOTTIME cannot be read (the store needs Linux).
    #[error("{}: cannot read the host clock: {detail}", path.display())]
    Clock { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    Other { path: PathBuf, detail: String },
}

/// The SQLite primary result code of an error, if it came from SQLite.
pub(crate) fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// Maps an error met while opening `path` (waiting at most `waited` for locks).
pub(crate) fn open_error(path: &Path, waited: Duration, e: rusqlite::Error) -> SqliteError {
    let path = path.to_path_buf();
    let detail = e.to_string();
    match code(&e) {
        Some(ErrorCode::NotADatabase) => SqliteError::NotADatabase { path, detail },
        Some(ErrorCode::DatabaseCorrupt) => SqliteError::Corrupt { path, detail },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            SqliteError::Locked { path, waited }
        }
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::AuthorizationForStatementDenied,
        ) => SqliteError::Unwritable {
            dir: dir_of(&path),
            path,
            detail,
        },
        _ => SqliteError::Other { path, detail },
    }
}

pub(crate) fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where in a write transaction an error happened: it decides whether the write may have
/// been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before `COMMIT` was issued (or in a read): nothing was applied.
    BeforeCommit,
    /// `COMMIT` itself failed: its frames may have reached the WAL.
    Commit,
}

/// Maps a SQLite error of an operation on `file` onto the contract's taxonomy.
pub(crate) fn store_error(file: &str, phase: Phase, e: &rusqlite::Error) -> StoreError {
    let c = code(e);
    match (c, phase) {
        // The lock was not obtained within the busy timeout (or COMMIT was refused while the
        // transaction stays open and is then rolled back): nothing was applied.
        (Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked), _) => StoreError::Unavailable(
            format!("{file}: busy (another process holds the lock): {e}"),
        ),
        (_, Phase::Commit) => StoreError::Indeterminate(format!("{file}: COMMIT failed: {e}")),
        (Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase), _) => {
            StoreError::Unavailable(format!("{file}: the database is corrupt: {e}"))
        }
        (None, _) => StoreError::Unavailable(format!(
            "{file}: unexpected data (a corrupt row or a schema not written by Rebalanser): {e}"
        )),
        _ => StoreError::Unavailable(format!("{file}: {e}")),
    }
}

/// Whether the connection should be discarded and reopened after `e`.
pub(crate) fn poisons_connection(e: &rusqlite::Error) -> bool {
    !matches!(
        code(e),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
