//! Quickstart: a consumer group of 12 queues on the in-process `memory://` store, with an
//! access monitor watching every worker while members join, crash and leave and the admin
//! changes the resource set. No setup; finishes by itself in about 12 seconds.
//!
//! ```text
//! cargo run --release -p rebalanser --example quickstart
//! RUST_LOG=rebalanser=info cargo run --release -p rebalanser --example quickstart
//! ```
//!
//! Exits non-zero if two members were ever inside the same resource at once.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rebalanser::{Admin, GroupStatus, Lease, LeaseChecker, Member, StopPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const STORE: &str = "memory://quickstart";
const GROUP: &str = "demo";
/// Short, so that a crashed member's resources move within the demo's attention span.
const TTL: Duration = Duration::from_secs(2);
/// How long each step may take to settle before the demo gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Time the group runs undisturbed after each step, so the monitor sees steady work too.
const STEADY: Duration = Duration::from_secs(2);
/// Pause between two accesses of a resource by its worker.
const WORK_TICK: Duration = Duration::from_millis(10);

type Res<T> = Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() -> ExitCode {
    // The library logs every ownership change at info: too much for a story told on stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let monitor = Monitor::default();
    let outcome = run(&monitor).await;
    let violations = monitor.violations();
    for v in &violations {
        eprintln!("  {v}");
    }
    println!("double access: {}", violations.len());
    match outcome {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Ok(()) if !violations.is_empty() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// The story; returns early, with the reason, if a step fails.
async fn run(monitor: &Monitor) -> Res<()> {
    // The memory store lives while a handle to it does: the admin keeps it for the whole run.
    let admin = Admin::connect(STORE, GROUP)?;
    admin.create_group().await?;
    let queues: Vec<String> = (1..=12).map(|i| format!("queue-{i:02}")).collect();
    admin.add_resources(&queues).await?;
    println!("group {GROUP:?} on {STORE}: {} resources", queues.len());

    let start = Instant::now();
    let mut members = BTreeMap::new();
    for name in ["m1", "m2", "m3"] {
        members.insert(name, Worker::join(name, monitor).await?);
    }
    println!("m1, m2, m3 joined (session TTL {TTL:?})");
    let mut status = wait_settled(&admin, monitor, &["m1", "m2", "m3"]).await?;
    println!("\nbalanced after {}", secs(start.elapsed()));
    print_table(&status);
    println!("  (name[token]: the fencing token grows each time a resource changes hands)");
    steady(monitor).await;

    let mut changes = Vec::new();

    // a. Scale out: the newcomer takes a fair share, and only that share moves.
    let step = Step::begin("m4 joins", &status);
    members.insert("m4", Worker::join("m4", monitor).await?);
    status = wait_settled(&admin, monitor, &["m1", "m2", "m3", "m4"]).await?;
    changes.push(step.end(&status).report(&status));
    steady(monitor).await;

    // b. A crash: nobody tells the group, so m2's claims stay put until its session expires.
    let step = Step::begin("m2 crashes", &status);
    println!(
        "no leave, no session close: m2's claims stay until its session expires, \
         {} after its last keepalive",
        secs(TTL)
    );
    let m2 = members.remove("m2").ok_or("m2 is not running")?;
    let m2_stopped = m2.crash(monitor);
    status = wait_settled(&admin, monitor, &["m1", "m3", "m4"]).await?;
    let change = step.end(&status);
    if let Ok(Some(after)) = m2_stopped.await {
        println!(
            "m2's frozen workers ignored the revoke and kept working until Lease::is_valid() \
             turned false, {} after the crash; only then could anyone else get in",
            secs(after)
        );
    }
    changes.push(change.report(&status));
    steady(monitor).await;

    // c. The resource set changes under running members.
    let step = Step::begin("admin: -2 +3 resources", &status);
    admin.remove_resources(&["queue-03", "queue-07"]).await?;
    admin
        .add_resources(&["queue-13", "queue-14", "queue-15"])
        .await?;
    status = wait_settled(&admin, monitor, &["m1", "m3", "m4"]).await?;
    changes.push(step.end(&status).report(&status));
    steady(monitor).await;

    // d. Graceful leave: the coordinator hands m1's resources over without waiting for a TTL.
    let step = Step::begin("m1 leaves", &status);
    let m1 = members.remove("m1").ok_or("m1 is not running")?;
    m1.leave().await?;
    status = wait_settled(&admin, monitor, &["m3", "m4"]).await?;
    changes.push(step.end(&status).report(&status));
    steady(monitor).await;

    let shutdown = Instant::now();
    for (_, w) in std::mem::take(&mut members) {
        w.leave().await?;
    }
    println!(
        "\nm3 and m4 left in {}; {} accesses in all",
        secs(shutdown.elapsed()),
        monitor.accesses()
    );

    println!("\nsummary");
    for c in &changes {
        println!(
            "  {:<24} balanced again in {:>7}, {:>2} resource(s) moved",
            c.what,
            secs(c.took),
            c.moved
        );
    }
    Ok(())
}

/// Records who is inside which resource. A member entering a resource while another member's
/// lease on it is still valid is exactly what the library promises never to allow.
#[derive(Clone, Default)]
struct Monitor {
    inner: Arc<Mutex<MonitorState>>,
}

#[derive(Default)]
struct MonitorState {
    /// Resource → the member inside it, and a view of that member's lease.
    inside: BTreeMap<String, (String, LeaseChecker)>,
    violations: Vec<String>,
    accesses: u64,
}

impl Monitor {
    fn lock(&self) -> MutexGuard<'_, MonitorState> {
        // A panicking worker must not hide the record of the others.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, who: &str, lease: &Lease) {
        let resource = lease.resource().to_string();
        let mut s = self.lock();
        if let Some((other, checker)) = s.inside.get(&resource) {
            if checker.is_valid() {
                let v = format!(
                    "{who} entered {resource} (token {}) while {other} was still inside",
                    lease.token()
                );
                s.violations.push(v);
            }
        }
        s.inside
            .insert(resource, (who.to_string(), lease.checker()));
    }

    /// One unit of work, checked under the monitor's lock so that the check and the access
    /// cannot be separated by another member's `enter`. False when the lease no longer allows it.
    fn access(&self, lease: &Lease) -> bool {
        let mut s = self.lock();
        if !lease.is_valid() {
            return false;
        }
        s.accesses += 1;
        true
    }

    fn exit(&self, who: &str, resource: &str) {
        let mut s = self.lock();
        if s.inside.get(resource).is_some_and(|(w, _)| w == who) {
            s.inside.remove(resource);
        }
    }

    /// Resource → member, for the leases that still allow access.
    fn holders(&self) -> BTreeMap<String, String> {
        self.lock()
            .inside
            .iter()
            .filter(|(_, (_, c))| c.is_valid())
            .map(|(r, (w, _))| (r.clone(), w.clone()))
            .collect()
    }

    /// Resources `who` is inside, valid lease or not.
    fn inside_count(&self, who: &str) -> usize {
        self.lock()
            .inside
            .values()
            .filter(|(w, _)| w == who)
            .count()
    }

    fn accesses(&self) -> u64 {
        self.lock().accesses
    }

    fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
}

enum Ctl {
    Leave(oneshot::Sender<Result<(), rebalanser::Error>>),
    Crash,
}

/// A member running in its own task, spawning one worker task per lease.
struct Worker {
    name: &'static str,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<()>,
    /// Set when the member "crashes": its workers then ignore revokes (see `work`).
    frozen: Arc<AtomicBool>,
}

impl Worker {
    async fn join(name: &'static str, monitor: &Monitor) -> Res<Worker> {
        // The budget 2×keepalive + op + stop + margin = 1.4 s must stay below the TTL.
        let member = Member::builder(GROUP)
            .name(name)
            .store_url(STORE)
            .session_ttl(TTL)
            .safety_margin(Duration::from_millis(200))
            .keepalive_interval(Duration::from_millis(300))
            .op_timeout(Duration::from_millis(300))
            .stop_timeout(Duration::from_millis(300))
            .min_rebalance_interval(Duration::from_millis(20))
            .leave_timeout(Duration::from_secs(3))
            // A late stop is reported, not fatal: the monitor is the judge in this demo.
            .on_stop_deadline_missed(StopPolicy::Log)
            .join()
            .await?;
        let mut events = member.events();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if e.is_problem() {
                    println!("  ! {name}: {e}");
                }
            }
        });
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let frozen = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(serve(member, name, ctl_rx, monitor.clone(), frozen.clone()));
        Ok(Worker {
            name,
            ctl,
            task,
            frozen,
        })
    }

    async fn leave(self) -> Res<()> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send(Ctl::Leave(tx)).map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())??;
        self.task.await?;
        Ok(())
    }

    /// Stops the member's driver without a leave or a session close, as a killed process
    /// would. Its workers keep running, like the threads of a process that froze rather than
    /// died: only `is_valid()` stops them. The returned task reports when the last one stopped.
    fn crash(self, monitor: &Monitor) -> JoinHandle<Option<Duration>> {
        self.frozen.store(true, Ordering::SeqCst);
        let crashed = Instant::now();
        let _ = self.ctl.send(Ctl::Crash);
        let (monitor, name) = (monitor.clone(), self.name);
        tokio::spawn(async move {
            while crashed.elapsed() < SETTLE_LIMIT {
                if monitor.inside_count(name) == 0 {
                    return Some(crashed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    }

    fn gone(&self) -> String {
        format!("member {} stopped unexpectedly", self.name)
    }
}

async fn serve(
    mut member: Member,
    name: &'static str,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    monitor: Monitor,
    frozen: Arc<AtomicBool>,
) {
    loop {
        tokio::select! {
            Some(lease) = member.next_lease() => {
                tokio::spawn(work(lease, name, monitor.clone(), frozen.clone()));
            }
            c = ctl.recv() => match c {
                Some(Ctl::Leave(reply)) => {
                    let _ = reply.send(member.leave().await);
                    return;
                }
                Some(Ctl::Crash) => {
                    member.simulate_crash();
                    return;
                }
                // Dropping the handle starts a graceful leave by itself.
                None => return,
            },
        }
    }
}

/// Works on one resource while the lease allows it, and gives it up as soon as it is revoked.
async fn work(lease: Lease, who: &'static str, monitor: Monitor, frozen: Arc<AtomicBool>) {
    let resource = lease.resource().to_string();
    monitor.enter(who, &lease);
    loop {
        // A frozen member's driver is gone, which also completes `revoked()`: only a process
        // that is still itself can honour a revoke. Validity needs no one's help.
        let obey = !frozen.load(Ordering::SeqCst);
        if obey && lease.is_revoked() {
            break;
        }
        if !monitor.access(&lease) {
            break;
        }
        tokio::select! {
            _ = lease.revoked(), if obey => {}
            _ = tokio::time::sleep(WORK_TICK) => {}
        }
    }
    monitor.exit(who, &resource);
    // Dropping the lease is what tells the library the resource may move.
    drop(lease);
}

/// Polls the group until it is at rest with exactly `members`, balanced, and the monitor sees
/// every resource worked on by its owner.
async fn wait_settled(admin: &Admin, monitor: &Monitor, members: &[&str]) -> Res<GroupStatus> {
    let start = Instant::now();
    loop {
        let status = admin.status().await?;
        if is_settled(&status, monitor, members) {
            return Ok(status);
        }
        if start.elapsed() > SETTLE_LIMIT {
            return Err(not_settled(&status, monitor, members).into());
        }
        // Fine-grained, since the polling interval bounds the precision of the reported times.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What kept the group from settling, in a few lines rather than the whole status.
fn not_settled(status: &GroupStatus, monitor: &Monitor, members: &[&str]) -> String {
    let claimed = owners(status);
    let mut mismatches: Vec<String> = Vec::new();
    let worked = monitor.holders();
    for r in status.resources.iter().map(|r| r.id.to_string()) {
        let (owner, worker) = (claimed.get(&r), worked.get(&r));
        if owner != worker {
            mismatches.push(format!(
                "{r}: claimed by {owner:?}, worked on by {worker:?}"
            ));
        }
    }
    format!(
        "the group did not settle within {}\n  expected members {members:?}\n  \
         claims per member {:?}\n  pending handovers: {}\n  claim/worker mismatches: {:?}",
        secs(SETTLE_LIMIT),
        status.claims_per_member(),
        status.pending_handovers.len(),
        mismatches
    )
}

fn is_settled(status: &GroupStatus, monitor: &Monitor, members: &[&str]) -> bool {
    let names: BTreeSet<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
    if !status.is_settled() || names != members.iter().copied().collect() {
        return false;
    }
    let counts = status.claims_per_member();
    let most = counts.values().max().copied().unwrap_or(0);
    let least = counts.values().min().copied().unwrap_or(0);
    most - least <= 1 && monitor.holders() == owners(status)
}

/// Resource → claiming member.
fn owners(status: &GroupStatus) -> BTreeMap<String, String> {
    status
        .resources
        .iter()
        .filter_map(|r| {
            let claim = r.claim.as_ref()?;
            Some((r.id.to_string(), claim.member.to_string()))
        })
        .collect()
}

fn print_table(status: &GroupStatus) {
    let coordinator = status.coordinator.as_ref().map(|c| c.member.as_str());
    for m in &status.members {
        let mut line = format!("  {:<3}", m.name.as_str());
        let mut n = 0;
        for r in &status.resources {
            if let Some(c) = r.claim.as_ref().filter(|c| c.member == m.name) {
                line.push_str(&format!(" {}[{}]", r.id, c.token));
                n += 1;
            }
        }
        let role = if coordinator == Some(m.name.as_str()) {
            ", coordinator"
        } else {
            ""
        };
        println!("{line}  ({n}{role})");
    }
}

/// One change to the group, timed from just before it until the group is balanced again.
struct Step {
    what: &'static str,
    before: BTreeMap<String, String>,
    start: Instant,
}

struct Change {
    what: &'static str,
    took: Duration,
    moved: usize,
    /// Resources present both before and after the change.
    kept: usize,
    added: usize,
    removed: usize,
}

impl Step {
    fn begin(what: &'static str, status: &GroupStatus) -> Step {
        println!("\n== {what}");
        Step {
            what,
            before: owners(status),
            start: Instant::now(),
        }
    }

    fn end(self, status: &GroupStatus) -> Change {
        let took = self.start.elapsed();
        let after = owners(status);
        // Only resources present before and after can move; the others are counted apart.
        let moved = self
            .before
            .iter()
            .filter(|(r, m)| after.get(*r).is_some_and(|now| now != *m))
            .count();
        let added = after
            .keys()
            .filter(|r| !self.before.contains_key(*r))
            .count();
        let removed = self
            .before
            .keys()
            .filter(|r| !after.contains_key(*r))
            .count();
        let kept = self
            .before
            .keys()
            .filter(|r| after.contains_key(*r))
            .count();
        Change {
            what: self.what,
            took,
            moved,
            kept,
            added,
            removed,
        }
    }
}

impl Change {
    fn report(self, status: &GroupStatus) -> Change {
        let mut churn = String::new();
        if self.added + self.removed > 0 {
            churn = format!(", +{} new, -{} removed", self.added, self.removed);
        }
        println!(
            "balanced again after {}: {} of {} resources moved{churn}",
            secs(self.took),
            self.moved,
            self.kept
        );
        print_table(status);
        self
    }
}

/// Lets the group run undisturbed; any double access would show up in the monitor.
async fn steady(monitor: &Monitor) {
    let before = monitor.accesses();
    tokio::time::sleep(STEADY).await;
    println!(
        "  ...ran undisturbed for {}: {} accesses",
        secs(STEADY),
        monitor.accesses() - before
    );
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
