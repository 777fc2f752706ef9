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
use super::{Event, Member, Pending, Phase, Registration, RevokeReason};

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

impl Member {
    pub(super) fn on_open(&mut self, now: Time, sent: Time, result: StoreResult) {
        self.opening = false;
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
                self.view.dirty = true;
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

    pub(super) fn on_keepalive(&mut self, now: Time, sent: Time, result: StoreResult) {
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
                if lowered && s.ttl <= needed && self.leaving.is_none() {
                    let granted = s.ttl;
                    self.events
                        .push_back(Event::TtlTooShort { granted, needed });
                    // Leave at once: revoke everything, close after the application stopped.
                    self.leaving = Some(Leave::new(now - self.cfg.leave_timeout));
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
                    let held: Vec<ResourceId> = self.claims.proved.keys().cloned().collect();
                    self.claims.proved.clear();
                    self.claims.unresolved.extend(held);
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

    pub(super) fn session_upkeep(&mut self, now: Time) {
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
                released_at: self.leases.held.is_empty().then_some(now),
            });
            let deadline = s.deadline;
            self.revoke_all(RevokeReason::SessionInDoubt);
            self.events.push_back(Event::Suspended { deadline });
        }
        self.check_stop_deadline(now);
    }

    pub(super) fn lose_session(&mut self, now: Time) {
        let Some(s) = self.session.take() else {
            return;
        };
        // Its leases are invalid from now on (their claims may already be gone).
        if self.leases.held.values().any(|l| l.session == s.id) {
            self.leases.ended.insert(s.id, s.deadline.min(now));
        }
        self.revoke_all(RevokeReason::SessionLost);
        self.claims.proved.clear();
        self.claims.unresolved.clear();
        self.claims.in_flight.clear();
        self.claims.deleting.clear();
        self.claims.gates.clear();
        self.step_down();
        self.election.op = None;
        if let Some(l) = self.leaving.as_mut() {
            l.drain_op = None;
        }
        self.registration = Registration::None;
        self.claims.desired.clear();
        // Views are monotonic per session: a new session may follow a store restore, whose
        // revisions can restart lower (PITFALLS 18).
        self.view.rev = None;
        self.events.push_back(Event::SessionLost { session: s.id });
        if self.leaving.is_some() {
            self.enter_closing();
        } else {
            self.reopen_at = now;
        }
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

    pub(super) fn send_close(&mut self, session: SessionId, give_up: Time) {
        self.send(
            Pending::Close { session, give_up },
            StoreOp::CloseSession { session },
        );
    }

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
        self.session = None;
        self.phase = Phase::Closed;
        self.events.push_back(Event::Left);
    }
}
