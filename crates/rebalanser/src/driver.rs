//! The driver: one tokio task per member that runs the sans-IO protocol core.
//!
//! Calling convention of the core (see `rebalanser_core::member`): every input is a
//! `handle_*(now, ..)` call with `now` from [`clock::now`]; after each input the driver drains
//! `poll_op` and `poll_event`, publishes lease deadlines, and sleeps until `poll_timeout`.
//!
//! Store operations run concurrently inside this task (a `FuturesUnordered`), not in spawned
//! tasks: `Store::execute` is called in the order the core emitted the operations, so a
//! backend that sends on call keeps that order, and when the member ends its in-flight
//! operations end with it (DESIGN §8 rule 5: operations die with their session). Each
//! operation gets exactly one reply — its own, or after `op_timeout` (or a panic in the
//! backend) `Indeterminate` for a write and `Unavailable` for a read.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use futures::FutureExt;
use rebalanser_core::layout::Layout;
use rebalanser_core::store::{StoreError, StoreOp, StoreResult};
use rebalanser_core::{
    Epoch, Event, LeaseId, Member as Core, MemberId, OpId, ResourceId, SessionId, Time,
};
use rebalanser_store::{Key, Store, WatchEvent};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, error, info, trace, warn, Instrument, Span};

use crate::builder::StopPolicy;
use crate::clock;
use crate::handle::{MemberEvent, MemberStatus};
use crate::lease::{Cmd, DropLog, Lease, LeaseShared};
use crate::metrics::{MemberMetrics, SessionState};

/// Longest the driver sleeps without re-reading the clock. The tokio timer runs on the
/// monotonic clock, which stops during system suspend; waking at least this often bounds how
/// late the driver notices, after a resume, that the boot-time deadline has passed.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Everything the driver task owns besides the store and its input channel.
pub(crate) struct Driver {
    pub(crate) core: Core,
    pub(crate) policy: StopPolicy,
    pub(crate) cmds_tx: mpsc::UnboundedSender<Cmd>,
    pub(crate) leases_tx: mpsc::UnboundedSender<Lease>,
    pub(crate) status_tx: broadcast::Sender<MemberEvent>,
    pub(crate) snapshot_tx: watch::Sender<MemberStatus>,
    pub(crate) span: Span,
    deadlines: BTreeMap<SessionId, Arc<AtomicU64>>,
    tracks: BTreeMap<LeaseId, Track>,
    outbox: Vec<(OpId, StoreOp)>,
    deliver: Vec<Lease>,
    /// Granted after the handle stopped taking leases (it left or was dropped). Held here,
    /// unused, until revoked: dropping them would release them, and the core grants a
    /// released lease that is still desired again at once, in a loop.
    parked: BTreeMap<LeaseId, Lease>,
    /// Leases revoked before the application took them, reclaimed while handling events: fed
    /// to the core together once the events are drained (one pass each cost the group's size
    /// per lease when a whole assignment moved).
    reclaimed: Vec<(ResourceId, LeaseId, Time)>,
    /// Leases the application dropped (see [`DropLog`]).
    dropped: DropLog,
    /// Revoked leases in the order of their revoke (so in time order), for the stop-timeout
    /// check; entries whose lease was released or escalated meanwhile are skipped when reached.
    revocations: VecDeque<(Time, LeaseId)>,
    joined: bool,
    suspended: bool,
    /// The epoch last recorded on the span (the fmt subscriber appends every record).
    span_epoch: Option<Epoch>,
    /// Coordinator: the new owner of each resource its last rebalance moved, named in the
    /// revoke line of a lease it gives up itself.
    new_owners: BTreeMap<ResourceId, MemberId>,
    metrics: MemberMetrics,
}

/// The driver's side of one outstanding lease.
struct Track {
    resource: ResourceId,
    token: rebalanser_core::Token,
    revoke_tx: watch::Sender<Option<rebalanser_core::RevokeReason>>,
    shared: Arc<LeaseShared>,
    revoked_at: Option<Time>,
    /// The stop policy was already applied for it.
    escalated: bool,
}

