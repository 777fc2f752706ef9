//! The member state machine, coordinator role included. Sans-IO: the driver calls
//! `handle_*(now, ..)`, then drains [`Member::poll_op`] and [`Member::poll_event`], and sleeps
//! until [`Member::poll_timeout`]. Every input ends in one level-triggered pass (`step`) that
//! recomputes what to do from state (DESIGN §8 rule 13), so a lost or duplicated input can
//! delay progress but never make it wrong.
//!
//! The safety argument, and where each leg lives:
//! - L1 a claim has one owner session: claims are `Create`d (create-if-absent), never
//!   rewritten (`claims.rs`, `reconcile_claims`).
//! - L2 a claim of S vanishes only by S's delete after release, or S's expiry: the claim
//!   delete in `claims.rs` (`reconcile_claims`, step 3) runs only when no lease on the resource
//!   is outstanding, guarded by `Cond::Owned` (`pending::owned_delete`).
//! - L3 the store expires S only after S's local deadline: `session.rs`, `on_keepalive`
//!   computes the deadline from the *send* time of a successful keepalive and the smallest
//!   TTL granted.
//! - L4 a lease is granted only under a proved claim of the current session, before the
//!   deadline: `leases.rs`, `grant` asserts both.
//!
//! One file per concern: `session.rs` (session, keepalives, deadline, suspension, close),
//! `registration.rs` (member record, leaving), `view.rs` (reads), `claims.rs` (claims and the
//! reconcile pass), `leases.rs` (grants, revokes, stop deadlines), `coordinator.rs` (election,
//! rebalance writes, resign), `plan.rs` (rebalance planning), `pending.rs` (operations in
//! flight and reply dispatch), `events.rs` (the public events).

mod claims;
mod coordinator;
mod events;
mod leases;
mod pending;
mod plan;
mod registration;
mod session;
mod view;

use std::collections::VecDeque;

use crate::config::{Config, Variant};
use crate::ids::{Epoch, LeaseId, OpId, ResourceId, SessionId, Time, Token};
use crate::layout::{Layout, View};
use crate::store::{StoreError, StoreOp, StoreResult};

use claims::Claims;
use coordinator::{Coordinator, Election};
pub use events::{Event, RevokeReason};
use leases::Leases;
use pending::{Ops, Pending};
use registration::{Leave, Registration};
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
    ops: Ops,
    events: VecDeque<Event>,

    session: SessionState,

    view: ViewState,
    registration: Registration,
    leaving: Option<Leave>,
    claims: Claims,
    leases: Leases,
    coord: Option<Coordinator>,
    election: Election,
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
            last_step: Time::ZERO,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------------

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
            self.leaving = Some(Leave::new(now));
            self.step(now);
        }
    }

    /// Something under the group changed (or may have): re-read.
    pub fn handle_notify(&mut self, now: Time) {
        self.view.dirty = true;
        self.step(now);
    }

    /// A timer set from [`Member::poll_timeout`] fired (spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.step(now);
    }

    /// The application stopped using `lease`.
    pub fn handle_released(&mut self, now: Time, resource: &ResourceId, lease: LeaseId) {
        if self
            .leases
            .held
            .get(resource)
            .is_some_and(|l| l.id == lease)
        {
            self.leases.held.remove(resource);
            let leases = &self.leases.held;
            self.leases
                .ended
                .retain(|s, _| leases.values().any(|l| l.session == *s));
            if self.leases.held.is_empty() {
                if let Some(s) = self
                    .session
                    .current_mut()
                    .and_then(|s| s.suspended.as_mut())
                {
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
        let Some(p) = self.ops.pending.remove(&op) else {
            return;
        };
        let current = self.session.id();
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
        self.on_reply(now, op, p, result);
        self.step(now);
    }

    // ----- outputs ------------------------------------------------------------------------

    pub fn poll_op(&mut self) -> Option<(OpId, StoreOp)> {
        self.ops.poll()
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
            _ => self
                .leases
                .ended
                .get(&session)
                .copied()
                .unwrap_or(Time::ZERO),
        }
    }

    pub fn is_coordinator(&self) -> Option<Epoch> {
        self.coord.as_ref().map(|c| c.epoch)
    }

    /// Registered in the group under the current session.
    pub fn is_joined(&self) -> bool {
        self.session.current().is_some() && self.registration == Registration::Registered
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session.id()
    }

    /// Resources this member currently has leases on (granted, not yet released).
    pub fn leased(&self) -> impl Iterator<Item = (&ResourceId, LeaseId, Token)> {
        self.leases.held.iter().map(|(r, l)| (r, l.id, l.token))
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
        if self.registration != Registration::Registered {
            self.leave_unregistered(now);
            return;
        }
        self.coordinate(now);
        self.update_desired(now);
        self.reconcile_claims(now);
        self.finish_leave(now);
    }
}
