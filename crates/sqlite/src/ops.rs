//! The operations of the contract as SQL on one connection (blocking; the async side runs
//! them on `spawn_blocking`). Semantics follow `rebalanser_store::MemModel` op by op,
//! including the order in which failures are reported.
//!
//! Every write runs in `BEGIN IMMEDIATE` (the database's single write lock, taken before
//! anything is read), and reads the clock only once it holds the lock, so an expiry decision
//! and a keepalive can never interleave: whichever takes the lock first decides (PITFALLS 5).
//! Every write transaction starts by reaping the expired sessions.
//!
//! Every transaction, read or write, first checks that the file's id is the one the store
//! adopted ([`Ctx::file_id`]): a connection that ends up on another file (one copied over the
//! path in place, or reopened after a replacement) answers nothing from it.

use std::collections::BTreeMap;
use std::time::Duration;

use rebalanser_core::store::{key_error, txn_refusal, txn_request_error, KeyMeta};
use rebalanser_core::SessionId;
use rebalanser_store::{Cond, Entry, Key, StoreError, StoreOp, StoreReply, StoreResult, Write};
use rusqlite::{Connection, OptionalExtension};

use crate::clock::HostClock;
use crate::error::{store_error, Phase};
use crate::schema::{file_id, wall_ms};

/// What an operation needs besides its connection.
pub(crate) struct Ctx<'a> {
    pub clock: &'a HostClock,
    /// The file, for error messages.
    pub file: &'a str,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// `meta.file_id` of the file the store works on.
    pub file_id: i64,
}

/// The outcome of one op, plus the raw SQLite error if one occurred (so the caller can
/// decide to reopen the connection).
pub(crate) struct Outcome {
    pub result: StoreResult,
    pub sql_error: Option<rusqlite::Error>,
    /// The connection's file is not the store's (another `file_id`): nothing was read or
    /// written; `result` is `Unavailable`.
    pub replaced: bool,
}

/// A failure inside a transaction body.
enum Fail {
    /// The contract's answer (`Conflict`, `SessionExpired`, `Invalid`): nothing asked for was
    /// applied; whatever reaping happened is still committed.
    Refused(StoreError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

pub(crate) fn execute(c: &Connection, ctx: &Ctx<'_>, op: &StoreOp) -> Outcome {
    match op {
        StoreOp::Get { key, .. } => {
            if let Some(e) = key_error(key) {
                return refused(StoreError::Invalid(e));
            }
            read(c, ctx, |c, now| {
                let mut entries = select(c, ctx, now, key, true)?;
                Ok(StoreReply::Got(entries.pop().map(|(_, e)| e)))
            })
        }
        StoreOp::List { prefix, .. } => read(c, ctx, |c, now| {
            let rev = current_rev(c)?;
            let entries = select(c, ctx, now, prefix, false)?;
            Ok(StoreReply::Listed { entries, rev })
        }),
        StoreOp::Read { keys, prefixes, .. } => {
            if let Some(e) = keys.iter().find_map(|k| key_error(k)) {
                return refused(StoreError::Invalid(e));
            }
            // One read transaction: one snapshot of every key and prefix.
            read(c, ctx, |c, now| {
                let rev = current_rev(c)?;
                let mut all = std::collections::BTreeMap::new();
                for k in keys {
                    all.extend(select(c, ctx, now, k, true)?);
                }
                for p in prefixes {
                    all.extend(select(c, ctx, now, p, false)?);
                }
                Ok(StoreReply::Listed {
                    entries: all.into_iter().collect(),
                    rev,
                })
            })
        }
        StoreOp::OpenSession { ttl } => {
            let ttl = (*ttl).clamp(ctx.min_ttl, ctx.max_ttl);
            let ttl_ns = i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX);
            write(c, ctx, |c, now| {
                c.execute(
                    "INSERT INTO sessions (ttl_ns, expires_ns, boot_id, opened_ns, pid, renewed_wall_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    (
                        ttl_ns,
                        now.saturating_add(ttl_ns),
                        ctx.clock.boot_id(),
                        now,
                        std::process::id(),
                        wall_ms(),
                    ),
                )?;
                let id = c.last_insert_rowid();
                Ok(StoreReply::Session {
                    session: SessionId(id as u64),
                    ttl,
                })
            })
        }
        StoreOp::KeepAlive { session } => write(c, ctx, |c, now| {
            let Ok(id) = i64::try_from(session.0) else {
                return Err(Fail::Refused(StoreError::SessionExpired));
            };
            // One conditional statement: never revives a session whose expiry has passed,
            // even before it is reaped (PITFALLS 5a).
            let ttl_ns: Option<i64> = c
                .query_row(
                    "UPDATE sessions SET expires_ns = ?2 + ttl_ns, renewals = renewals + 1, \
                     renewed_wall_ms = ?4 \
                     WHERE id = ?1 AND boot_id = ?3 AND expires_ns > ?2 RETURNING ttl_ns",
                    (id, now, ctx.clock.boot_id(), wall_ms()),
                    |r| r.get(0),
                )
                .optional()?;
            match ttl_ns {
                Some(ns) => Ok(StoreReply::KeptAlive {
                    ttl: Duration::from_nanos(u64::try_from(ns).unwrap_or(0)),
                }),
                None => Err(Fail::Refused(StoreError::SessionExpired)),
            }
        }),
        StoreOp::CloseSession { session } => write(c, ctx, |c, _| {
            if let Ok(id) = i64::try_from(session.0) {
                drop_sessions(c, &[id])?;
            }
            Ok(StoreReply::Closed)
        }),
        StoreOp::Txn { conds, writes } => {
            if let Some(e) = txn_request_error(conds, writes) {
                return refused(StoreError::Invalid(e));
            }
            write(c, ctx, |c, now| txn(c, ctx, now, conds, writes))
        }
    }
}

