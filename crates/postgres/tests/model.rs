//! Differential test: seeded random operations applied to `MemModel` (the reference) and to a
//! PostgreSQL store on a fresh schema of a real server give identical results, replies and
//! errors alike — session ids, granted TTLs, revisions, versions and messages included — then
//! the same final listing and the same live sessions. No session expires: the stores' reapers
//! are paused and the model runs at one instant (expiry is covered by the conformance suite).
//!
//! Beyond the SQLite port: the operations go through two stores on one schema (two processes
//! of a group), and the inputs include what a PostgreSQL mapping could get wrong — keys and
//! values at the contract's limits (an incompressible key of `MAX_KEY_BYTES`, values of
//! `MAX_VALUE_BYTES` with every byte value), transactions over `MAX_TXN_BYTES`, non-BMP and
//! `U+10FFFF` keys, prefixes without an upper bound (`""`, `"\u{10FFFF}"`) or with a NUL (which
//! a PostgreSQL `text` cannot hold), session ids above `i64::MAX`, TTLs below and above the
//! granted range.

use std::collections::BTreeMap;
use std::time::Duration;

use rebalanser_core::ids::Time;
use rebalanser_core::store::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use rebalanser_core::SessionId;
use rebalanser_postgres::PostgresStore;
use rebalanser_store::{
    Cond, MemModel, ModelConfig, Store, StoreError, StoreOp, StoreReply, StoreResult, Write,
};
use rebalanser_testkit::Postgres;

mod common;

/// SplitMix64: seeds are literals so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// The inputs that do not depend on the step.
struct Pool {
    /// Valid keys.
    keys: Vec<String>,
    /// Invalid keys (each refused as `Invalid`, wherever it appears).
    bad_keys: Vec<String>,
    /// Prefixes for `List` and `Read` (prefixes are not validated).
    prefixes: Vec<String>,
}

impl Pool {
    fn new() -> Pool {
        // A key of exactly `MAX_KEY_BYTES` that does not compress (letters from a generator):
        // the contract's limit, stored and ranged over like any other key.
        let mut r = Rng(0x4B_4559);
        let mut long = "g/".to_string();
        while long.len() < MAX_KEY_BYTES {
            long.push((b'a' + r.below(26) as u8) as char);
        }
        let too_long = format!("{long}z");
        Pool {
            keys: [
                "g/a",
                "g/b",
                "g/c",
                "g/a/x",
                "g/b/y",
                "h/a",
                "g/é",
                "g/😀",
                "g/\u{10FFFF}",
                "g/\u{10FFFF}/z",
            ]
            .iter()
            .map(|k| k.to_string())
            .chain([long])
            .collect(),
            bad_keys: ["bad//key", "nokey", "g/\0", "g/.", "", "g/\u{e000}"]
                .iter()
                .map(|k| k.to_string())
                .chain([too_long])
                .collect(),
            prefixes: [
                "g/",
                "g/a",
                "h/",
                "",
                "zz",
                "g/\u{10FFFF}",
                "\u{10FFFF}",
                "g/\0",
                "\0",
            ]
            .iter()
            .map(|p| p.to_string())
            .collect(),
        }
    }

    fn key(&self, r: &mut Rng) -> String {
        match r.below(60) {
            0 | 1 => r.pick(&self.bad_keys).clone(),
            _ => r.pick(&self.keys).clone(),
        }
    }

    fn prefix(&self, r: &mut Rng) -> String {
        r.pick(&self.prefixes).clone()
    }
}

fn value(r: &mut Rng) -> Vec<u8> {
    match r.below(80) {
        0 => Vec::new(),
        1 => bytes(r, MAX_VALUE_BYTES),
        2 => bytes(r, MAX_VALUE_BYTES + 1),
        n if n < 10 => bytes(r, n as usize),
        n => vec![b'a' + (n % 26) as u8; n as usize],
    }
}

/// `n` bytes of every value (NUL and 0xFF included).
fn bytes(r: &mut Rng, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n.div_ceil(8))
        .flat_map(|_| r.next().to_le_bytes())
        .collect();
    v.truncate(n);
    v
}

