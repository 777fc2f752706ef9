//! Membership: registering the member record `members/<name>` under the current session
//! (waiting out another live session holding the name, or, for a static member, taking a
//! static record of its name over), noticing that a newer session took the record over, and
//! leaving (the draining mark, then closing the session once nothing is held). Never touches
//! claims or leases.

use crate::ids::{OpId, SessionId, Time};
use crate::layout::{self, MemberRec};
use crate::store::{Cond, StoreError, StoreOp, StoreReply, StoreResult, Write};

use super::pending::get_lin;
use super::session::SessionState;
use super::{Event, Member, Pending, Phase};

/// The member record `members/<name>` of the current session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registration {
    /// Not registered: register once a view was read, and not before `retry_at` (set after
    /// a failed attempt; it holds across sessions).
    Unregistered { retry_at: Option<Time> },
    /// A `Create` (or a takeover) or a verifying read of the record is in flight.
    Pending,
    /// The record created at `create_rev` is ours.
    Registered { create_rev: u64 },
    /// Another session holds the name; retry when a newer view shows it gone, and not
    /// before `retry_at`: a view can show the name free while the store says it is taken (a
    /// lagging replica, a record that does not decode), and each retry would be refused at
    /// once, in a loop.
    Blocked { after_view: u64, retry_at: Time },
}

/// A graceful leave in progress (it never ends: the member closes).
#[derive(Debug, Clone)]
pub(super) struct Leave {
    /// When the leave stops waiting for the hand-over: `leave_timeout` after it was asked
    /// for, or at once when the store's TTL became too short. (It was a start time, moved
    /// back by `leave_timeout` for "at once": early on a clock that starts at zero, as the
    /// simulator's does, that saturated to zero and was not at once.)
    pub(super) deadline: Time,
    /// The draining mark's `Create` in flight.
    pub(super) drain_op: Option<OpId>,
    /// After a failed draining mark, the next try waits until then (no retry at one instant).
    pub(super) drain_retry_at: Option<Time>,
    /// The session whose draining mark the store confirmed (the view may not show it yet:
    /// without this, the mark was sent a second time, and refused).
    pub(super) marked: Option<SessionId>,
    /// A static member stopping for a restart ([`Member::stop_for_restart`]): no draining
    /// mark, every lease revoked and every claim deleted at once, and the session left to
    /// expire instead of closed, so that the member record, and with it the assignment, waits
    /// one TTL for the next instance.
    pub(super) park: bool,
}

impl Leave {
    /// A leave that stops waiting for the hand-over at `deadline`.
    pub(super) fn new(deadline: Time) -> Leave {
        Leave {
            deadline,
            drain_op: None,
            drain_retry_at: None,
            marked: None,
            park: false,
        }
    }
}

impl Member {
    /// Timers: the end of the leave timeout, a registration retry.
    pub(super) fn registration_timers(&self, at: &mut impl FnMut(Time)) {
        if let Some(l) = &self.leaving {
            at(l.deadline);
            if let Some(r) = l.drain_retry_at {
                at(r);
            }
        }
        match self.registration {
            Registration::Unregistered { retry_at: Some(t) }
            | Registration::Blocked { retry_at: t, .. } => at(t),
            _ => {}
        }
    }

    /// Leaving before registration (e.g. blocked on a name in use): nothing was assigned,
    /// so close at once.
    pub(super) fn leave_unregistered(&mut self, now: Time) {
        if self.leaving.is_some() && self.leases.held.is_empty() {
            if let Some(session) = self.session.id() {
                self.close_session(now, session);
            }
        }
    }

    /// Back to unregistered (a new or lost session); a retry time already set still holds.
    pub(super) fn unregister(&mut self) {
        if !matches!(self.registration, Registration::Unregistered { .. }) {
            self.registration = Registration::Unregistered { retry_at: None };
        }
    }

    pub(super) fn is_registered(&self) -> bool {
        matches!(self.registration, Registration::Registered { .. })
    }

