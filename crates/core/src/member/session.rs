//! The store session and its local deadline (L3): opening, keepalives, the deadline computed
//! from the send time of a proved keepalive, suspension when it cannot be proved in time and
//! resumption, losing the session, and closing it (with retries). Never grants or revokes a
//! lease itself except through `revoke_all`, and never extends the deadline from anything
//! but a keepalive's send time.

use std::time::Duration;

use crate::config::Variant;
use crate::ids::{OpId, ResourceId, SessionId, Time};
use crate::store::{StoreError, StoreOp, StoreReply, StoreResult};

use super::registration::Leave;
use super::{Event, Member, Pending, Phase, RevokeReason};

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) id: SessionId,
    /// Smallest TTL granted for this session (PITFALLS 2).
    pub(super) ttl: Duration,
    pub(super) deadline: Time,
    pub(super) keepalive: Option<OpId>,
    pub(super) next_keepalive: Time,
    pub(super) suspended: Option<Suspension>,
    /// Send time of the last successful keepalive (of the open, before any): with
    /// `count_from_previous_keepalive`, a success proves only the one before it.
    pub(super) last_ok_sent: Time,
}

#[derive(Debug, Clone)]
pub(super) struct Suspension {
    /// When the last lease was released; a keepalive sent after it may resume.
    pub(super) released_at: Option<Time>,
}

/// A `CloseSession` that failed and is tried again at `at`, until `give_up`: by then the store
/// has expired the session by itself (no keepalive is sent while closing).
#[derive(Clone, Copy, Debug)]
pub(super) struct CloseRetry {
    pub(super) session: SessionId,
    pub(super) give_up: Time,
    pub(super) at: Time,
}

/// The store session, as far as this member knows.
#[derive(Debug, Clone)]
pub(super) enum SessionState {
    /// None: open one (while running) from `reopen_at` on; at once when `None`.
    Absent { reopen_at: Option<Time> },
    /// An `OpenSession` is in flight.
    Opening,
    /// Open (and possibly being closed).
    Open(Session),
}

impl SessionState {
    /// The open session.
    pub(super) fn current(&self) -> Option<&Session> {
        match self {
            SessionState::Open(s) => Some(s),
            SessionState::Absent { .. } | SessionState::Opening => None,
        }
    }

    /// The open session, mutably.
    pub(super) fn current_mut(&mut self) -> Option<&mut Session> {
        match self {
            SessionState::Open(s) => Some(s),
            SessionState::Absent { .. } | SessionState::Opening => None,
        }
    }

    /// The open session's id.
    pub(super) fn id(&self) -> Option<SessionId> {
        self.current().map(|s| s.id)
    }

    /// Ends the open session, if any (the next one opens at once), and returns it.
    fn take(&mut self) -> Option<Session> {
        if !matches!(self, SessionState::Open(_)) {
            return None;
        }
        match std::mem::replace(self, SessionState::Absent { reopen_at: None }) {
            SessionState::Open(s) => Some(s),
            SessionState::Absent { .. } | SessionState::Opening => None,
        }
    }
}

