//! Differential test: seeded random operations applied to `MemModel` (the reference) and to a
//! SQLite store give identical results, replies and errors alike — session ids, revisions,
//! versions and messages included — as long as no session expires (TTLs of a minute; expiry
//! timing is covered by the conformance suite and `tests/expiry.rs`).

use std::time::Duration;

use rebalanser_core::ids::Time;
use rebalanser_core::SessionId;
use rebalanser_sqlite::SqliteStore;
use rebalanser_store::{Cond, MemModel, Store, StoreError, StoreOp, StoreReply, Write};

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

const KEYS: [&str; 7] = ["g/a", "g/b", "g/c", "g/a/x", "g/b/y", "h/a", "g/é"];

fn key(r: &mut Rng) -> String {
    match r.below(40) {
        0 => "bad//key".to_string(),
        1 => "nokey".to_string(),
        _ => r.pick(&KEYS).to_string(),
    }
}

fn value(r: &mut Rng) -> Vec<u8> {
    match r.below(40) {
        0 => Vec::new(),
        n => vec![b'a' + (n % 26) as u8; n as usize],
    }
}

fn session(r: &mut Rng, opened: u64) -> SessionId {
    // Mostly sessions that exist (or were closed), sometimes one that never did.
    match r.below(10) {
        0 => SessionId(opened + 5),
        _ => SessionId(1 + r.below(opened.max(1))),
    }
}

fn op(r: &mut Rng, opened: u64, rev: u64) -> StoreOp {
    match r.below(20) {
        0 => StoreOp::OpenSession {
            ttl: Duration::from_secs(60),
        },
        1 => StoreOp::KeepAlive {
            session: session(r, opened),
        },
        2 => StoreOp::CloseSession {
            session: session(r, opened),
        },
        3 | 4 => StoreOp::Get {
            key: key(r),
            linearizable: true,
        },
        5 => StoreOp::List {
            prefix: r.pick(&["g/", "g/a", "h/", "", "zz"]).to_string(),
            linearizable: true,
        },
        6 => StoreOp::Read {
            keys: (0..r.below(4)).map(|_| key(r)).collect(),
            prefixes: (0..r.below(3))
                .map(|_| r.pick(&["g/", "g/a", "h/", "zz"]).to_string())
                .collect(),
            linearizable: true,
        },
        _ => {
            let conds = (0..r.below(3))
                .map(|_| match r.below(3) {
                    0 => Cond::Absent(key(r)),
                    1 => Cond::Version(key(r), r.below(3)),
                    _ => Cond::Owned {
                        key: key(r),
                        session: session(r, opened),
                        create_rev: rev.saturating_sub(r.below(4)),
                    },
                })
                .collect();
            let writes = (0..r.below(4))
                .map(|_| match r.below(4) {
                    0 => Write::Create {
                        key: key(r),
                        value: value(r),
                        owner: None,
                    },
                    1 => Write::Create {
                        key: key(r),
                        value: value(r),
                        owner: Some(session(r, opened)),
                    },
                    2 => Write::Put {
                        key: key(r),
                        value: value(r),
                    },
                    _ => Write::Delete { key: key(r) },
                })
                .collect();
            StoreOp::Txn { conds, writes }
        }
    }
}

async fn run_seed(seed: u64, steps: usize) -> std::collections::BTreeMap<&'static str, usize> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.db");
    let store = SqliteStore::open(&path).unwrap();
    // A new file starts its revision and session-id counters at the wall clock (so a file
    // created again never repeats them), `MemModel` at 0: start this file at 0 too, so ids and
    // revisions compare exactly.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "UPDATE meta SET rev = 0; UPDATE sqlite_sequence SET seq = 0 WHERE name = 'sessions';",
        )
        .unwrap();
    let mut model = MemModel::default();
    let mut r = Rng(seed);
    let mut opened = 0;
    let mut seen = std::collections::BTreeMap::new();
    for step in 0..steps {
        let op = op(&mut r, opened, model.rev());
        let want = model.apply(Time::ZERO, &op);
        let got = store.execute(op.clone()).await;
        assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
        let kind = match &got {
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
            Err(e) => panic!("seed {seed} step {step}: {e:?}"),
        };
        *seen.entry(kind).or_insert(0usize) += 1;
        if let Ok(StoreReply::Session { session, .. }) = got {
            opened = opened.max(session.0);
        }
    }
    // The final states agree key by key.
    let listed = store
        .execute(StoreOp::List {
            prefix: String::new(),
            linearizable: true,
        })
        .await;
    let want = model.apply(
        Time::ZERO,
        &StoreOp::List {
            prefix: String::new(),
            linearizable: true,
        },
    );
    assert_eq!(listed, want, "seed {seed}: final listing");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model() {
    let mut seen = std::collections::BTreeMap::new();
    for seed in [1, 2, 3, 0xC0FFEE, 0xDEAD_BEEF] {
        for (k, n) in run_seed(seed, 600).await {
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
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 5,
            "{kind}: {seen:?}"
        );
    }
}
