//! The schema: its tables, how a store recognises it as ours (or refuses it), and every SQL
//! statement the store runs, written once for a schema name.
//!
//! ```sql
//! meta(id = 1, app = 'rebalanser', schema_version, rev, created_at)  -- the revision counter
//! sessions(id IDENTITY, ttl_us, renewals, opened_at, renewed_at, client)
//! kv(key TEXT COLLATE "C" UNIQUE (an SP-GiST exclusion constraint), value BYTEA, version,
//!    create_rev, mod_rev, owner NULL REFERENCES sessions(id) ON DELETE CASCADE)
//! ```
//!
//! `opened_at`/`renewed_at` are the server's wall clock, for people reading the table; nothing
//! is decided by them (expiry: the crate docs). `COLLATE "C"` orders keys by bytes, which for
//! UTF-8 is `str` order, so a prefix is one index range.
//!
//! Keys are unique by `EXCLUDE USING spgist (key WITH =)`, not a B-tree primary key: a B-tree
//! entry holds at most 2704 bytes (after compression), so a B-tree on `key` refuses an
//! incompressible key longer than that, and the contract requires keys up to `MAX_KEY_BYTES`
//! (4096) of any content. SP-GiST's radix tree for text takes keys of any length and serves
//! `=`, `= ANY` and the range scans of prefixes. It cannot be the arbiter of `ON CONFLICT`, so
//! a transaction deletes the rows it rewrites and inserts their new versions (every writer
//! holds the counter row, so no one else inserts a key meanwhile; the constraint is the net).
//!
//! A new schema's revision counter and session ids start at the server's wall clock in
//! microseconds, not at 0: a schema dropped and created again must not issue revisions
//! (fencing tokens) or session ids the old one issued (the same floor as the SQLite store's,
//! with the same limit: a server clock set back by more than the old schema's lifetime).

use tokio_postgres::Client;

use crate::PostgresError;

/// `meta.app` of a Rebalanser schema.
pub const APP: &str = "rebalanser";
/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// Every statement, for one schema.
pub(crate) struct Sql {
    pub schema: String,
    pub lock: String,
    pub bump: String,
    pub get: String,
    pub list: String,
    pub list_all: String,
    pub read: String,
    pub metas: String,
    pub live_sessions: String,
    pub delete_keys: String,
    pub insert: String,
    pub open: String,
    pub keepalive: String,
    pub delete_owned: String,
    pub delete_sessions: String,
    pub lock_expired: String,
    pub sessions: String,
    pub notify: String,
}

impl Sql {
    pub fn new(schema: &str) -> Sql {
        let s = schema;
        let cols = "k.key, k.value, k.version, k.create_rev, k.mod_rev, k.owner";
        Sql {
            schema: s.to_string(),
            // Every writing transaction starts here: writers queue on this row, so revisions
            // follow commit order (see the crate docs on why not SERIALIZABLE).
            lock: format!("SELECT rev FROM {s}.meta WHERE id = 1 FOR UPDATE"),
            bump: format!("UPDATE {s}.meta SET rev = rev + 1 WHERE id = 1 RETURNING rev"),
            get: format!("SELECT {cols} FROM {s}.kv k WHERE k.key = $1"),
            // One statement, one snapshot: the revision with the keys (a row of NULLs when no
            // key matches).
            list: format!(
                "SELECT m.rev, {cols} FROM {s}.meta m LEFT JOIN {s}.kv k \
                 ON k.key >= $1 AND k.key < $2 WHERE m.id = 1 ORDER BY k.key"
            ),
            list_all: format!(
                "SELECT m.rev, {cols} FROM {s}.meta m LEFT JOIN {s}.kv k \
                 ON k.key >= $1 WHERE m.id = 1 ORDER BY k.key"
            ),
            read: format!(
                "SELECT m.rev, {cols} FROM {s}.meta m LEFT JOIN LATERAL ( \
                   SELECT * FROM {s}.kv WHERE key = ANY($1::text[]) \
                   UNION ALL \
                   SELECT kv.* FROM unnest($2::text[], $3::text[]) AS p(lo, hi) \
                   JOIN {s}.kv ON kv.key >= p.lo AND kv.key < p.hi \
                 ) k ON true WHERE m.id = 1"
            ),
            metas: format!(
                "SELECT key, version, create_rev, owner FROM {s}.kv WHERE key = ANY($1::text[])"
            ),
            live_sessions: format!("SELECT id FROM {s}.sessions WHERE id = ANY($1::bigint[])"),
            delete_keys: format!("DELETE FROM {s}.kv WHERE key = ANY($1::text[])"),
            // The final rows of the keys a transaction writes, once `delete_keys` removed the
            // old ones (no `ON CONFLICT`: see the module docs on the key constraint).
            insert: format!(
                "INSERT INTO {s}.kv (key, value, version, create_rev, mod_rev, owner) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[], \
                                      $5::bigint[], $6::bigint[])"
            ),
            open: format!("INSERT INTO {s}.sessions (ttl_us, client) VALUES ($1, $2) RETURNING id"),
            // One autocommit statement: a session exists until it is deleted, so this never
            // revives one (PITFALLS 5a), and it takes no lock any writer holds long (its own
            // row only), so a keepalive never queues behind bulk writes (PITFALLS 31).
            keepalive: format!(
                "UPDATE {s}.sessions SET renewals = renewals + 1, renewed_at = clock_timestamp() \
                 WHERE id = $1 RETURNING ttl_us"
            ),
            delete_owned: format!(
                "DELETE FROM {s}.kv WHERE owner = ANY($1::bigint[]) RETURNING key"
            ),
            delete_sessions: format!("DELETE FROM {s}.sessions WHERE id = ANY($1::bigint[])"),
            // The reaper's decision, re-checked under the row locks: a keepalive committed
            // since the observation changed `renewals`, and the row is skipped.
            lock_expired: format!(
                "SELECT s.id FROM {s}.sessions s \
                 JOIN unnest($1::bigint[], $2::bigint[]) AS d(id, renewals) \
                 ON s.id = d.id AND s.renewals = d.renewals FOR UPDATE OF s"
            ),
            sessions: format!("SELECT id, renewals, ttl_us FROM {s}.sessions"),
            notify: "SELECT pg_notify($1, $2)".to_string(),
        }
    }

