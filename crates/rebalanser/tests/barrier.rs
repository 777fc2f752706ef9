//! Global-barrier mode on real stores (issue 11): a group created with `Mode::Barrier`; three
//! members balance; a fourth joins. Every lease held before the join ends before any lease
//! is granted after it (the barrier: everyone stopped, then the new assignment started), the
//! group balances again, nothing is held twice; a member configured for the other mode is
//! refused at join with a typed error. On SQLite and on a real ZooKeeper.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rebalanser::{Admin, Error, Member, MemberBuilder, Mode};
use rebalanser_testkit::ZkEnsemble;

const TTL: Duration = Duration::from_secs(2);
const RESOURCES: usize = 12;
const LIMIT: Duration = Duration::from_secs(20);

async fn barrier_round_on(url: &str, fast_for: fn(MemberBuilder, Duration) -> MemberBuilder) {
    common::logs();
    let admin = Admin::connect(url, "g").expect("admin");
    admin
        .create_group_with(Mode::Barrier)
        .await
        .expect("create");
    let ids: Vec<String> = (0..RESOURCES).map(|i| format!("r{i:02}")).collect();
    admin.add_resources(&ids).await.expect("add");
    assert_eq!(admin.status().await.expect("status").mode, Mode::Barrier);
    let builder = |name: &str| {
        fast_for(Member::builder("g").store_url(url), TTL)
            .name(name)
            .mode(Mode::Barrier)
    };

    // A member configured for per-resource mode is refused, by name of both modes.
    let wrong = fast_for(Member::builder("g").store_url(url), TTL)
        .name("wrong")
        .join()
        .await;
    match wrong {
        Err(e @ Error::ModeMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("barrier") && msg.contains("resource"), "{msg}");
        }
        other => panic!("a resource-mode member joined a barrier group: {other:?}"),
    }

    let mon = Monitor::default();
    let mut workers = Vec::new();
    for name in ["m0", "m1", "m2"] {
        workers.push(Worker::join_with(builder(name), name, &mon).await);
    }
    wait_even(&mon, &["m0", "m1", "m2"], RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before_join = mon.grant_log().len();
    let joined_at = Instant::now();
    workers.push(Worker::join_with(builder("m3"), "m3", &mon).await);
    wait_even(&mon, &["m0", "m1", "m2", "m3"], RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let grants = mon.grant_log();
    let after: Vec<_> = grants[before_join..]
        .iter()
        .filter(|g| g.at > joined_at)
        .collect();
    assert!(!after.is_empty(), "nothing granted after the join");
    let first_after = after.iter().map(|g| g.at).min().expect("a grant");
    // The barrier: every hold from before the join ended before the first grant after it.
    let exits = mon.exit_log();
    for g in &grants[..before_join] {
        let ended = exits
            .iter()
            .filter(|x| x.who == g.who && x.resource == g.resource && x.at >= g.at)
            .map(|x| x.at)
            .min();
        match ended {
            Some(t) => assert!(
                t <= first_after,
                "{} kept {} {:?} past the first grant of the new round",
                g.who,
                g.resource,
                t.duration_since(first_after)
            ),
            None => panic!("{} still holds {} from before the join", g.who, g.resource),
        }
    }
    println!(
        "barrier[{url}]: the round after the join started {:?} after it",
        first_after.duration_since(joined_at)
    );
    mon.assert_clean();
    mon.assert_tokens_grow();
    leave_all(workers).await;
    mon.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn barrier_mode_on_sqlite_stops_everyone_before_the_new_round() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    barrier_round_on(&url, fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn barrier_mode_on_zookeeper_stops_everyone_before_the_new_round() {
    let zk = blocking(ZkEnsemble::shared);
    let url = format!(
        "zk://{}/barrier-{}",
        zk.connect_string(),
        std::process::id()
    );
    barrier_round_on(&url, zk_fast).await;
}