    /// Registers under the current session once a view was read (after a failure, from the
    /// retry time on); when blocked, waits for a newer view without the other holder (a
    /// static member: or with a static holder, whose record it takes over).
    pub(super) fn register(&mut self, now: Time) {
        let Some(session) = self.session.id() else {
            return;
        };
        let takeover = self.takeover(session);
        let attempt = match self.registration {
            Registration::Unregistered { retry_at } => {
                if retry_at.is_some_and(|t| now < t) {
                    return;
                }
                self.view.seq > 0
            }
            Registration::Blocked {
                after_view,
                retry_at,
            } => {
                let holder = self.name_holder();
                if self.view.seq > after_view && holder == Some(session) {
                    // Our own Register was applied after the read that found it absent.
                    self.registration = Registration::Pending;
                    let key = self.layout.member(&self.cfg.name);
                    self.send(
                        Pending::RegisterVerify {
                            session,
                            from: None,
                        },
                        get_lin(key),
                    );
                    return;
                }
                self.view.seq > after_view
                    && (holder.is_none() || takeover.is_some())
                    && now >= retry_at
            }
            Registration::Pending | Registration::Registered { .. } => false,
        };
        if !attempt {
            return;
        }
        self.registration = Registration::Pending;
        let key = self.layout.member(&self.cfg.name);
        let rec = MemberRec {
            weight: self.cfg.weight,
            // This registration's own time, not the process's start: a member that lost its
            // session registers again, and its session's age starts again.
            joined_unix_ms: self.cfg.wall_clock.map(|(at, unix_ms)| {
                let since = u64::try_from(now.saturating_since(at).as_millis()).unwrap_or(u64::MAX);
                unix_ms.saturating_add(since)
            }),
            static_member: self.cfg.static_membership,
        };
        let create = Write::Create {
            key: key.clone(),
            value: layout::encode(&rec),
            owner: Some(session),
        };
        let (conds, writes, from) = match takeover {
            // The previous instance's record, exactly that one, replaced in one transaction:
            // never a record some third session created meanwhile.
            Some((from, create_rev)) => (
                vec![Cond::Owned {
                    key: key.clone(),
                    session: from,
                    create_rev,
                }],
                vec![Write::Delete { key }, create],
                Some(from),
            ),
            None => (vec![], vec![create], None),
        };
        self.send(
            Pending::Register { session, from },
            StoreOp::Txn { conds, writes },
        );
    }

    /// Static membership: the (session, creation revision) of a static record of this
    /// member's name that another session holds in the view, which this member may replace.
    fn takeover(&self, session: SessionId) -> Option<(SessionId, u64)> {
        if !self.cfg.static_membership {
            return None;
        }
        let m = self.view.group.members.get(&self.cfg.name)?;
        (m.session != session && m.static_member).then_some((m.session, m.create_rev))
    }

    /// The member record created at `create_rev` is ours.
    fn registered(&mut self, session: SessionId, create_rev: u64, from: Option<SessionId>) {
        if !self.is_registered() {
            self.registration = Registration::Registered { create_rev };
            if let Some(from) = from {
                self.events.push_back(Event::TookOver { from });
            }
            self.events.push_back(Event::Joined { session });
        }
    }

    /// A record of this member's name created after ours by another session: ours was taken
    /// over (a newer instance of the same static member). Give everything up and leave at
    /// once: the coordinator hands our assignment to the new instance, which waits for our
    /// claims to go. Nothing else deletes a live record, so this is never a false alarm.
    pub(super) fn check_replaced(&mut self, now: Time) {
        let Registration::Registered { create_rev } = self.registration else {
            return;
        };
        let Some(m) = self.view.group.members.get(&self.cfg.name) else {
            return;
        };
        if self.session.id() == Some(m.session) || m.create_rev <= create_rev {
            return;
        }
        if self.leaving.is_none() {
            self.events.push_back(Event::Replaced { by: m.session });
            self.leaving = Some(Leave::new(now));
        }
    }

    /// The session holding this member's name in the last view.
    fn name_holder(&self) -> Option<SessionId> {
        self.view
            .group
            .members
            .get(&self.cfg.name)
            .map(|m| m.session)
    }

    /// Another session (`holder`, when a read named it) holds the name: wait for a newer
    /// view and a pause.
    fn name_in_use(&mut self, now: Time, holder: Option<SessionId>) {
        let holder = holder.or_else(|| self.name_holder());
        if let Some(holder) = holder {
            self.events.push_back(Event::NameInUse { holder });
        }
        self.registration = Registration::Blocked {
            after_view: self.view.seq,
            retry_at: now + self.cfg.retry_delay,
        };
        self.view.dirty = true;
    }

    /// The reply to the member record's `Create` (or takeover, from session `from`).
    pub(super) fn on_register(
        &mut self,
        now: Time,
        session: SessionId,
        from: Option<SessionId>,
        result: StoreResult,
    ) {
        match result {
            Ok(StoreReply::Committed { rev }) => self.registered(session, rev, from),
            Ok(_) => {
                // A success of the wrong kind: settle it by a read.
                let key = self.layout.member(&self.cfg.name);
                self.send(Pending::RegisterVerify { session, from }, get_lin(key));
            }
            Err(StoreError::Conflict(_)) => self.name_in_use(now, None),
            Err(StoreError::Indeterminate(_)) | Err(StoreError::Unavailable(_)) => {
                let key = self.layout.member(&self.cfg.name);
                self.send(Pending::RegisterVerify { session, from }, get_lin(key));
            }
            Err(e) => {
                // Any other failure: report it and try again after a pause (a stuck
                // `Pending` would never register).
                self.registration = Registration::Unregistered {
                    retry_at: Some(now + self.cfg.retry_delay),
                };
                self.events.push_back(Event::StoreError {
                    op: "register",
                    error: e,
                });
            }
        }
    }

