//! Restoring the store from a backup (DESIGN §1 "Not covered", §8 rule 9; PITFALLS 14, 18):
//! the restored file's revision counter goes back, so without a generation bump the new owners'
//! tokens are smaller than tokens granted before the restore, which a fenced resource would
//! reject. After `Admin::bump_generation` every token is larger than every token before.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{group, wait_until, Monitor, Worker};
use rebalanser::{Admin, Error, Token};

const TTL: Duration = Duration::from_millis(1000);
const RESOURCES: usize = 6;

fn files(path: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        })
        .collect()
}

/// Copies the database (and its WAL and shared-memory files, when present) from `from` to
/// `to`, replacing what `to` had. Only while no process uses either.
fn copy_db(from: &Path, to: &Path) {
    for (src, dst) in files(from).into_iter().zip(files(to)) {
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(&src, &dst).expect("copy a database file");
        }
    }
}

/// Two members take every resource and leave; returns every token they were granted.
async fn run_members(url: &str, names: &[&str]) -> Vec<Token> {
    let mon = Monitor::default();
    let mut workers = Vec::new();
    for name in names {
        workers.push(Worker::join(url, name, TTL, &mon).await);
    }
    assert!(
        wait_until(Duration::from_secs(15), || mon.holders().len() == RESOURCES).await,
        "not every resource held: {:?}",
        mon.holders()
    );
    common::leave_all(workers).await;
    mon.assert_clean();
    mon.assert_tokens_grow();
    mon.grant_log().into_iter().map(|g| g.token).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_after_a_restore_and_a_generation_bump_exceed_all_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("g.db");
    let backup = dir.path().join("backup.db");
    let url = format!("sqlite://{}", path.display());
    drop(group(&url, RESOURCES).await);

    // The backup: the group with its resources, taken while no member runs.
    copy_db(&path, &backup);
    // Life goes on after the backup: members come and go, tokens grow.
    let mut before: Vec<Token> = Vec::new();
    for names in [&["a", "b"][..], &["c"], &["a", "b", "c"]] {
        before.extend(run_members(&url, names).await);
    }
    let max_before = *before.iter().max().expect("grants before the restore");

    // Restored without a bump: the revisions went back, so do the tokens.
    copy_db(&backup, &path);
    let unbumped = run_members(&url, &["d"]).await;
    let low = *unbumped.iter().min().expect("grants after the restore");
    assert!(
        low < max_before,
        "the restore did not take the revisions back ({low} >= {max_before}): this test \
         would prove nothing"
    );

    // Restored again, and bumped this time: every token is larger than every token before.
    copy_db(&backup, &path);
    let admin = Admin::connect(&url, "g").expect("admin");
    let generation = admin.bump_generation().await.expect("bump");
    assert!(generation > 0);
    assert_eq!(admin.status().await.expect("status").generation, generation);
    let bumped = run_members(&url, &["a", "b"]).await;
    assert!(!bumped.is_empty());
    for t in &bumped {
        assert!(
            *t > max_before,
            "token {t} after the bump is not above {max_before}, granted before the restore"
        );
        assert_eq!(t.generation(), generation);
    }

    // A second bump grows the generation again (bumps in one second included).
    let again = admin.bump_generation().await.expect("bump again");
    assert!(again > generation, "{again} after {generation}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_bump_is_refused_while_a_member_lives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let admin = group(&url, 2).await;
    let mon = Monitor::default();
    let w = Worker::join(&url, "m", TTL, &mon).await;
    assert!(wait_until(Duration::from_secs(10), || mon.holders().len() == 2).await);
    match admin.bump_generation().await {
        Err(e @ Error::GroupInUse { .. }) => {
            assert!(e.to_string().contains("stop every member"), "{e}")
        }
        other => panic!("bump with a live member: {other:?}"),
    }
    assert_eq!(admin.status().await.expect("status").generation, 0);
    w.leave().await.expect("leave");
    assert!(admin.bump_generation().await.expect("bump") > 0);
    let missing = Admin::connect(&url, "nope").expect("admin");
    assert!(matches!(
        missing.bump_generation().await,
        Err(Error::UnknownGroup { .. })
    ));
    mon.assert_clean();
}
