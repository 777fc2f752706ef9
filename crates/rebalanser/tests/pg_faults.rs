//! The member runtime on a real PostgreSQL server under network and server faults: one
//! member's connection blackholed (shorter and longer than the TTL; the scenarios shared with
//! ZooKeeper in `common/faults.rs`), the server SIGKILLed and restarted, and every connection
//! of one member terminated by the server (`pg_terminate_backend`) again and again.
//!
//! Every lease goes through the access monitor, which fails on two valid leases on one
//! resource. Times are printed (`-- --nocapture`); only generous bounds are asserted. One test
//! at a time: the timings under test are a few hundred milliseconds on two cores.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use common::*;
use rebalanser_testkit::Postgres;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url(hostport: &str, test: &str) -> String {
    format!(
        "postgres://postgres@{hostport}/postgres?schema=it_{test}_{}",
        std::process::id()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources() {
    let _serial = SERIAL.lock().await;
    let pg = blocking(Postgres::shared);
    blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources("pg", pg.addr(), |hp| {
        url(hp, "blip")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires() {
    let _serial = SERIAL.lock().await;
    let pg = blocking(Postgres::shared);
    blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires(
        "pg",
        pg.addr(),
        |hp| url(hp, "blackout"),
    )
    .await
}

/// The server is SIGKILLed and started again on the same data (about a second without a
/// server): every connection breaks; never a double lease; the members reconnect by
/// themselves and the group is settled again with every member. Whether sessions outlived the
/// outage depends on how long it took against the TTL: reported, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_server_restart_the_group_recovers() {
    let _serial = SERIAL.lock().await;
    let test = "restart";
    let pg = blocking(Postgres::start).expect("a private server");
    let everywhere = url(&pg.addr().to_string(), test);
    let urls = vec![everywhere.clone(); MEMBERS];
    let g = start_group("pg", test, &everywhere, &urls).await;
    let all = names(MEMBERS);
    let before = g.mon.holders();

    for round in 1..=2 {
        let t0 = Instant::now();
        blocking(|| pg.restart()).expect("restart");
        let down = t0.elapsed();
        let mut readable = None;
        while readable.is_none() && t0.elapsed() < LIMIT {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), g.admin.status()).await
            {
                readable = Some(t0.elapsed());
            }
        }
        let readable = readable.expect("the admin reads again after the restart");
        tokio::time::sleep(TTL.saturating_sub(t0.elapsed())).await;
        wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let settled = t0.elapsed();
        let (susp, lost, errors) = trouble(&g, t0);
        let after = g.mon.holders();
        println!(
            "pg[{test}] round {round}: server restarted in {down:?}; admin reads again after \
             {readable:?}; members saw {errors} failed ops; suspended {susp:?}; sessions lost \
             {lost}; settled after {settled:?}; {} resources moved since the start",
            moved(&before, &after)
        );
        g.mon.assert_clean();
    }
    finish(&g.mon, g.workers).await;
}

/// Every connection of m0 (its URL names it `application_name=victim`) is terminated by the
/// server ten times, 300 ms apart: each time it reconnects at once, so its session (kept alive
/// well within the TTL) survives, nothing moves and no lease is granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_terminated_connections_reconnect_and_keep_the_session() {
    let _serial = SERIAL.lock().await;
    let test = "terminate";
    let pg = blocking(Postgres::shared);
    let direct = url(&pg.addr().to_string(), test);
    let mut urls = vec![format!("{direct}&application_name=victim")];
    urls.extend((1..MEMBERS).map(|_| direct.clone()));
    let g = start_group("pg", test, &direct, &urls).await;
    let all = names(MEMBERS);
    let before = g.mon.holders();
    let grants = g.mon.grants();

    let t0 = Instant::now();
    let mut killed = 0;
    for _ in 0..10 {
        let n = blocking(|| {
            pg.psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'victim'",
            )
        })
        .expect("psql");
        killed += n.parse::<u32>().expect("a count");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (susp, lost, errors) = trouble(&g, t0);
    let after = g.mon.holders();
    println!(
        "pg[{test}]: {killed} of m0's backends terminated in 10 rounds; m0 saw {errors} failed \
         ops; suspended {susp:?}; sessions lost {lost}; {} leases granted again",
        g.mon.grants() - grants
    );
    assert!(killed >= 10, "m0 had no connections to terminate: {killed}");
    assert_eq!(lost, 0, "a session was lost to terminated connections");
    assert_eq!(moved(&before, &after), 0, "{before:?} -> {after:?}");
    g.mon.assert_clean();
    finish(&g.mon, g.workers).await;
}