impl Driver {
    pub(crate) fn new(
        core: Core,
        policy: StopPolicy,
        cmds_tx: mpsc::UnboundedSender<Cmd>,
        leases_tx: mpsc::UnboundedSender<Lease>,
        status_tx: broadcast::Sender<MemberEvent>,
        snapshot_tx: watch::Sender<MemberStatus>,
    ) -> Driver {
        let cfg = core.config();
        let span = tracing::info_span!(
            "member",
            group = %cfg.group,
            member = %cfg.name,
            epoch = tracing::field::Empty,
        );
        let metrics = MemberMetrics::new(cfg.group.as_str(), cfg.name.as_str());
        Driver {
            core,
            policy,
            cmds_tx,
            leases_tx,
            status_tx,
            snapshot_tx,
            span,
            deadlines: BTreeMap::new(),
            tracks: BTreeMap::new(),
            outbox: Vec::new(),
            deliver: Vec::new(),
            parked: BTreeMap::new(),
            reclaimed: Vec::new(),
            dropped: DropLog::default(),
            revocations: VecDeque::new(),
            joined: false,
            suspended: false,
            span_epoch: None,
            new_owners: BTreeMap::new(),
            metrics,
        }
    }

    /// Runs the member until it has left. Spawn it; aborting the task is a crash (no leave).
    pub(crate) fn run(
        self,
        store: Arc<dyn Store>,
        cmds_rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let span = self.span.clone();
        drive(self, store, cmds_rx).instrument(span)
    }

    fn stop_timeout(&self) -> Duration {
        self.core.config().stop_timeout
    }

    fn record_epoch(&mut self, epoch: Epoch) {
        if self.span_epoch != Some(epoch) {
            self.span_epoch = Some(epoch);
            self.span.record("epoch", epoch.0);
        }
    }

    fn emit(&self, s: MemberEvent) {
        // No subscriber is fine: events are informational.
        let _ = self.status_tx.send(s);
    }

    fn on_cmd(&mut self, now: Time, cmd: Cmd) {
        match cmd {
            Cmd::Released { resource, lease } => {
                // Usually already collected from the lease's flag; then this only wakes us.
                if let Some(t) = self.tracks.remove(&lease) {
                    released_line(&t);
                    self.core.handle_released(now, &resource, lease);
                }
            }
            Cmd::Leave => {
                if !self.core.is_closed() {
                    info!(reason = "leave", "leaving the group");
                }
                self.core.leave(now);
            }
            Cmd::Unhealthy { resource } => {
                warn!(resource = %resource, reason = "unhealthy", "the application reports the resource failing here; giving it back");
                self.core.report_unhealthy(now, &resource);
            }
            Cmd::StopForRestart => {
                if !self.core.is_closed() {
                    info!(
                        reason = "restart",
                        "stopping for a restart under the same name"
                    );
                }
                self.core.stop_for_restart(now);
            }
        }
    }

