//! Red-team tests for the SQLite store (PITFALLS 4, 5, 7, 14 and the SQLite store mapping).
//!
//! Tests named `redteam_finding_*` FAIL on the code they were written against (scenario,
//! severity and suggested fix in their comments). Tests named `redteam_pin_*` pass: they pin
//! behaviour that was probed and found sound.
//!
//! Run: `cargo test -p rebalanser-sqlite --test redteam -- --nocapture`

use std::time::Duration;

use rebalanser_sqlite::{SqliteOptions, SqliteStore};
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply};
use rusqlite::Connection;

mod common;
use common::{boottime_ns, create, expires_ns, new_store, open_session};

// ---------------------------------------------------------------------------------------------
// Findings. S1 (a backup restored while members run re-issues session ids and revisions, so
// a member's keepalive can renew another's session) is not fixed: documented on the crate
// ("stop every member before restoring"), tracked in the issue notes.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Pinned behaviour (passes).
// ---------------------------------------------------------------------------------------------

/// PITFALLS 5b / rule 2: the expiry a keepalive commits is never earlier than
/// (send time + TTL): the member's deadline (send time + T − m) is always before the store's
/// expiry, because the store reads its clock under the write lock, after the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pin_keepalive_expiry_never_before_send_plus_ttl() {
    let (_dir, path, store) = new_store("rb.db");
    let ttl = Duration::from_secs(5);
    let t0 = boottime_ns();
    let s = open_session(&store, ttl).await;
    assert!(expires_ns(&path, s) >= t0 + ttl.as_nanos() as i64);
    for _ in 0..50 {
        let sent = boottime_ns();
        match store.execute(StoreOp::KeepAlive { session: s }).await {
            Ok(StoreReply::KeptAlive { ttl: granted }) => assert_eq!(granted, ttl),
            other => panic!("{other:?}"),
        }
        let e = expires_ns(&path, s);
        assert!(
            e >= sent + ttl.as_nanos() as i64,
            "expiry {e} before send {sent} + ttl"
        );
    }
}

/// PITFALLS 5: a keepalive racing a takeover. Member A holds a short session and one claim and
/// sends one keepalive at a random moment around its expiry; member B (another connection)
/// hammers a create of the same key. If A's keepalive succeeded, B's create may only commit
/// at or after A's new deadline basis (send + TTL): a reply to B earlier than that is two
/// owners. Also: a keepalive that finds the session expired never revives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redteam_pin_keepalive_racing_takeover_never_gives_two_owners() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rb.db");
    let opts = SqliteOptions {
        busy_timeout: Duration::from_secs(2),
        ..SqliteOptions::default()
    };
    let a = std::sync::Arc::new(SqliteStore::open_with(&path, opts.clone()).unwrap());
    let b = std::sync::Arc::new(SqliteStore::open_with(&path, opts).unwrap());
    let sb = open_session(&b, Duration::from_secs(600)).await;
    let ttl = Duration::from_millis(20);
    let (mut ok, mut expired, mut skipped) = (0, 0, 0);
    for i in 0..120u64 {
        let key = format!("g/claims/r{i}");
        let sa = open_session(&a, ttl).await;
        match create(&a, &key, Some(sa)).await {
            Ok(_) => {}
            // A loaded machine can take longer than the 20 ms TTL between the two calls:
            // there is no race to judge in this round.
            Err(StoreError::SessionExpired) => {
                skipped += 1;
                continue;
            }
            Err(e) => panic!("round {i}: claim create: {e:?}"),
        }
        let a2 = a.clone();
        let ka = tokio::spawn(async move {
            // Spread the keepalive over [0, 2·TTL): before, around and after the expiry.
            tokio::time::sleep(Duration::from_micros((i * 7919) % 40_000)).await;
            let sent = boottime_ns();
            let r = a2.execute(StoreOp::KeepAlive { session: sa }).await;
            (sent, r)
        });
        let b2 = b.clone();
        let k2 = key.clone();
        let take = tokio::spawn(async move {
            loop {
                if create(&b2, &k2, Some(sb)).await.is_ok() {
                    return boottime_ns();
                }
                tokio::task::yield_now().await;
            }
        });
        let (sent, r) = ka.await.unwrap();
        let replied = take.await.unwrap();
        match r {
            Ok(StoreReply::KeptAlive { .. }) => {
                ok += 1;
                let basis = sent + ttl.as_nanos() as i64;
                assert!(
                    replied >= basis,
                    "round {i}: B's create was answered {} µs before A's renewed deadline basis",
                    (basis - replied) / 1000
                );
            }
            Err(StoreError::SessionExpired) => expired += 1,
            other => panic!("round {i}: {other:?}"),
        }
    }
    println!("keepalive races: {ok} renewed, {expired} found expired, {skipped} skipped");
    assert!(
        skipped < 60,
        "{skipped} of 120 sessions expired before their first claim"
    );
    assert!(
        ok > 0 && expired > 0,
        "both outcomes exercised: {ok} / {expired}"
    );
}

/// A foreign SQLite file is never written, even by a store that opened the right file before
/// and is asked to reap: opening is refused and the foreign bytes are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pin_foreign_file_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, expires_ns INTEGER); \
             INSERT INTO sessions VALUES (1, 0);",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert!(SqliteStore::open(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!dir.path().join("other.db-wal").exists());
}
