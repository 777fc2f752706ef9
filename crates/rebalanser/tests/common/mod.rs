//! Shared test harness: fast timings, an access monitor, and members served by worker tasks.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod faults;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rebalanser::{
    Admin, BoxFuture, Error, Lease, LeaseChecker, Member, MemberBuilder, MemberEvent, RevokeReason,
    StopPolicy, Store, StoreOp, StoreResult, Token, WatchEvent,
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
    /// Every grant, in order (for token and timing checks).
    grant_log: Vec<GrantRec>,
    /// Every end of a hold, in order.
    exit_log: Vec<ExitRec>,
}

/// One lease handed to a worker, as the monitor saw it.
#[derive(Clone, Debug)]
pub struct GrantRec {
    pub who: String,
    pub resource: String,
    pub token: Token,
    pub at: Instant,
}

/// One worker's hold ending: why, and whether the lease was still valid then.
#[derive(Clone, Debug)]
pub struct ExitRec {
    pub who: String,
    pub resource: String,
    pub at: Instant,
    pub reason: Option<RevokeReason>,
    pub valid: bool,
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
        s.grant_log.push(GrantRec {
            who: who.to_string(),
            resource: r.clone(),
            token: lease.token(),
            at: Instant::now(),
        });
        s.holders.insert(r, (who.to_string(), lease.checker()));
    }

    /// Records why a hold ended (called by the workers just before `exit`).
    pub fn record_exit(&self, who: &str, lease: &Lease) {
        let rec = ExitRec {
            who: who.to_string(),
            resource: lease.resource().to_string(),
            at: Instant::now(),
            reason: lease.revoke_reason(),
            valid: lease.is_valid(),
        };
        self.lock().exit_log.push(rec);
    }

    pub fn grant_log(&self) -> Vec<GrantRec> {
        self.lock().grant_log.clone()
    }

    pub fn exit_log(&self) -> Vec<ExitRec> {
        self.lock().exit_log.clone()
    }

    /// The leases `who` holds now (valid or not, until its worker lets go), by resource.
    pub fn checkers_of(&self, who: &str) -> BTreeMap<String, LeaseChecker> {
        self.lock()
            .holders
            .iter()
            .filter(|(_, (h, _))| h == who)
            .map(|(r, (_, c))| (r.clone(), c.clone()))
            .collect()
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

    /// Fencing: per resource, a grant to another member than the previous grant's carries a
    /// strictly larger token, and no grant carries a smaller one.
    pub fn assert_tokens_grow(&self) {
        let s = self.lock();
        let mut last: BTreeMap<&str, &GrantRec> = BTreeMap::new();
        for g in &s.grant_log {
            if let Some(prev) = last.get(g.resource.as_str()) {
                let ok = if prev.who == g.who {
                    g.token >= prev.token
                } else {
                    g.token > prev.token
                };
                assert!(
                    ok,
                    "token did not grow on {}: {prev:?} then {g:?}",
                    g.resource
                );
            }
            last.insert(&g.resource, g);
        }
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
    /// Drops the lease this long after it is revoked (an application slow to stop).
    SlowStop(Duration),
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

    /// Joins with a fully configured builder (group, store and timings); names the member.
    pub async fn join_with(b: MemberBuilder, name: &str, monitor: &Monitor) -> Worker {
        let member = b
            .name(name)
            .join()
            .await
            .unwrap_or_else(|e| panic!("{name}: join: {e}"));
        Worker::start(member, name, monitor)
    }

    pub fn start(mut member: Member, name: &str, monitor: &Monitor) -> Worker {
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

    /// How this worker's lease holders treat revokes from now on (leases already held too).
    pub fn set_obey(&self, how: Obey) {
        *self.obey.lock().unwrap_or_else(|p| p.into_inner()) = how;
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
        if let (Obey::SlowStop(d), true) = (how, lease.is_revoked()) {
            tokio::time::sleep(d).await;
            break;
        }
        tokio::select! {
            _ = lease.revoked(), if how != Obey::DeadlineOnly => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    mon.record_exit(&who, &lease);
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

/// Everyone leaves at once (the last ones have no one to hand over to); each leave must
/// succeed within `bound`.
pub async fn leave_together(workers: Vec<Worker>, bound: Duration) {
    let leaves = workers.into_iter().map(|w| async move {
        let name = w.name.clone();
        let t = Instant::now();
        let r = tokio::time::timeout(bound, w.leave()).await;
        (name, r, t.elapsed())
    });
    for (name, r, took) in futures::future::join_all(leaves).await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{name}: leave failed after {took:?}: {e}"),
            Err(_) => panic!("{name}: leave did not return within {bound:?}"),
        }
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

// ---------------------------------------------------------------------------------------------
// Helpers for members on a real store (ZooKeeper): timings, balance, events, op counting.

/// Timings for a real ZooKeeper server, scaled to `ttl` (2 s in the ZooKeeper suites; the test
/// servers' tickTime is 200 ms, so 0.4–4 s is granted as asked). ZooKeeper counts the deadline
/// from the second-to-last keepalive, so `Config::validate` wants 3 keepalive intervals + op
/// timeout + stop timeout + margin < TTL: for 2 s, 3×200 + 500 + 200 + 200 = 1.5 s.
pub fn zk_fast(b: MemberBuilder, ttl: Duration) -> MemberBuilder {
    b.session_ttl(ttl)
        .safety_margin(ttl / 10)
        .stop_timeout(ttl / 10)
        .keepalive_interval(ttl / 10)
        .op_timeout(ttl / 4)
        .min_rebalance_interval(Duration::from_millis(20))
        .leave_timeout(Duration::from_secs(2))
        .on_stop_deadline_missed(StopPolicy::Log)
}

/// Like [`group`], for a group called `name`, with resources `r00`, `r01`, ...
pub async fn group_named(url: &str, name: &str, resources: usize) -> Admin {
    let admin = Admin::connect(url, name).expect("valid url and group");
    admin.create_group().await.expect("create group");
    let ids: Vec<String> = (0..resources).map(|i| format!("r{i:02}")).collect();
    admin.add_resources(&ids).await.expect("add resources");
    admin
}

/// Balanced: exactly the `members` hold valid leases, `resources` of them in all (each resource
/// appears once in the monitor), and the counts differ by at most one.
pub fn is_even(per: &BTreeMap<String, usize>, members: &[&str], resources: usize) -> bool {
    let names: BTreeSet<&str> = per.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = members.iter().copied().collect();
    let (min, max) = (
        per.values().copied().min().unwrap_or(0),
        per.values().copied().max().unwrap_or(0),
    );
    names == want && per.values().sum::<usize>() == resources && max - min <= 1
}

/// Waits until the monitor shows the `members` balanced over `resources` (see [`is_even`]);
/// returns how long that took.
pub async fn wait_even(
    monitor: &Monitor,
    members: &[&str],
    resources: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    if wait_until(limit, || is_even(&monitor.per_holder(), members, resources)).await {
        Ok(start.elapsed())
    } else {
        Err(format!(
            "not balanced over {members:?} × {resources} after {limit:?}: {:?}",
            monitor.per_holder()
        ))
    }
}

/// Waits until the group is at rest as the store sees it (every resource claimed by the member
/// it is assigned to) and the monitor still shows the same balance.
pub async fn wait_settled(
    admin: &Admin,
    monitor: &Monitor,
    members: &[&str],
    resources: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match admin.status().await {
            Ok(s) if s.is_settled() && is_even(&monitor.per_holder(), members, resources) => {
                return Ok(start.elapsed())
            }
            Ok(s) => last = format!("{:?}", s.pending_handovers),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "not settled after {limit:?}: {last}; monitor {:?}",
        monitor.per_holder()
    ))
}

/// Resources whose (valid) holder differs between two `Monitor::holders` snapshots, counting
/// resources held in only one of them.
pub fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|r| before.get(*r) != after.get(*r))
        .count()
}

/// A member's status events, collected in the background with the time each arrived.
#[derive(Clone, Default)]
pub struct EventLog {
    inner: Arc<Mutex<Vec<(Instant, MemberEvent)>>>,
}

impl EventLog {
    /// Starts collecting; call before handing the member to [`Worker::start`] to miss nothing.
    pub fn collect(member: &Member) -> EventLog {
        let log = EventLog::default();
        let mut events = member.events();
        let inner = log.inner.clone();
        tokio::spawn(async move {
            while let Some(s) = events.recv().await {
                inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), s));
            }
        });
        log
    }

    pub fn all(&self) -> Vec<(Instant, MemberEvent)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self, f: impl Fn(&MemberEvent) -> bool) -> usize {
        self.all().iter().filter(|(_, s)| f(s)).count()
    }

    /// Events since `t`, without times, for messages.
    pub fn since(&self, t: Instant) -> Vec<MemberEvent> {
        self.all()
            .into_iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, s)| s)
            .collect()
    }
}

