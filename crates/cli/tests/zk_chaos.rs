//! Multi-process chaos against a real 3-node ZooKeeper ensemble, checked from an access log.
//!
//! The harness and the checker are `common::chaos` (see its module doc): four
//! `rebalanser chaos-member` processes share one group of 30 resources and log every access;
//! members are SIGKILLed (restarted under the same name after a delay shorter or longer than
//! their session TTL) and SIGSTOPped for 1–3 × TTL. The ZooKeeper faults (`common::cluster_faults`):
//! SIGKILL of a ZooKeeper node (leader or follower; restarted 2–5 s later), SIGSTOP of the
//! ZooKeeper leader for 2–5 s; they never overlap. Out of every 8 fault picks: member kill 3,
//! member pause 2, node kill 2, leader pause 1. Then the faults stop, every node must serve
//! again, the group must converge (every resource claimed, 7–8 per member), stay live for a
//! window, and the members leave on SIGTERM; the access log must show no double access.
//!
//! Environment: `CHAOS_SECS` (fault phase, default 30), `CHAOS_SEED` (fault order, default
//! random and printed), `CHAOS_DIR` (keep the log and member output there), `CHAOS_MEMBERS`
//! (4), `CHAOS_RESOURCES` (30), `CHAOS_TTL_MS` (2000). `scripts/chaos-zk SECONDS SEED` runs the
//! long version. `zk_chaos_catches_a_member_that_lingers` runs a short chaos with members that
//! keep accessing a resource after giving up its lease, and requires the checker to find the
//! double access.

use anyhow::Result;
use rebalanser_testkit::{ZkEnsemble, ZkOptions};

mod common;
use common::chaos::{chaos_catches_lingering_members, chaos_test};
use common::cluster_faults::{zk_timings, ClusterFaults};

/// A private 3-node ensemble (tick 200 ms) and its faults (`common::cluster_faults`).
fn zk_faults() -> Result<ClusterFaults<ZkEnsemble>> {
    let zk = ZkEnsemble::start(ZkOptions {
        nodes: 3,
        tick_ms: 200,
        ..ZkOptions::default()
    })?;
    let url = format!("zk://{}/chaos-{}", zk.connect_string(), std::process::id());
    let (down, pause) = zk_timings();
    Ok(ClusterFaults::new(zk, url, down, pause))
}

#[test]
fn zk_chaos() {
    chaos_test(zk_faults);
}

/// The checker catches the double access of members that linger after their leases, on this
/// store too.
#[test]
fn zk_chaos_catches_a_member_that_lingers() {
    chaos_catches_lingering_members(zk_faults);
}
