//! What members record through the `metrics` facade, read from an in-memory recorder while a
//! second member joins a group on `memory://` and takes half of it over.

mod common;

use std::time::Duration;

use common::metrics::recorder;
use common::{fast, group_named, url, wait_balanced, Monitor, Obey, Worker};
use rebalanser::metrics::{
    COORDINATOR_EPOCH, GRANTS, HANDOVER_SECONDS, KEEPALIVE_SECONDS, LEASES_HELD, REBALANCES,
    RESOURCES_MOVED, REVOKES, SESSION_STATE, STORE_OP_SECONDS,
};
use rebalanser::Member;

const GROUP: &str = "metrics-join";
/// Room in the timings for an application that takes `SLOW_STOP` to stop.
const TTL: Duration = Duration::from_secs(2);
const STOP_TIMEOUT: Duration = Duration::from_millis(800);
/// How long the first member's application takes to stop a revoked lease: the handover the
/// second member measures must include it.
const SLOW_STOP: Duration = Duration::from_millis(300);

fn who(member: &str) -> [(&'static str, &str); 2] {
    [("group", GROUP), ("member", member)]
}

fn with<'a>(member: &'a str, k: &'a str, v: &'a str) -> [(&'a str, &'a str); 3] {
    [("group", GROUP), ("member", member), (k, v)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_moves_grants_revokes_leases_rebalances_and_handover_latency() {
    common::logs();
    // Before any member joins: members take their handles when they join.
    let rec = recorder();
    let url = url("metrics");
    let _admin = group_named(&url, GROUP, 4).await;
    let mon = Monitor::default();
    let builder = |name: &str| {
        fast(Member::builder(GROUP).store_url(&url), TTL)
            .stop_timeout(STOP_TIMEOUT)
            .name(name)
    };

    let a = Worker::join_with(builder("a"), "a", &mon).await;
    wait_balanced(&mon, &[("a", 4)], Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The gauges follow each input; the monitor sees a lease a moment before.
    assert!(
        common::wait_until(Duration::from_secs(2), || rec.gauge(LEASES_HELD, &who("a"))
            == Some(4.0))
        .await,
        "leases held on a: {:?}",
        rec.gauge(LEASES_HELD, &who("a"))
    );
    assert_eq!(rec.counter(GRANTS, &who("a")), 4);
    assert_eq!(rec.counter(REVOKES, &who("a")), 0);
    assert_eq!(
        rec.gauge(SESSION_STATE, &with("a", "state", "joined")),
        Some(1.0)
    );
    assert_eq!(
        rec.gauge(SESSION_STATE, &with("a", "state", "opening")),
        Some(0.0)
    );
    let epoch = rec.gauge(COORDINATOR_EPOCH, &who("a")).unwrap_or(0.0);
    assert!(epoch > 0.0, "a alone coordinates: epoch {epoch}");
    // The first assignment: four resources, nothing moved from another member.
    let group = [("group", GROUP)];
    let rebalances = rec.counter(REBALANCES, &group);
    assert!(rebalances >= 1);
    assert_eq!(rec.counter(RESOURCES_MOVED, &group), 0);
    assert_eq!(rec.samples(HANDOVER_SECONDS, &who("a")).len(), 4);
    assert!(
        !rec.samples(KEEPALIVE_SECONDS, &who("a")).is_empty() || {
            // A keepalive comes every 150 ms.
            common::wait_until(Duration::from_secs(2), || {
                !rec.samples(KEEPALIVE_SECONDS, &who("a")).is_empty()
            })
            .await
        }
    );
    assert!(!rec
        .samples(STORE_OP_SECONDS, &with("a", "op", "open_session"))
        .is_empty());

    // b joins; a's application is slow to stop what moves to b.
    a.set_obey(Obey::SlowStop(SLOW_STOP));
    let b = Worker::join_with(builder("b"), "b", &mon).await;
    wait_balanced(&mon, &[("a", 2), ("b", 2)], Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            rec.gauge(LEASES_HELD, &who("a")) == Some(2.0)
                && rec.gauge(LEASES_HELD, &who("b")) == Some(2.0)
        })
        .await,
        "leases held: a {:?}, b {:?}",
        rec.gauge(LEASES_HELD, &who("a")),
        rec.gauge(LEASES_HELD, &who("b"))
    );
    assert_eq!(rec.counter(GRANTS, &who("b")), 2);
    assert_eq!(rec.counter(GRANTS, &who("a")), 4, "a kept its other two");
    assert_eq!(
        rec.counter(REVOKES, &with("a", "reason", "reassigned")),
        2,
        "a gave two up"
    );
    assert_eq!(rec.counter(REVOKES, &who("b")), 0);
    assert!(rec.counter(REBALANCES, &group) > rebalances);
    assert_eq!(rec.counter(RESOURCES_MOVED, &group), 2);
    assert_eq!(rec.gauge(COORDINATOR_EPOCH, &who("b")), Some(0.0));
    // b waited for a's application to stop each resource it took over.
    let handovers = rec.samples(HANDOVER_SECONDS, &who("b"));
    assert_eq!(handovers.len(), 2, "{handovers:?}");
    for h in &handovers {
        assert!(
            *h >= SLOW_STOP.as_secs_f64() * 0.8 && *h < 5.0,
            "handover {h} s with a stop of {SLOW_STOP:?}"
        );
    }

    b.leave().await.expect("b leaves");
    a.leave().await.expect("a leaves");
    for m in ["a", "b"] {
        assert_eq!(
            rec.gauge(SESSION_STATE, &with(m, "state", "left")),
            Some(1.0)
        );
        assert_eq!(
            rec.gauge(SESSION_STATE, &with(m, "state", "joined")),
            Some(0.0)
        );
        assert_eq!(rec.gauge(LEASES_HELD, &who(m)), Some(0.0));
        assert_eq!(rec.gauge(COORDINATOR_EPOCH, &who(m)), Some(0.0));
    }
    assert!(rec.counter(REVOKES, &with("b", "reason", "leaving")) >= 2);
    mon.assert_clean();
}
