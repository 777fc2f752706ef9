//! Files a store must refuse, or survive, with a typed error that names the file: never a
//! panic, never a hang, never a write to a file that is not ours.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rebalanser_sqlite::{schema, SqliteError, SqliteOptions, SqliteStore};
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, Write};
use rusqlite::Connection;

fn quick() -> SqliteOptions {
    SqliteOptions {
        open_timeout: Duration::from_millis(300),
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    }
}

fn names(e: &SqliteError, path: &Path) {
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "the error names the file: {msg}"
    );
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

#[test]
fn random_bytes_are_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.db");
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &noise).unwrap();
    let e = SqliteStore::open_with(&path, quick()).expect_err("noise");
    assert!(matches!(e, SqliteError::NotADatabase { .. }), "{e:?}");
    names(&e, &path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        noise,
        "the file is untouched"
    );
}

#[test]
fn a_foreign_database_with_tables_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("theirs.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE orders (id INTEGER);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = SqliteStore::open_with(&path, quick()).expect_err("foreign");
    assert!(matches!(e, SqliteError::Foreign { .. }), "{e:?}");
    names(&e, &path);
    assert!(e.to_string().contains("customers"), "{e}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "not even switched to WAL"
    );
    assert!(!dir.path().join("theirs.db-wal").exists());
}

#[test]
fn another_applications_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other-app.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1234;")
        .unwrap();
    let e = SqliteStore::open_with(&path, quick()).expect_err("foreign id");
    assert!(matches!(e, SqliteError::Foreign { .. }), "{e:?}");
    names(&e, &path);
}

#[test]
fn a_newer_schema_and_a_malformed_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer).unwrap());
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let e = SqliteStore::open_with(&newer, quick()).expect_err("newer");
    assert!(
        matches!(e, SqliteError::SchemaVersion { found: 99, .. }),
        "{e:?}"
    );
    names(&e, &newer);

    let broken = dir.path().join("broken.db");
    drop(SqliteStore::open(&broken).unwrap());
    Connection::open(&broken)
        .unwrap()
        .execute_batch("DROP TABLE kv;")
        .unwrap();
    let e = SqliteStore::open_with(&broken, quick()).expect_err("malformed");
    assert!(matches!(e, SqliteError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("malformed schema"), "{e}");
    names(&e, &broken);
}

#[test]
fn damaged_pages_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = SqliteStore::open(&path).unwrap();
        rt.block_on(async {
            for i in 0..200 {
                store.execute(put(&format!("k/{i:04}"))).await.unwrap();
            }
        });
    } // the last connection checkpoints the WAL into the file
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4 * 4096, "{} bytes", bytes.len());
    for b in &mut bytes[4096 + 100..4 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = SqliteStore::open_with(&path, quick()).expect_err("damaged");
    assert!(matches!(e, SqliteError::Corrupt { .. }), "{e:?}");
    names(&e, &path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.db");
    let store = SqliteStore::open(&path).unwrap();
    store.execute(put("ns/k")).await.unwrap();
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA ignore_check_constraints = 1; UPDATE kv SET version = -5 WHERE key = 'ns/k';",
        )
        .unwrap();
    }
    for op in [
        StoreOp::Get {
            key: "ns/k".into(),
            linearizable: true,
        },
        StoreOp::List {
            prefix: "ns/".into(),
            linearizable: true,
        },
    ] {
        match store.execute(op).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(&path.display().to_string()), "{m}");
                assert!(m.contains("corrupt row"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Other keys are still served.
    store.execute(put("ns/other")).await.unwrap();
    let r = store
        .execute(StoreOp::Get {
            key: "ns/other".into(),
            linearizable: true,
        })
        .await;
    assert!(matches!(r, Ok(StoreReply::Got(Some(_)))), "{r:?}");
}

/// Runs `f` on a thread without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so that file modes
/// bind even when the tests run as root (capabilities are per thread on Linux).
fn without_dac_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut h = Header {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let mut d = [Data::default(); 2];
            // SAFETY: header and two data structs, as capget/capset(2) require.
            let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
            assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
            d[0].effective &= !((1 << 1) | (1 << 2));
            // SAFETY: as above; pid 0 = this thread only.
            let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
            assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread")
    })
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_read_only_directory_is_unwritable() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // An existing database in it too: WAL needs its -wal and -shm files beside it.
    let existing = ro.join("existing.db");
    drop(SqliteStore::open(&existing).unwrap());
    chmod(&ro, 0o555);
    let fresh = ro.join("fresh.db");
    let results: Vec<(PathBuf, Result<SqliteStore, SqliteError>)> = without_dac_override(|| {
        vec![
            (fresh.clone(), SqliteStore::open_with(&fresh, quick())),
            (existing.clone(), SqliteStore::open_with(&existing, quick())),
        ]
    });
    chmod(&ro, 0o755);
    for (path, r) in results {
        let e = r.expect_err("read-only directory");
        assert!(
            matches!(e, SqliteError::Unwritable { .. }),
            "{path:?}: {e:?}"
        );
        names(&e, &path);
        assert!(e.to_string().contains(&ro.display().to_string()), "{e}");
    }
}

