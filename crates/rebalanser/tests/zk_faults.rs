//! The member runtime on real ZooKeeper servers under network and server faults: one member's
//! connection blackholed (shorter and longer than the TTL), the ensemble's leader killed, and
//! a follower cut off from its leader while it still serves one member.
//!
//! The blackhole scenarios are shared with the other networked stores (`common/faults.rs`).
//! Every lease goes through the access monitor, which fails on two valid leases on one
//! resource. Times are printed (`-- --nocapture`); only generous bounds are asserted. The
//! tests run one at a time: three JVMs and the members share two cores, and the timings under
//! test are a few hundred milliseconds.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;
use rebalanser_testkit::{ZkEnsemble, ZkOptions};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url(hosts: &str, test: &str) -> String {
    format!("zk://{hosts}/it-{test}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources() {
    let _serial = SERIAL.lock().await;
    let zk = blocking(ZkEnsemble::shared);
    blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources(
        "zk",
        zk.client_addr(0),
        |hosts| url(hosts, "blip"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires() {
    let _serial = SERIAL.lock().await;
    let zk = blocking(ZkEnsemble::shared);
    blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires(
        "zk",
        zk.client_addr(0),
        |hosts| url(hosts, "blackout"),
    )
    .await
}

/// 9. Members on a 3-node ensemble lose its leader (SIGKILL): never a double lease; a new
/// leader is elected, sessions survive, and the group is balanced again; the old node
/// restarts and rejoins without disturbing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_leader_killed_the_group_recovers_on_the_new_leader() {
    let _serial = SERIAL.lock().await;
    let test = "failover";
    let t = Instant::now();
    let zk = blocking(|| ZkEnsemble::start(ZkOptions::ensemble(3))).expect("ensemble");
    let leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("leader");
    println!(
        "zk[{test}]: 3-node ensemble serving after {:?}",
        t.elapsed()
    );
    let everywhere = url(&zk.connect_string(), test);
    let urls = vec![everywhere.clone(); MEMBERS];
    let g = start_group("zk", test, &everywhere, &urls).await;
    let all = names(MEMBERS);
    let before = g.mon.holders();

    let t0 = Instant::now();
    blocking(|| zk.kill(leader)).expect("kill");
    let new_leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("new leader");
    let elected = t0.elapsed();
    assert_ne!(new_leader, leader);
    // The store serves linearizable reads again (a sync goes through the leader).
    let mut readable = None;
    while readable.is_none() && t0.elapsed() < LIMIT {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), g.admin.status()).await
        {
            readable = Some(t0.elapsed());
        }
    }
    // Anything the kill does to the members (a suspension at most) happens within a TTL of
    // their last keepalive; after that, wait for the group to be at rest again.
    tokio::time::sleep(TTL.saturating_sub(t0.elapsed())).await;
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let settled = t0.elapsed();
    let regrants: Vec<GrantRec> = g
        .mon
        .grant_log()
        .into_iter()
        .filter(|gr| gr.at >= t0)
        .collect();
    let last_regrant = regrants.iter().map(|gr| gr.at - t0).max();
    let (susp, lost, errors) = trouble(&g, t0);
    let after = g.mon.holders();
    let moved = moved(&before, &after);
    println!(
        "zk[{test}]: leader node {leader} killed; node {new_leader} leads after {elected:?}; \
         admin reads again after {readable:?}; members saw {errors} failed ops; suspended \
         members {susp:?}; sessions lost {lost}; {} leases granted again, the last after \
         {last_regrant:?}; settled (checked from {TTL:?}) after {settled:?}; {moved} resources moved",
        regrants.len()
    );
    // ZooKeeper keeps sessions across a leader change, so membership did not change and
    // nothing had a reason to move.
    assert_eq!(lost, 0, "a session was lost in the failover");
    assert_eq!(moved, 0, "{before:?} -> {after:?}");
    g.mon.assert_clean();

    let t1 = Instant::now();
    blocking(|| zk.restart(leader)).expect("restart");
    println!(
        "zk[{test}]: old leader node {leader} serving again after {:?}",
        t1.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.mon.holders(), after, "the restart moved resources");
    finish(&g.mon, g.workers).await;
}

/// 10. A follower cut off from its leader keeps serving its clients' pings (syncLimit × tick =
/// 6 s ≥ 3 × TTL) while no write through it commits. The member connected only to it must
/// stop (its leases turn invalid) before the leader expires its session and another member
/// takes its resources: its application here ignores revokes and stops only at the deadline,
/// the most a correct application may do, and the monitor checks every takeover against it.
/// After the heal it rejoins with a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_member_on_a_cut_off_follower_stops_before_the_leader_expires_it() {
    let _serial = SERIAL.lock().await;
    let test = "cutoff";
    let opts = ZkOptions {
        nodes: 3,
        sync_limit: 30,
        ..Default::default()
    };
    let sync_window = Duration::from_millis(u64::from(opts.sync_limit) * opts.tick_ms);
    assert!(sync_window >= TTL * 3);
    let t = Instant::now();
    let zk = blocking(|| ZkEnsemble::start(opts)).expect("ensemble");
    let leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("leader");
    println!(
        "zk[{test}]: 3-node ensemble serving after {:?}",
        t.elapsed()
    );
    let f = (leader + 1) % 3;
    let other = 3 - leader - f;
    let on_f = url(&zk.client_addr(f).to_string(), test);
    let elsewhere = url(
        &format!("{},{}", zk.client_addr(leader), zk.client_addr(other)),
        test,
    );
    let mut urls = vec![on_f];
    urls.extend((1..MEMBERS).map(|_| elsewhere.clone()));
    let g = start_group("zk", test, &elsewhere, &urls).await;
    let all = names(MEMBERS);
    let others: Vec<String> = all[1..].to_vec();
    let coordinator = g.worker("m0").is_coordinator().await;
    g.worker("m0").set_obey(Obey::DeadlineOnly);
    let leases = g.mon.checkers_of("m0");
    let resources: BTreeSet<String> = leases.keys().cloned().collect();

    blocking(|| zk.cut_from_leader(f)).expect("cut");
    let t0 = Instant::now();
    let deadline = leases.values().map(|c| c.remaining()).max().unwrap();
    // Cut until the others have taken everything over and balanced (bounded well inside the
    // window in which f keeps serving m0).
    let o = observe(
        &g.admin,
        &g.mon,
        "m0",
        &leases,
        t0,
        sync_window - Duration::from_secs(1),
        |o| o.taken.is_some() && o.expired.is_some() && o.invalid.is_some(),
    )
    .await;
    let balanced4 = wait_even(&g.mon, &refs(&others), RESOURCES, Duration::from_secs(1)).await;
    let still_follower = blocking(|| zk.mode(f));
    let cut_for = t0.elapsed();
    blocking(|| zk.heal()).expect("heal");
    let healed = Instant::now();
    let regrant = first_regrant(&g.mon, &resources, t0);
    println!(
        "zk[{test}]: m0 (coordinator: {coordinator}) on follower {f}, cut from leader {leader} \
         for {cut_for:?} (f still {still_follower:?}): deadline {deadline:?}; leases invalid \
         after {:?}; session expired at the leader after {:?}; first re-grant elsewhere after \
         {regrant:?}; all {} taken over after {:?}",
        o.invalid,
        o.expired,
        resources.len(),
        o.taken
    );
    let isolation = Isolation::checked(&g.mon, &o, regrant);
    let invalid = isolation.invalid;
    assert_eq!(
        still_follower.as_deref(),
        Some("follower"),
        "f stopped serving during the cut: the scenario did not happen"
    );
    // No valid lease after the deadline it had when the cut began (5 ms polling slack).
    assert!(
        invalid <= deadline + Duration::from_millis(50),
        "leases valid until {invalid:?}, deadline {deadline:?}"
    );
    isolation.assert_stopped_first();
    assert!(
        !g.mon.per_holder().contains_key("m0"),
        "m0 still holds a valid lease: {:?}",
        g.mon.per_holder()
    );
    balanced4.unwrap_or_else(|e| panic!("others during the cut: {e}"));
    g.mon.assert_clean();

    // Healed: f catches up with the leader, m0 learns that its session expired and rejoins.
    g.worker("m0").set_obey(Obey::Revoke);
    let back = wait_even(&g.mon, &refs(&all), RESOURCES, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; m0's events: {:?}", g.log("m0").since(t0)));
    assert_m0_rejoined(&g, "zk", test, "cut", back, t0, healed).await;
    finish(&g.mon, g.workers).await;
}