fn session(r: &mut Rng, opened: u64) -> SessionId {
    // Mostly sessions that exist (or were closed), sometimes one that never did, rarely one
    // no `BIGINT` holds.
    match r.below(40) {
        0 => SessionId(u64::MAX),
        1 => SessionId(i64::MAX as u64 + 1),
        2..=5 => SessionId(opened + 5),
        _ => SessionId(1 + r.below(opened.max(1))),
    }
}

fn ttl(r: &mut Rng) -> Duration {
    // Granted TTLs are clamped into [100 ms, 1 h] by both. Whole microseconds: the store keeps
    // a TTL in microseconds, so a finer one would be granted rounded down.
    match r.below(6) {
        0 => Duration::ZERO,
        1 => Duration::from_millis(1),
        2 => Duration::from_micros(90_500_001),
        3 => Duration::from_secs(2 * 3600),
        _ => Duration::from_secs(60),
    }
}

/// A condition on the model's current state: mostly on a random key, sometimes on a key that
/// exists, as its writer would name it (its version, its owner and creation revision), so
/// that such conditions hold, and are checked, often.
fn cond(r: &mut Rng, pool: &Pool, model: &MemModel, opened: u64) -> Cond {
    let rev = model.rev();
    let existing: Vec<_> = model.entries().iter().collect();
    if !existing.is_empty() && r.below(3) == 0 {
        let (key, e) = *r.pick(&existing);
        return match (e.owner, r.below(3)) {
            (Some(session), 0 | 1) => Cond::Owned {
                key: key.clone(),
                session,
                // Sometimes the revision of an earlier instance (an ABA retry).
                create_rev: e.create_rev - r.below(2).min(e.create_rev),
            },
            _ => Cond::Version(key.clone(), e.version + r.below(2)),
        };
    }
    match r.below(3) {
        0 => Cond::Absent(pool.key(r)),
        1 => Cond::Version(pool.key(r), *r.pick(&[0, 0, 1, 1, 2, 3, u64::MAX])),
        _ => Cond::Owned {
            key: pool.key(r),
            session: session(r, opened),
            create_rev: rev.saturating_sub(r.below(4)),
        },
    }
}

fn op(r: &mut Rng, pool: &Pool, model: &MemModel, opened: u64) -> StoreOp {
    match r.below(40) {
        // Three values at the limit fit in a transaction, four do not (`MAX_TXN_BYTES`).
        39 => StoreOp::Txn {
            conds: vec![],
            writes: (0..3 + r.below(2))
                .map(|_| Write::Put {
                    key: pool.key(r),
                    value: bytes(r, MAX_VALUE_BYTES),
                })
                .collect(),
        },
        // A claim's guarded delete: the key if it is still this instance of the owner's.
        38 => {
            let owned: Vec<_> = model
                .entries()
                .iter()
                .filter_map(|(k, e)| e.owner.map(|s| (k, s, e.create_rev)))
                .collect();
            match owned.is_empty() {
                true => small_op(r, pool, model, opened, 19),
                false => {
                    let (key, session, create_rev) = *r.pick(&owned);
                    StoreOp::Txn {
                        conds: vec![Cond::Owned {
                            key: key.clone(),
                            session,
                            create_rev: create_rev - r.below(2).min(create_rev),
                        }],
                        writes: vec![Write::Delete { key: key.clone() }],
                    }
                }
            }
        }
        n => small_op(r, pool, model, opened, n / 2),
    }
}

