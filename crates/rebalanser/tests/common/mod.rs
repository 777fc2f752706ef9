//! Shared test harness: fast timings, an access monitor, and members served by worker tasks.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rebalanser::{
    Admin, Error, Lease, LeaseChecker, Member, MemberBuilder, MemberHandle, StopPolicy,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Fits `Config::validate`: 2×150 + 200 + 200 + 100 = 800 ms < 1 s.
pub fn fast(b: MemberBuilder, ttl: Duration) -> MemberBuilder {
    b.session_ttl(ttl)
        .safety_margin(Duration::from_millis(100))
        .stop_timeout(Duration::from_millis(200))
        .keepalive_interval(Duration::from_millis(150))
        .op_timeout(Duration::from_millis(200))
        .min_rebalance_interval(Duration::from_millis(20))
        .leave_timeout(Duration::from_secs(2))
        // Tests must fail, not abort the test binary, when a stop is late.
        .on_stop_deadline_missed(StopPolicy::Log)
}

/// A unique `memory://` URL per test, so parallel tests never share a store.
pub fn url(test: &str) -> String {
    format!("memory://{test}-{}", std::process::id())
}

pub async fn group(url: &str, resources: usize) -> Admin {
    let admin = Admin::connect(url, "g").expect("valid url and group");
    admin.create_group().await.expect("create group");
    let ids: Vec<String> = (0..resources).map(|i| format!("r{i:02}")).collect();
    admin.add_resources(&ids).await.expect("add resources");
    admin
}

/// Records who holds which resource and fails on a double hold.
///
/// A new holder is a violation only if the previous holder's lease is still *valid* at that
/// instant (`is_valid()` is computed at call time), which is exactly guarantee 1: a holder
/// that ignores revokes and stops only when its lease turns invalid is still correct.
#[derive(Clone, Default)]
pub struct Monitor {
    inner: Arc<Mutex<MonitorState>>,
}

#[derive(Default)]
struct MonitorState {
    holders: BTreeMap<String, (String, LeaseChecker)>,
    violations: Vec<String>,
    grants: usize,
}

impl Monitor {
    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(&self, who: &str, lease: &Lease) {
        let r = lease.resource().to_string();
        let mut s = self.lock();
        s.grants += 1;
        if !lease.is_valid() {
            s.violations
                .push(format!("{who} was handed an invalid lease on {r}"));
        }
        if let Some((other, checker)) = s.holders.get(&r) {
            if checker.is_valid() {
                let v = format!(
                    "double hold of {r}: {who} (token {}) while {other} still holds a valid lease",
                    lease.token()
                );
                s.violations.push(v);
            }
        }
        s.holders.insert(r, (who.to_string(), lease.checker()));
    }

    pub fn exit(&self, who: &str, resource: &str) {
        let mut s = self.lock();
        if s.holders.get(resource).is_some_and(|(h, _)| h == who) {
            s.holders.remove(resource);
        }
    }

