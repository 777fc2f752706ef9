//! The 3-node fixture: election, crash and restart, and the follower cut off from its leader.
//!
//! Each test starts its own ensemble (three JVMs); they run one at a time so two ensembles never
//! share the two cores and distort the timings under test.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser_testkit::{pid_alive, ZkEnsemble, ZkOptions};
use zookeeper_client as zk;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn connect(addr: std::net::SocketAddr, within: Duration) -> Result<zk::Client> {
    let addr_s = addr.to_string();
    let connecting = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&addr_s);
    match tokio::time::timeout(within, connecting).await {
        Ok(r) => Ok(r.with_context(|| format!("connect to {addr}"))?),
        Err(_) => bail!("connect to {addr} timed out after {within:?}"),
    }
}

/// Creates `path` through a fresh client of `addr`, retrying until `within`.
async fn create_via(addr: std::net::SocketAddr, path: &str, within: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < within {
        match connect(addr, Duration::from_secs(2)).await {
            Ok(client) => {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    client.create(path, b"x", &persistent()),
                )
                .await
                {
                    Ok(Ok(_)) => return Ok(t0.elapsed()),
                    Ok(Err(e)) => last = format!("create: {e}"),
                    Err(_) => last = "create timed out".into(),
                }
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("could not create {path} via {addr} within {within:?}: {last}")
}

#[test]
fn ensemble_elects_and_replaces_a_killed_leader() -> Result<()> {
    let _serial = serial();
    let t0 = Instant::now();
    let zk = ZkEnsemble::start(ZkOptions::ensemble(3))?;
    eprintln!("3-node ensemble serving after {:?}", t0.elapsed());
    assert_eq!(zk.len(), 3);
    assert_eq!(zk.connect_string().split(',').count(), 3);
    let leader = zk.wait_for_leader(Duration::from_secs(10))?;
    for i in (0..3).filter(|&i| i != leader) {
        assert_eq!(zk.mode(i).as_deref(), Some("follower"), "node {i}");
    }

    let old_pid = zk.pid(leader).context("no pid")?;
    zk.kill(leader)?;
    assert!(!pid_alive(old_pid));
    let t1 = Instant::now();
    let new_leader = zk.wait_for_leader(Duration::from_secs(10))?;
    eprintln!(
        "new leader {new_leader} after killing leader {leader}: {:?}",
        t1.elapsed()
    );
    assert_ne!(new_leader, leader);
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "election took {:?}",
        t1.elapsed()
    );

    let t2 = Instant::now();
    zk.restart(leader)?;
    eprintln!("restarted node {leader} serving after {:?}", t2.elapsed());
    assert_eq!(zk.mode(leader).as_deref(), Some("follower"));
    assert_eq!(zk.leader(), Some(new_leader));
    Ok(())
}

#[test]
fn cut_from_leader_isolates_one_follower_until_healed() -> Result<()> {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(cut_scenario())
}

async fn cut_scenario() -> Result<()> {
    let opts = ZkOptions::ensemble(3);
    let sync_window = Duration::from_millis(u64::from(opts.sync_limit) * opts.tick_ms);
    let zk = ZkEnsemble::start(opts)?;
    let leader = zk.wait_for_leader(Duration::from_secs(10))?;
    let f = (leader + 1) % 3;
    let other = 3 - leader - f;

    // Connected before the cut: a new session through a cut follower cannot even be created,
    // since session creation goes through the leader.
    let client = connect(zk.client_addr(f), Duration::from_secs(5)).await?;
    client.create("/before", b"x", &persistent()).await?;

    zk.cut_from_leader(f)?;
    let t0 = Instant::now();
    let write = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(1),
                client.create("/during-cut", b"x", &persistent()),
            )
            .await
        })
    };
    // How long f keeps answering as a follower (blocking polls on this thread; the write runs
    // on the runtime's workers).
    let mut answered_for = Duration::ZERO;
    let mut ruok_for = Duration::ZERO;
    while t0.elapsed() < sync_window * 3 {
        if zk.mode(f).as_deref() == Some("follower") {
            answered_for = t0.elapsed();
        }
        if zk.ruok(f) {
            ruok_for = t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "cut follower {f} answered srvr as follower for {answered_for:?}, ruok for {ruok_for:?} (syncLimit*tick = {sync_window:?}); mode now {:?}",
        zk.mode(f)
    );
    let slack = Duration::from_millis(300);
    assert!(
        answered_for + slack >= sync_window,
        "cut follower stopped answering after {answered_for:?}, before syncLimit*tick {sync_window:?}"
    );
    match write.await? {
        Err(_elapsed) => {}
        Ok(Err(e)) => eprintln!("write through the cut follower failed: {e}"),
        Ok(Ok(_)) => bail!("a write through the cut follower completed"),
    }

    // The other two still form a quorum and serve writes.
    assert_eq!(
        zk.mode(leader).as_deref(),
        Some("leader"),
        "the leader lost its quorum"
    );
    assert_eq!(
        zk.mode(other).as_deref(),
        Some("follower"),
        "the other follower dropped out"
    );
    create_via(
        zk.client_addr(other),
        "/during-cut-other",
        Duration::from_secs(5),
    )
    .await?;

    zk.heal()?;
    let back = create_via(zk.client_addr(f), "/after-heal", Duration::from_secs(30)).await?;
    eprintln!("after heal, a write through {f} succeeded after {back:?}");
    assert_eq!(zk.mode(f).as_deref(), Some("follower"));
    let applied = zk.zkcli(other, &["stat", "/during-cut"]).is_ok();
    eprintln!("the write sent through the cut follower was applied after heal: {applied}");
    Ok(())
}