    /// The notification channel of this schema.
    pub fn channel(&self) -> String {
        format!("rebalanser.{}", self.schema)
    }
}

fn ddl(s: &str, floor: i64) -> String {
    format!(
        "CREATE TABLE {s}.meta (
            id INT PRIMARY KEY CHECK (id = 1),
            app TEXT NOT NULL,
            schema_version INT NOT NULL,
            rev BIGINT NOT NULL CHECK (rev >= 0),
            created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        );
        CREATE TABLE {s}.sessions (
            id BIGINT GENERATED ALWAYS AS IDENTITY (START WITH {floor}) PRIMARY KEY,
            ttl_us BIGINT NOT NULL CHECK (ttl_us > 0),
            renewals BIGINT NOT NULL DEFAULT 0,
            opened_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            renewed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            client TEXT NOT NULL
        );
        CREATE TABLE {s}.kv (
            key TEXT COLLATE \"C\" NOT NULL,
            value BYTEA NOT NULL,
            version BIGINT NOT NULL,
            create_rev BIGINT NOT NULL,
            mod_rev BIGINT NOT NULL,
            owner BIGINT REFERENCES {s}.sessions (id) ON DELETE CASCADE,
            CONSTRAINT kv_key EXCLUDE USING spgist (key WITH =)
        );
        CREATE INDEX kv_owner ON {s}.kv (owner) WHERE owner IS NOT NULL;
        INSERT INTO {s}.meta (id, app, schema_version, rev) VALUES (1, '{APP}', {SCHEMA_VERSION}, {floor});"
    )
}

/// Creates the schema if it has none of our tables, then checks it is ours and of our version.
/// Concurrent first uses are serialized by a transaction-scoped advisory lock.
pub(crate) async fn ensure(
    client: &mut Client,
    url: &str,
    schema: &str,
) -> Result<(), PostgresError> {
    let fail = |e: tokio_postgres::Error| PostgresError::Schema {
        url: url.to_string(),
        schema: schema.to_string(),
        detail: match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        },
    };
    let foreign = |detail: String| PostgresError::Foreign {
        url: url.to_string(),
        schema: schema.to_string(),
        detail,
    };
    let t = client.transaction().await.map_err(fail)?;
    // A fixed key: "RBLNSCHM".
    t.execute("SELECT pg_advisory_xact_lock(5927935546047185741)", &[])
        .await
        .map_err(fail)?;
    let tables: Vec<String> = t
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname IN ('meta', 'sessions', 'kv')",
            &[&schema],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.is_empty() {
        t.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(fail)?;
        let floor: i64 = t
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .map_err(fail)?
            .get(0);
        t.batch_execute(&ddl(schema, floor.max(1)))
            .await
            .map_err(fail)?;
        t.commit().await.map_err(fail)?;
        tracing::info!(url, schema, "created the Rebalanser schema");
        return Ok(());
    }
    if tables.len() < 3 || !tables.iter().any(|t| t == "meta") {
        return Err(foreign(format!(
            "it has table(s) {} but not Rebalanser's meta, sessions and kv",
            tables.join(", ")
        )));
    }
    let row = t
        .query_opt(
            &format!("SELECT app::text, schema_version::int FROM {schema}.meta WHERE id = 1"),
            &[],
        )
        .await;
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => return Err(foreign("its meta table has no row 1".into())),
        // Columns of other names or types: someone else's `meta`.
        Err(e) if e.as_db_error().is_some() => {
            return Err(foreign(format!("its meta table is not ours: {}", fail(e))))
        }
        Err(e) => return Err(fail(e)),
    };
    let app: String = row.get(0);
    let version: i32 = row.get(1);
    if app != APP {
        return Err(foreign(format!("meta.app is {app:?}")));
    }
    if version != SCHEMA_VERSION {
        return Err(PostgresError::SchemaVersion {
            url: url.to_string(),
            schema: schema.to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    t.commit().await.map_err(fail)?;
    Ok(())
}
