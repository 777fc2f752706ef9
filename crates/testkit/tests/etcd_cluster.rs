//! The etcd fixture: a 3-member cluster elects, survives its leader's crash and a member's pause,
//! takes the old leader back, keeps its data throughout and leaves no process behind; a single
//! member and the shared cluster start too.
//!
//! The tests run one at a time so two clusters never share the two cores and distort the
//! timings under test.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rebalanser_testkit::{pid_alive, EtcdCluster};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn get(etcd: &EtcdCluster, i: usize, key: &str) -> Result<String> {
    Ok(etcd
        .etcdctl(i, &["get", key, "--print-value-only"])?
        .trim()
        .to_string())
}

#[test]
fn three_members_survive_a_killed_leader_and_a_paused_member() -> Result<()> {
    let _serial = serial();
    let t0 = Instant::now();
    let etcd = EtcdCluster::three()?;
    eprintln!("3-member cluster healthy after {:?}", t0.elapsed());
    assert_eq!(etcd.len(), 3);
    assert_eq!(etcd.endpoints().split(',').count(), 3);
    assert_eq!(
        etcd.endpoints().split(',').next(),
        Some(etcd.client_addr(0).to_string().as_str())
    );

    assert_eq!(etcd.etcdctl(0, &["put", "/k", "v1"])?.trim(), "OK");
    for i in 0..3 {
        assert_eq!(get(&etcd, i, "/k")?, "v1", "member {i}");
    }

    let leader = etcd.wait_for_leader(Duration::from_secs(10))?;
    let old_pid = etcd.pid(leader).context("no pid")?;
    etcd.kill(leader)?;
    assert!(
        !pid_alive(old_pid),
        "the killed member {old_pid} still runs"
    );
    assert!(etcd.pid(leader).is_none());
    let t1 = Instant::now();
    let new_leader = etcd.wait_for_leader(Duration::from_secs(10))?;
    eprintln!(
        "new leader {new_leader} after killing leader {leader}: {:?}",
        t1.elapsed()
    );
    assert_ne!(new_leader, leader);
    let survivor = (0..3)
        .find(|&i| i != leader && i != new_leader)
        .context("3")?;
    assert_eq!(
        etcd.etcdctl(survivor, &["put", "/k2", "during"])?.trim(),
        "OK"
    );
    assert!(!etcd.is_healthy(leader), "a killed member answered");

    let t2 = Instant::now();
    etcd.restart(leader)?;
    eprintln!("restarted member {leader} healthy after {:?}", t2.elapsed());
    assert_eq!(
        get(&etcd, leader, "/k2")?,
        "during",
        "the restarted member caught up"
    );
    assert_eq!(etcd.wait_for_leader(Duration::from_secs(10))?, new_leader);

    // Pause a follower: the other two keep a quorum and commit; it catches up when resumed.
    let paused = (new_leader + 1) % 3;
    etcd.pause(paused)?;
    assert!(!etcd.is_healthy(paused), "a paused member answered");
    let other = 3 - new_leader - paused;
    assert_eq!(etcd.etcdctl(other, &["put", "/k", "v2"])?.trim(), "OK");
    etcd.resume(paused)?;
    etcd.wait_serving(paused, Duration::from_secs(10))?;
    for i in 0..3 {
        assert_eq!(get(&etcd, i, "/k")?, "v2", "member {i}");
    }
    ensure!(
        std::fs::read_to_string(etcd.log_path(0))?.contains("starting member 0"),
        "log of member 0 lacks the fixture's banner"
    );

    let pids: Vec<u32> = (0..3).filter_map(|i| etcd.pid(i)).collect();
    assert_eq!(pids.len(), 3);
    drop(etcd);
    for pid in pids {
        assert!(
            !pid_alive(pid),
            "the dropped cluster's member {pid} still runs"
        );
    }
    Ok(())
}

#[test]
fn a_single_member_leads_itself() -> Result<()> {
    let _serial = serial();
    let t0 = Instant::now();
    let etcd = EtcdCluster::single()?;
    eprintln!("1-member cluster healthy after {:?}", t0.elapsed());
    assert_eq!(etcd.leader(), Some(0));
    etcd.etcdctl(0, &["put", "a", "1"])?;
    etcd.restart(0)?;
    assert_eq!(get(&etcd, 0, "a")?, "1");
    Ok(())
}

#[test]
fn the_shared_cluster_is_one_for_the_process() -> Result<()> {
    let _serial = serial();
    let a = EtcdCluster::shared();
    let b = EtcdCluster::shared();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.len(), 3);
    assert!(a.leader().is_some());
    Ok(())
}