    /// Drains the core after an input: operations to the outbox, events to the application.
    fn after_input(&mut self) {
        loop {
            while let Some((id, op)) = self.core.poll_op() {
                debug!(op = op_kind(&op), id = id.0, "store op");
                self.outbox.push((id, op));
            }
            // Handling an event may feed the core again (a lease revoked before delivery is
            // released at once), so alternate until both queues are empty.
            let Some(ev) = self.core.poll_event() else {
                if self.reclaimed.is_empty() {
                    break;
                }
                let reclaimed = std::mem::take(&mut self.reclaimed);
                let now = reclaimed
                    .iter()
                    .map(|(_, _, t)| *t)
                    .max()
                    .unwrap_or(Time::ZERO);
                self.core
                    .handle_released_all(now, reclaimed.iter().map(|(r, l, _)| (r, *l)));
                continue;
            };
            self.on_event(ev);
        }
        // Deadlines and the snapshot first, so that an application holding a new lease never
        // reads a state older than it.
        self.publish_deadlines();
        self.publish_snapshot();
        self.publish_metrics();
        for lease in self.deliver.drain(..) {
            if let Err(mpsc::error::SendError(lease)) = self.leases_tx.send(lease) {
                self.parked.insert(lease.id, lease);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = clock::now();
        match ev {
            Event::Grant {
                lease,
                resource,
                token,
                epoch,
                session,
                waited,
            } => {
                self.metrics.grant(waited);
                let deadline = self
                    .deadlines
                    .entry(session)
                    .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                    .clone();
                deadline.store(self.core.valid_until(session).0, Ordering::Release);
                let (revoke_tx, revoke_rx) = watch::channel(None);
                let shared = LeaseShared::new(deadline, revoke_rx, resource.clone());
                if self.policy == StopPolicy::Abort {
                    crate::watchdog::watch(&shared);
                }
                self.tracks.insert(
                    lease,
                    Track {
                        resource: resource.clone(),
                        token,
                        revoke_tx,
                        shared: shared.clone(),
                        revoked_at: None,
                        escalated: false,
                    },
                );
                self.record_epoch(epoch);
                info!(resource = %resource, token = %token, epoch = epoch.0, "lease granted");
                self.emit(MemberEvent::Granted {
                    resource: resource.clone(),
                    token,
                    epoch,
                });
                self.deliver.push(Lease {
                    id: lease,
                    resource,
                    token,
                    epoch,
                    session,
                    shared,
                    cmds: self.cmds_tx.clone(),
                    dropped: self.dropped.clone(),
                });
            }
            Event::Revoke {
                lease,
                resource,
                reason,
            } => {
                self.metrics.revoke(reason);
                let to = self.new_owners.remove(&resource);
                match &to {
                    Some(to) => {
                        info!(resource = %resource, reason = reason.as_str(), to = %to, "lease revoked")
                    }
                    None => info!(resource = %resource, reason = reason.as_str(), "lease revoked"),
                }
                self.emit(MemberEvent::Revoked {
                    resource: resource.clone(),
                    reason,
                    to,
                });
                if let Some(t) = self.tracks.get_mut(&lease) {
                    t.revoked_at = Some(now);
                    self.revocations.push_back((now, lease));
                    t.revoke_tx.send_replace(Some(reason));
                    if t.shared.try_reclaim() {
                        // The application never saw this lease: nothing to wait for.
                        debug!(resource = %resource, "revoked before delivery");
                        if let Some(t) = self.tracks.remove(&lease) {
                            released_line(&t);
                        }
                        self.parked.remove(&lease);
                        self.reclaimed.push((resource, lease, now));
                    }
                }
            }
            Event::SessionOpened { session, ttl } => {
                info!(to = %session, ttl_ms = ttl.as_millis() as u64, "session opened");
                self.emit(MemberEvent::SessionOpened { session, ttl });
            }
            Event::Joined { session } => {
                self.joined = true;
                info!(to = %session, "joined");
                self.emit(MemberEvent::Joined { session });
            }
            Event::NameInUse { holder } => {
                warn!(
                    from = %holder,
                    reason = "name_in_use",
                    "member name held by another live session; waiting for it to expire"
                );
                self.emit(MemberEvent::NameInUse { holder });
            }
            Event::TookOver { from } => {
                info!(
                    from = %from,
                    reason = "static_restart",
                    "took the static member's name over from its previous session"
                );
                self.emit(MemberEvent::TookOver { from });
            }
            Event::Replaced { by } => {
                warn!(
                    to = %by,
                    reason = "replaced",
                    "a newer instance of this static member took the name over; leaving"
                );
                self.emit(MemberEvent::Replaced { by });
            }
            Event::BecameCoordinator { epoch } => {
                self.record_epoch(epoch);
                info!(epoch = epoch.0, "became coordinator");
                self.emit(MemberEvent::BecameCoordinator { epoch });
            }
            Event::SteppedDown { epoch } => {
                info!(epoch = epoch.0, "stepped down as coordinator");
                self.emit(MemberEvent::SteppedDown { epoch });
            }
            Event::Rebalanced { report } => {
                rebalanced_line(&report);
                self.metrics.rebalanced(report.moved());
                // The new owners, for the revokes this member's own moves bring (only the
                // coordinator knows them). Replaced by each report: O(moved).
                self.new_owners = report
                    .moves
                    .iter()
                    .filter_map(|m| Some((m.resource.clone(), m.to.clone()?)))
                    .collect();
                self.emit(MemberEvent::Rebalanced { report });
            }
            Event::Membership {
                member,
                session,
                change,
            } => {
                info!(who = %member, session = %session, change = change.as_str(), "member {}", change.as_str());
                self.emit(MemberEvent::Membership {
                    member,
                    session,
                    change,
                });
            }
            Event::Suspended { deadline } => {
                self.suspended = true;
                let remaining = deadline.saturating_since(now);
                warn!(
                    reason = "session_in_doubt",
                    remaining_ms = remaining.as_millis() as u64,
                    "session in doubt: every lease revoked"
                );
                self.emit(MemberEvent::Suspended { remaining });
            }
            Event::TtlTooShort { granted, needed } => {
                error!(
                    reason = "ttl_too_short",
                    granted_ms = granted.as_millis() as u64,
                    needed_ms = needed.as_millis() as u64,
                    "the store granted a session timeout the timings do not fit in; leaving"
                );
                self.emit(MemberEvent::TtlTooShort { granted, needed });
            }
            Event::Resumed => {
                self.suspended = false;
                info!("session proved alive again; resuming");
                self.emit(MemberEvent::Resumed);
            }
            Event::SessionLost { session } => {
                self.joined = false;
                self.suspended = false;
                info!(from = %session, reason = "session_expired", "session lost; rejoining");
                self.emit(MemberEvent::SessionLost { session });
            }
            Event::StopDeadlineMissed { resources } => {
                // The core judged from the releases it had been told of when it stepped. A lease
                // whose flag is set now was dropped: it is stopped, whenever we hear of it. Read
                // after the core's `now`, an unset flag means it really is held past its
                // deadline.
                self.collect_released(now);
                let late: Vec<ResourceId> = resources
                    .into_iter()
                    // Untracked = released: a track leaves only when the driver learns of the
                    // release (or reclaims the lease), and the event may predate that, since
                    // each release fed to the core steps it.
                    .filter(|r| {
                        self.tracks
                            .values()
                            .any(|t| &t.resource == r && !t.shared.is_released())
                    })
                    .collect();
                for t in self.tracks.values_mut() {
                    if late.contains(&t.resource) {
                        t.escalated = true;
                    }
                }
                if !late.is_empty() {
                    self.stop_missed(late, "lease deadline passed");
                }
            }
            Event::BadData(b) => {
                self.metrics.bad_data();
                warn!(key = %b.key, reason = b.reason, "skipping data that cannot be understood");
                self.emit(MemberEvent::BadData {
                    key: b.key,
                    reason: b.reason,
                });
            }
            Event::StoreError { op, error } => {
                warn!(op, error = %error, "store operation failed");
                self.emit(MemberEvent::Error { op, error });
            }
            Event::Left => {
                self.joined = false;
                info!("left the group");
                self.emit(MemberEvent::Left);
            }
        }
    }

    /// DESIGN §8 rules 3 and 15: a stop that overruns its budget has no safe continuation
    /// inside a running process; aborting it is the only stop a library can force.
    fn stop_missed(&self, resources: Vec<ResourceId>, why: &'static str) {
        // Named up to a screenful (a member of 100,000 leases once logged 1 MB on one line).
        let named = &resources[..resources.len().min(NAMED)];
        match self.policy {
            StopPolicy::Abort => error!(
                count = resources.len(),
                resources = ?named,
                reason = why,
                policy = ?self.policy,
                "the application did not release leases in time"
            ),
            // The application said it enforces stops itself (`member run`'s guards stop the
            // children on their own deadline, even while this process is paused): expected
            // after a pause, and handled there.
            StopPolicy::Log => warn!(
                count = resources.len(),
                resources = ?named,
                reason = why,
                policy = ?self.policy,
                "leases not released by their deadline; the application enforces the stop"
            ),
        }
        self.emit(MemberEvent::StopDeadlineMissed { resources });
        match self.policy {
            StopPolicy::Abort => {
                error!("aborting the process: a lease may outlive its deadline otherwise");
                std::process::abort();
            }
            StopPolicy::Log => {}
        }
    }

    /// Feeds the core every lease the application has dropped, whether or not its
    /// `Cmd::Released` was received yet.
    ///
    /// The lease's `released` flag is set in `Drop` before the message is sent, so it is the
    /// truth about the application; the message only wakes the driver. Under load many
    /// messages wait in the queue while the driver's loop handles one input per pass: judging
    /// lateness from the messages alone counted leases dropped in time as still held (a
    /// member aborted ~395 ms after a revoke although every lease was dropped within 30 ms).
    /// Every lateness check therefore runs after this, with `now` read before it: a flag still
    /// unset then means the lease was held at `now`.
    fn collect_released(&mut self, now: Time) {
        // A lease sets its flag, then logs its id: one whose id is not logged yet is fed at
        // the next input, and until then every lateness check still reads its flag.
        let dropped: Vec<LeaseId> =
            std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()));
        if dropped.is_empty() {
            return;
        }
        let mut released = Vec::with_capacity(dropped.len());
        for lease in dropped {
            if let Some(t) = self.tracks.remove(&lease) {
                released_line(&t);
                released.push((t.resource, lease));
            }
        }
        self.core
            .handle_released_all(now, released.iter().map(|(r, l)| (r, *l)));
    }

