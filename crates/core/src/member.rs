//! The member state machine, coordinator role included. Sans-IO: the driver calls
//! `handle_*(now, ..)`, then drains [`Member::poll_op`] and [`Member::poll_event`], and sleeps
//! until [`Member::poll_timeout`]. Every input ends in one level-triggered pass (`step`) that
//! recomputes what to do from state (DESIGN §8 rule 13), so a lost or duplicated input can
//! delay progress but never make it wrong.
//!
//! The safety argument, and where each leg lives in this file:
//! - L1 a claim has one owner session: claims are `Create`d (create-if-absent), never rewritten.
//! - L2 a claim of S vanishes only by S's delete after release, or S's expiry: `delete_claim`
//!   runs only when no lease on the resource is outstanding, guarded by `Cond::Owned`.
//! - L3 the store expires S only after S's local deadline: `on_keepalive` computes the deadline
//!   from the *send* time of a successful keepalive and the smallest TTL granted.
//! - L4 a lease is granted only under a proved claim of the current session, before the
//!   deadline: `grant` asserts both.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::assignor::{self, Assignment};
use crate::config::{Config, Variant};
use crate::ids::{Epoch, LeaseId, MemberId, OpId, ResourceId, SessionId, Time, Token};
use crate::layout::{
    self, BadData, ChunkRec, ClaimRec, CounterRec, Layout, LeaderRec, MemberRec, View,
};
use crate::store::{Cond, Key, StoreError, StoreOp, StoreReply, StoreResult, Write};

/// Why a lease was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The coordinator moved the resource, or it was removed.
    Reassigned,
    /// The session could not be proved alive in time: stop before the deadline.
    SessionInDoubt,
    /// The store says the session expired.
    SessionLost,
    /// This member is leaving.
    Leaving,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Reassigned => "reassigned",
            RevokeReason::SessionInDoubt => "session_in_doubt",
            RevokeReason::SessionLost => "session_lost",
            RevokeReason::Leaving => "leaving",
        }
    }
}

/// Something the application (or the driver) must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start accessing `resource`. The lease is valid while `session` is current and the
    /// clock is before [`Member::valid_until`].
    Grant {
        lease: LeaseId,
        resource: ResourceId,
        token: Token,
        epoch: Epoch,
        session: SessionId,
    },
    /// Stop accessing `resource`, then report it with [`Member::handle_released`].
    Revoke {
        lease: LeaseId,
        resource: ResourceId,
        reason: RevokeReason,
    },
    SessionOpened {
        session: SessionId,
        ttl: Duration,
    },
    /// Registered under `members/<name>`.
    Joined {
        session: SessionId,
    },
    /// Another live session holds this member's name; waiting for it to expire.
    NameInUse {
        holder: SessionId,
    },
    BecameCoordinator {
        epoch: Epoch,
    },
    SteppedDown {
        epoch: Epoch,
    },
    /// A rebalance was committed.
    Rebalanced {
        epoch: Epoch,
        moved: usize,
        members: usize,
        resources: usize,
    },
    /// The session is in doubt: every lease was revoked.
    Suspended {
        deadline: Time,
    },
    /// The same session was proved alive again.
    Resumed,
    /// The session expired; a new one is being opened.
    SessionLost {
        session: SessionId,
    },
    /// Leases were still held at their deadline: the driver must force the stop (abort).
    StopDeadlineMissed {
        resources: Vec<ResourceId>,
    },
    /// Data under the group that could not be understood; skipped.
    BadData(BadData),
    /// A store operation failed in a way worth reporting.
    StoreError {
        op: &'static str,
        error: StoreError,
    },
    /// The store granted a session timeout too short for the configured timings: the member
    /// cannot keep its leases safely and leaves. Final; fix the store's or the member's
    /// configuration.
    TtlTooShort {
        granted: Duration,
        needed: Duration,
    },
    /// The member left the group and closed its session. Final.
    Left,
}

#[derive(Debug, Clone)]
struct Lease {
    id: LeaseId,
    token: Token,
    session: SessionId,
    revoked: bool,
    /// `StopDeadlineMissed` was reported for it.
    late: bool,
}

#[derive(Debug, Clone)]
struct Session {
    id: SessionId,
    /// Smallest TTL granted for this session (PITFALLS 2).
    ttl: Duration,
    deadline: Time,
    keepalive: Option<OpId>,
    next_keepalive: Time,
    suspended: Option<Suspension>,
    /// Send time of the last successful keepalive (of the open, before any): with
    /// `count_from_previous_keepalive`, a success proves only the one before it.
    last_ok_sent: Time,
}

#[derive(Debug, Clone)]
struct Suspension {
    /// When the last lease was released; a keepalive sent after it may resume.
    released_at: Option<Time>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    None,
    Pending,
    Registered,
    /// Another session holds the name; retry when a newer view shows it gone.
    Blocked {
        after_view: u64,
    },
}

#[derive(Debug, Clone)]
struct Coordinator {
    epoch: Epoch,
    leader_rev: u64,
    /// A view from a read sent at or after this number reflects the election.
    fresh_from_read: u64,
    last_rebalance: Option<Time>,
    rebalance_at: Option<Time>,
    txn: Option<OpId>,
    failures: u32,
    seq: u64,
    /// `Variant::DebounceRebalance` only: the view that last restarted the wait.
    debounce_view: u64,
}

/// When a claim operation may be tried again.
#[derive(Debug, Clone, Copy)]
struct Gate {
    after_view: u64,
    at: Time,
}

#[derive(Debug, Clone)]
enum Pending {
    Open {
        sent: Time,
    },
    KeepAlive {
        session: SessionId,
        sent: Time,
    },
    Close {
        session: SessionId,
        /// Failures are retried until then.
        give_up: Time,
    },
    Read {
        number: u64,
        linearizable: bool,
    },
    Register {
        session: SessionId,
    },
    RegisterVerify {
        session: SessionId,
    },
    Drain {
        session: SessionId,
    },
    ClaimCreate {
        session: SessionId,
        r: ResourceId,
    },
    ClaimVerify {
        session: SessionId,
        r: ResourceId,
    },
    ClaimDelete {
        session: SessionId,
        r: ResourceId,
        token: Token,
    },
    Elect {
        session: SessionId,
        epoch: Epoch,
    },
    ElectVerify {
        session: SessionId,
    },
    Rebalance {
        session: SessionId,
        sent: Time,
        /// More transactions must follow to reach the plan's target.
        partial: bool,
        moved: usize,
        members: usize,
        resources: usize,
    },
    Resign {
        session: SessionId,
    },
}

/// A `CloseSession` that failed and is tried again at `at`, until `give_up`: by then the store
/// has expired the session by itself (no keepalive is sent while closing).
#[derive(Clone, Copy, Debug)]
struct CloseRetry {
    session: SessionId,
    give_up: Time,
    at: Time,
}