    /// The linearizable read that settles whether the member record is ours.
    pub(super) fn on_register_verify(
        &mut self,
        now: Time,
        session: SessionId,
        from: Option<SessionId>,
        result: StoreResult,
    ) {
        match result {
            Ok(StoreReply::Got(Some(e))) if e.owner == Some(session) => {
                self.registered(session, e.create_rev, from)
            }
            Ok(StoreReply::Got(Some(e))) => self.name_in_use(now, e.owner),
            Ok(_) => self.name_in_use(now, None),
            Err(_) => {
                // Start over after a pause: a Create that finds our own key gets a
                // Conflict, and the next view then proves it ours.
                self.registration = Registration::Unregistered {
                    retry_at: Some(now + self.cfg.retry_delay),
                };
            }
        }
    }

    /// Leaving: marks the member draining so the coordinator moves everything off (PITFALLS
    /// 26), then closes the session once everything is released and deleted, or the leave
    /// timed out.
    pub(super) fn finish_leave(&mut self, now: Time) {
        let Some((deadline, park)) = self.leaving.as_ref().map(|l| (l.deadline, l.park)) else {
            return;
        };
        let Some(session) = self.session.id() else {
            return;
        };
        // Mark draining so the coordinator moves everything off (PITFALLS 26).
        let marked = self.view.group.draining.get(&self.cfg.name) == Some(&session)
            || self
                .leaving
                .as_ref()
                .is_some_and(|l| l.marked == Some(session));
        let may_send = self
            .leaving
            .as_ref()
            .is_some_and(|l| l.drain_op.is_none() && l.drain_retry_at.is_none_or(|t| now >= t));
        if !marked && may_send && !park {
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
            if let Some(l) = self.leaving.as_mut() {
                l.drain_op = Some(op);
                l.drain_retry_at = None;
            }
        }
        let timed_out = now >= deadline;
        let drained = self.claims.desired.is_empty()
            && self.claims.proved.is_empty()
            && self.claims.unresolved.is_empty()
            && self.claims.deleting.is_empty()
            && self.claims.in_flight.is_empty();
        // A member stopping for a restart leaves only once its resignation shows: a leader key
        // left behind would keep the group without a coordinator for a TTL.
        let resigned = !park
            || (self.coord.is_none()
                && self.election.op.is_none()
                && self
                    .view
                    .group
                    .leader
                    .as_ref()
                    .is_none_or(|l| l.session != session));
        if park && !resigned && self.coord.is_none() && self.election.op.is_none() {
            // The view still shows our key (the Resign failed or was not read yet).
            if let Some(rev) = self
                .view
                .group
                .leader
                .as_ref()
                .filter(|l| l.session == session)
                .map(|l| l.create_rev)
            {
                self.send_resign(session, rev);
            }
        }
        if self.leases.held.is_empty() && (drained || timed_out) && (resigned || timed_out) {
            if park {
                // The session expires on its own, with whatever claims remain (only after a
                // timed-out delete): its member record holds the assignment until then.
                self.session = SessionState::Absent { reopen_at: None };
                self.phase = Phase::Closed;
                self.events.push_back(Event::Left);
            } else {
                // Closing deletes whatever claims remain, after every lease was released.
                self.close_session(now, session);
            }
        }
    }

    /// The reply to the draining mark's `Create`.
    pub(super) fn on_drain(&mut self, now: Time, session: SessionId, result: StoreResult) {
        let retry_at = now + self.cfg.retry_delay;
        if let Some(l) = self.leaving.as_mut() {
            l.drain_op = None;
            match result {
                Ok(_) => l.marked = Some(session),
                Err(_) => l.drain_retry_at = Some(retry_at),
            }
        }
        if let Err(e) = result {
            self.view.dirty = true;
            // A Conflict is a mark already there (ours, from an attempt whose reply was
            // lost): the re-read shows it. Anything else is worth reporting.
            if !matches!(e, StoreError::Conflict(_)) {
                self.events.push_back(Event::StoreError {
                    op: "drain",
                    error: e,
                });
            }
        }
    }
}