    /// Leases revoked longer than `stop_timeout` ago and still not released. Call
    /// [`Driver::collect_released`] first (same `now`).
    fn escalate_overdue(&mut self, now: Time) {
        let stop = self.stop_timeout();
        let mut late = Vec::new();
        while let Some(&(at, lease)) = self.revocations.front() {
            let Some(t) = self.tracks.get_mut(&lease).filter(|t| !t.escalated) else {
                self.revocations.pop_front();
                continue;
            };
            if t.shared.is_released() {
                // Dropped in time; the driver hears of it at its next collection.
                self.revocations.pop_front();
                continue;
            }
            if now < at + stop {
                break;
            }
            self.revocations.pop_front();
            t.escalated = true;
            late.push(t.resource.clone());
        }
        if !late.is_empty() {
            self.stop_missed(late, "stop_timeout passed after revoke");
        }
    }

    /// When the oldest revoked lease still held passes its stop timeout. Revokes come in time
    /// order, so that is the first entry of `revocations` still waiting.
    fn next_escalation(&self) -> Option<Time> {
        let stop = self.stop_timeout();
        self.revocations
            .iter()
            .find(|(_, lease)| {
                self.tracks
                    .get(lease)
                    .is_some_and(|t| !t.escalated && !t.shared.is_released())
            })
            .map(|(at, _)| *at + stop)
    }