fn small_op(r: &mut Rng, pool: &Pool, model: &MemModel, opened: u64, which: u64) -> StoreOp {
    match which {
        0 => StoreOp::OpenSession { ttl: ttl(r) },
        1 => StoreOp::KeepAlive {
            session: session(r, opened),
        },
        2 => StoreOp::CloseSession {
            session: session(r, opened),
        },
        3 | 4 => StoreOp::Get {
            key: pool.key(r),
            linearizable: true,
        },
        5 => StoreOp::List {
            prefix: pool.prefix(r),
            linearizable: true,
        },
        6 => StoreOp::Read {
            keys: (0..r.below(4)).map(|_| pool.key(r)).collect(),
            prefixes: (0..r.below(3)).map(|_| pool.prefix(r)).collect(),
            linearizable: true,
        },
        _ => {
            let conds = (0..r.below(3))
                .map(|_| cond(r, pool, model, opened))
                .collect();
            let writes = (0..r.below(5))
                .map(|_| match r.below(4) {
                    0 => Write::Create {
                        key: pool.key(r),
                        value: value(r),
                        owner: None,
                    },
                    1 => Write::Create {
                        key: pool.key(r),
                        value: value(r),
                        owner: Some(session(r, opened)),
                    },
                    2 => Write::Put {
                        key: pool.key(r),
                        value: value(r),
                    },
                    _ => Write::Delete { key: pool.key(r) },
                })
                .collect();
            StoreOp::Txn { conds, writes }
        }
    }
}

/// The kinds of outcome `got` of `op` is: its variant, then finer kinds of what a mapping
/// could get wrong (which refusal, which limit).
fn kinds(op: &StoreOp, got: &StoreResult) -> Option<Vec<&'static str>> {
    let mut out = vec![match got {
        Ok(StoreReply::Committed { .. }) => "committed",
        Ok(StoreReply::Session { .. }) => "opened",
        Ok(StoreReply::KeptAlive { .. }) => "kept alive",
        Ok(StoreReply::Closed) => "closed",
        Ok(StoreReply::Got(Some(_))) => "got some",
        Ok(StoreReply::Got(None)) => "got none",
        Ok(StoreReply::Listed { entries, .. }) if !entries.is_empty() => "listed some",
        Ok(StoreReply::Listed { .. }) => "listed none",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(StoreError::SessionExpired) => "session expired",
        Err(StoreError::Invalid(_)) => "invalid",
        Err(_) => return None,
    }];
    match (op, got) {
        (StoreOp::Txn { conds, writes }, Ok(StoreReply::Committed { .. })) => {
            if writes.is_empty() {
                out.push("committed without writes");
            }
            if conds.iter().any(|c| matches!(c, Cond::Owned { .. })) {
                out.push("committed under an Owned condition");
            }
            // The limits themselves were stored, not only refused beyond them.
            for w in writes {
                if let Write::Create { key, value, .. } | Write::Put { key, value } = w {
                    if value.len() == MAX_VALUE_BYTES {
                        out.push("wrote a value at the limit");
                    }
                    if key.len() == MAX_KEY_BYTES {
                        out.push("wrote a key at the limit");
                    }
                }
            }
        }
        (StoreOp::OpenSession { ttl }, Ok(StoreReply::Session { ttl: granted, .. }))
            if ttl != granted =>
        {
            out.push("TTL clamped");
        }
        (_, Err(StoreError::Conflict(m))) if m.ends_with(" exists") => out.push("conflict: exists"),
        (_, Err(StoreError::Conflict(_))) => out.push("conflict: condition"),
        (_, Err(StoreError::Invalid(m))) if m.starts_with("key") => out.push("invalid: key"),
        (_, Err(StoreError::Invalid(m))) if m.starts_with("value of") => out.push("invalid: value"),
        (_, Err(StoreError::Invalid(m))) if m.starts_with("transaction of") => {
            out.push("invalid: transaction size")
        }
        (_, Err(StoreError::Invalid(m))) if m.contains("session-owned") => {
            out.push("invalid: owned rewrite")
        }
        _ => {}
    }
    Some(out)
}

/// The model's settings that match the store's defaults.
fn model_config() -> ModelConfig {
    let opts = rebalanser_postgres::PostgresOptions::default();
    ModelConfig {
        min_ttl: opts.min_ttl,
        max_ttl: opts.max_ttl,
        history: 0,
    }
}