/// A store that counts the operations a member executes on it.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    ops: AtomicU64,
    keepalives: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner,
            ops: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
        })
    }

    /// Operations executed so far (keepalives included).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    pub fn keepalives(&self) -> u64 {
        self.keepalives.load(Ordering::SeqCst)
    }
}

impl Store for CountingStore {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        if matches!(op, StoreOp::KeepAlive { .. }) {
            self.keepalives.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.execute(op)
    }
    fn watch(&self, prefix: String) -> futures::stream::BoxStream<'static, WatchEvent> {
        self.inner.watch(prefix)
    }
    fn describe(&self) -> String {
        format!("counting({})", self.inner.describe())
    }
    fn keepalive_proves_previous(&self) -> bool {
        self.inner.keepalive_proves_previous()
    }
    fn min_session_ttl(&self) -> Duration {
        self.inner.min_session_ttl()
    }
}

/// Runs a blocking fixture call (the ZooKeeper fixtures sleep and wait on sockets) without
/// stalling the runtime's other tasks. Needs the multi-thread runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Member names `m0..m{n-1}`.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

pub fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// The end of a fault test: tokens grew and no double hold happened, during the test and
/// while everyone leaves together.
pub async fn finish(mon: &Monitor, workers: Vec<Worker>) {
    mon.assert_tokens_grow();
    mon.assert_clean();
    leave_together(workers, Duration::from_secs(10)).await;
    mon.assert_clean();
}