    /// Publishes every session's lease deadline where leases read it. Runs after every input,
    /// which is the only time the core's answer can change.
    fn publish_deadlines(&mut self) {
        let current = self.core.session();
        let core = &self.core;
        self.deadlines.retain(|s, d| {
            d.store(core.valid_until(*s).0, Ordering::Release);
            Arc::strong_count(d) > 1 || Some(*s) == current
        });
    }

    fn publish_snapshot(&self) {
        let snap = MemberStatus {
            session: self.core.session(),
            joined: self.joined,
            coordinator: self.core.is_coordinator(),
            suspended: self.suspended,
            leases: self.core.leased_count(),
            left: self.core.is_closed(),
        };
        self.snapshot_tx.send_if_modified(|s| {
            let changed = *s != snap;
            if changed {
                *s = snap;
            }
            changed
        });
    }

    /// The member has left: nothing it granted is valid any more.
    fn finish(&mut self) {
        for d in self.deadlines.values() {
            d.store(0, Ordering::Release);
        }
        // Dropping the senders completes every `revoked()` still waiting.
        self.tracks.clear();
        self.revocations.clear();
        self.parked.clear();
        self.publish_snapshot();
        self.publish_metrics();
    }

    /// The gauges, from the state the snapshot shows.
    fn publish_metrics(&mut self) {
        let state = if self.core.is_closed() {
            SessionState::Left
        } else if self.suspended {
            SessionState::Suspended
        } else if self.joined {
            SessionState::Joined
        } else {
            SessionState::Opening
        };
        // A member that left coordinates nothing, whatever its core still remembers.
        let epoch = self
            .core
            .is_coordinator()
            .filter(|_| state != SessionState::Left)
            .map(|e| e.0);
        self.metrics.observe(self.core.leased_count(), state, epoch);
    }
}

