//! The member state machine, coordinator role included. Sans-IO: the driver calls
//! `handle_*(now, ..)`, then drains [`Member::poll_op`] and [`Member::poll_event`], and sleeps
//! until [`Member::poll_timeout`]. Every input ends in one level-triggered pass (`step`) that
//! recomputes what to do from state (DESIGN §8 rule 13), so a lost or duplicated input can
//! delay progress but never make it wrong.
//!
//! The safety argument, and where each leg lives:
//! - L1 a claim has one owner session: claims are `Create`d (create-if-absent), never
//!   rewritten (`claims.rs`, `send_creates`; a batch is all or nothing).
//! - L2 a claim of S vanishes only by S's delete after release, or S's expiry: the claim
//!   delete (`claims.rs`, `delete_undesired_claims` / `delete_claims`, step 3 of
//!   `reconcile_claims`, after step 1 revoked) runs only when no lease on the resource is
//!   outstanding, each guarded by `Cond::Owned` on its instance.
//! - L3 the store expires S only after S's local deadline: `session.rs`, `prove_deadline`
//!   computes the deadline from the *send* time of a successful keepalive and the smallest
//!   TTL granted; `session_upkeep` revokes a stop budget before it.
//! - L4 a lease is granted only under a proved claim of the current session, before the
//!   deadline: `claims.rs`, `acquire` decides, and `leases.rs`, `grant` asserts both.
//!
//! One file per concern: `session.rs` (session, keepalives, deadline, suspension, close),
//! `registration.rs` (member record, leaving), `view.rs` (reads), `claims.rs` (the desired
//! set, claims and the reconcile pass), `leases.rs` (grants, revokes, stop deadlines),
//! `coordinator.rs` (election, rebalance writes, resign), `plan.rs` (rebalance planning),
//! `pending.rs` (operations in flight and reply dispatch), `events.rs` (the public events).
//! The test-only `Variant`s are checked where the behaviour they break lives.

mod barrier;
mod claims;
mod coordinator;
mod events;
mod leases;
mod memo;
mod pending;
mod plan;
mod registration;
mod report;
mod session;
mod unhealthy;
mod view;

use std::collections::VecDeque;

use crate::config::{Config, Variant};
use crate::ids::{Epoch, LeaseId, OpId, ResourceId, SessionId, Time, Token};
use crate::layout::{KeyKind, Layout, View};
use crate::store::{Key, StoreError, StoreOp, StoreResult};

use claims::Claims;
use coordinator::{Coordinator, Election};
pub use events::{Event, RevokeReason};
use leases::Leases;
use pending::{Ops, Pending};
use registration::{Leave, Registration};
pub use report::{MembershipChange, Move, RebalanceCause, RebalanceReport};
use session::{CloseRetry, SessionState};
use view::ViewState;

/// The member's lifecycle.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Created, not started.
    Idle,
    /// Started: sessions are opened (and reopened) and the protocol runs.
    Running,
    /// Closing the session or waiting for the application to release its last leases; no
    /// new session is opened.
    Closing {
        /// A `CloseSession` that failed and is tried again.
        retry: Option<CloseRetry>,
    },
    /// Left. Final.
    Closed,
}