impl Pending {
    fn session(&self) -> Option<SessionId> {
        match self {
            Pending::Open { .. } | Pending::Close { .. } | Pending::Read { .. } => None,
            Pending::KeepAlive { session, .. }
            | Pending::Register { session }
            | Pending::RegisterVerify { session }
            | Pending::Drain { session }
            | Pending::ClaimCreate { session, .. }
            | Pending::ClaimVerify { session, .. }
            | Pending::ClaimDelete { session, .. }
            | Pending::Elect { session, .. }
            | Pending::ElectVerify { session }
            | Pending::Rebalance { session, .. }
            | Pending::Resign { session } => Some(*session),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Closing,
    Closed,
}

/// One member of one group.
#[derive(Debug, Clone)]
pub struct Member {
    cfg: Config,
    layout: Layout,
    phase: Phase,
    next_op: u64,
    next_lease: u64,
    pending: BTreeMap<OpId, Pending>,
    ops: VecDeque<(OpId, StoreOp)>,
    events: VecDeque<Event>,

    session: Option<Session>,
    opening: bool,
    reopen_at: Time,

    view: View,
    /// Store revision of `view`: a non-linearizable listing older than this is never applied.
    view_rev: u64,
    /// The next read must be linearizable (the last one was older than `view`).
    want_linearizable: bool,
    view_seq: u64,
    reads_sent: u64,
    read: Option<OpId>,
    read_dirty: bool,
    read_retry_at: Option<Time>,
    next_resync: Time,
    reported_bad: BTreeSet<Key>,

    registration: Registration,
    register_retry_at: Time,
    draining: Option<OpId>,
    /// After a failed draining mark, the next try waits until then (no retry at one instant).
    drain_retry_at: Option<Time>,
    leave_started: Option<Time>,

    desired: BTreeSet<ResourceId>,
    desired_epoch: Epoch,
    /// Claims proved to belong to the current session, with their tokens.
    claims: BTreeMap<ResourceId, Token>,
    /// Claims whose ownership must be settled by a linearizable read before anything else.
    unresolved: BTreeSet<ResourceId>,
    /// One operation in flight per claim key (DESIGN §8 rule 5).
    claim_op: BTreeMap<ResourceId, OpId>,
    /// Claim instances whose delete had an unknown outcome. The delete may still be applied
    /// later (after any read of ours), so the instance is never granted again, only deleted
    /// again with the same guard until Ok or Conflict settles it (PITFALLS 12).
    deleting: BTreeMap<ResourceId, Token>,
    gates: BTreeMap<ResourceId, Gate>,
    leases: BTreeMap<ResourceId, Lease>,
    /// Validity limits of ended sessions that still have unreleased leases.
    ended: BTreeMap<SessionId, Time>,

    coord: Option<Coordinator>,
    election: Option<OpId>,
    election_gate: u64,
    no_election_before: Time,
    close_retry: Option<CloseRetry>,
    last_step: Time,
}

impl Member {
    /// Creates a member; call [`Member::start`] to open its session. The config must have
    /// passed [`Config::validate`].
    pub fn new(cfg: Config) -> Member {
        let layout = Layout::new(&cfg.group);
        Member {
            cfg,
            layout,
            phase: Phase::Idle,
            next_op: 0,
            next_lease: 0,
            pending: BTreeMap::new(),
            ops: VecDeque::new(),
            events: VecDeque::new(),
            session: None,
            opening: false,
            reopen_at: Time::ZERO,
            view: View::default(),
            view_rev: 0,
            want_linearizable: false,
            view_seq: 0,
            reads_sent: 0,
            read: None,
            read_dirty: false,
            read_retry_at: None,
            next_resync: Time::ZERO,
            reported_bad: BTreeSet::new(),
            registration: Registration::None,
            register_retry_at: Time::ZERO,
            draining: None,
            drain_retry_at: None,
            leave_started: None,
            desired: BTreeSet::new(),
            desired_epoch: Epoch(0),
            claims: BTreeMap::new(),
            unresolved: BTreeSet::new(),
            claim_op: BTreeMap::new(),
            deleting: BTreeMap::new(),
            gates: BTreeMap::new(),
            leases: BTreeMap::new(),
            ended: BTreeMap::new(),
            coord: None,
            election: None,
            election_gate: 0,
            no_election_before: Time::ZERO,
            close_retry: None,
            last_step: Time::ZERO,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------------

    pub fn start(&mut self, now: Time) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Running;
            self.step(now);
        }
    }

    /// Graceful leave: drain through the coordinator, then close the session.
    pub fn leave(&mut self, now: Time) {
        if matches!(self.phase, Phase::Idle | Phase::Running) && self.leave_started.is_none() {
            if self.phase == Phase::Idle {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Left);
                return;
            }
            self.leave_started = Some(now);
            self.step(now);
        }
    }

    /// Something under the group changed (or may have): re-read.
    pub fn handle_notify(&mut self, now: Time) {
        self.read_dirty = true;
        self.step(now);
    }

    /// A timer set from [`Member::poll_timeout`] fired (spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.step(now);
    }

    /// The application stopped using `lease`.
    pub fn handle_released(&mut self, now: Time, resource: &ResourceId, lease: LeaseId) {
        if self.leases.get(resource).is_some_and(|l| l.id == lease) {
            self.leases.remove(resource);
            let leases = &self.leases;
            self.ended
                .retain(|s, _| leases.values().any(|l| l.session == *s));
            if self.leases.is_empty() {
                if let Some(s) = self.session.as_mut().and_then(|s| s.suspended.as_mut()) {
                    s.released_at.get_or_insert(now);
                }
            }
        }
        self.step(now);
    }