impl Member {
    /// The reply to `OpenSession`, sent at `sent`.
    pub(super) fn on_open(&mut self, now: Time, sent: Time, result: StoreResult) {
        // No longer opening, whatever the outcome.
        self.session = SessionState::Absent { reopen_at: None };
        match result {
            Ok(StoreReply::Session { session, ttl }) => {
                if !matches!(self.phase, Phase::Running) || self.leaving.is_some() {
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
                self.session = SessionState::Open(Session {
                    id: session,
                    ttl,
                    deadline: sent + ttl - self.cfg.margin(),
                    keepalive: None,
                    next_keepalive: now + self.cfg.keepalive_interval,
                    suspended: None,
                    last_ok_sent: sent,
                });
                self.events.push_back(Event::SessionOpened { session, ttl });
                self.unregister();
                self.view.dirty = true;
            }
            Ok(_) => {
                self.session = SessionState::Absent {
                    reopen_at: Some(now + self.cfg.retry_delay),
                }
            }
            Err(e) => {
                self.session = SessionState::Absent {
                    reopen_at: Some(now + self.cfg.retry_delay),
                };
                self.events.push_back(Event::StoreError {
                    op: "open_session",
                    error: e,
                });
            }
        }
    }

    /// The reply to a keepalive sent at `sent`.
    pub(super) fn on_keepalive(&mut self, now: Time, sent: Time, result: StoreResult) {
        // Test-only mutation: the deadline counted from the reply's arrival.
        let sent = if self.cfg.variant == Variant::DeadlineFromReply {
            now
        } else {
            sent
        };
        let retry = self.cfg.retry_delay;
        let Some(s) = self.session.current_mut() else {
            return;
        };
        s.keepalive = None;
        match result {
            Ok(StoreReply::KeptAlive { ttl }) => self.kept_alive(now, sent, ttl),
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

    /// A keepalive sent at `sent` succeeded, the store granting `ttl`: move the deadline
    /// (L3), leave if the TTL became too short, schedule the next keepalive, and resume a
    /// suspended session if this keepalive proves it alive since the last release.
    fn kept_alive(&mut self, now: Time, sent: Time, ttl: Duration) {
        let Some((proven, lowered)) = self.prove_deadline(sent, ttl) else {
            return;
        };
        if lowered && self.ttl_too_short(now) {
            return;
        }
        let interval = self.cfg.keepalive_interval;
        let stop = self.cfg.stop_timeout;
        let Some(s) = self.session.current_mut() else {
            return;
        };
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
            let held: Vec<ResourceId> = self.claims.proved.keys().cloned().collect();
            self.claims.proved.clear();
            self.claims.unresolved.extend(held);
            self.events.push_back(Event::Resumed);
        }
    }

    /// L3: the store saw the keepalive sent at `sent` no earlier than `sent`, so it cannot
    /// expire the session before `sent + ttl`. Moves the deadline; returns the send time
    /// proved alive and whether the store lowered the TTL.
    fn prove_deadline(&mut self, sent: Time, ttl: Duration) -> Option<(Time, bool)> {
        let margin = self.cfg.margin();
        // On ZooKeeper a follower may answer before the leader, which decides expiry, has
        // heard of the touch; only the previous success is then proven (PITFALLS 1).
        let previous_only = self.cfg.count_from_previous_keepalive
            && self.cfg.variant != Variant::TrustLastKeepalive;
        let s = self.session.current_mut()?;
        let lowered = ttl < s.ttl;
        s.ttl = s.ttl.min(ttl);
        let proven = if previous_only { s.last_ok_sent } else { sent };
        s.last_ok_sent = sent;
        let d = proven + s.ttl - margin;
        // A lower timeout in force also shortens what earlier keepalives proved
        // (PITFALLS 2): the deadline may move back.
        if d > s.deadline || lowered {
            s.deadline = d;
        }
        Some((proven, lowered))
    }

    /// PITFALLS 2: the store lowered the TTL below what the timings need. Reports it and
    /// leaves at once (revoke everything, close after the application stopped); `false` when
    /// the TTL still fits or the member is already leaving.
    fn ttl_too_short(&mut self, now: Time) -> bool {
        let needed = self.cfg.timing_budget();
        let Some(granted) = self.session.current().map(|s| s.ttl) else {
            return false;
        };
        if granted > needed || self.leaving.is_some() {
            return false;
        }
        self.events
            .push_back(Event::TtlTooShort { granted, needed });
        self.leaving = Some(Leave::new(now));
        true
    }

    /// A step while closing: force-stop late leases, retry a failed close when due, and end
    /// (`Left`) once the application released everything and the session is closed.
    pub(super) fn step_closing(&mut self, now: Time, retry: Option<CloseRetry>) {
        self.check_stop_deadline(now);
        let mut retry = retry;
        if let Some(r) = retry.filter(|r| now >= r.at) {
            retry = None;
            self.phase = Phase::Closing { retry };
            self.send_close(r.session, r.give_up);
        }
        if self.leases.held.is_empty() && !self.ops.closing() && retry.is_none() {
            self.phase = Phase::Closed;
            self.events.push_back(Event::Left);
        }
    }

    /// A step while running without a session: open one when due, or close if leaving.
    pub(super) fn step_without_session(&mut self, now: Time) {
        self.check_stop_deadline(now);
        if self.leaving.is_some() && !matches!(self.session, SessionState::Opening) {
            // Leaving without a session: nothing to hand over, nothing to close.
            self.enter_closing();
            self.step(now);
            return;
        }
        let due = match self.session {
            SessionState::Absent { reopen_at } => reopen_at.is_none_or(|t| now >= t),
            SessionState::Opening | SessionState::Open(_) => false,
        };
        if due {
            self.session = SessionState::Opening;
            self.send(
                Pending::Open { sent: now },
                StoreOp::OpenSession {
                    ttl: self.cfg.session_ttl,
                },
            );
        }
    }

    /// Timers while running: reopening, the next keepalive, the suspension point.
    pub(super) fn session_timers(&self, at: &mut impl FnMut(Time)) {
        if let SessionState::Absent { reopen_at: Some(t) } = self.session {
            at(t);
        }
        if let Some(s) = self.session.current() {
            if s.keepalive.is_none() {
                at(s.next_keepalive);
            }
            if s.suspended.is_none() && self.cfg.variant != Variant::IgnoreDeadline {
                at(s.deadline - self.cfg.stop_timeout);
            }
        }
    }

    /// Sends the keepalive when due; suspends (revoking every lease) at the deadline minus
    /// the stop budget (DESIGN §8 rule 3); force-stops leases held at their deadline.
    pub(super) fn session_upkeep(&mut self, now: Time) {
        let stop = self.cfg.stop_timeout;
        let variant = self.cfg.variant;
        let Some(s) = self.session.current_mut() else {
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
            if let Some(s) = self.session.current_mut() {
                s.keepalive = Some(op);
            }
        }
        let Some(s) = self.session.current_mut() else {
            return;
        };
        if variant != Variant::IgnoreDeadline && s.suspended.is_none() && now >= s.deadline - stop {
            // DESIGN §8 rule 3: revoke at deadline - stop budget.
            s.suspended = Some(Suspension {
                released_at: self.leases.held.is_empty().then_some(now),
            });
            let deadline = s.deadline;
            self.revoke_all(RevokeReason::SessionInDoubt);
            self.events.push_back(Event::Suspended { deadline });
        }
        self.check_stop_deadline(now);
    }

    /// The store says the session expired: its leases are revoked and invalid at once,
    /// everything tied to it is dropped, and a new session opens (or the member closes, when
    /// leaving).
    pub(super) fn lose_session(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        // Its leases are invalid from now on (their claims may already be gone):
        // `valid_until` of a session that is not the current one is `Time::ZERO`.
        self.revoke_all(RevokeReason::SessionLost);
        self.claims.proved.clear();
        self.claims.unresolved.clear();
        self.claims.verify_with.clear();
        self.claims.maybe_late.clear();
        self.claims.waiting_room.clear();
        self.claims.in_flight.clear();
        self.claims.deleting.clear();
        self.claims.delete_check.clear();
        self.claims.gates.clear();
        self.claims.solo.clear();
        self.claims.gone.clear();
        self.claims.maybe_free.clear();
        self.step_down();
        self.election.op = None;
        if let Some(l) = self.leaving.as_mut() {
            l.drain_op = None;
        }
        self.unregister();
        self.claims.desired.clear();
        // Views are monotonic per session: a new session may follow a store restore, whose
        // revisions can restart lower (PITFALLS 18).
        self.view.rev = None;
        self.events.push_back(Event::SessionLost { session: s.id });
        if self.leaving.is_some() {
            self.enter_closing();
        }
        // Otherwise the next session opens at once (`SessionState::take`).
    }

    /// Closes `session` (deleting whatever it still owns) and waits for the reply.
    pub(super) fn close_session(&mut self, now: Time, session: SessionId) {
        self.send_close(session, now + self.cfg.session_ttl);
        self.enter_closing();
    }

    /// Enters `Closing`; a close retry already scheduled stays scheduled (a session lost
    /// while its close is being retried is still closed).
    pub(super) fn enter_closing(&mut self) {
        if !matches!(self.phase, Phase::Closing { .. }) {
            self.phase = Phase::Closing { retry: None };
        }
    }

    /// Sends `CloseSession`; failures are retried until `give_up`.
    pub(super) fn send_close(&mut self, session: SessionId, give_up: Time) {
        self.send(
            Pending::Close { session, give_up },
            StoreOp::CloseSession { session },
        );
    }

    /// The reply to `CloseSession`: closed (or expired), or retried until `give_up`; `Left`
    /// when done.
    pub(super) fn on_close(
        &mut self,
        now: Time,
        session: SessionId,
        give_up: Time,
        result: StoreResult,
    ) {
        match result {
            Ok(_) | Err(StoreError::SessionExpired) => {}
            Err(e @ (StoreError::Unavailable(_) | StoreError::Indeterminate(_))) => {
                self.events.push_back(Event::StoreError {
                    op: "close",
                    error: e,
                });
                if now < give_up {
                    // Until it is closed, its claims keep the resources from everyone else.
                    // (A `Close` is answered only while closing.)
                    if let Phase::Closing { retry } = &mut self.phase {
                        *retry = Some(CloseRetry {
                            session,
                            give_up,
                            at: now + self.cfg.retry_delay,
                        });
                    }
                    return;
                }
            }
            Err(e) => self.events.push_back(Event::StoreError {
                op: "close",
                error: e,
            }),
        }
        self.session = SessionState::Absent { reopen_at: None };
        self.phase = Phase::Closed;
        self.events.push_back(Event::Left);
    }
}