    /// Resources per holder, counting only leases that are still valid.
    pub fn per_holder(&self) -> BTreeMap<String, usize> {
        let s = self.lock();
        let mut out = BTreeMap::new();
        for (h, c) in s.holders.values() {
            if c.is_valid() {
                *out.entry(h.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn holders(&self) -> BTreeMap<String, String> {
        let s = self.lock();
        s.holders
            .iter()
            .filter(|(_, (_, c))| c.is_valid())
            .map(|(r, (h, _))| (r.clone(), h.clone()))
            .collect()
    }

    pub fn grants(&self) -> usize {
        self.lock().grants
    }

    pub fn assert_clean(&self) {
        let s = self.lock();
        assert!(s.violations.is_empty(), "violations: {:#?}", s.violations);
    }
}

/// How a worker treats revokes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Obey {
    /// Drops the lease as soon as it is revoked (a well-behaved application).
    Revoke,
    /// Ignores revokes and stops only when `is_valid()` turns false (the most an application
    /// may do; used to test the deadline).
    DeadlineOnly,
}

enum Ctl {
    Leave(oneshot::Sender<Result<(), Error>>),
    Crash,
    IsCoordinator(oneshot::Sender<bool>),
}

/// A member whose leases are each held by a task that reports to the monitor.
pub struct Worker {
    pub name: String,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<()>,
    obey: Arc<Mutex<Obey>>,
}

impl Worker {
    pub async fn join(url: &str, name: &str, ttl: Duration, monitor: &Monitor) -> Worker {
        let b = fast(Member::builder("g").name(name).store_url(url), ttl);
        Worker::start(b.join().await.expect("join"), name, monitor)
    }

    pub fn start(mut member: MemberHandle, name: &str, monitor: &Monitor) -> Worker {
        let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
        let obey = Arc::new(Mutex::new(Obey::Revoke));
        let (who, mon, ob) = (name.to_string(), monitor.clone(), obey.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(lease) = member.next_lease() => {
                        tokio::spawn(hold(lease, who.clone(), mon.clone(), ob.clone()));
                    }
                    Some(c) = ctl_rx.recv() => match c {
                        Ctl::Leave(reply) => {
                            let _ = reply.send(member.leave().await);
                            return;
                        }
                        Ctl::Crash => {
                            member.simulate_crash();
                            return;
                        }
                        Ctl::IsCoordinator(reply) => {
                            let _ = reply.send(member.status().coordinator.is_some());
                        }
                    },
                }
            }
        });
        Worker {
            name: name.to_string(),
            ctl,
            task,
            obey,
        }
    }

    pub async fn leave(self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ctl.send(Ctl::Leave(tx));
        let r = rx.await.expect("worker alive");
        let _ = self.task.await;
        r
    }

    pub async fn is_coordinator(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        let _ = self.ctl.send(Ctl::IsCoordinator(tx));
        rx.await.unwrap_or(false)
    }

    /// Stops the member's driver without a leave. Its lease holders switch to `DeadlineOnly`
    /// first, so they keep their leases until these turn invalid, like a paused process.
    pub async fn crash(self) {
        *self.obey.lock().unwrap_or_else(|p| p.into_inner()) = Obey::DeadlineOnly;
        let _ = self.ctl.send(Ctl::Crash);
        let _ = self.task.await;
    }
}

async fn hold(lease: Lease, who: String, mon: Monitor, obey: Arc<Mutex<Obey>>) {
    let r = lease.resource().to_string();
    mon.enter(&who, &lease);
    loop {
        let how = *obey.lock().unwrap_or_else(|p| p.into_inner());
        if !lease.is_valid() || (how == Obey::Revoke && lease.is_revoked()) {
            break;
        }
        tokio::select! {
            _ = lease.revoked(), if how == Obey::Revoke => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    mon.exit(&who, &r);
    drop(lease);
}

/// Leaves one at a time, the coordinator first: the hardest order, since the others must elect
/// a new coordinator (leaving members stand too) to move the resources of those leaving.
pub async fn leave_all(workers: Vec<Worker>) {
    let mut rest = Vec::new();
    let mut coordinators = Vec::new();
    for w in workers {
        if w.is_coordinator().await {
            coordinators.push(w);
        } else {
            rest.push(w);
        }
    }
    for w in coordinators.into_iter().chain(rest) {
        let name = w.name.clone();
        let start = Instant::now();
        w.leave().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{name} took {:?} to leave",
            start.elapsed()
        );
    }
}

/// Polls `f` every 20 ms until it returns true; false after `limit`.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Waits until the monitor shows exactly `want` (holder → count) and every resource held.
pub async fn wait_balanced(
    monitor: &Monitor,
    want: &[(&str, usize)],
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let want: BTreeMap<String, usize> = want.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    let ok = wait_until(limit, || monitor.per_holder() == want).await;
    if ok {
        Ok(start.elapsed())
    } else {
        Err(format!(
            "not balanced after {limit:?}: want {want:?}, have {:?}",
            monitor.per_holder()
        ))
    }
}

/// Optional logs for debugging a failing test: `RUST_LOG=rebalanser=debug cargo test`.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
