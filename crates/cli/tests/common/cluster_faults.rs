//! The store faults of a replicated store run as a cluster of nodes (ZooKeeper, etcd) for the
//! chaos harness ([`super::chaos`]): SIGKILL of a node (the leader half the time, otherwise a
//! follower; restarted after a delay, on a thread, since a restart waits until the node
//! serves) and SIGSTOP of the leader. They never overlap. Node kill takes 2 of the store's 3
//! fault picks, leader pause 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser_testkit::{EtcdCluster, ZkEnsemble};

use super::chaos::{ms_, StoreFaults, Timeline};
use super::Rng;

/// What the faults need of a cluster fixture.
pub trait Cluster: Send + Sync + 'static {
    /// Names the store in the timeline and the saved logs.
    const NAME: &'static str;
    /// The timeline's fault kinds.
    const KILL: &'static str;
    const PAUSE: &'static str;
    fn nodes(&self) -> usize;
    fn leader(&self) -> Option<usize>;
    fn kill(&self, i: usize) -> Result<()>;
    fn restart(&self, i: usize) -> Result<()>;
    fn pause(&self, i: usize) -> Result<()>;
    fn resume(&self, i: usize) -> Result<()>;
    fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()>;
    fn log(&self, i: usize) -> PathBuf;
}

impl Cluster for ZkEnsemble {
    const NAME: &'static str = "zk";
    const KILL: &'static str = "zk SIGKILL";
    const PAUSE: &'static str = "zk leader SIGSTOP";
    fn nodes(&self) -> usize {
        self.len()
    }
    fn leader(&self) -> Option<usize> {
        ZkEnsemble::leader(self)
    }
    fn kill(&self, i: usize) -> Result<()> {
        ZkEnsemble::kill(self, i)
    }
    fn restart(&self, i: usize) -> Result<()> {
        ZkEnsemble::restart(self, i)
    }
    fn pause(&self, i: usize) -> Result<()> {
        ZkEnsemble::pause(self, i)
    }
    fn resume(&self, i: usize) -> Result<()> {
        ZkEnsemble::resume(self, i)
    }
    fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()> {
        ZkEnsemble::wait_serving(self, i, timeout)
    }
    fn log(&self, i: usize) -> PathBuf {
        self.log_path(i).to_path_buf()
    }
}

impl Cluster for EtcdCluster {
    const NAME: &'static str = "etcd";
    const KILL: &'static str = "etcd SIGKILL";
    const PAUSE: &'static str = "etcd leader SIGSTOP";
    fn nodes(&self) -> usize {
        self.len()
    }
    fn leader(&self) -> Option<usize> {
        EtcdCluster::leader(self)
    }
    fn kill(&self, i: usize) -> Result<()> {
        EtcdCluster::kill(self, i)
    }
    fn restart(&self, i: usize) -> Result<()> {
        EtcdCluster::restart(self, i)
    }
    fn pause(&self, i: usize) -> Result<()> {
        EtcdCluster::pause(self, i)
    }
    fn resume(&self, i: usize) -> Result<()> {
        EtcdCluster::resume(self, i)
    }
    fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()> {
        EtcdCluster::wait_serving(self, i, timeout)
    }
    fn log(&self, i: usize) -> PathBuf {
        self.log_path(i).to_path_buf()
    }
}

enum Fault {
    None,
    Killed {
        node: usize,
        restart_at: Instant,
    },
    /// A restart runs on its own thread (it waits until the node serves).
    Restarting(JoinHandle<Result<()>>),
    Paused {
        node: usize,
        resume_at: Instant,
    },
}

/// A cluster, the URL members use, and its faults.
pub struct ClusterFaults<C: Cluster> {
    pub cluster: Arc<C>,
    url: String,
    /// How long a killed node stays down, and how long the leader stays stopped.
    down: (Duration, Duration),
    pause: (Duration, Duration),
    /// Whether the leader is ever SIGSTOPped (see [`ClusterFaults::without_leader_stalls`]).
    leader_stalls: bool,
    fault: Fault,
}

impl<C: Cluster> ClusterFaults<C> {
    pub fn new(
        cluster: C,
        url: String,
        down: (Duration, Duration),
        pause: (Duration, Duration),
    ) -> Self {
        ClusterFaults {
            cluster: Arc::new(cluster),
            url,
            down,
            pause,
            leader_stalls: true,
            fault: Fault::None,
        }
    }

