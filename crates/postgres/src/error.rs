//! Errors of opening a store ([`PostgresError`]) and the mapping of PostgreSQL errors during
//! operations onto [`StoreError`].

use rebalanser_store::StoreError;
use tokio_postgres::error::{Severity, SqlState};

/// Why a store could not be opened or its schema used. Every variant names the server (URL
/// without the password) or the schema.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    #[error("bad PostgreSQL URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid PostgreSQL store options: {0}")]
    Options(String),
    /// The server cannot be reached or refused the connection (network, authentication,
    /// missing database).
    #[error("{url}: cannot connect: {detail}")]
    Connect { url: String, detail: String },
    /// The schema holds tables of another application under the names this store uses; it is
    /// never written to.
    #[error("{url}: schema {schema:?} belongs to another application ({detail}); refusing to use it (choose another with ?schema=NAME)")]
    Foreign {
        url: String,
        schema: String,
        detail: String,
    },
    /// A Rebalanser schema of another version.
    #[error("{url}: schema {schema:?} is Rebalanser schema version {found}, but this build supports only version {supported}")]
    SchemaVersion {
        url: String,
        schema: String,
        found: i32,
        supported: i32,
    },
    /// The server answered, but creating or checking the schema failed (permissions, ...).
    #[error("{url}: schema {schema:?}: {detail}")]
    Schema {
        url: String,
        schema: String,
        detail: String,
    },
}

impl PostgresError {
    /// The contract's answer to an operation that met this error: a schema that can never be
    /// used is `Invalid`, anything that may heal is `Unavailable`.
    pub(crate) fn to_store(&self) -> StoreError {
        match self {
            PostgresError::Foreign { .. } | PostgresError::SchemaVersion { .. } => {
                StoreError::Invalid(self.to_string())
            }
            _ => StoreError::Unavailable(self.to_string()),
        }
    }
}

/// Where in an operation an error happened: decides whether a write may have been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A read, or inside an explicit transaction before `COMMIT` was sent: nothing was applied
    /// (a transaction without its `COMMIT` is rolled back when the connection ends).
    Before,
    /// The `COMMIT`, or a write statement that commits by itself.
    Commit,
}

/// Whether the connection must be dropped after `e` (it is closed, or in an unknown state).
pub(crate) fn poisons_connection(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // An error the server reported on a working connection leaves it usable (after the
        // transaction is rolled back), unless the session itself ended.
        Some(db) => matches!(
            db.parsed_severity(),
            Some(Severity::Fatal | Severity::Panic)
        ),
        // IO, protocol, timeouts: the state of the connection is unknown.
        None => true,
    }
}

/// Whether `e` says the schema's tables are missing (dropped under running processes).
pub(crate) fn schema_missing(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME
    )
}

/// Maps an error of an operation onto the contract's taxonomy (`where_` names the server and
/// schema for the message).
pub(crate) fn store_error(where_: &str, phase: Phase, e: &tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{where_}: {} ({})", db.message(), db.code().code()),
        None => format!("{where_}: {e}"),
    };
    let refused_by_server = e
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error));
    if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        // A key's owner session is gone (the only foreign key): as `MemModel` answers.
        return StoreError::SessionExpired;
    }
    match phase {
        Phase::Before => StoreError::Unavailable(detail),
        // The server refused the commit (an `ERROR`): rolled back. Anything else (the
        // connection ended, a `FATAL` after a commit may have completed): unknown.
        Phase::Commit if refused_by_server => StoreError::Unavailable(detail),
        Phase::Commit => StoreError::Indeterminate(detail),
    }
}