fn refused(e: StoreError) -> Outcome {
    Outcome {
        result: Err(e),
        sql_error: None,
        replaced: false,
    }
}

fn replaced(ctx: &Ctx<'_>) -> Outcome {
    Outcome {
        result: Err(StoreError::Unavailable(format!(
            "{}: another database file is now at this path",
            ctx.file
        ))),
        sql_error: None,
        replaced: true,
    }
}

/// Runs `body` in a read transaction (one consistent snapshot).
fn read(
    c: &Connection,
    ctx: &Ctx<'_>,
    body: impl FnOnce(&Connection, i64) -> rusqlite::Result<StoreReply>,
) -> Outcome {
    let sql = |e: rusqlite::Error| Outcome {
        result: Err(store_error(ctx.file, Phase::BeforeCommit, &e)),
        sql_error: Some(e),
        replaced: false,
    };
    if let Err(e) = c.execute_batch("BEGIN DEFERRED") {
        return sql(e);
    }
    match file_id(c) {
        Ok(id) if id == ctx.file_id => {}
        other => {
            let _ = c.execute_batch("ROLLBACK");
            return match other {
                Err(e) => sql(e),
                Ok(_) => replaced(ctx),
            };
        }
    }
    let r = body(c, ctx.clock.now_ns());
    let end = c.execute_batch("COMMIT");
    match (r, end) {
        (Ok(reply), Ok(())) => Outcome {
            result: Ok(reply),
            sql_error: None,
            replaced: false,
        },
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = c.execute_batch("ROLLBACK");
            sql(e)
        }
    }
}

/// Runs `body` in a write transaction: `BEGIN IMMEDIATE`, read the clock, reap, body, commit.
fn write(
    c: &Connection,
    ctx: &Ctx<'_>,
    body: impl FnOnce(&Connection, i64) -> Result<StoreReply, Fail>,
) -> Outcome {
    let fail = |phase, e: rusqlite::Error| Outcome {
        result: Err(store_error(ctx.file, phase, &e)),
        sql_error: Some(e),
        replaced: false,
    };
    if let Err(e) = c.execute_batch("BEGIN IMMEDIATE") {
        // A failed BEGIN leaves no transaction open (nothing to roll back).
        if !c.is_autocommit() {
            let _ = c.execute_batch("ROLLBACK");
        }
        return fail(Phase::BeforeCommit, e);
    }
    match file_id(c) {
        Ok(id) if id == ctx.file_id => {}
        other => {
            let _ = c.execute_batch("ROLLBACK");
            return match other {
                Err(e) => fail(Phase::BeforeCommit, e),
                Ok(_) => replaced(ctx),
            };
        }
    }
    // The clock is read under the write lock: see the module docs.
    let now = ctx.clock.now_ns();
    let r = match reap(c, ctx, now) {
        Ok(_) => body(c, now),
        Err(e) => Err(Fail::Sql(e)),
    };
    match r {
        Ok(reply) => match c.execute_batch("COMMIT") {
            Ok(()) => Outcome {
                result: Ok(reply),
                sql_error: None,
                replaced: false,
            },
            Err(e) => {
                // A refused COMMIT (busy) leaves the transaction open; an I/O error during
                // it may have left its frames in the WAL: `store_error` tells them apart.
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
                fail(Phase::Commit, e)
            }
        },
        Err(Fail::Refused(refusal)) => {
            // Nothing the caller asked for was written; keep the reaping (best effort).
            if c.execute_batch("COMMIT").is_err() && !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            refused(refusal)
        }
        Err(Fail::Sql(e)) => {
            let _ = c.execute_batch("ROLLBACK");
            fail(Phase::BeforeCommit, e)
        }
    }
}