/// Resources named on one line at most: a rebalance of 100,000 resources must not log
/// megabytes; the event carries them all.
const NAMED: usize = 20;

/// The one line per committed rebalance: its cause, the members before and after, and exactly
/// what moved (counts, and the first `NAMED` moves).
fn rebalanced_line(r: &rebalanser_core::RebalanceReport) {
    let names = |ms: &[MemberId]| {
        ms.iter()
            .map(MemberId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let causes: Vec<&str> = r.causes.iter().map(|c| c.as_str()).collect();
    // `r:a->b` moved; `r:(new)->b` had no owner; `r:a->(removed)` left the group.
    let mut moves: Vec<String> = r
        .moves
        .iter()
        .take(NAMED)
        .map(|m| {
            let from = m.from.as_ref().map_or("(new)", MemberId::as_str);
            let to = m.to.as_ref().map_or("(removed)", MemberId::as_str);
            format!("{}:{from}->{to}", m.resource)
        })
        .collect();
    if r.moves.len() > NAMED {
        moves.push(format!("(+{} more)", r.moves.len() - NAMED));
    }
    info!(
        epoch = r.epoch.0,
        reason = causes.join(","),
        before = names(&r.members_before),
        after = names(&r.members_after),
        joined = names(&r.joined),
        left = names(&r.left),
        expired = names(&r.expired),
        moved = r.moved(),
        assigned = r.assigned(),
        unassigned = r.unassigned(),
        resources = r.resources,
        moves = moves.join(" "),
        "rebalanced"
    );
}

/// The application stopped using a lease (dropped it): the end of this member's access, the
/// line an ownership timeline closes the interval with.
fn released_line(t: &Track) {
    info!(resource = %t.resource, token = %t.token, "lease released");
}

async fn drive(mut d: Driver, store: Arc<dyn Store>, mut cmds_rx: mpsc::UnboundedReceiver<Cmd>) {
    let cfg = d.core.config().clone();
    let store_ref: &dyn Store = &*store;
    let store_name = store_ref.describe();
    let prefix = Layout::new(&cfg.group).prefix();
    let mut in_flight = FuturesUnordered::new();
    // Armed before the first read, so no change after that read can be missed.
    let mut watch = Some(store_ref.watch(prefix.clone()));
    let mut rearm_at: Option<Time> = None;
    info!(store = %store_name, "member starting");
    d.core.start(clock::now());
    loop {
        d.after_input();
        for (id, op) in d.outbox.drain(..) {
            // A listing of a large group takes longer than a keepalive, and no deadline
            // waits on it (the timing budget counts keepalives only): it gets up to the TTL.
            // With 250 ms every listing of 20,000 keys on ZooKeeper timed out, for ever.
            let timeout = if matches!(op, StoreOp::List { .. } | StoreOp::Read { .. }) {
                cfg.op_timeout.max(cfg.session_ttl)
            } else {
                cfg.op_timeout
            };
            let timer = d.metrics.op(op_kind(&op));
            let started = clock::now();
            in_flight.push(timer.timed(started, execute(store_ref, id, op, timeout)));
        }
        if d.core.is_closed() {
            break;
        }
        let now = clock::now();
        let mut wake = now + MAX_SLEEP;
        for t in [d.core.poll_timeout(), d.next_escalation(), rearm_at]
            .into_iter()
            .flatten()
        {
            wake = wake.min(t);
        }
        let sleep_for = wake.saturating_since(now);
        let input = tokio::select! {
            // Releases first: they are what lets resources move on.
            biased;
            Some(cmd) = cmds_rx.recv() => Input::Cmd(cmd),
            Some((id, res)) = in_flight.next(), if !in_flight.is_empty() => Input::Reply(id, res),
            ev = next_watch(&mut watch) => Input::Notify(ev),
            () = tokio::time::sleep(sleep_for) => Input::Tick,
        };
        if matches!(input, Input::Cmd(Cmd::Released { .. })) {
            // Releases come in bursts (the application stopping what a revoke took away):
            // let the rest of the burst land first, so that its claims go in a few deletes,
            // not one each (a leave of 50,000 leases sent 33,000 transactions).
            tokio::task::yield_now().await;
        }
        // Drops first, before the core sees any input: each input steps the core, which checks
        // lease deadlines against the releases it knows of.
        let now = clock::now();
        d.collect_released(now);
        match input {
            Input::Cmd(cmd) => d.on_cmd(now, cmd),
            Input::Reply(id, res) => {
                // Every other reply already there goes into the same pass.
                let mut replies = vec![(id, res)];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    replies.push(more);
                }
                for (id, res) in &replies {
                    match res {
                        Ok(_) => debug!(id = id.0, "store op done"),
                        Err(e) => debug!(id = id.0, error = %e, "store op failed"),
                    }
                }
                d.core.handle_replies(now, replies);
            }
            Input::Notify(first) => {
                // Notifications already queued are taken together, for one decision and at
                // most one re-read (one re-read each made a burst of writes cost a listing of
                // the group per write). `keys` stays `Some` while every one named its keys.
                let mut ended = first.is_none();
                let mut keys: Option<Vec<Key>> = Some(Vec::new());
                let mut take = |ev: WatchEvent| match (ev, keys.as_mut()) {
                    (WatchEvent::Keys(ks), Some(all)) => all.extend(ks),
                    _ => keys = None,
                };
                if let Some(ev) = first {
                    take(ev);
                }
                // Bounded, so a store streaming events faster than they are taken cannot keep
                // the loop from its timers (keepalives); the rest is taken next pass.
                let mut budget = MAX_EVENTS_PER_PASS;
                while !ended && budget > 0 {
                    budget -= 1;
                    match watch.as_mut().map(|w| w.next().now_or_never()) {
                        Some(Some(Some(ev))) => take(ev),
                        Some(Some(None)) => ended = true,
                        _ => break,
                    }
                }
                if ended {
                    // The watch broke: re-arm after a pause, then re-read (Store contract).
                    debug!(store = %store_name, "watch ended; re-arming");
                    watch = None;
                    rearm_at = Some(now + cfg.retry_delay);
                }
                trace!(keys = ?keys.as_ref().map(|k| k.iter().take(4).collect::<Vec<_>>()), "notified");
                match keys {
                    Some(keys) if !ended => d.core.handle_notify_keys(now, &keys),
                    _ => d.core.handle_notify(now),
                }
            }
            Input::Tick => {}
        }
        // Timers run after every branch, not only when the sleep wins: a busy watch or a
        // stream of replies must not starve them (the select is biased).
        let now = clock::now();
        d.collect_released(now);
        if rearm_at.is_some_and(|t| now >= t) {
            watch = Some(store_ref.watch(prefix.clone()));
            rearm_at = None;
            d.core.handle_notify(now);
        }
        if d.core.poll_timeout().is_some_and(|t| now >= t) {
            d.core.handle_timeout(now);
        }
        d.escalate_overdue(now);
    }
    d.finish();
    info!("member stopped");
}

/// Watch events taken together in one pass at most (each is cheap: a few keys to collect).
const MAX_EVENTS_PER_PASS: usize = 10_000;

/// What woke the driver's loop.
enum Input {
    Cmd(Cmd),
    Reply(OpId, StoreResult),
    /// A watch event, or `None` when the watch ended.
    Notify(Option<WatchEvent>),
    Tick,
}

async fn next_watch(w: &mut Option<BoxStream<'static, WatchEvent>>) -> Option<WatchEvent> {
    match w {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// One store operation with its one reply.
fn execute<'a>(
    store: &'a dyn Store,
    id: OpId,
    op: StoreOp,
    timeout: Duration,
) -> impl Future<Output = (OpId, StoreResult)> + Send + 'a {
    let write = op.is_write();
    // Called here, in emission order; see the module docs.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| store.execute(op)));
    async move {
        let res = match started {
            Err(_) => Err(unknown(write, "the store panicked".to_string())),
            Ok(fut) => {
                match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(unknown(write, "the store panicked".to_string())),
                    Err(_) => Err(unknown(
                        write,
                        format!("no reply within op_timeout ({timeout:?})"),
                    )),
                }
            }
        };
        (id, res)
    }
}