/// One member of one group.
#[derive(Debug, Clone)]
pub struct Member {
    cfg: Config,
    layout: Layout,
    phase: Phase,
    /// Operations in flight and queued (`pending.rs`).
    ops: Ops,
    /// Events not yet polled.
    events: VecDeque<Event>,
    /// The store session and its deadline (`session.rs`).
    session: SessionState,
    /// The last view of the group and the reads that refresh it (`view.rs`).
    view: ViewState,
    /// The member record (`registration.rs`).
    registration: Registration,
    /// A graceful leave in progress (`registration.rs`).
    leaving: Option<Leave>,
    /// The desired set and the claims behind it (`claims.rs`).
    claims: Claims,
    /// The application's leases (`leases.rs`).
    leases: Leases,
    /// The coordinator role, while this member holds it (`coordinator.rs`).
    coord: Option<Coordinator>,
    /// The election slot (`coordinator.rs`).
    election: Election,
    /// Resources the application reported failing here (`unhealthy.rs`).
    unhealthy: unhealthy::Marks,
    /// Barrier mode: this member's acknowledgement of the round (`barrier.rs`).
    barrier: barrier::Ack,
    /// The latest `now` a step ran at: timers at or before it are not timers any more.
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
            ops: Ops::default(),
            events: VecDeque::new(),
            session: SessionState::Absent { reopen_at: None },
            view: ViewState::default(),
            registration: Registration::Unregistered { retry_at: None },
            leaving: None,
            claims: Claims::default(),
            leases: Leases::default(),
            coord: None,
            election: Election::default(),
            unhealthy: unhealthy::Marks::default(),
            barrier: barrier::Ack::default(),
            last_step: Time::ZERO,
        }
    }

    /// The configuration the member was created with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Starts the member: opens a session, registers, and takes part in the group.
    pub fn start(&mut self, now: Time) {
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Running;
            self.step(now);
        }
    }

    /// Graceful leave: drain through the coordinator, then close the session.
    pub fn leave(&mut self, now: Time) {
        if matches!(self.phase, Phase::Idle | Phase::Running) && self.leaving.is_none() {
            if matches!(self.phase, Phase::Idle) {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Left);
                return;
            }
            self.leaving = Some(Leave::new(now + self.cfg.leave_timeout));
            self.step(now);
        }
    }

    /// Static membership: stops for a restart under the same name. Every lease is revoked and,
    /// once released, its claim deleted, as in a leave; but no draining mark is written and
    /// the session is not closed: it expires one TTL later, and until then the member record
    /// keeps this member's assignment for the next instance, which takes the record over
    /// and gets the same resources, with nothing moved to other members. If no instance
    /// comes back within the TTL, the coordinator moves the resources when the session
    /// expires. For a member without static membership this is [`Member::leave`].
    pub fn stop_for_restart(&mut self, now: Time) {
        if !self.cfg.static_membership {
            return self.leave(now);
        }
        if matches!(self.phase, Phase::Running) && self.leaving.is_none() {
            let mut l = Leave::new(now + self.cfg.leave_timeout);
            l.park = true;
            self.leaving = Some(l);
            // The leader key would outlive this process by a TTL, and with it the group would
            // have no coordinator to hand the assignment to the next instance.
            self.resign(now);
            self.step(now);
        } else {
            self.leave(now);
        }
    }

    /// Something under the group changed (or may have): re-read.
    pub fn handle_notify(&mut self, now: Time) {
        self.view.dirty = true;
        self.step(now);
    }

    /// The store named the keys that changed (a watch event that names them). A claim this
    /// member waits for is tried at once (`claims.rs`, `maybe_free`); otherwise the same as
    /// [`Member::handle_notify`] unless none of the keys concerns this member, which then
    /// skips the re-read (`view.rs`, [`Member::concerns`]).
    ///
    /// While a listing is in flight every change is read again after it (its view may be the
    /// one in which the change matters). A read of this member's own assignment in flight
    /// needs no such care: the only thing it can change is which claims concern the member,
    /// and a resource it adds whose claim changed since the last listing makes a listing
    /// follow (`view.changed_claims`, `update_desired`).
    pub fn handle_notify_keys(&mut self, now: Time, keys: &[Key]) {
        let mut read = self.view.read.is_some() && !self.view.read_own;
        let mut own = false;
        for key in keys {
            if let Some(r) = self.claim_to_try(key) {
                self.touch(&r);
                self.claims.maybe_free.insert(r);
                continue;
            }
            match self.layout.classify(key) {
                KeyKind::Assign(m) if m == self.cfg.name && !self.group_wide() => own = true,
                KeyKind::Claim(r) => {
                    read = read || self.concerns(key);
                    // A claim outside the view's reads is unseen anyway: recording it would
                    // cost every member every claim change of the group (issue 10).
                    if self.claim_read(&r) {
                        self.view.changed_claims.insert(r);
                    }
                }
                _ => read = read || self.concerns(key),
            }
        }
        if read {
            self.view.dirty = true;
        } else if own {
            self.view.want_own = true;
        }
        self.step(now);
    }

    /// A timer set from [`Member::poll_timeout`] fired (spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.step(now);
    }

    /// The application stopped using `lease`.
    pub fn handle_released(&mut self, now: Time, resource: &ResourceId, lease: LeaseId) {
        self.release(now, resource, lease);
        self.step(now);
    }

    /// The application stopped using each of these leases, all by `now`: one pass for all, so
    /// their claims are deleted together (a pass per lease costs the size of the group each).
    pub fn handle_released_all<'a>(
        &mut self,
        now: Time,
        leases: impl IntoIterator<Item = (&'a ResourceId, LeaseId)>,
    ) {
        for (resource, lease) in leases {
            self.release(now, resource, lease);
        }
        self.step(now);
    }

    /// The reply to an operation emitted by [`Member::poll_op`]. The driver delivers exactly
    /// one reply per operation; an operation that timed out is `Indeterminate` (writes) or
    /// `Unavailable` (reads).
    pub fn handle_reply(&mut self, now: Time, op: OpId, result: StoreResult) {
        if self.take_reply(now, op, result) {
            self.step(now);
        }
    }

    /// Replies that arrived together, all by `now`, in the order given: one pass for all (a
    /// pass per reply costs the size of the group each).
    pub fn handle_replies(
        &mut self,
        now: Time,
        replies: impl IntoIterator<Item = (OpId, StoreResult)>,
    ) {
        let mut any = false;
        for (op, result) in replies {
            any |= self.take_reply(now, op, result);
        }
        if any {
            self.step(now);
        }
    }

    /// Hands a reply to the concern that sent the operation; false for an unknown `op`.
    fn take_reply(&mut self, now: Time, op: OpId, result: StoreResult) -> bool {
        let Some(p) = self.ops.take(op) else {
            return false;
        };
        let current = self.session.id();
        if let Some(s) = p.session() {
            if Some(s) != current {
                // Operations die with their session (DESIGN §8 rule 5): a reply for an old
                // session changes nothing, except that a keepalive slot is no longer busy.
                return true;
            }
        }
        if matches!(result, Err(StoreError::SessionExpired)) && p.session().is_some() {
            self.lose_session();
            return true;
        }
        self.on_reply(now, op, p, result);
        true
    }

    // ----- outputs ------------------------------------------------------------------------

    /// The next store operation to execute; feed its reply to [`Member::handle_reply`].
    pub fn poll_op(&mut self) -> Option<(OpId, StoreOp)> {
        self.ops.poll()
    }

    /// The next event for the application or the driver.
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
            Phase::Closing { retry } => {
                self.lease_deadlines(&mut at);
                if let Some(r) = retry {
                    at(r.at);
                }
                return t;
            }
            Phase::Idle | Phase::Closed => return None,
        }
        self.session_timers(&mut at);
        self.lease_deadlines(&mut at);
        self.view_timers(&mut at);
        self.claim_timers(&mut at);
        self.coordinator_timers(&mut at);
        self.registration_timers(&mut at);
        self.unhealthy_timers(&mut at);
        self.barrier_timers(&mut at);
        t
    }

    /// The current session and its local lease deadline.
    pub fn deadline(&self) -> Option<(SessionId, Time)> {
        self.session
            .current()
            .map(|s| (s.id, self.valid_until(s.id)))
    }

    /// Until when a lease granted under `session` is valid (local clock). `Time::ZERO` once
    /// that session is no longer the current one.
    pub fn valid_until(&self, session: SessionId) -> Time {
        if self.cfg.variant == Variant::IgnoreDeadline {
            return Time::MAX;
        }
        match self.session.current() {
            Some(s) if s.id == session => s.deadline,
            // A session that ended: its leases were invalid from the moment it ended (its
            // claims may be gone). (A map of when each ended, all in the past, was dropped: its
            // mutants could change nothing.)
            _ => Time::ZERO,
        }
    }

    /// The epoch this member coordinates, if it is the coordinator.
    pub fn is_coordinator(&self) -> Option<Epoch> {
        self.coord.as_ref().map(|c| c.epoch)
    }

    /// Registered in the group under the current session.
    pub fn is_joined(&self) -> bool {
        self.session.current().is_some() && self.is_registered()
    }

    /// Left the group (or never started and asked to leave). Final.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The current session, if one is open.
    pub fn session(&self) -> Option<SessionId> {
        self.session.id()
    }

    /// Resources this member currently has leases on (granted, not yet released).
    pub fn leased(&self) -> impl Iterator<Item = (&ResourceId, LeaseId, Token)> {
        self.leases.held.iter().map(|(r, l)| (r, l.id, l.token))
    }

    /// How many leases [`Member::leased`] would list, without walking them (the runtime asks
    /// after every input).
    pub fn leased_count(&self) -> usize {
        self.leases.held.len()
    }

    /// The last view of the group this member read.
    pub fn view(&self) -> &View {
        &self.view.group
    }

    // ----- internals ----------------------------------------------------------------------

    /// The one level-triggered pass run after every input.
    fn step(&mut self, now: Time) {
        self.last_step = self.last_step.max(now);
        match self.phase {
            Phase::Running => {}
            Phase::Closing { retry } => {
                self.step_closing(now, retry);
                return;
            }
            Phase::Idle | Phase::Closed => return,
        }
        if self.session.current().is_none() {
            self.step_without_session(now);
            return;
        }
        self.session_upkeep(now);
        self.reads(now);
        if self.session.current().is_none() {
            return;
        }
        self.register(now);
        self.check_replaced(now);
        if !self.is_registered() {
            self.leave_unregistered(now);
            return;
        }
        self.coordinate(now);
        self.unhealthy_upkeep(now);
        self.update_desired(now);
        // A read of the assignment alone may have found that only a listing can tell.
        self.reads(now);
        self.reconcile_claims(now);
        self.barrier_upkeep(now);
        self.finish_leave(now);
    }
}