/// The sessions expired at `now`: stamped with another boot, or past their expiry.
const EXPIRED: &str = "SELECT id FROM sessions WHERE boot_id <> ?1 OR expires_ns <= ?2";

/// Deletes every session expired at `now` with its keys, bumping the revision once if keys
/// went. Must run inside a write transaction. Returns the number of keys deleted.
pub(crate) fn reap(c: &Connection, ctx: &Ctx<'_>, now: i64) -> rusqlite::Result<usize> {
    let dead: Vec<i64> = {
        let mut st = c.prepare_cached(EXPIRED)?;
        let ids = st.query_map((ctx.clock.boot_id(), now), |r| r.get(0))?;
        ids.collect::<rusqlite::Result<_>>()?
    };
    if dead.is_empty() {
        return Ok(0);
    }
    let keys = drop_sessions(c, &dead)?;
    tracing::debug!(file = ctx.file, sessions = ?dead, keys, "reaped expired sessions");
    Ok(keys)
}

/// Deletes sessions and the keys they own; bumps the revision if any key went.
fn drop_sessions(c: &Connection, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut keys = 0;
    for id in ids {
        // The keys explicitly (the cascade would do it, but uncounted).
        keys += c
            .prepare_cached("DELETE FROM kv WHERE owner = ?1")?
            .execute([id])?;
        c.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute([id])?;
    }
    if keys > 0 {
        bump_rev(c)?;
    }
    Ok(keys)
}

fn bump_rev(c: &Connection) -> rusqlite::Result<u64> {
    let rev: i64 = c
        .prepare_cached("UPDATE meta SET rev = rev + 1 WHERE id = 1 RETURNING rev")?
        .query_row([], |r| r.get(0))?;
    to_u64(rev, 0)
}

pub(crate) fn current_rev(c: &Connection) -> rusqlite::Result<u64> {
    let rev: i64 = c
        .prepare_cached("SELECT rev FROM meta WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    to_u64(rev, 0)
}

fn to_u64(v: i64, col: usize) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(col, v))
}

/// Keys of live owners (or none) under `prefix` (`exact`: the key itself), in key order.
/// A key whose owner has expired but is not reaped yet is not shown: reads see exactly what
/// a write transaction would see after reaping.
fn select(
    c: &Connection,
    ctx: &Ctx<'_>,
    now: i64,
    prefix: &str,
    exact: bool,
) -> rusqlite::Result<Vec<(Key, Entry)>> {
    let sql = if exact {
        "SELECT k.key, k.value, k.version, k.create_rev, k.mod_rev, k.owner FROM kv k \
         LEFT JOIN sessions s ON s.id = k.owner \
         WHERE k.key = ?1 AND (k.owner IS NULL OR (s.boot_id = ?2 AND s.expires_ns > ?3))"
    } else {
        "SELECT k.key, k.value, k.version, k.create_rev, k.mod_rev, k.owner FROM kv k \
         LEFT JOIN sessions s ON s.id = k.owner \
         WHERE k.key >= ?1 AND (k.owner IS NULL OR (s.boot_id = ?2 AND s.expires_ns > ?3)) \
         ORDER BY k.key"
    };
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query((prefix, ctx.clock.boot_id(), now))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        // Keys come in binary (= UTF-8 byte = `str`) order: the prefix's keys are one run.
        if !key.starts_with(prefix) {
            break;
        }
        let owner: Option<i64> = r.get(5)?;
        let entry = Entry {
            value: r.get(1)?,
            version: to_u64(r.get(2)?, 2)?,
            create_rev: to_u64(r.get(3)?, 3)?,
            mod_rev: to_u64(r.get(4)?, 4)?,
            owner: owner.map(|o| to_u64(o, 5).map(SessionId)).transpose()?,
        };
        out.push((key, entry));
    }
    Ok(out)
}