    /// The reply to an operation emitted by [`Member::poll_op`]. The driver delivers exactly
    /// one reply per operation; an operation that timed out is `Indeterminate` (writes) or
    /// `Unavailable` (reads).
    pub fn handle_reply(&mut self, now: Time, op: OpId, result: StoreResult) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let current = self.session.as_ref().map(|s| s.id);
        if let Some(s) = p.session() {
            if Some(s) != current {
                // Operations die with their session (DESIGN §8 rule 5): a reply for an old
                // session changes nothing, except that a keepalive slot is no longer busy.
                self.step(now);
                return;
            }
        }
        if matches!(result, Err(StoreError::SessionExpired)) && p.session().is_some() {
            self.lose_session(now);
            self.step(now);
            return;
        }
        match p {
            Pending::Open { sent } => self.on_open(now, sent, result),
            Pending::KeepAlive { sent, .. } => self.on_keepalive(now, sent, result),
            Pending::Close { session, give_up } => self.on_close(now, session, give_up, result),
            Pending::Read {
                number,
                linearizable,
            } => self.on_read(now, number, linearizable, result),
            Pending::Register { session } => match result {
                Ok(_) => self.registered(session),
                Err(StoreError::Conflict(_)) => self.name_in_use(),
                Err(StoreError::Indeterminate(_)) | Err(StoreError::Unavailable(_)) => {
                    let key = self.layout.member(&self.cfg.name);
                    self.send(Pending::RegisterVerify { session }, get_lin(key));
                }
                Err(e) => {
                    // Any other failure: report it and try again after a pause (a stuck
                    // `Pending` would never register).
                    self.registration = Registration::None;
                    self.register_retry_at = now + self.cfg.retry_delay;
                    self.events.push_back(Event::StoreError {
                        op: "register",
                        error: e,
                    });
                }
            },
            Pending::RegisterVerify { session } => match result {
                Ok(StoreReply::Got(Some(e))) if e.owner == Some(session) => {
                    self.registered(session)
                }
                Ok(_) => self.name_in_use(),
                Err(_) => {
                    // Start over after a pause: a Create that finds our own key gets a
                    // Conflict, and the next view then proves it ours.
                    self.registration = Registration::None;
                    self.register_retry_at = now + self.cfg.retry_delay;
                }
            },
            Pending::Drain { .. } => {
                self.draining = None;
                if let Err(e) = result {
                    self.read_dirty = true;
                    self.drain_retry_at = Some(now + self.cfg.retry_delay);
                    // A Conflict is a mark already there (ours, from an attempt whose reply
                    // was lost): the re-read shows it. Anything else is worth reporting.
                    if !matches!(e, StoreError::Conflict(_)) {
                        self.events.push_back(Event::StoreError {
                            op: "drain",
                            error: e,
                        });
                    }
                }
            }
            Pending::ClaimCreate { session, r } => self.on_claim_create(now, session, r, result),
            Pending::ClaimVerify { session, r } => self.on_claim_verify(now, session, r, result),
            Pending::ClaimDelete { r, token, .. } => {
                self.claim_op.remove(&r);
                match result {
                    Ok(_) | Err(StoreError::Conflict(_)) => {
                        self.claims.remove(&r);
                        self.deleting.remove(&r);
                    }
                    Err(_) => {
                        self.claims.remove(&r);
                        self.deleting.insert(r.clone(), token);
                        self.gate(r, now + self.cfg.retry_delay, false);
                    }
                }
            }
            Pending::Elect { session, epoch } => {
                self.election = None;
                match result {
                    Ok(StoreReply::Committed { rev }) => self.become_coordinator(epoch, rev),
                    Ok(_) => {}
                    Err(StoreError::Indeterminate(_)) => {
                        let op = self.send(
                            Pending::ElectVerify { session },
                            get_lin(self.layout.leader()),
                        );
                        self.election = Some(op);
                    }
                    Err(_) => {
                        self.election_gate = self.view_seq;
                        self.read_dirty = true;
                    }
                }
            }
            Pending::ElectVerify { session } => {
                self.election = None;
                match result {
                    Ok(StoreReply::Got(Some(e))) if e.owner == Some(session) => {
                        match layout::decode::<LeaderRec>(&e.value) {
                            Some(l) => self.become_coordinator(l.epoch, e.create_rev),
                            None => self.election_gate = self.view_seq,
                        }
                    }
                    _ => {
                        self.election_gate = self.view_seq;
                        self.read_dirty = true;
                    }
                }
            }
            Pending::Rebalance {
                sent,
                partial,
                moved,
                members,
                resources,
                ..
            } => self.on_rebalance(now, sent, partial, (moved, members, resources), result),
            Pending::Resign { .. } => {
                if self.election == Some(op) {
                    self.election = None;
                    self.election_gate = self.view_seq;
                    self.read_dirty = true;
                }
            }
        }
        self.step(now);
    }

    // ----- outputs ------------------------------------------------------------------------

    pub fn poll_op(&mut self) -> Option<(OpId, StoreOp)> {
        self.ops.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time [`Member::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        // Whatever was due at the last step was acted on, or waits for a reply: only later
        // times are timers (a past one would make the driver spin).
        let last = self.last_step;
        let mut at = |x: Time| {
            if x > last {
                t = Some(t.map_or(x, |t| t.min(x)))
            }
        };
        match self.phase {
            Phase::Running => {}
            Phase::Closing => {
                self.lease_deadlines(&mut at);
                if let Some(r) = self.close_retry {
                    at(r.at);
                }
                return t;
            }
            Phase::Idle | Phase::Closed => return None,
        }
        if self.session.is_none() && !self.opening {
            at(self.reopen_at);
        }
        if let Some(s) = &self.session {
            if s.keepalive.is_none() {
                at(s.next_keepalive);
            }
            if s.suspended.is_none() && self.cfg.variant != Variant::IgnoreDeadline {
                at(s.deadline - self.cfg.stop_timeout);
            }
        }
        self.lease_deadlines(&mut at);
        at(self.next_resync);
        if let Some(r) = self.read_retry_at {
            at(r);
        }
        if let Some(r) = self.drain_retry_at {
            at(r);
        }
        for g in self.gates.values() {
            at(g.at);
        }
        if let Some(r) = self.coord.as_ref().and_then(|c| c.rebalance_at) {
            at(r);
        }
        if let Some(l) = self.leave_started {
            at(l + self.cfg.leave_timeout);
        }
        if self.registration != Registration::Registered {
            at(self.register_retry_at);
        }
        if self.view.leader.is_none() {
            at(self.no_election_before);
        }
        t
    }

    fn lease_deadlines(&self, at: &mut impl FnMut(Time)) {
        for l in self.leases.values().filter(|l| !l.late) {
            at(self.abort_at(l.session));
        }
    }

    /// When a lease of `session` still held must be force-stopped: its deadline.
    fn abort_at(&self, session: SessionId) -> Time {
        let t = self.valid_until(session);
        if self.cfg.variant == Variant::LateAbort && t != Time::MAX {
            // Test-only mutation: one stop budget late.
            return t + self.cfg.stop_timeout;
        }
        t
    }

    /// The current session and its local lease deadline.
    pub fn deadline(&self) -> Option<(SessionId, Time)> {
        self.session
            .as_ref()
            .map(|s| (s.id, self.valid_until(s.id)))
    }

    /// Until when a lease granted under `session` is valid (local clock). `Time::ZERO` once
    /// that session is no longer the current one.
    pub fn valid_until(&self, session: SessionId) -> Time {
        if self.cfg.variant == Variant::IgnoreDeadline {
            return Time::MAX;
        }
        match &self.session {
            Some(s) if s.id == session => s.deadline,
            _ => self.ended.get(&session).copied().unwrap_or(Time::ZERO),
        }
    }

    pub fn is_coordinator(&self) -> Option<Epoch> {
        self.coord.as_ref().map(|c| c.epoch)
    }

    /// Registered in the group under the current session.
    pub fn is_joined(&self) -> bool {
        self.session.is_some() && self.registration == Registration::Registered
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Resources this member currently has leases on (granted, not yet released).
    pub fn leased(&self) -> impl Iterator<Item = (&ResourceId, LeaseId, Token)> {
        self.leases.iter().map(|(r, l)| (r, l.id, l.token))
    }

    /// The last view of the group this member read.
    pub fn view(&self) -> &View {
        &self.view
    }

    // ----- internals ----------------------------------------------------------------------

    fn send(&mut self, p: Pending, op: StoreOp) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.pending.insert(id, p);
        self.ops.push_back((id, op));
        id
    }

    fn on_open(&mut self, now: Time, sent: Time, result: StoreResult) {
        self.opening = false;
        match result {
            Ok(StoreReply::Session { session, ttl }) => {
                if self.phase != Phase::Running || self.leave_started.is_some() {
                    self.close_session(now, session);
                    return;
                }
                let ttl = ttl.min(self.cfg.session_ttl);
                let needed = self.cfg.timing_budget();
                if ttl <= needed {
                    // PITFALLS 2: refuse to run on a timeout the timings do not fit in.
                    self.events.push_back(Event::TtlTooShort {
                        granted: ttl,
                        needed,
                    });
                    self.close_session(now, session);
                    return;
                }
                // The store started the session's clock no earlier than `sent`.
                self.session = Some(Session {
                    id: session,
                    ttl,
                    deadline: sent + ttl - self.cfg.margin(),
                    keepalive: None,
                    next_keepalive: now + self.cfg.keepalive_interval,
                    suspended: None,
                    last_ok_sent: sent,
                });
                self.events.push_back(Event::SessionOpened { session, ttl });
                self.registration = Registration::None;
                self.read_dirty = true;
            }
            Ok(_) => self.reopen_at = now + self.cfg.retry_delay,
            Err(e) => {
                self.reopen_at = now + self.cfg.retry_delay;
                self.events.push_back(Event::StoreError {
                    op: "open_session",
                    error: e,
                });
            }
        }
    }

    fn on_keepalive(&mut self, now: Time, sent: Time, result: StoreResult) {
        let margin = self.cfg.margin();
        // Test-only mutation: the deadline counted from the reply's arrival.
        let sent = if self.cfg.variant == Variant::DeadlineFromReply {
            now
        } else {
            sent
        };
        let stop = self.cfg.stop_timeout;
        let interval = self.cfg.keepalive_interval;
        let retry = self.cfg.retry_delay;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.keepalive = None;
        match result {
            Ok(StoreReply::KeptAlive { ttl }) => {
                // L3: the store saw this keepalive no earlier than `sent`, so it cannot
                // expire the session before `sent + ttl`.
                let lowered = ttl < s.ttl;
                s.ttl = s.ttl.min(ttl);
                // On ZooKeeper a follower may answer before the leader, which decides expiry,
                // has heard of the touch; only the previous success is then proven (PITFALLS 1).
                let proven = if self.cfg.count_from_previous_keepalive
                    && self.cfg.variant != Variant::TrustLastKeepalive
                {
                    s.last_ok_sent
                } else {
                    sent
                };
                s.last_ok_sent = sent;
                let d = proven + s.ttl - margin;
                // A lower timeout in force also shortens what earlier keepalives proved
                // (PITFALLS 2): the deadline may move back.
                if d > s.deadline || lowered {
                    s.deadline = d;
                }
                let needed = self.cfg.timing_budget();
                if lowered && s.ttl <= needed && self.leave_started.is_none() {
                    let granted = s.ttl;
                    self.events
                        .push_back(Event::TtlTooShort { granted, needed });
                    // Leave at once: revoke everything, close after the application stopped.
                    self.leave_started = Some(now - self.cfg.leave_timeout);
                    return;
                }
                s.next_keepalive = sent + interval;
                let resume = match &s.suspended {
                    Some(Suspension {
                        released_at: Some(t),
                    }) => proven >= *t && now < s.deadline - stop,
                    _ => false,
                };
                if resume {
                    s.suspended = None;
                    // PITFALLS 6 (iii): every claim is re-proved by a linearizable read.
                    let held: Vec<ResourceId> = self.claims.keys().cloned().collect();
                    self.claims.clear();
                    self.unresolved.extend(held);
                    self.events.push_back(Event::Resumed);
                }
            }
            Err(error) => {
                s.next_keepalive = now + retry;
                self.events.push_back(Event::StoreError {
                    op: "keepalive",
                    error,
                });
            }
            Ok(_) => s.next_keepalive = now + retry,
        }
    }

    fn on_read(&mut self, now: Time, number: u64, linearizable: bool, result: StoreResult) {
        self.read = None;
        match result {
            Ok(StoreReply::Listed { rev, .. })
                if rev < self.view_rev
                    && !linearizable
                    && self.cfg.variant != Variant::AcceptOlderViews =>
            {
                // Older than what we already acted on (a lagging replica): never go back in
                // time; ask the authority next. A linearizable listing is always current,
                // even below `view_rev` (a store whose revisions went back after a restore).
                self.want_linearizable = true;
                self.read_dirty = true;
                self.read_retry_at = Some(now + self.cfg.retry_delay);
            }
            Ok(StoreReply::Listed { entries, rev }) => {
                self.view_rev = rev;
                let (view, bad) = layout::parse_view(&self.layout, &entries);
                for b in bad {
                    if self.reported_bad.insert(b.key.clone()) {
                        self.events.push_back(Event::BadData(b));
                    }
                }
                self.view = view;
                self.view_seq += 1;
                if let Some(c) = self.coord.as_mut() {
                    if number >= c.fresh_from_read {
                        c.fresh_from_read = 0;
                    }
                }
                self.read_retry_at = None;
            }
            other => {
                if let Err(error) = other {
                    self.events
                        .push_back(Event::StoreError { op: "read", error });
                }
                self.read_dirty = true;
                self.read_retry_at = Some(now + self.cfg.retry_delay);
            }
        }
    }

    fn registered(&mut self, session: SessionId) {
        if self.registration != Registration::Registered {
            self.registration = Registration::Registered;
            self.events.push_back(Event::Joined { session });
        }
    }

    fn name_in_use(&mut self) {
        let holder = self.view.members.get(&self.cfg.name).map(|m| m.session);
        if let Some(holder) = holder {
            self.events.push_back(Event::NameInUse { holder });
        }
        self.registration = Registration::Blocked {
            after_view: self.view_seq,
        };
        self.read_dirty = true;
    }

    fn on_claim_create(&mut self, now: Time, session: SessionId, r: ResourceId, res: StoreResult) {
        self.claim_op.remove(&r);
        match res {
            Ok(StoreReply::Committed { rev }) => {
                self.claims.insert(r, self.token(rev));
            }
            Err(StoreError::Indeterminate(_)) => {
                // PITFALLS 11: settled by a linearizable read before anything else.
                self.unresolved.insert(r.clone());
                self.verify_claim(session, r);
            }
            Err(StoreError::Unavailable(_)) | Ok(_) => {
                self.gate(r, now + self.cfg.retry_delay, false);
            }
            Err(e) => {
                if !matches!(e, StoreError::Conflict(_)) {
                    self.events.push_back(Event::StoreError {
                        op: "claim",
                        error: e,
                    });
                }
                self.gate(r, now + self.cfg.retry_delay, true);
                self.read_dirty = true;
            }
        }
    }

    fn on_claim_verify(&mut self, now: Time, session: SessionId, r: ResourceId, res: StoreResult) {
        self.claim_op.remove(&r);
        match res {
            Ok(StoreReply::Got(entry)) => {
                self.unresolved.remove(&r);
                match entry {
                    // An instance we are deleting is never adopted again.
                    Some(e)
                        if self
                            .deleting
                            .get(&r)
                            .is_some_and(|t| t.revision == e.create_rev) => {}
                    Some(e)
                        if e.owner == Some(session)
                            || self.cfg.variant == Variant::AdoptAnyClaim =>
                    {
                        let t = self.token(e.create_rev);
                        self.claims.insert(r, t);
                    }
                    _ => {
                        self.claims.remove(&r);
                        self.gate(r, now, true);
                    }
                }
            }
            _ => self.gate(r, now + self.cfg.retry_delay, false),
        }
    }

    fn token(&self, rev: u64) -> Token {
        Token {
            generation: self.view.generation,
            revision: rev,
        }
    }

    fn gate(&mut self, r: ResourceId, at: Time, need_new_view: bool) {
        let after_view = if need_new_view { self.view_seq } else { 0 };
        self.gates.insert(r, Gate { after_view, at });
    }

    fn gate_open(&self, r: &ResourceId, now: Time) -> bool {
        self.gates
            .get(r)
            .is_none_or(|g| now >= g.at && (g.after_view == 0 || self.view_seq > g.after_view))
    }

    fn verify_claim(&mut self, session: SessionId, r: ResourceId) {
        let key = self.layout.claim(&r);
        let op = self.send(
            Pending::ClaimVerify {
                session,
                r: r.clone(),
            },
            get_lin(key),
        );
        self.claim_op.insert(r, op);
    }

    fn become_coordinator(&mut self, epoch: Epoch, leader_rev: u64) {
        self.coord = Some(Coordinator {
            epoch,
            leader_rev,
            fresh_from_read: self.reads_sent + 1,
            last_rebalance: None,
            rebalance_at: None,
            txn: None,
            failures: 0,
            seq: 0,
            debounce_view: 0,
        });
        self.read_dirty = true;
        self.events.push_back(Event::BecameCoordinator { epoch });
    }

    fn step_down(&mut self) {
        if let Some(c) = self.coord.take() {
            self.events.push_back(Event::SteppedDown { epoch: c.epoch });
        }
    }

    fn on_rebalance(
        &mut self,
        now: Time,
        sent: Time,
        partial: bool,
        (moved, members, resources): (usize, usize, usize),
        result: StoreResult,
    ) {
        let max_failures = self.cfg.max_failed_rebalances;
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        c.txn = None;
        c.last_rebalance = Some(sent);
        self.read_dirty = true;
        match result {
            Ok(_) => {
                c.failures = 0;
                if partial {
                    // The rest of the same rebalance follows at once: the rate limit spaces
                    // rebalances, not the transactions of one (DESIGN §1.4's bound).
                    c.last_rebalance = None;
                }
                // Plan the next rebalance from a view that includes this write, not from the
                // one it was planned on (that would resend the same writes into a Conflict).
                c.fresh_from_read = self.reads_sent + 1;
                let epoch = c.epoch;
                self.events.push_back(Event::Rebalanced {
                    epoch,
                    moved,
                    members,
                    resources,
                });
            }
            Err(e) => {
                c.failures += 1;
                // A failure may mean the base was stale: re-read before the next attempt.
                c.fresh_from_read = self.reads_sent + 1;
                let give_up = c.failures >= max_failures;
                if !matches!(e, StoreError::Conflict(_)) {
                    self.events.push_back(Event::StoreError {
                        op: "rebalance",
                        error: e,
                    });
                }
                if give_up {
                    // PITFALLS 23: a coordinator that keeps failing resigns and stays a member.
                    self.resign(now);
                }
            }
        }
    }

    /// Closes `session` (deleting whatever it still owns) and waits for the reply.
    fn close_session(&mut self, now: Time, session: SessionId) {
        self.send_close(session, now + self.cfg.session_ttl);
        self.phase = Phase::Closing;
    }

    fn send_close(&mut self, session: SessionId, give_up: Time) {
        self.send(
            Pending::Close { session, give_up },
            StoreOp::CloseSession { session },
        );
    }

    fn on_close(&mut self, now: Time, session: SessionId, give_up: Time, result: StoreResult) {
        match result {
            Ok(_) | Err(StoreError::SessionExpired) => {}
            Err(e @ (StoreError::Unavailable(_) | StoreError::Indeterminate(_))) => {
                self.events.push_back(Event::StoreError {
                    op: "close",
                    error: e,
                });
                if now < give_up {
                    // Until it is closed, its claims keep the resources from everyone else.
                    self.close_retry = Some(CloseRetry {
                        session,
                        give_up,
                        at: now + self.cfg.retry_delay,
                    });
                    return;
                }
            }
            Err(e) => self.events.push_back(Event::StoreError {
                op: "close",
                error: e,
            }),
        }
        self.session = None;
        self.phase = Phase::Closed;
        self.events.push_back(Event::Left);
    }

    fn resign(&mut self, now: Time) {
        let (Some(c), Some(s)) = (self.coord.as_ref(), self.session.as_ref()) else {
            return;
        };
        let key = self.layout.leader();
        let op = owned_delete(key, s.id, c.leader_rev);
        let session = s.id;
        // Held in `election` until answered, so that a view still showing our leader key
        // does not send a second delete (`maybe_elect`).
        self.election = Some(self.send(Pending::Resign { session }, op));
        self.step_down();
        self.no_election_before = now + self.cfg.session_ttl;
    }

    fn revoke_all(&mut self, reason: RevokeReason) {
        for (r, l) in self.leases.iter_mut().filter(|(_, l)| !l.revoked) {
            l.revoked = true;
            self.events.push_back(Event::Revoke {
                lease: l.id,
                resource: r.clone(),
                reason,
            });
        }
    }

    fn lose_session(&mut self, now: Time) {
        let Some(s) = self.session.take() else {
            return;
        };
        // Its leases are invalid from now on (their claims may already be gone).
        if self.leases.values().any(|l| l.session == s.id) {
            self.ended.insert(s.id, s.deadline.min(now));
        }
        self.revoke_all(RevokeReason::SessionLost);
        self.claims.clear();
        self.unresolved.clear();
        self.claim_op.clear();
        self.deleting.clear();
        self.gates.clear();
        self.step_down();
        self.election = None;
        self.draining = None;
        self.registration = Registration::None;
        self.desired.clear();
        // Views are monotonic per session: a new session may follow a store restore, whose
        // revisions can restart lower (PITFALLS 18).
        self.view_rev = 0;
        self.events.push_back(Event::SessionLost { session: s.id });
        if self.leave_started.is_some() {
            self.phase = Phase::Closing;
        } else {
            self.reopen_at = now;
        }
    }

    /// The one level-triggered pass run after every input.
    fn step(&mut self, now: Time) {
        self.last_step = self.last_step.max(now);
        match self.phase {
            Phase::Running => {}
            Phase::Closing => {
                self.check_stop_deadline(now);
                if let Some(r) = self.close_retry.filter(|r| now >= r.at) {
                    self.close_retry = None;
                    self.send_close(r.session, r.give_up);
                }
                if self.leases.is_empty()
                    && !self
                        .pending
                        .values()
                        .any(|p| matches!(p, Pending::Close { .. }))
                    && self.close_retry.is_none()
                {
                    self.phase = Phase::Closed;
                    self.events.push_back(Event::Left);
                }
                return;
            }
            Phase::Idle | Phase::Closed => return,
        }
        if self.session.is_none() {
            self.check_stop_deadline(now);
            if self.leave_started.is_some() && !self.opening {
                // Leaving without a session: nothing to hand over, nothing to close.
                self.phase = Phase::Closing;
                self.step(now);
                return;
            }
            if !self.opening && now >= self.reopen_at {
                self.opening = true;
                self.send(
                    Pending::Open { sent: now },
                    StoreOp::OpenSession {
                        ttl: self.cfg.session_ttl,
                    },
                );
            }
            return;
        }
        self.session_upkeep(now);
        self.reads(now);
        if self.session.is_none() {
            return;
        }
        self.register(now);
        if self.registration != Registration::Registered {
            // Leaving before registration (e.g. blocked on a name in use): nothing was
            // assigned, so close at once.
            if self.leave_started.is_some() && self.leases.is_empty() {
                if let Some(session) = self.session.as_ref().map(|s| s.id) {
                    self.close_session(now, session);
                }
            }
            return;
        }
        self.coordinate(now);
        self.update_desired(now);
        self.reconcile_claims(now);
        self.finish_leave(now);
    }

    fn session_upkeep(&mut self, now: Time) {
        let stop = self.cfg.stop_timeout;
        let variant = self.cfg.variant;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.keepalive.is_none() && now >= s.next_keepalive {
            let id = s.id;
            let op = self.send(
                Pending::KeepAlive {
                    session: id,
                    sent: now,
                },
                StoreOp::KeepAlive { session: id },
            );
            if let Some(s) = self.session.as_mut() {
                s.keepalive = Some(op);
            }
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if variant != Variant::IgnoreDeadline && s.suspended.is_none() && now >= s.deadline - stop {
            // DESIGN §8 rule 3: revoke at deadline - stop budget.
            s.suspended = Some(Suspension {
                released_at: self.leases.is_empty().then_some(now),
            });
            let deadline = s.deadline;
            self.revoke_all(RevokeReason::SessionInDoubt);
            self.events.push_back(Event::Suspended { deadline });
        }
        self.check_stop_deadline(now);
    }

    /// DESIGN §8 rule 3: a lease still held at its deadline has no safe continuation; the
    /// driver must force the stop.
    fn check_stop_deadline(&mut self, now: Time) {
        let late: Vec<ResourceId> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.late && now >= self.abort_at(l.session))
            .map(|(r, _)| r.clone())
            .collect();
        if late.is_empty() {
            return;
        }
        for r in &late {
            if let Some(l) = self.leases.get_mut(r) {
                l.late = true;
            }
        }
        self.events
            .push_back(Event::StopDeadlineMissed { resources: late });
    }

    fn reads(&mut self, now: Time) {
        if now >= self.next_resync {
            self.next_resync = now + self.cfg.resync_interval;
            self.read_dirty = true;
        }
        let retry_ok = self.read_retry_at.is_none_or(|t| now >= t);
        if self.read_dirty && self.read.is_none() && retry_ok {
            self.read_dirty = false;
            self.reads_sent += 1;
            let number = self.reads_sent;
            // The coordinator plans its writes from what it reads: only linearizable reads
            // (PITFALLS 20; DESIGN §8 rule 6: a stale read decides when, never what).
            let linearizable = self.coord.is_some() || self.want_linearizable;
            self.want_linearizable = false;
            let op = self.send(
                Pending::Read {
                    number,
                    linearizable,
                },
                StoreOp::List {
                    prefix: self.layout.prefix(),
                    linearizable,
                },
            );
            self.read = Some(op);
        }
    }

    fn register(&mut self, now: Time) {
        let Some(session) = self.session.as_ref().map(|s| s.id) else {
            return;
        };
        if now < self.register_retry_at {
            return;
        }
        let attempt = match self.registration {
            Registration::None => self.view_seq > 0,
            Registration::Blocked { after_view } => {
                let holder = self.view.members.get(&self.cfg.name).map(|m| m.session);
                if self.view_seq > after_view && holder == Some(session) {
                    // Our own Register was applied after the read that found it absent.
                    self.registration = Registration::Pending;
                    let key = self.layout.member(&self.cfg.name);
                    self.send(Pending::RegisterVerify { session }, get_lin(key));
                    return;
                }
                self.view_seq > after_view && holder.is_none()
            }
            Registration::Pending | Registration::Registered => false,
        };
        if !attempt {
            return;
        }
        self.registration = Registration::Pending;
        let rec = MemberRec {
            weight: self.cfg.weight,
            joined_unix_ms: self.cfg.joined_unix_ms,
        };
        self.send(
            Pending::Register { session },
            StoreOp::Txn {
                conds: vec![],
                writes: vec![Write::Create {
                    key: self.layout.member(&self.cfg.name),
                    value: layout::encode(&rec),
                    owner: Some(session),
                }],
            },
        );
    }

    fn update_desired(&mut self, now: Time) {
        let Some(session) = self.session.as_ref().map(|s| s.id) else {
            return;
        };
        let leave_expired = self
            .leave_started
            .is_some_and(|t| now >= t + self.cfg.leave_timeout);
        if leave_expired {
            self.desired.clear();
            return;
        }
        match self.view.assign.get(&self.cfg.name) {
            None => self.desired.clear(),
            Some(chunks) => match layout::complete_set(chunks) {
                Some((s, e, set)) if s == session => {
                    self.desired = set;
                    self.desired_epoch = e;
                }
                // An assignment for an earlier incarnation of this name.
                Some(_) => self.desired.clear(),
                // Torn: keep acting on the last complete set (PITFALLS 21).
                None => {}
            },
        }
    }

    fn reconcile_claims(&mut self, now: Time) {
        let Some((session, deadline, suspended)) = self
            .session
            .as_ref()
            .map(|s| (s.id, s.deadline, s.suspended.is_some()))
        else {
            return;
        };
        let leaving = self.leave_started.is_some();
        // 1. Revoke leases that are no longer desired or no longer backed by a proved claim.
        for (r, l) in self.leases.iter_mut() {
            if l.revoked {
                continue;
            }
            let reason = if !self.desired.contains(r) {
                Some(if leaving {
                    RevokeReason::Leaving
                } else {
                    RevokeReason::Reassigned
                })
            } else if l.session != session {
                Some(RevokeReason::SessionLost)
            } else if !self.claims.contains_key(r)
                && self.cfg.variant != Variant::GrantBeforeClaim
                && !(self.cfg.variant == Variant::GrantOnClaimSent && self.claim_op.contains_key(r))
            {
                Some(RevokeReason::Reassigned)
            } else {
                None
            };
            if let Some(reason) = reason {
                l.revoked = true;
                self.events.push_back(Event::Revoke {
                    lease: l.id,
                    resource: r.clone(),
                    reason,
                });
            }
        }
        // 2. Claims of this session the member does not track yet: prove them (they may come
        //    from an Indeterminate create that was applied, PITFALLS 24).
        let mine: Vec<ResourceId> = self
            .view
            .claims
            .iter()
            .filter(|(r, c)| {
                c.session == session
                    && !self.claims.contains_key(*r)
                    && !self.deleting.contains_key(*r)
            })
            .map(|(r, _)| r.clone())
            .collect();
        self.unresolved.extend(mine);
        let unresolved: Vec<ResourceId> = self.unresolved.iter().cloned().collect();
        for r in unresolved {
            if !self.claim_op.contains_key(&r) && self.gate_open(&r, now) {
                self.verify_claim(session, r);
            }
        }
        // 3. Delete claims that are not desired, once their lease is released.
        let mut to_delete: Vec<(ResourceId, Token)> = self
            .claims
            .iter()
            .filter(|(r, _)| {
                !self.desired.contains(*r)
                    && !self.leases.contains_key(*r)
                    && !self.claim_op.contains_key(*r)
                    && !self.unresolved.contains(*r)
            })
            .map(|(r, t)| (r.clone(), *t))
            .collect();
        to_delete.extend(
            self.deleting
                .iter()
                .filter(|(r, _)| !self.claim_op.contains_key(*r) && self.gate_open(r, now))
                .map(|(r, t)| (r.clone(), *t)),
        );
        for (r, t) in to_delete {
            // Paired assertion: a claim is deleted only after its lease was released.
            debug_assert!(!self.leases.contains_key(&r));
            let key = self.layout.claim(&r);
            let op = self.send(
                Pending::ClaimDelete {
                    session,
                    r: r.clone(),
                    token: t,
                },
                owned_delete(key, session, t.revision),
            );
            self.claim_op.insert(r, op);
        }
        // 4. Acquire desired resources: claim, then grant.
        let room =
            now < deadline - self.cfg.stop_timeout || self.cfg.variant == Variant::IgnoreDeadline;
        if suspended || !room {
            return;
        }
        let desired: Vec<ResourceId> = self.desired.iter().cloned().collect();
        for r in desired {
            if self.leases.contains_key(&r) {
                // Granted, or an earlier lease is still being stopped (rule 14).
                continue;
            }
            if let Some(t) = self.claims.get(&r).copied() {
                if !self.unresolved.contains(&r) && !self.claim_op.contains_key(&r) {
                    self.grant(now, session, r, t);
                }
                continue;
            }
            if self.cfg.variant == Variant::GrantBeforeClaim {
                let t = self.view.claims.get(&r).map(|c| self.token(c.create_rev));
                self.grant(now, session, r.clone(), t.unwrap_or_default());
            }
            if self.claim_op.contains_key(&r)
                || self.unresolved.contains(&r)
                || self.deleting.contains_key(&r)
            {
                continue;
            }
            if !self.gate_open(&r, now) {
                continue;
            }
            // Held by another session: wait for its owner to release it or expire.
            if !self.view.claims.contains_key(&r) {
                self.gates.remove(&r);
                let key = self.layout.claim(&r);
                let rec = ClaimRec {
                    member: self.cfg.name.clone(),
                };
                let op = self.send(
                    Pending::ClaimCreate {
                        session,
                        r: r.clone(),
                    },
                    StoreOp::Txn {
                        conds: vec![],
                        writes: vec![Write::Create {
                            key,
                            value: layout::encode(&rec),
                            owner: Some(session),
                        }],
                    },
                );
                self.claim_op.insert(r.clone(), op);
                if self.cfg.variant == Variant::GrantOnClaimSent {
                    // Test-only mutation: grant before the create's reply, with a guessed token.
                    let t = self.token(self.view_rev + 1);
                    self.grant(now, session, r, t);
                }
            }
        }
    }

    fn grant(&mut self, now: Time, session: SessionId, r: ResourceId, token: Token) {
        // Paired assertions (L4): a lease only under a proved claim of the current session,
        // before the deadline, never two on one resource in one member.
        if self.cfg.variant == Variant::Correct {
            debug_assert_eq!(self.claims.get(&r), Some(&token));
            debug_assert!(self
                .session
                .as_ref()
                .is_some_and(|s| s.id == session && now < s.deadline));
        }
        debug_assert!(!self.leases.contains_key(&r));
        let _ = now;
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.leases.insert(
            r.clone(),
            Lease {
                id,
                token,
                session,
                revoked: false,
                late: false,
            },
        );
        self.events.push_back(Event::Grant {
            lease: id,
            resource: r,
            token,
            epoch: self.desired_epoch,
            session,
        });
    }

    fn finish_leave(&mut self, now: Time) {
        let Some(started) = self.leave_started else {
            return;
        };
        let Some(session) = self.session.as_ref().map(|s| s.id) else {
            return;
        };
        // Mark draining so the coordinator moves everything off (PITFALLS 26).
        let marked = self.view.draining.get(&self.cfg.name) == Some(&session);
        let may_retry = self.drain_retry_at.is_none_or(|t| now >= t);
        if !marked && self.draining.is_none() && may_retry {
            self.drain_retry_at = None;
            let op = self.send(
                Pending::Drain { session },
                StoreOp::Txn {
                    conds: vec![],
                    writes: vec![Write::Create {
                        key: self.layout.draining(&self.cfg.name),
                        value: b"{}".to_vec(),
                        owner: Some(session),
                    }],
                },
            );
            self.draining = Some(op);
        }
        let timed_out = now >= started + self.cfg.leave_timeout;
        let drained = self.desired.is_empty()
            && self.claims.is_empty()
            && self.unresolved.is_empty()
            && self.deleting.is_empty()
            && self.claim_op.is_empty();
        if self.leases.is_empty() && (drained || timed_out) {
            // Closing deletes whatever claims remain, after every lease was released.
            self.close_session(now, session);
        }
    }

    // ----- coordinator ------------------------------------------------------------------

    fn coordinate(&mut self, now: Time) {
        let Some(session) = self.session.as_ref().map(|s| s.id) else {
            return;
        };
        let Some(c) = self.coord.as_ref() else {
            self.maybe_elect(now, session);
            return;
        };
        if c.fresh_from_read != 0 || c.txn.is_some() {
            return;
        }
        let leader_ok = self
            .view
            .leader
            .as_ref()
            .is_some_and(|l| l.session == session && l.create_rev == c.leader_rev);
        if !leader_ok {
            self.step_down();
            self.election_gate = self.view_seq;
            self.read_dirty = true;
            return;
        }
        let epoch_version = match self.view.epoch {
            Some((e, v)) if e == c.epoch => v,
            // Deposed (a newer epoch exists) or the read is stale: fenced either way.
            _ => {
                self.step_down();
                self.election_gate = self.view_seq;
                self.read_dirty = true;
                return;
            }
        };
        let Some(plan) = self.plan(c.epoch, c.seq + 1) else {
            if let Some(c) = self.coord.as_mut() {
                c.rebalance_at = None;
                // A fresh view with nothing to write: earlier failures were races, not a
                // wedge (PITFALLS 23 counts only failures in a row).
                c.failures = 0;
            }
            return;
        };
        if self.cfg.variant == Variant::DebounceRebalance {
            // Test-only mutation: every new view restarts the wait.
            let view_seq = self.view_seq;
            let interval = self.cfg.min_rebalance_interval;
            if let Some(c) = self.coord.as_mut() {
                if c.debounce_view != view_seq {
                    c.debounce_view = view_seq;
                    c.rebalance_at = Some(now + interval);
                }
                if c.rebalance_at.is_some_and(|at| now < at) {
                    return;
                }
            }
        }
        let Some(c) = self.coord.as_ref() else {
            return;
        };
        // PITFALLS 22: a rate limit with a trailing edge, never a debounce.
        if let Some(last) = c.last_rebalance {
            let at = last + self.cfg.min_rebalance_interval;
            if now < at {
                if let Some(c) = self.coord.as_mut() {
                    c.rebalance_at = Some(at);
                }
                return;
            }
        }
        // DESIGN §8 rule 10: the write is fenced by the leader key and the epoch, so a deposed
        // coordinator's late write cannot land.
        let mut conds = vec![
            Cond::Owned {
                key: self.layout.leader(),
                session,
                create_rev: c.leader_rev,
            },
            Cond::Version(self.layout.epoch(), epoch_version),
        ];
        if self.cfg.variant == Variant::UnguardedRebalance {
            conds.clear();
        }
        conds.extend(plan.conds);
        let op = self.send(
            Pending::Rebalance {
                session,
                sent: now,
                partial: plan.partial,
                moved: plan.moved,
                members: plan.members,
                resources: plan.resources,
            },
            StoreOp::Txn {
                conds,
                writes: plan.writes,
            },
        );
        if let Some(c) = self.coord.as_mut() {
            c.txn = Some(op);
            c.seq += 1;
            c.rebalance_at = None;
        }
    }

    fn maybe_elect(&mut self, now: Time, session: SessionId) {
        if self.election.is_some() || self.view_seq <= self.election_gate {
            return;
        }
        match &self.view.leader {
            Some(l) if l.session == session && now < self.no_election_before => {
                // We resigned, but the view still shows our leader key (the Resign may not
                // have landed yet): delete it again rather than take it back.
                let key = self.layout.leader();
                let op = self.send(
                    Pending::Resign { session },
                    owned_delete(key, session, l.create_rev),
                );
                self.election = Some(op);
            }
            Some(l) if l.session == session => {
                // The view says we lead (an Indeterminate election that was applied, or a
                // false step-down): prove it before acting.
                let op = self.send(
                    Pending::ElectVerify { session },
                    get_lin(self.layout.leader()),
                );
                self.election = Some(op);
            }
            Some(_) => {}
            None => {
                // A leaving member stands for election too: when every other member is gone
                // or leaving, nobody else would move its resources and its leave would wait
                // out leave_timeout. As coordinator it drains itself like any other member.
                if now < self.no_election_before {
                    return;
                }
                let (cond, epoch) = match self.view.epoch {
                    Some((e, v)) => (Cond::Version(self.layout.epoch(), v), Epoch(e.0 + 1)),
                    None => (Cond::Absent(self.layout.epoch()), Epoch(1)),
                };
                let rec = LeaderRec {
                    member: self.cfg.name.clone(),
                    epoch,
                };
                // DESIGN §8 rule 10: election and epoch bump in one transaction.
                let op = self.send(
                    Pending::Elect { session, epoch },
                    StoreOp::Txn {
                        conds: vec![Cond::Absent(self.layout.leader()), cond],
                        writes: vec![
                            Write::Create {
                                key: self.layout.leader(),
                                value: layout::encode(&rec),
                                owner: Some(session),
                            },
                            Write::Put {
                                key: self.layout.epoch(),
                                value: layout::encode(&CounterRec { value: epoch.0 }),
                            },
                        ],
                    },
                );
                self.election = Some(op);
            }
        }
    }

    /// The writes that bring the stored assignment to the assignor's target, or `None` when it
    /// is already there. When they exceed `max_txn_writes`, only a first batch is returned and
    /// the next plan (from a fresh read) continues: every removal is written before any
    /// addition, so intermediate states have gaps, never a resource in two sets (PITFALLS 21).
    fn plan(&self, epoch: Epoch, seq: u64) -> Option<Plan> {
        let v = &self.view;
        let live = v.live_members();
        let weights: BTreeMap<MemberId, u32> =
            live.iter().map(|(m, mv)| (m.clone(), mv.weight)).collect();
        let mut prev = Assignment::new();
        for (m, mv) in &live {
            if let Some((_, set)) = v.assignment_of(m, mv.session) {
                prev.insert(m.clone(), set);
            }
        }
        let next = assignor::assign(&weights, &v.resources, &prev);
        let existing = |m: &MemberId| v.assign.get(m).map(Vec::as_slice).unwrap_or(&[]);
        // Per changed member: the write of its final set, and, when it loses something, the
        // write of what it keeps (the removal step).
        let mut finals: Vec<WriteGroup> = Vec::new();
        let mut removals: Vec<WriteGroup> = Vec::new();
        for (m, set) in &next {
            let unchanged = match prev.get(m) {
                Some(p) => p == set,
                None => set.is_empty() && existing(m).is_empty(),
            };
            if unchanged {
                continue;
            }
            let session = live[m].session;
            let write = |set: &BTreeSet<ResourceId>| {
                self.member_writes(m, session, set, existing(m), (epoch, seq))
            };
            if let Some(p) = prev.get(m).filter(|p| !p.is_subset(set)) {
                let keep: BTreeSet<ResourceId> = p.intersection(set).cloned().collect();
                removals.push(write(&keep));
            }
            finals.push(write(set));
        }
        for (m, chunks) in &v.assign {
            if live.contains_key(m) {
                continue;
            }
            let mut g = WriteGroup {
                age: chunks_age(chunks),
                ..WriteGroup::default()
            };
            for c in chunks {
                g.conds.push(Cond::Version(c.key.clone(), c.version));
                g.writes.push(Write::Delete { key: c.key.clone() });
            }
            removals.push(g.clone());
            finals.push(g);
        }
        let total: usize = finals.iter().map(|g| g.writes.len()).sum();
        if total == 0 {
            return None;
        }
        let total_bytes: usize = finals.iter().flat_map(|g| &g.writes).map(write_bytes).sum();
        let fits = total <= self.cfg.max_txn_writes && total_bytes <= self.cfg.max_txn_bytes;
        let mut partial = !fits;
        let mut groups = if fits {
            finals
        } else if !removals.is_empty() {
            removals
        } else {
            finals
        };
        // When a rebalance takes several transactions, the member whose stored assignment is
        // oldest goes first: in name order, a steady trickle of changes to earlier members
        // would starve later ones, and with them a dead member's resources (DESIGN §1.4).
        groups.sort_by_key(|g| g.age);
        let mut plan = Plan {
            partial: false,
            conds: Vec::new(),
            writes: Vec::new(),
            moved: assignor::moved(&prev, &next),
            members: next.len(),
            resources: v.resources.len(),
        };
        let mut bytes = 0;
        for g in groups {
            // One member's chunks are never split across transactions (that would tear it);
            // a single oversized group still goes alone.
            let size: usize = g.writes.iter().map(write_bytes).sum();
            let full = plan.writes.len() + g.writes.len() > self.cfg.max_txn_writes
                || bytes + size > self.cfg.max_txn_bytes;
            if !plan.writes.is_empty() && full {
                partial = true;
                break;
            }
            bytes += size;
            plan.conds.extend(g.conds);
            plan.writes.extend(g.writes);
        }
        plan.partial = partial;
        Some(plan)
    }

    /// The chunk writes that make `m`'s stored assignment `set` (no chunks for an empty set).
    fn member_writes(
        &self,
        m: &MemberId,
        session: SessionId,
        set: &BTreeSet<ResourceId>,
        existing: &[layout::ChunkView],
        (epoch, seq): (Epoch, u64),
    ) -> WriteGroup {
        let mut g = WriteGroup {
            age: chunks_age(existing),
            ..WriteGroup::default()
        };
        let chunks = if set.is_empty() {
            Vec::new()
        } else {
            split(set, self.cfg.assignment_chunk_bytes)
        };
        let n = chunks.len() as u32;
        for (i, part) in chunks.into_iter().enumerate() {
            let i = i as u32;
            let key = self.layout.assign_chunk(m, i);
            g.conds.push(version_cond(existing, &key));
            let rec = ChunkRec {
                session,
                epoch,
                seq,
                i,
                n,
                resources: part,
            };
            g.writes.push(Write::Put {
                key,
                value: layout::encode(&rec),
            });
        }
        for c in existing.iter().filter(|c| c.rec.i >= n) {
            g.conds.push(Cond::Version(c.key.clone(), c.version));
            g.writes.push(Write::Delete { key: c.key.clone() });
        }
        g
    }
}

#[derive(Debug, Clone, Default)]
struct WriteGroup {
    conds: Vec<Cond>,
    writes: Vec<Write>,
    /// (epoch, seq) of the oldest stored chunk it replaces; zero when there is none.
    age: (Epoch, u64),
}

struct Plan {
    partial: bool,
    conds: Vec<Cond>,
    writes: Vec<Write>,
    moved: usize,
    members: usize,
    resources: usize,
}

fn chunks_age(chunks: &[layout::ChunkView]) -> (Epoch, u64) {
    chunks
        .iter()
        .map(|c| (c.rec.epoch, c.rec.seq))
        .min()
        .unwrap_or((Epoch(0), 0))
}

/// Encoded size of a write, for the transaction size limit.
fn write_bytes(w: &Write) -> usize {
    match w {
        Write::Create { key, value, .. } | Write::Put { key, value } => key.len() + value.len(),
        Write::Delete { key } => key.len(),
    }
}

fn version_cond(existing: &[layout::ChunkView], key: &str) -> Cond {
    match existing.iter().find(|c| c.key == key) {
        Some(c) => Cond::Version(key.to_string(), c.version),
        None => Cond::Absent(key.to_string()),
    }
}

/// Splits a set into chunks whose encoded size stays under `max_bytes` (with room for the
/// record's other fields).
fn split(set: &BTreeSet<ResourceId>, max_bytes: usize) -> Vec<Vec<ResourceId>> {
    let budget = max_bytes.saturating_sub(256).max(64);
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for r in set {
        // Worst case of JSON escaping a string: 6 bytes per byte, plus quotes and a comma.
        let cost = r.as_str().len() * 6 + 3;
        if size + cost > budget && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            size = 0;
        }
        size += cost;
        if let Some(last) = out.last_mut() {
            last.push(r.clone());
        }
    }
    out
}

/// Deletes `key` only if it is still the instance `session` created at `create_rev`: safe
/// to repeat, and never removes a later owner's key (PITFALLS 12).
fn owned_delete(key: Key, session: SessionId, create_rev: u64) -> StoreOp {
    StoreOp::Txn {
        conds: vec![Cond::Owned {
            key: key.clone(),
            session,
            create_rev,
        }],
        writes: vec![Write::Delete { key }],
    }
}

fn get_lin(key: Key) -> StoreOp {
    StoreOp::Get {
        key,
        linearizable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_bounds_every_chunk() {
        let set: BTreeSet<ResourceId> = (0..5000)
            .map(|i| ResourceId::new(format!("resource-{i:06}")).unwrap())
            .collect();
        let chunks = split(&set, 4096);
        assert!(chunks.len() > 1);
        let total: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(total, 5000);
        for c in &chunks {
            let rec = ChunkRec {
                session: SessionId(u64::MAX),
                epoch: Epoch(u64::MAX),
                seq: u64::MAX,
                i: u32::MAX,
                n: u32::MAX,
                resources: c.clone(),
            };
            assert!(layout::encode(&rec).len() <= 4096);
        }
    }
}
