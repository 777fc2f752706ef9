//! The runtime on SQLite when the database file is deleted and created again under a running
//! member (an operator "resetting" the group): the member's store notices, its session is
//! expired, it rejoins on the new file, and every lease granted there carries a token strictly
//! larger than any granted on the old file, so fenced resources reject the old holder.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{group, wait_until, Monitor, Worker};
use rebalanser::Token;

const TTL: Duration = Duration::from_millis(1000);

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_a_recreated_file_with_larger_tokens() {
    let dir = std::env::temp_dir().join(format!("rebalanser-replaced-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("g.db");
    remove(&path);
    let url = format!("sqlite://{}", path.display());
    let _admin = group(&url, 4).await;
    let mon = Monitor::default();
    let w = Worker::join(&url, "m", TTL, &mon).await;
    assert!(
        wait_until(Duration::from_secs(10), || mon.holders().len() == 4).await,
        "{:?}",
        mon.holders()
    );
    let old_max: Token = mon
        .grant_log()
        .iter()
        .map(|g| g.token)
        .max()
        .expect("grants");

    remove(&path);
    let replaced_at = Instant::now();
    let _admin = group(&url, 4).await;

    // Rejoined on the new file: all four held again under grants made after the change.
    let rejoined = wait_until(Duration::from_secs(15), || {
        let fresh: std::collections::BTreeSet<String> = mon
            .grant_log()
            .into_iter()
            .filter(|g| g.at > replaced_at)
            .map(|g| g.resource)
            .collect();
        fresh.len() == 4 && mon.holders().len() == 4
    })
    .await;
    assert!(rejoined, "not rejoined: {:?}", mon.grant_log());
    for g in mon.grant_log().iter().filter(|g| g.at > replaced_at) {
        assert!(
            g.token > old_max,
            "{} granted on the new file with token {} <= {old_max} from the old file",
            g.resource,
            g.token
        );
    }
    mon.assert_clean();
    w.leave().await.expect("leave");
    let _ = std::fs::remove_dir_all(&dir);
}