#[test]
fn a_missing_directory_is_unwritable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/x.db");
    let e = SqliteStore::open_with(&path, quick()).expect_err("missing dir");
    assert!(matches!(e, SqliteError::Unwritable { .. }), "{e:?}");
    names(&e, &path);
}

#[test]
fn a_file_locked_by_another_connection_is_locked_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    // Ours, in WAL mode, with a writer holding the write lock.
    let ours = dir.path().join("ours.db");
    drop(SqliteStore::open(&ours).unwrap());
    let holder = Connection::open(&ours).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A brand-new file in rollback-journal mode, exclusively locked by its creator: even its
    // header cannot be read.
    let fresh = dir.path().join("fresh.db");
    let creator = Connection::open(&fresh).unwrap();
    creator
        .execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE; CREATE TABLE t (x);")
        .unwrap();
    for path in [&ours, &fresh] {
        let t = Instant::now();
        let e = SqliteStore::open_with(path, quick()).expect_err("locked");
        assert!(matches!(e, SqliteError::Locked { .. }), "{path:?}: {e:?}");
        names(&e, path);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    holder.execute_batch("ROLLBACK").unwrap();
    drop(SqliteStore::open_with(&ours, quick()).expect("free again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_makes_writes_unavailable_and_leaves_reads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let store = SqliteStore::open_with(&path, quick()).unwrap();
    store.execute(put("ns/a")).await.unwrap();
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    for op in [
        put("ns/b"),
        StoreOp::OpenSession {
            ttl: Duration::from_secs(5),
        },
    ] {
        let t = Instant::now();
        let r = store.execute(op).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let r = store
        .execute(StoreOp::List {
            prefix: "ns/".into(),
            linearizable: true,
        })
        .await;
    assert!(
        matches!(&r, Ok(StoreReply::Listed { entries, .. }) if entries.len() == 1),
        "{r:?}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    store.execute(put("ns/b")).await.expect("writable again");
}

#[test]
fn the_schema_is_marked_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    let (app, version, mode): (i32, i64, String) = c
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id), \
             (SELECT user_version FROM pragma_user_version), \
             (SELECT journal_mode FROM pragma_journal_mode)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (app, version, mode.as_str()),
        (schema::APPLICATION_ID, schema::SCHEMA_VERSION, "wal")
    );
    // Re-opening an existing database (twice, concurrently) works.
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    drop((a, b));
}

#[test]
fn racing_first_opens_initialise_the_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                SqliteStore::open(&path).expect("concurrent first open")
            });
        }
    });
    let c = Connection::open(&path).unwrap();
    // Initialised once: one row, and the revision still where creation put it (the session
    // sequence starts at the same floor; see `schema::counter_floor`).
    let (rows, rev, seq): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), max(rev), \
             (SELECT seq FROM sqlite_sequence WHERE name = 'sessions') FROM meta",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, rev), (1, seq));
    assert!(
        rev > 1_600_000_000_000_000,
        "starts at the wall clock in µs: {rev}"
    );
}

/// A file of schema version 1 (revisions and session ids from 0, no file id) is upgraded in
/// place when opened: it gets a file id, and both counters jump to the floor (they only grow).
#[test]
fn a_version_1_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    drop(SqliteStore::open(&path).unwrap());
    // Back to what a version-1 build wrote.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "ALTER TABLE meta DROP COLUMN file_id; \
             UPDATE meta SET rev = 7, schema_version = 1; \
             UPDATE sqlite_sequence SET seq = 3 WHERE name = 'sessions'; \
             PRAGMA user_version = 1;",
        )
        .unwrap();
    drop(SqliteStore::open(&path).expect("upgrade"));
    let c = Connection::open(&path).unwrap();
    let (version, rev, file_id, seq): (i64, i64, i64, i64) = c
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), rev, file_id, \
             (SELECT seq FROM sqlite_sequence WHERE name = 'sessions') FROM meta",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    assert_ne!(file_id, 0, "a file id was drawn");
    assert!(
        rev > 1_600_000_000_000_000 && seq >= rev,
        "rev {rev}, seq {seq}"
    );
}
