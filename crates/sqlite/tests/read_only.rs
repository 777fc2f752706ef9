//! Opening without creating, and read-only: a tool that only looks (`rebalanser status`) must
//! never create a file at a mistyped path, never write to the file it reads, and get a typed
//! error (not a panic) for a write it attempts.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rebalanser_sqlite::{SqliteError, SqliteOptions, SqliteStore};
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, Write};
use rusqlite::Connection;

fn read_only() -> SqliteOptions {
    SqliteOptions {
        read_only: true,
        create: false,
        open_timeout: Duration::from_millis(500),
        ..SqliteOptions::default()
    }
}

fn put(key: &str) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Put {
            key: key.into(),
            value: b"v".to_vec(),
        }],
    }
}

fn listed(r: Result<StoreReply, StoreError>) -> Vec<String> {
    match r {
        Ok(StoreReply::Listed { entries, .. }) => entries.into_iter().map(|(k, _)| k).collect(),
        other => panic!("expected a listing: {other:?}"),
    }
}

/// The names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_missing_file_is_not_created_without_create() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typo.db");
    for (what, opts) in [
        (
            "create off",
            SqliteOptions {
                create: false,
                ..SqliteOptions::default()
            },
        ),
        ("read-only", read_only()),
    ] {
        match SqliteStore::open_with(&db, opts) {
            Err(e @ SqliteError::NoSuchFile { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("no such store file"), "{what}: {msg}");
                assert!(msg.contains(&db.display().to_string()), "{what}: {msg}");
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: a missing file opened"),
        }
        assert!(
            files(dir.path()).is_empty(),
            "{what}: {:?}",
            files(dir.path())
        );
    }
    let bad = SqliteOptions {
        read_only: true,
        ..SqliteOptions::default()
    };
    assert!(matches!(
        SqliteStore::open_with(&db, bad),
        Err(SqliteError::Options(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_reads_under_a_held_write_lock_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    {
        let w = SqliteStore::open(&db).unwrap();
        w.execute(put("g/a")).await.unwrap();
    }
    let before = std::fs::metadata(&db).unwrap();
    // Another process holds the write lock for the whole test: a store that opened the file
    // for writing would wait for it (its open takes the lock once) and fail `Locked`.
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t0 = Instant::now();
    let ro = SqliteStore::open_with(&db, read_only()).expect("opens read-only under the lock");
    assert!(t0.elapsed() < Duration::from_millis(400), "did not wait");
    let got = listed(
        ro.execute(StoreOp::List {
            prefix: "g/".into(),
            linearizable: true,
        })
        .await,
    );
    assert_eq!(got, ["g/a"]);
    for op in [
        put("g/b"),
        StoreOp::OpenSession {
            ttl: Duration::from_secs(5),
        },
    ] {
        match ro.execute(op).await {
            Err(StoreError::Invalid(m)) => {
                assert!(m.contains("read-only") && m.contains("g.db"), "{m}")
            }
            other => panic!("a write through a read-only store: {other:?}"),
        }
    }
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    drop(ro);
    let after = std::fs::metadata(&db).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before.modified().unwrap(),
        after.modified().unwrap_or(SystemTime::UNIX_EPOCH)
    );
}

async fn next(
    w: &mut futures::stream::BoxStream<'static, rebalanser_store::WatchEvent>,
) -> Option<rebalanser_store::WatchEvent> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(3), w.next())
        .await
        .expect("an event within 3 s")
}

/// A read-only store cannot reap an expired session, so its watches learn of the expiry from
/// the count of expired sessions instead of the revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_watch_hears_of_an_expiry_nobody_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let w = SqliteStore::open(&db).unwrap();
    let session = match w
        .execute(StoreOp::OpenSession {
            ttl: Duration::from_millis(300),
        })
        .await
        .unwrap()
    {
        StoreReply::Session { session, .. } => session,
        other => panic!("{other:?}"),
    };
    w.execute(StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Create {
            key: "g/members/m".into(),
            value: b"v".to_vec(),
            owner: Some(session),
        }],
    })
    .await
    .unwrap();
    let ro = SqliteStore::open_with(&db, read_only()).unwrap();
    let mut watch = ro.watch("g/".into());
    assert_eq!(
        next(&mut watch).await,
        Some(rebalanser_store::WatchEvent::Reset)
    );
    assert_eq!(
        next(&mut watch).await,
        Some(rebalanser_store::WatchEvent::Changed),
        "the expiry is notified"
    );
    let got = listed(
        ro.execute(StoreOp::List {
            prefix: "g/".into(),
            linearizable: true,
        })
        .await,
    );
    assert!(
        got.is_empty(),
        "the expired session's key is hidden: {got:?}"
    );
}