    /// Node kills only. etcd before 3.4.31 / 3.5.13 can revoke leases that are being kept
    /// alive after a leader stall (etcd #15247): another member may then claim before the
    /// owner hears of it, which no client can prevent (fencing tokens cover it). The tests'
    /// Debian 3.4.23 has the bug, so the stalls run in `scripts/chaos-etcd`, where such an
    /// overlap is reported with its cause, not in the CI run that must show none.
    pub fn without_leader_stalls(mut self) -> Self {
        self.leader_stalls = false;
        self
    }
}

fn joined(h: JoinHandle<Result<()>>, name: &str) -> Result<()> {
    match h.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("a {name} node did not come back; see its log: {e:#}"),
        Err(_) => bail!("a {name} node did not come back; see its log"),
    }
}

impl<C: Cluster> StoreFaults for ClusterFaults<C> {
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Node kill 2, leader pause 1 (0 without leader stalls).
    fn weight(&self) -> u64 {
        if self.leader_stalls {
            3
        } else {
            2
        }
    }

    fn busy(&self) -> bool {
        !matches!(self.fault, Fault::None)
    }

    fn inject(&mut self, pick: u64, rng: &mut Rng, tl: &mut Timeline) -> Result<()> {
        let c = &self.cluster;
        let n = c.nodes();
        if pick <= 1 {
            let leader = c.leader();
            let node = match leader {
                Some(l) if rng.chance(50) => l,
                Some(l) => (l + 1 + rng.below(n as u64 - 1) as usize) % n,
                None => rng.below(n as u64) as usize,
            };
            let role = if Some(node) == leader {
                "leader"
            } else {
                "follower"
            };
            c.kill(node)?;
            let d = rng.between(self.down.0, self.down.1);
            tl.fault(
                C::KILL,
                format_args!("node {node} ({role}), restart in {:.1}s", d.as_secs_f64()),
            );
            self.fault = Fault::Killed {
                node,
                restart_at: Instant::now() + d,
            };
        } else if let Some(node) = c.leader() {
            let d = rng.between(self.pause.0, self.pause.1);
            c.pause(node)?;
            tl.fault(
                C::PAUSE,
                format_args!("node {node} for {:.1}s", d.as_secs_f64()),
            );
            self.fault = Fault::Paused {
                node,
                resume_at: Instant::now() + d,
            };
        } else {
            tl.note(format_args!(
                "no {} leader right now: fault skipped",
                C::NAME
            ));
        }
        Ok(())
    }

    fn step(&mut self, now: Instant, ending: bool, tl: &mut Timeline) -> Result<()> {
        self.fault = match std::mem::replace(&mut self.fault, Fault::None) {
            Fault::Killed { node, restart_at } if ending || now >= restart_at => {
                tl.note(format_args!("restarting {} node {node}", C::NAME));
                let c = Arc::clone(&self.cluster);
                Fault::Restarting(std::thread::spawn(move || {
                    c.restart(node)
                        .with_context(|| format!("{} node {node} did not restart", C::NAME))
                }))
            }
            Fault::Restarting(h) if h.is_finished() => {
                joined(h, C::NAME)?;
                tl.note(format_args!("{} node serves again", C::NAME));
                Fault::None
            }
            Fault::Paused { node, resume_at } if ending || now >= resume_at => {
                self.cluster.resume(node)?;
                tl.note(format_args!("SIGCONT {} node {node}", C::NAME));
                Fault::None
            }
            other => other,
        };
        if ending {
            if let Fault::Restarting(h) = std::mem::replace(&mut self.fault, Fault::None) {
                joined(h, C::NAME)?;
                tl.note(format_args!("{} node serves again", C::NAME));
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        for i in 0..self.cluster.nodes() {
            self.cluster
                .wait_serving(i, Duration::from_secs(60))
                .with_context(|| format!("{} node {i} after the faults", C::NAME))?;
        }
        Ok(())
    }

    fn save_logs(&self, dir: &Path) {
        for i in 0..self.cluster.nodes() {
            let _ = fs::copy(self.cluster.log(i), dir.join(format!("{}{i}.log", C::NAME)));
        }
    }
}

/// The 2–5 s the ZooKeeper chaos has always used for both.
pub fn zk_timings() -> ((Duration, Duration), (Duration, Duration)) {
    ((ms_(2000), ms_(5000)), (ms_(2000), ms_(5000)))
}