async fn run_seed(seed: u64, steps: usize) -> BTreeMap<&'static str, usize> {
    let pg = Postgres::shared();
    let schema = common::unique_schema("model");
    let url = common::url(pg, &schema);
    // Two stores on the schema, like two processes of a group: every operation goes through
    // one of them, chosen at random, so no answer may come from one store's own state.
    let stores = [
        PostgresStore::connect(&url).await.expect("connect"),
        PostgresStore::connect(&url).await.expect("connect"),
    ];
    for s in &stores {
        // Nothing expires in the model (it runs at one instant): no reaper may delete a
        // session however long this run takes on a slow machine.
        s.pause_reaper(true);
    }
    // A new schema starts its revision counter and session ids at the wall clock in
    // microseconds (so a schema created again never repeats them), `MemModel` at 0 and 1:
    // start this schema there too, so ids and revisions compare exactly.
    pg.psql(&format!(
        "UPDATE {schema}.meta SET rev = 0; \
         ALTER TABLE {schema}.sessions ALTER COLUMN id RESTART WITH 1;"
    ))
    .expect("reset the counters");
    let mut model = MemModel::new(model_config());
    let pool = Pool::new();
    let mut r = Rng(seed);
    let mut opened = 0;
    let mut seen = BTreeMap::new();
    for step in 0..steps {
        let op = op(&mut r, &pool, &model, opened);
        let want = model.apply(Time::ZERO, &op);
        let got = stores[r.below(2) as usize].execute(op.clone()).await;
        assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
        let Some(kinds) = kinds(&op, &got) else {
            panic!("seed {seed} step {step}: {got:?}");
        };
        for k in kinds {
            *seen.entry(k).or_insert(0usize) += 1;
        }
        if let Ok(StoreReply::Session { session, .. }) = got {
            opened = opened.max(session.0);
        }
    }
    // The final states agree key by key, through both stores.
    let all = StoreOp::List {
        prefix: String::new(),
        linearizable: true,
    };
    let want = model.apply(Time::ZERO, &all);
    for s in &stores {
        assert_eq!(
            s.execute(all.clone()).await,
            want,
            "seed {seed}: final listing"
        );
    }
    // So do the live sessions and their TTLs (a closed session's row is gone, an open one's
    // is there, whether or not it owns keys).
    let rows = pg
        .psql(&format!(
            "SELECT id, ttl_us FROM {schema}.sessions ORDER BY id"
        ))
        .expect("sessions");
    let live: Vec<(u64, Duration)> = rows
        .lines()
        .map(|l| {
            let (id, us) = l.split_once('|').expect("id|ttl_us");
            (
                id.parse().expect("id"),
                Duration::from_micros(us.parse().expect("ttl_us")),
            )
        })
        .collect();
    let want: Vec<(u64, Duration)> = (1..=opened)
        .filter_map(|id| model.session_ttl(SessionId(id)).map(|t| (id, t)))
        .collect();
    assert_eq!(live, want, "seed {seed}: live sessions");
    *seen.entry("live sessions at the end").or_insert(0) += live.len();
    pg.psql(&format!("DROP SCHEMA {schema} CASCADE"))
        .expect("drop the schema");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model() {
    let mut seen = BTreeMap::new();
    for seed in [1, 2, 3, 0xC0FFEE, 0xDEAD_BEEF] {
        for (k, n) in run_seed(seed, 1000).await {
            *seen.entry(k).or_insert(0) += n;
        }
    }
    eprintln!("outcomes: {seen:?}");
    // Not vacuous: every kind of outcome happened, commits and refusals often.
    for kind in [
        "committed",
        "opened",
        "kept alive",
        "closed",
        "got some",
        "got none",
        "listed some",
        "listed none",
        "conflict",
        "session expired",
        "invalid",
        "committed without writes",
        "committed under an Owned condition",
        "TTL clamped",
        "conflict: exists",
        "conflict: condition",
        "invalid: key",
        "invalid: value",
        "invalid: transaction size",
        "invalid: owned rewrite",
        "wrote a value at the limit",
        "wrote a key at the limit",
        "live sessions at the end",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 5,
            "{kind}: {seen:?}"
        );
    }
}
