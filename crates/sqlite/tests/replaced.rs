//! A database file deleted or replaced under a running store (PITFALLS "Store mapping:
//! SQLite"): the store must notice, answer for sessions of the old file `SessionExpired`, move
//! to the new file, end its watches, and never let the new file issue tokens (creation
//! revisions) the old one already issued.
//!
//! Without this, a store keeps working on the unlinked inode through its open connections
//! while processes that open the path later work on a new file: two groups under one name,
//! each granting the same resources, with revisions restarting at 0 so even the fencing
//! tokens repeat.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use rebalanser_sqlite::SqliteStore;
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, WatchEvent};

mod common;
use common::{create, get, keepalive, new_store, open_session};

const TTL: Duration = Duration::from_secs(30);

/// The creation revision of `key` as `store` lists it.
async fn create_rev(store: &SqliteStore, key: &str) -> u64 {
    match get(store, key).await {
        Some(e) => e.create_rev,
        None => panic!("get {key}: no entry"),
    }
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {p:?}: {e}"),
        }
    }
}

/// How the file goes away under the running store.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Deleted; nothing at the path.
    Delete,
    /// Deleted, and another store instance creates a fresh database at the path.
    Recreate,
    /// A fresh database made elsewhere is renamed over the path (and the old file's `-wal`
    /// and `-shm` removed: left in place, SQLite would read the old file's pages from its WAL
    /// into the new file, a mix no store can undo).
    RenameOver,
}

fn change(path: &Path, how: Change) -> Option<SqliteStore> {
    match how {
        Change::Delete => {
            remove(path);
            None
        }
        Change::Recreate => {
            remove(path);
            Some(SqliteStore::open(path).expect("create the new file"))
        }
        Change::RenameOver => {
            let other = path.with_extension("new.db");
            drop(SqliteStore::open(&other).expect("create the other file"));
            for suffix in ["-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                std::fs::remove_file(p).expect("remove the old file's -wal/-shm");
            }
            std::fs::rename(&other, path).expect("rename over");
            for suffix in ["-wal", "-shm"] {
                let mut p = other.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            Some(SqliteStore::open(path).expect("open the renamed file"))
        }
    }
}

/// The old store's session ops fail with `SessionExpired` at once (its next op), never
/// succeed on the dead file; it then works on the new file and can open a session there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replaced_file_expires_the_old_files_sessions() {
    for how in [Change::Delete, Change::Recreate, Change::RenameOver] {
        let (_dir, path, old) = new_store("g.db");
        let s = open_session(&old, TTL).await;
        create(&old, "g/claim/r", Some(s))
            .await
            .expect("claim on the old file");
        keepalive(&old, s).await.expect("keepalive on the old file");

        let new = change(&path, how);

        let ka = keepalive(&old, s).await;
        assert!(
            matches!(ka, Err(StoreError::SessionExpired)),
            "{how:?}: keepalive of an old file's session: {ka:?}"
        );
        let c = create(&old, "g/claim/q", Some(s)).await;
        assert!(
            matches!(c, Err(StoreError::SessionExpired)),
            "{how:?}: claim of an old file's session: {c:?}"
        );
        // Expired for good, even if the new file happens to hold a session with its id.
        let ka = keepalive(&old, s).await;
        assert!(
            matches!(ka, Err(StoreError::SessionExpired)),
            "{how:?}: again: {ka:?}"
        );

        if let Some(new) = new {
            // The old store now works on the new file: it sees the new file's (empty)
            // contents, and its member can open a session there and rejoin.
            let got = old
                .execute(StoreOp::Get {
                    key: "g/claim/r".into(),
                    linearizable: true,
                })
                .await;
            assert!(
                matches!(got, Ok(StoreReply::Got(None))),
                "{how:?}: the old file's key is gone: {got:?}"
            );
            let s2 = open_session(&old, TTL).await;
            assert_ne!(s2, s, "{how:?}: a new session id");
            create(&old, "g/claim/r", Some(s2))
                .await
                .unwrap_or_else(|e| panic!("{how:?}: claim on the new file: {e}"));
            // Both stores see the same file now.
            assert!(create_rev(&new, "g/claim/r").await > 0);
            keepalive(&new, s2).await.expect("the new session is live");
        } else {
            // Nothing at the path: no op may pretend it worked.
            let r = old.execute(StoreOp::OpenSession { ttl: TTL }).await;
            assert!(r.is_err(), "{how:?}: open session with no file: {r:?}");
        }
    }
}

/// Tokens never repeat for a group: a claim created on a recreated file gets a creation
/// revision strictly greater than one created on the old file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_file_never_issues_an_old_files_revisions() {
    for how in [Change::Recreate, Change::RenameOver] {
        let (_dir, path, old) = new_store("g.db");
        let s = open_session(&old, TTL).await;
        // Some history on the old file, so its revision is not just the initial one.
        for i in 0..20 {
            create(&old, &format!("g/claim/r{i}"), Some(s))
                .await
                .unwrap_or_else(|e| panic!("{how:?}: {e}"));
        }
        let old_rev = create_rev(&old, "g/claim/r19").await;

        let new = change(&path, how).expect("a new file");
        let s2 = open_session(&new, TTL).await;
        create(&new, "g/claim/r19", Some(s2))
            .await
            .unwrap_or_else(|e| panic!("{how:?}: claim on the new file: {e}"));
        let new_rev = create_rev(&new, "g/claim/r19").await;
        assert!(
            new_rev > old_rev,
            "{how:?}: the new file issued revision {new_rev}, the old one had {old_rev}"
        );
        // The old store, moved to the new file, agrees.
        assert_eq!(create_rev(&old, "g/claim/r19").await, new_rev, "{how:?}");
    }
}

/// Watches of the old store notice the change (they end, and the runtime re-arms them with
/// a `Reset`) instead of watching a dead file; a new watch follows the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_when_the_file_is_replaced_and_follow_the_new_one() {
    let (_dir, path, old) = new_store("g.db");
    let mut w = old.watch("g/".into());
    let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert_eq!(first, Ok(Some(WatchEvent::Reset)));

    let new = change(&path, Change::Recreate).expect("a new file");
    // Bounded by a few polls of the poller; 5 s is only the give-up point of the test.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // A change seen on the way out is fine; silence is not.
            if w.next().await.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch still runs on the dead file");

    let mut w = old.watch("g/".into());
    let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert_eq!(first, Ok(Some(WatchEvent::Reset)));
    let s = open_session(&new, TTL).await;
    create(&new, "g/claim/r", Some(s)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert_eq!(
        next,
        Ok(Some(WatchEvent::Changed)),
        "a write to the new file wakes the new watch"
    );
}
