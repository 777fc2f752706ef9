//! Unhealthy resources (issue 11): the application says a resource keeps failing on this
//! member. The member gives it back (its lease is revoked, its claim deleted once released)
//! and marks it `unhealthy/<me>/<r>` (session-owned) for `unhealthy_backoff`; the coordinator
//! assigns it elsewhere while the mark lasts (`assignor::assign_avoiding`), or to nobody when
//! every member marked it. The mark is advice for balance, never for access: claims still
//! decide who may use a resource. Never grants or revokes itself: the desired set leaves the
//! resource out, and the reconcile pass does the rest.

use std::collections::BTreeMap;

use crate::ids::{OpId, ResourceId, SessionId, Time};
use crate::store::{StoreError, StoreOp, StoreReply, StoreResult, Write};

use super::pending::replace_owned;
use super::{Member, Pending};

/// This member's marks, per resource.
#[derive(Debug, Clone, Default)]
pub(super) struct Marks {
    pub(super) by_resource: BTreeMap<ResourceId, Mark>,
}

#[derive(Debug, Clone)]
pub(super) struct Mark {
    /// The resource is avoided here until then.
    until: Time,
    /// The session whose mark key exists (it dies with that session).
    written: Option<SessionId>,
    /// The mark's `Create` or, once the back-off ended, its `Delete`, in flight, and its
    /// session (a reply of an ended session is never delivered: then it is not in flight).
    op: Option<(OpId, SessionId)>,
    /// After a failed write: not again before.
    retry_at: Option<Time>,
}

impl Member {
    /// The application reports `r` failing here: give it back and avoid it on this member
    /// for `unhealthy_backoff` (again from now if it was already marked).
    pub fn report_unhealthy(&mut self, now: Time, r: &ResourceId) {
        if !matches!(self.phase, super::Phase::Running) {
            return;
        }
        let until = now + self.cfg.unhealthy_backoff;
        self.unhealthy
            .by_resource
            .entry(r.clone())
            .and_modify(|m| m.until = until)
            .or_insert(Mark {
                until,
                written: None,
                op: None,
                retry_at: None,
            });
        self.claims.desired.remove(r);
        self.touch(r);
        self.step(now);
    }

    /// Whether this member avoids `r` (the desired set leaves it out).
    pub(super) fn avoids(&self, r: &ResourceId) -> bool {
        self.unhealthy.by_resource.contains_key(r)
    }

    /// Timers: each mark's end, a write's retry.
    pub(super) fn unhealthy_timers(&self, at: &mut impl FnMut(Time)) {
        for m in self.unhealthy.by_resource.values() {
            at(m.until);
            if let Some(t) = m.retry_at {
                at(t);
            }
        }
    }

    /// Writes the marks of the current session, and ends those whose back-off is over (the
    /// resource is desired again from the next view on; its mark key is deleted).
    pub(super) fn unhealthy_upkeep(&mut self, now: Time) {
        let Some(session) = self.session.id() else {
            return;
        };
        let me = self.cfg.name.clone();
        let mut ended = Vec::new();
        let mut sends = Vec::new();
        for (r, m) in &mut self.unhealthy.by_resource {
            if m.op.is_some_and(|(_, s)| s == session) || m.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            let key = self.layout.unhealthy(&me, r);
            if now >= m.until {
                if m.written == Some(session) {
                    sends.push((r.clone(), false, key));
                } else {
                    ended.push(r.clone());
                }
            } else if m.written != Some(session) {
                sends.push((r.clone(), true, key));
            }
        }
        for r in ended {
            self.end_mark(&r);
        }
        for (r, create, key) in sends {
            // A mark names this member and resource, and only this member writes it: a plain
            // delete cannot remove anything but ours (a mark is advice, never access). A
            // create replaces the mark an earlier session of this name may have left (a
            // static restart): the coordinator counts only the current session's.
            let op = if create {
                replace_owned(key, b"{}".to_vec(), session)
            } else {
                StoreOp::Txn {
                    conds: vec![],
                    writes: vec![Write::Delete { key }],
                }
            };
            let op = self.send(
                Pending::Mark {
                    session,
                    resource: r.clone(),
                    create,
                },
                op,
            );
            if let Some(m) = self.unhealthy.by_resource.get_mut(&r) {
                m.op = Some((op, session));
                m.retry_at = None;
            }
        }
    }

    /// The reply to a mark's `Create` (`create`) or `Delete`.
    pub(super) fn on_mark(
        &mut self,
        now: Time,
        session: SessionId,
        r: ResourceId,
        create: bool,
        result: StoreResult,
    ) {
        let retry_at = now + self.cfg.retry_delay;
        let Some(m) = self.unhealthy.by_resource.get_mut(&r) else {
            return;
        };
        m.op = None;
        match (create, result) {
            (true, Ok(StoreReply::Committed { .. })) => m.written = Some(session),
            (false, Ok(StoreReply::Committed { .. })) => self.end_mark(&r),
            (_, Err(StoreError::SessionExpired)) => {}
            _ => m.retry_at = Some(retry_at),
        }
    }

    /// The back-off of `r` is over: desired again as the assignment says.
    fn end_mark(&mut self, r: &ResourceId) {
        self.unhealthy.by_resource.remove(r);
        self.claims.desired_from = Default::default();
        self.touch(r);
    }
}