/// The reply for an operation whose outcome is unknown: a write may have been applied.
fn unknown(write: bool, why: String) -> StoreError {
    if write {
        StoreError::Indeterminate(why)
    } else {
        StoreError::Unavailable(why)
    }
}

fn op_kind(op: &StoreOp) -> &'static str {
    match op {
        StoreOp::OpenSession { .. } => "open_session",
        StoreOp::KeepAlive { .. } => "keepalive",
        StoreOp::CloseSession { .. } => "close_session",
        StoreOp::Get { .. } => "get",
        StoreOp::List { .. } => "list",
        StoreOp::Read { .. } => "read",
        StoreOp::Txn { .. } => "txn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebalanser_core::store::StoreReply;
    use rebalanser_store::BoxFuture;

    /// A store that never answers, or panics.
    struct Broken {
        panic: bool,
    }

    impl Store for Broken {
        fn execute(&self, _op: StoreOp) -> BoxFuture<'_, StoreResult> {
            let panic = self.panic;
            Box::pin(async move {
                if panic {
                    panic!("broken store");
                }
                std::future::pending::<()>().await;
                Ok(StoreReply::Closed)
            })
        }
        fn watch(&self, _prefix: String) -> BoxStream<'static, WatchEvent> {
            futures::stream::pending().boxed()
        }
        fn describe(&self) -> String {
            "broken://".into()
        }

        fn keepalive_proves_previous(&self) -> bool {
            false
        }
    }

    fn get() -> StoreOp {
        StoreOp::Get {
            key: "k".into(),
            linearizable: true,
        }
    }

    fn put() -> StoreOp {
        StoreOp::Txn {
            conds: vec![],
            writes: vec![],
        }
    }

    #[tokio::test]
    async fn an_op_without_reply_times_out_as_indeterminate_or_unavailable() {
        let s = Broken { panic: false };
        let t = Duration::from_millis(20);
        let (_, r) = execute(&s, OpId(1), put(), t).await;
        assert!(matches!(r, Err(StoreError::Indeterminate(_))), "{r:?}");
        let (_, r) = execute(&s, OpId(2), get(), t).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_panicking_store_still_yields_one_reply() {
        let s = Broken { panic: true };
        let (id, r) = execute(&s, OpId(3), put(), Duration::from_secs(1)).await;
        assert_eq!(id, OpId(3));
        assert!(matches!(r, Err(StoreError::Indeterminate(_))), "{r:?}");
    }
}