fn txn(
    c: &Connection,
    ctx: &Ctx<'_>,
    now: i64,
    conds: &[Cond],
    writes: &[Write],
) -> Result<StoreReply, Fail> {
    // Every key the transaction names, and the owners it creates keys for, read once under
    // the write lock after reaping; then decided as `MemModel` decides.
    let mut metas = BTreeMap::new();
    for k in conds
        .iter()
        .map(Cond::key)
        .chain(writes.iter().map(Write::key))
    {
        if !metas.contains_key(k) {
            metas.insert(k, meta_of(c, k)?);
        }
    }
    let mut alive = std::collections::BTreeSet::new();
    for w in writes {
        if let Write::Create { owner: Some(o), .. } = w {
            if session_alive(c, ctx, now, *o)? {
                alive.insert(*o);
            }
        }
    }
    let meta = |k: &str| {
        metas.get(k).copied().flatten().map(|m: Meta| KeyMeta {
            version: m.version,
            create_rev: m.create_rev,
            owner: m.owner.map(SessionId),
        })
    };
    if let Some(e) = txn_refusal(conds, writes, meta, |s| alive.contains(&s)) {
        return Err(Fail::Refused(e));
    }
    if writes.is_empty() {
        return Ok(StoreReply::Committed {
            rev: current_rev(c)?,
        });
    }
    let rev = bump_rev(c)?;
    let rev_i = rev as i64;
    for w in writes {
        match w {
            Write::Create { key, value, owner } => {
                let owner = owner.map(|o| o.0 as i64);
                c.prepare_cached(
                    "INSERT INTO kv (key, value, version, create_rev, mod_rev, owner) \
                     VALUES (?1, ?2, 0, ?3, ?3, ?4)",
                )?
                .execute((key, value, rev_i, owner))?;
            }
            Write::Put { key, value } => {
                c.prepare_cached(
                    "INSERT INTO kv (key, value, version, create_rev, mod_rev, owner) \
                     VALUES (?1, ?2, 0, ?3, ?3, NULL) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     version = version + 1, mod_rev = excluded.mod_rev",
                )?
                .execute((key, value, rev_i))?;
            }
            Write::Delete { key } => {
                c.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                    .execute([key])?;
            }
        }
    }
    Ok(StoreReply::Committed { rev })
}

#[derive(Clone, Copy)]
struct Meta {
    version: u64,
    create_rev: u64,
    owner: Option<u64>,
}

/// A key's metadata, inside a write transaction (after reaping, so every owner is alive).
fn meta_of(c: &Connection, key: &str) -> rusqlite::Result<Option<Meta>> {
    c.prepare_cached("SELECT version, create_rev, owner FROM kv WHERE key = ?1")?
        .query_row([key], |r| {
            let owner: Option<i64> = r.get(2)?;
            Ok(Meta {
                version: to_u64(r.get(0)?, 0)?,
                create_rev: to_u64(r.get(1)?, 1)?,
                owner: owner.map(|o| to_u64(o, 2)).transpose()?,
            })
        })
        .optional()
}

fn session_alive(c: &Connection, ctx: &Ctx<'_>, now: i64, s: SessionId) -> rusqlite::Result<bool> {
    let Ok(id) = i64::try_from(s.0) else {
        return Ok(false);
    };
    c.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1 AND boot_id = ?2 AND expires_ns > ?3")?
        .query_row((id, ctx.clock.boot_id(), now), |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Why [`reap_txn`] failed.
#[derive(Debug)]
pub(crate) enum ReapError {
    /// Retry later (busy) or reopen the connection (see `poisons_connection`).
    Sql(rusqlite::Error),
    /// The connection's file is not the store's: follow the path again.
    Replaced,
}

/// A write transaction that only reaps expired sessions.
pub(crate) fn reap_txn(c: &Connection, ctx: &Ctx<'_>) -> Result<(), ReapError> {
    let out = write(c, ctx, |_, _| Ok(StoreReply::Closed));
    match (out.sql_error, out.replaced) {
        (Some(e), _) => Err(ReapError::Sql(e)),
        (None, true) => Err(ReapError::Replaced),
        (None, false) => Ok(()),
    }
}
