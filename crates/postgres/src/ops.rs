//! The operations of the contract as SQL on one connection. Semantics follow
//! `rebalanser_store::MemModel` op by op, including the order in which failures are reported.
//!
//! Every writing transaction first locks the counter row (`meta`, `FOR UPDATE`), in `READ
//! COMMITTED`: writers queue there, each statement after the lock sees every transaction
//! committed before it, and the revision a transaction takes is one more than the last
//! committed one, so revisions (fencing tokens) strictly grow in commit order (PITFALLS 17).
//! The conditions and the writes' preconditions are read with one statement, decided here as
//! `MemModel` decides them, and applied with at most three (deletes, one insert of every
//! key's final row, the notification).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rebalanser_core::store::{key_error, txn_refusal, txn_request_error, KeyMeta};
use rebalanser_core::SessionId;
use rebalanser_store::{Cond, Entry, Key, StoreError, StoreOp, StoreReply, StoreResult, Write};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::error::{store_error, Phase};
use crate::schema::Sql;

/// Largest notification payload PostgreSQL takes is 8000 bytes; longer lists of keys are sent
/// as an empty payload, which every watch takes as "something changed".
const MAX_PAYLOAD: usize = 7900;

/// One connection and the statements prepared on it.
pub(crate) struct Conn {
    pub client: Client,
    prepared: BTreeMap<&'static str, Statement>,
}

/// A failure inside an operation.
pub(crate) enum Fail {
    /// The contract's answer (`Conflict`, `SessionExpired`, `Invalid`): nothing was applied.
    Refused(StoreError),
    Pg(Phase, tokio_postgres::Error),
}

impl Conn {
    pub fn new(client: Client) -> Conn {
        Conn {
            client,
            prepared: BTreeMap::new(),
        }
    }

    /// The statement `name` (a field of [`Sql`]), prepared once per connection.
    async fn st(
        &mut self,
        name: &'static str,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.get(name) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.prepared.insert(name, s.clone());
        Ok(s)
    }
}

/// The answer of an op, plus the raw error if one occurred (so the caller can decide to drop
/// the connection).
pub(crate) type Outcome = (StoreResult, Option<tokio_postgres::Error>);

pub(crate) struct Ctx<'a> {
    pub sql: &'a Sql,
    /// Server and schema, for messages.
    pub at: &'a str,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Written to `sessions.client` (host and pid), for people reading the table.
    pub client_name: &'a str,
}

fn finish(ctx: &Ctx<'_>, r: Result<StoreReply, Fail>) -> Outcome {
    match r {
        Ok(reply) => (Ok(reply), None),
        Err(Fail::Refused(e)) => (Err(e), None),
        Err(Fail::Pg(phase, e)) => (Err(store_error(ctx.at, phase, &e)), Some(e)),
    }
}

pub(crate) async fn execute(c: &mut Conn, ctx: &Ctx<'_>, op: &StoreOp) -> Outcome {
    let r = match op {
        StoreOp::Get { key, .. } => match key_error(key) {
            Some(e) => Err(Fail::Refused(StoreError::Invalid(e))),
            None => get(c, ctx, key).await,
        },
        StoreOp::List { prefix, .. } => read(c, ctx, &[], std::slice::from_ref(prefix)).await,
        StoreOp::Read { keys, prefixes, .. } => match keys.iter().find_map(|k| key_error(k)) {
            Some(e) => Err(Fail::Refused(StoreError::Invalid(e))),
            None => read(c, ctx, keys, prefixes).await,
        },
        StoreOp::OpenSession { ttl } => open(c, ctx, *ttl).await,
        StoreOp::KeepAlive { session } => keepalive(c, ctx, *session).await,
        StoreOp::CloseSession { session } => close(c, ctx, *session).await,
        StoreOp::Txn { conds, writes } => match txn_request_error(conds, writes) {
            Some(e) => Err(Fail::Refused(StoreError::Invalid(e))),
            None => txn(c, ctx, conds, writes).await,
        },
    };
    finish(ctx, r)
}

fn before(e: tokio_postgres::Error) -> Fail {
    Fail::Pg(Phase::Before, e)
}

fn commit(e: tokio_postgres::Error) -> Fail {
    Fail::Pg(Phase::Commit, e)
}

