//! Members on the in-memory store, real tokio, real time: balance, graceful leave, crash.

mod common;

use std::time::{Duration, Instant};

use common::{group, url, wait_balanced, wait_until, Monitor, Worker};
use rebalanser::{Member, MemberEvent};

const TTL: Duration = Duration::from_secs(1);

/// A group of 12 resources with members a, b and c joined and balanced at 4 each.
async fn three_balanced(name: &str, ttl: Duration) -> (rebalanser::Admin, Monitor, [Worker; 3]) {
    let url = url(name);
    let admin = group(&url, 12).await;
    let mon = Monitor::default();
    let a = Worker::join(&url, "a", ttl, &mon).await;
    let b = Worker::join(&url, "b", ttl, &mon).await;
    let c = Worker::join(&url, "c", ttl, &mon).await;
    wait_balanced(
        &mon,
        &[("a", 4), ("b", 4), ("c", 4)],
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    (admin, mon, [a, b, c])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_balance_twelve_resources_four_each_without_double_holds() {
    common::logs();
    let (admin, mon, [a, b, c]) = three_balanced("balance", TTL).await;
    // Every resource exactly once: 12 distinct resources, 4 per member.
    assert_eq!(mon.holders().len(), 12);
    let status = admin.status().await.expect("status");
    assert!(status.is_settled(), "{status:#?}");
    assert_eq!(status.members.len(), 3);
    for m in &status.members {
        assert_eq!(m.claimed, 4, "{m:?}");
        assert_eq!(m.assigned, 4, "{m:?}");
    }
    assert!(status.coordinator.is_some());
    mon.assert_clean();

    common::leave_all(vec![a, b, c]).await;
    mon.assert_clean();
    let status = admin.status().await.expect("status");
    assert!(status.members.is_empty(), "{status:#?}");
    assert!(status.resources.iter().all(|r| r.claim.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_leave_hands_over_without_waiting_for_the_ttl() {
    common::logs();
    // A long TTL makes any wait for expiry obvious.
    let ttl = Duration::from_secs(3);
    let (admin, mon, [a, b, c]) = three_balanced("leave", ttl).await;

    let start = Instant::now();
    c.leave().await.expect("c leaves");
    let left_after = start.elapsed();
    wait_balanced(&mon, &[("a", 6), ("b", 6)], Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let handed_over = start.elapsed();
    assert!(
        handed_over < ttl / 3,
        "handover took {handed_over:?} (leave returned after {left_after:?}); the TTL is {ttl:?}"
    );
    let status = admin.status().await.expect("status");
    assert_eq!(status.members.len(), 2, "{status:#?}");
    mon.assert_clean();
    common::leave_all(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_members_resources_move_after_the_ttl_and_are_never_doubly_held() {
    common::logs();
    let (admin, mon, [a, b, c]) = three_balanced("crash", TTL).await;
    let before = mon.grants();

    // `a` was first, so it is most likely the coordinator: the survivors must also elect.
    let start = Instant::now();
    a.crash().await;
    wait_balanced(&mon, &[("b", 6), ("c", 6)], Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let moved_after = start.elapsed();
    // a's leases stayed valid until its deadline, and its claims until its session expired:
    // nothing may move much before the TTL minus one keepalive interval.
    assert!(
        moved_after >= TTL / 2,
        "resources moved after {moved_after:?}, before a's session could expire"
    );
    assert!(moved_after < TTL * 3, "{moved_after:?}");
    assert_eq!(
        mon.grants(),
        before + 4,
        "exactly a's 4 resources were granted again"
    );
    mon.assert_clean();

    let status = admin.status().await.expect("status");
    assert!(status.is_settled(), "{status:#?}");
    assert!(status.members.iter().all(|m| m.name.as_str() != "a"));
    common::leave_all(vec![b, c]).await;
    mon.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_validity_follows_the_deadline_without_the_driver() {
    common::logs();
    let url = url("validity");
    let _admin = group(&url, 1).await;
    let mut m = common::fast(Member::builder("g").name("solo").store_url(&url), TTL)
        .join()
        .await
        .expect("join");
    let lease = tokio::time::timeout(Duration::from_secs(2), m.next_lease())
        .await
        .expect("a lease in time")
        .expect("a lease");

    // While the driver runs, keepalives push the deadline forward: valid past one TTL.
    let start = Instant::now();
    while start.elapsed() < TTL + TTL / 2 {
        assert!(lease.is_valid(), "invalid after {:?}", start.elapsed());
        assert!(lease.remaining() > Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    m.simulate_crash();
    let crashed = Instant::now();
    assert!(lease.is_valid(), "still valid right after the crash");
    let left = lease.remaining();
    assert!(left > Duration::ZERO && left <= TTL, "{left:?}");
    // Nothing runs for this member any more: only the clock can end the lease.
    assert!(
        wait_until(TTL, || !lease.is_valid()).await,
        "still valid {:?} after the crash",
        crashed.elapsed()
    );
    let ended = crashed.elapsed();
    assert_eq!(lease.remaining(), Duration::ZERO);
    // It ended close to the remaining time it announced, not merely at some point.
    assert!(
        ended + Duration::from_millis(60) >= left,
        "ended after {ended:?}, announced {left:?}"
    );
    assert!(lease.is_revoked(), "the driver is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_joining_coordinating_granting_and_leaving() {
    let url = url("events");
    let _admin = group(&url, 2).await;
    let mut m = common::fast(Member::builder("g").name("solo").store_url(&url), TTL)
        .join()
        .await
        .expect("join");
    let mut events = m.events();
    let a = m.next_lease().await.expect("lease");
    let b = m.next_lease().await.expect("lease");
    assert_ne!(a.resource(), b.resource());
    // Tokens are per resource: claims created in one transaction share a revision, so two
    // resources' tokens may be equal.
    let st = m.status();
    assert!(
        st.joined && st.coordinator.is_some() && st.leases == 2,
        "{st:?}"
    );
    drop((a, b));
    m.leave().await.expect("leave");

    let mut seen = Vec::new();
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        seen.push(s);
    }
    let has = |f: &dyn Fn(&MemberEvent) -> bool| seen.iter().any(f);
    assert!(
        has(&|s| matches!(s, MemberEvent::Joined { .. })),
        "{seen:#?}"
    );
    assert!(
        has(&|s| matches!(s, MemberEvent::BecameCoordinator { .. })),
        "{seen:#?}"
    );
    assert!(
        has(&|s| matches!(s, MemberEvent::Granted { .. })),
        "{seen:#?}"
    );
    assert!(
        has(&|s| matches!(s, MemberEvent::Rebalanced { .. })),
        "{seen:#?}"
    );
    assert_eq!(seen.last(), Some(&MemberEvent::Left), "{seen:#?}");
    assert!(!has(&|s| s.is_problem()), "{seen:#?}");
    // Two grants, and one more each after the leases were dropped while still assigned;
    // anything beyond that is a grant/release loop.
    let grants = seen
        .iter()
        .filter(|s| matches!(s, MemberEvent::Granted { .. }))
        .count();
    assert!((2..=4).contains(&grants), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_leaves_and_releases_queued_leases() {
    let url = url("drop");
    let admin = group(&url, 4).await;
    let mon = Monitor::default();
    let m = common::fast(Member::builder("g").name("quiet").store_url(&url), TTL)
        .join()
        .await
        .expect("join");
    // Nobody takes this member's leases; they wait in its queue.
    assert!(
        wait_until(Duration::from_secs(2), || m.status().leases == 4).await,
        "{:?}",
        m.status()
    );
    let b = Worker::join(&url, "b", TTL, &mon).await;
    wait_balanced(&mon, &[("b", 2)], Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let start = Instant::now();
    drop(m);
    wait_balanced(&mon, &[("b", 4)], Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(start.elapsed() < TTL / 2, "{:?}", start.elapsed());
    let status = admin.status().await.expect("status");
    assert_eq!(status.members.len(), 1, "{status:#?}");
    mon.assert_clean();
    b.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_lease_that_was_not_revoked_grants_it_again_with_the_same_token() {
    let url = url("regrant");
    let _admin = group(&url, 1).await;
    let mut m = common::fast(Member::builder("g").name("solo").store_url(&url), TTL)
        .join()
        .await
        .expect("join");
    let first = m.next_lease().await.expect("lease");
    let (resource, token) = (first.resource().clone(), first.token());
    let checker = first.checker();
    first.release();
    assert!(!checker.is_valid(), "a released lease is invalid at once");
    let again = tokio::time::timeout(Duration::from_secs(1), m.next_lease())
        .await
        .expect("granted again in time")
        .expect("a lease");
    assert_eq!(again.resource(), &resource);
    assert_eq!(again.token(), token, "same claim, same token");
    assert!(again.is_valid() && !again.is_revoked());
    drop(again);
    m.leave().await.expect("leave");
}