fn to_u64(v: i64) -> u64 {
    // Every column read this way is CHECKed or written non-negative by this crate; a foreign
    // negative value reads as 0 rather than wrapping.
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The entry in columns `at..at + 6` of `row` (key, value, version, create_rev, mod_rev,
/// owner), if the key column is not NULL.
fn entry(row: &Row, at: usize) -> Result<Option<(Key, Entry)>, tokio_postgres::Error> {
    let Some(key) = row.try_get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    let owner: Option<i64> = row.try_get(at + 5)?;
    Ok(Some((
        key,
        Entry {
            value: row.try_get(at + 1)?,
            version: to_u64(row.try_get(at + 2)?),
            create_rev: to_u64(row.try_get(at + 3)?),
            mod_rev: to_u64(row.try_get(at + 4)?),
            owner: owner.map(|o| SessionId(to_u64(o))),
        },
    )))
}

async fn get(c: &mut Conn, ctx: &Ctx<'_>, key: &str) -> Result<StoreReply, Fail> {
    let st = c.st("get", &ctx.sql.get).await.map_err(before)?;
    let rows = c.client.query(&st, &[&key]).await.map_err(before)?;
    let e = match rows.first() {
        Some(r) => entry(r, 0).map_err(before)?.map(|(_, e)| e),
        None => None,
    };
    Ok(StoreReply::Got(e))
}

/// The first string above every string that starts with `prefix`, if there is one: the
/// prefix with its last character raised by one (byte order = `str` order in UTF-8).
pub(crate) fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// One statement (one snapshot): these keys, every key under these prefixes, and the
/// revision.
async fn read(
    c: &mut Conn,
    ctx: &Ctx<'_>,
    keys: &[Key],
    prefixes: &[Key],
) -> Result<StoreReply, Fail> {
    // A PostgreSQL `text` cannot hold NUL (sending one fails the statement), and no key holds
    // one (`key_error` refuses control characters): a prefix with a NUL matches no key, as in
    // `MemModel`, so it is left out rather than sent.
    let prefixes: Vec<Key> = prefixes
        .iter()
        .filter(|p| !p.contains('\0'))
        .cloned()
        .collect();
    let prefixes = prefixes.as_slice();
    let mut rows = Vec::new();
    if let ([], [p]) = (keys, prefixes) {
        if let Some(hi) = successor(p) {
            // A listing: the plain range scan.
            let st = c.st("list", &ctx.sql.list).await.map_err(before)?;
            let rows = c.client.query(&st, &[p, &hi]).await.map_err(before)?;
            return listed(&rows);
        }
    }
    // The prefixes with no upper bound ("" or all U+10FFFF) are nested: the keys under the
    // shortest are every key from it on, which includes those under the others. (Reading only
    // the first one found missed the rest: `["\u{10FFFF}", ""]` listed nothing.)
    if let Some(p) = prefixes.iter().filter(|p| successor(p).is_none()).min() {
        // Everything from it on, which covers the bounded prefixes and the keys only partly,
        // so read those separately below.
        let st = c.st("list_all", &ctx.sql.list_all).await.map_err(before)?;
        rows = c.client.query(&st, &[p]).await.map_err(before)?;
    }
    let bounded: Vec<(String, String)> = prefixes
        .iter()
        .filter_map(|p| successor(p).map(|s| (p.clone(), s)))
        .collect();
    if rows.is_empty() || !bounded.is_empty() || !keys.is_empty() {
        let st = c.st("read", &ctx.sql.read).await.map_err(before)?;
        let (lo, hi): (Vec<String>, Vec<String>) = bounded.into_iter().unzip();
        let more = c
            .client
            .query(&st, &[&keys, &lo, &hi])
            .await
            .map_err(before)?;
        // Two statements are two snapshots: only when a prefix is unbounded, never in the
        // protocol (every prefix it reads ends with `/`). Report the older revision.
        rows.extend(more);
    }
    listed(&rows)
}

/// Rows of (rev, entry columns) as a listing, each key once, in key order.
fn listed(rows: &[Row]) -> Result<StoreReply, Fail> {
    let mut rev = u64::MAX;
    let mut all = BTreeMap::new();
    for r in rows {
        rev = rev.min(to_u64(r.try_get(0).map_err(before)?));
        if let Some((k, e)) = entry(r, 1).map_err(before)? {
            all.insert(k, e);
        }
    }
    Ok(StoreReply::Listed {
        entries: all.into_iter().collect(),
        rev: if rev == u64::MAX { 0 } else { rev },
    })
}

async fn open(c: &mut Conn, ctx: &Ctx<'_>, ttl: Duration) -> Result<StoreReply, Fail> {
    let ttl = ttl.clamp(ctx.min_ttl, ctx.max_ttl);
    let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).max(1);
    let st = c.st("open", &ctx.sql.open).await.map_err(before)?;
    let row = c
        .client
        .query_one(&st, &[&ttl_us, &ctx.client_name])
        .await
        .map_err(commit)?;
    let id: i64 = row.try_get(0).map_err(commit)?;
    Ok(StoreReply::Session {
        session: SessionId(to_u64(id)),
        ttl: Duration::from_micros(ttl_us as u64),
    })
}

async fn keepalive(c: &mut Conn, ctx: &Ctx<'_>, s: SessionId) -> Result<StoreReply, Fail> {
    let Ok(id) = i64::try_from(s.0) else {
        return Err(Fail::Refused(StoreError::SessionExpired));
    };
    let st = c
        .st("keepalive", &ctx.sql.keepalive)
        .await
        .map_err(before)?;
    let row = c.client.query_opt(&st, &[&id]).await.map_err(commit)?;
    match row {
        Some(r) => {
            let us: i64 = r.try_get(0).map_err(commit)?;
            Ok(StoreReply::KeptAlive {
                ttl: Duration::from_micros(to_u64(us)),
            })
        }
        None => Err(Fail::Refused(StoreError::SessionExpired)),
    }
}

/// Starts a writing transaction that holds the counter row: `BEGIN`, then the lock. Returns
/// the revision of the last commit. End it with [`end`], whatever happened.
async fn begin(c: &mut Conn, ctx: &Ctx<'_>) -> Result<u64, Fail> {
    c.client.batch_execute("BEGIN").await.map_err(before)?;
    let st = c.st("lock", &ctx.sql.lock).await.map_err(before)?;
    let rev: i64 = c
        .client
        .query_one(&st, &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(before)?;
    Ok(to_u64(rev))
}

/// `COMMIT` after a body that succeeded, `ROLLBACK` otherwise.
async fn end(c: &mut Conn, r: Result<StoreReply, Fail>) -> Result<StoreReply, Fail> {
    match r {
        Ok(reply) => {
            c.client.batch_execute("COMMIT").await.map_err(commit)?;
            Ok(reply)
        }
        Err(f) => {
            // Best effort: a broken connection is dropped by the caller, which rolls back.
            let _ = c.client.batch_execute("ROLLBACK").await;
            Err(f)
        }
    }
}

/// Bumps the revision and notifies the keys that changed. Inside a writing transaction ([`begin`]).
async fn bump_and_notify(c: &mut Conn, ctx: &Ctx<'_>, keys: &[&str]) -> Result<u64, Fail> {
    let st = c.st("bump", &ctx.sql.bump).await.map_err(before)?;
    let rev: i64 = c
        .client
        .query_one(&st, &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(before)?;
    notify(c, ctx, keys).await?;
    Ok(to_u64(rev))
}

async fn notify(c: &mut Conn, ctx: &Ctx<'_>, keys: &[&str]) -> Result<(), Fail> {
    let mut payload = keys.join("\n");
    if payload.len() > MAX_PAYLOAD || payload.is_empty() {
        payload.clear();
    }
    let st = c.st("notify", &ctx.sql.notify).await.map_err(before)?;
    c.client
        .execute(&st, &[&ctx.sql.channel(), &payload])
        .await
        .map_err(before)?;
    Ok(())
}

/// Deletes sessions (already known to be ours to delete) and their keys. Inside a writing transaction ([`begin`]).
pub(crate) async fn drop_sessions(c: &mut Conn, ctx: &Ctx<'_>, ids: &[i64]) -> Result<usize, Fail> {
    let st = c
        .st("delete_owned", &ctx.sql.delete_owned)
        .await
        .map_err(before)?;
    let keys: Vec<String> = c
        .client
        .query(&st, &[&ids])
        .await
        .map_err(before)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(before)?;
    let st = c
        .st("delete_sessions", &ctx.sql.delete_sessions)
        .await
        .map_err(before)?;
    c.client.execute(&st, &[&ids]).await.map_err(before)?;
    if !keys.is_empty() {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        bump_and_notify(c, ctx, &names).await?;
    }
    Ok(keys.len())
}

async fn close(c: &mut Conn, ctx: &Ctx<'_>, s: SessionId) -> Result<StoreReply, Fail> {
    let Ok(id) = i64::try_from(s.0) else {
        return Ok(StoreReply::Closed);
    };
    let r = match begin(c, ctx).await {
        Ok(_) => drop_sessions(c, ctx, &[id])
            .await
            .map(|_| StoreReply::Closed),
        Err(f) => Err(f),
    };
    end(c, r).await
}

/// Deletes the sessions of `observed` (id, renewals) whose renewal counter is still the one
/// observed, with their keys; returns how many keys went. The reaper's transaction.
pub(crate) async fn reap(
    c: &mut Conn,
    ctx: &Ctx<'_>,
    observed: &[(i64, i64)],
) -> Result<Vec<i64>, (StoreError, Option<tokio_postgres::Error>)> {
    let (ids, renewals): (Vec<i64>, Vec<i64>) = observed.iter().copied().unzip();
    let mut dead = Vec::new();
    let body = async {
        begin(c, ctx).await?;
        let st = c
            .st("lock_expired", &ctx.sql.lock_expired)
            .await
            .map_err(before)?;
        let rows = c
            .client
            .query(&st, &[&ids, &renewals])
            .await
            .map_err(before)?;
        for r in rows {
            dead.push(r.try_get::<_, i64>(0).map_err(before)?);
        }
        if !dead.is_empty() {
            drop_sessions(c, ctx, &dead).await?;
        }
        Ok::<_, Fail>(StoreReply::Closed)
    }
    .await;
    let r = end(c, body).await;
    match finish(ctx, r) {
        (Ok(_), _) => Ok(dead),
        (Err(e), raw) => Err((e, raw)),
    }
}

/// Every session's id, renewal counter and TTL (µs). The reaper's observation.
pub(crate) async fn sessions(
    c: &mut Conn,
    ctx: &Ctx<'_>,
) -> Result<Vec<(i64, i64, i64)>, tokio_postgres::Error> {
    let st = c.st("sessions", &ctx.sql.sessions).await?;
    c.client
        .query(&st, &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// What the transaction leaves under one key.
#[derive(Clone)]
enum Final {
    Absent,
    Row {
        value: Vec<u8>,
        version: u64,
        create_rev: Option<u64>, // None: created by this transaction
        owner: Option<SessionId>,
    },
}

/// A row to insert: key, value, version, create_rev, owner.
type RowOut<'a> = (&'a str, &'a [u8], i64, i64, Option<i64>);

struct Meta {
    version: u64,
    create_rev: u64,
    owner: Option<SessionId>,
}

async fn txn(
    c: &mut Conn,
    ctx: &Ctx<'_>,
    conds: &[Cond],
    writes: &[Write],
) -> Result<StoreReply, Fail> {
    let r = match begin(c, ctx).await {
        Ok(rev) => txn_body(c, ctx, rev, conds, writes).await,
        Err(f) => Err(f),
    };
    end(c, r).await
}

async fn txn_body(
    c: &mut Conn,
    ctx: &Ctx<'_>,
    rev: u64,
    conds: &[Cond],
    writes: &[Write],
) -> Result<StoreReply, Fail> {
    // Every key the transaction names, read once, after the lock (so: the latest commit).
    let names: BTreeSet<&str> = conds
        .iter()
        .map(Cond::key)
        .chain(writes.iter().map(Write::key))
        .collect();
    let names: Vec<&str> = names.into_iter().collect();
    let st = c.st("metas", &ctx.sql.metas).await.map_err(before)?;
    let mut metas = BTreeMap::new();
    for r in c.client.query(&st, &[&names]).await.map_err(before)? {
        let key: String = r.try_get(0).map_err(before)?;
        let owner: Option<i64> = r.try_get(3).map_err(before)?;
        metas.insert(
            key,
            Meta {
                version: to_u64(r.try_get(1).map_err(before)?),
                create_rev: to_u64(r.try_get(2).map_err(before)?),
                owner: owner.map(|o| SessionId(to_u64(o))),
            },
        );
    }
    // Owners of creates: alive iff their row exists (a session exists until it is deleted).
    let owners: Vec<i64> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create { owner: Some(s), .. } => Some(to_i64(s.0)),
            _ => None,
        })
        .collect();
    let mut alive = BTreeSet::new();
    if !owners.is_empty() {
        let st = c
            .st("live_sessions", &ctx.sql.live_sessions)
            .await
            .map_err(before)?;
        for r in c.client.query(&st, &[&owners]).await.map_err(before)? {
            alive.insert(to_u64(r.try_get::<_, i64>(0).map_err(before)?));
        }
    }
    let meta = |k: &str| {
        metas.get(k).map(|m| KeyMeta {
            version: m.version,
            create_rev: m.create_rev,
            owner: m.owner,
        })
    };
    if let Some(e) = txn_refusal(conds, writes, meta, |s| alive.contains(&s.0)) {
        return Err(Fail::Refused(e));
    }
    // What each key holds after the writes, each against the state the ones before produce
    // (every write passed `txn_refusal`'s checks).
    let mut state: BTreeMap<&str, Final> = BTreeMap::new();
    for w in writes {
        let key = w.key();
        let now = state
            .get(key)
            .cloned()
            .unwrap_or_else(|| match metas.get(key) {
                Some(m) => Final::Row {
                    value: Vec::new(),
                    version: m.version,
                    create_rev: Some(m.create_rev),
                    owner: m.owner,
                },
                None => Final::Absent,
            });
        let next = match w {
            Write::Create { value, owner, .. } => Final::Row {
                value: value.clone(),
                version: 0,
                create_rev: None,
                owner: *owner,
            },
            Write::Put { value, .. } => match now {
                Final::Row {
                    version,
                    create_rev,
                    ..
                } => Final::Row {
                    value: value.clone(),
                    version: version + 1,
                    create_rev,
                    owner: None,
                },
                Final::Absent => Final::Row {
                    value: value.clone(),
                    version: 0,
                    create_rev: None,
                    owner: None,
                },
            },
            Write::Delete { .. } => Final::Absent,
        };
        state.insert(key, next);
    }
    if writes.is_empty() {
        return Ok(StoreReply::Committed { rev });
    }
    let rev = rev + 1;
    // Every existing row the transaction writes goes, deleted or to be inserted again in its
    // final version: no `ON CONFLICT` upsert (the key constraint cannot arbitrate one; see
    // `schema`).
    let gone: Vec<&str> = state
        .keys()
        .copied()
        .filter(|k| metas.contains_key(*k))
        .collect();
    if !gone.is_empty() {
        let st = c
            .st("delete_keys", &ctx.sql.delete_keys)
            .await
            .map_err(before)?;
        c.client.execute(&st, &[&gone]).await.map_err(before)?;
    }
    let rows: Vec<RowOut<'_>> = state
        .iter()
        .filter_map(|(k, f)| match f {
            Final::Row {
                value,
                version,
                create_rev,
                owner,
            } => Some((
                *k,
                value.as_slice(),
                to_i64(*version),
                to_i64(create_rev.unwrap_or(rev)),
                owner.map(|o| to_i64(o.0)),
            )),
            Final::Absent => None,
        })
        .collect();
    if !rows.is_empty() {
        // Column arrays for `unnest`.
        let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let values: Vec<&[u8]> = rows.iter().map(|r| r.1).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let creates: Vec<i64> = rows.iter().map(|r| r.3).collect();
        let mods: Vec<i64> = vec![to_i64(rev); rows.len()];
        let owners: Vec<Option<i64>> = rows.iter().map(|r| r.4).collect();
        let st = c.st("insert", &ctx.sql.insert).await.map_err(before)?;
        let params: [&(dyn ToSql + Sync); 6] =
            [&keys, &values, &versions, &creates, &mods, &owners];
        c.client.execute(&st, &params).await.map_err(before)?;
    }
    let changed: Vec<&str> = state.keys().copied().collect();
    let got = bump_and_notify(c, ctx, &changed).await?;
    debug_assert_eq!(got, rev, "the counter row is locked by this transaction");
    Ok(StoreReply::Committed { rev })
}
