//! Leases handed to the application: granting (L4: only under a proved claim of the current
//! session, before the deadline), revoking, and the stop deadline past which a held lease must
//! be force-stopped. Never sends a store operation.

use std::collections::BTreeMap;

use crate::config::Variant;
use crate::ids::{LeaseId, ResourceId, SessionId, Time, Token};

use super::memo::Unseen;
use super::{Event, Member, RevokeReason};

/// The leases the application holds (granted and not yet released), per resource.
#[derive(Debug, Clone, Default)]
pub(super) struct Leases {
    /// The id of the next lease granted.
    pub(super) next: u64,
    pub(super) held: BTreeMap<ResourceId, Lease>,
    /// Per session, how many held leases are not reported late yet: every lease of a session
    /// shares its stop deadline, so the deadlines are per session, not per lease (a pass over
    /// every lease at every step cost the size of the assignment).
    pub(super) pending_stop: Unseen<BTreeMap<SessionId, usize>>,
}

#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) token: Token,
    pub(super) session: SessionId,
    pub(super) revoked: bool,
    /// `StopDeadlineMissed` was reported for it.
    pub(super) late: bool,
}

impl Member {
    /// L4: grants the lease on `r` to the application, under the proved claim `token` of the
    /// current `session`, before the deadline (the callers, in `claims.rs`, check both).
    pub(super) fn grant(&mut self, now: Time, session: SessionId, r: ResourceId, token: Token) {
        // Paired assertions (L4): a lease only under a proved claim of the current session,
        // before the deadline, never two on one resource in one member.
        if self.cfg.variant == Variant::Correct {
            debug_assert_eq!(self.claims.proved.get(&r), Some(&token));
            debug_assert!(self
                .session
                .current()
                .is_some_and(|s| s.id == session && now < s.deadline));
        }
        debug_assert!(!self.leases.held.contains_key(&r));
        // Taken, not read: a later grant of `r` without it entering the desired set again
        // (after a suspension) hands nothing over.
        let waited = self
            .claims
            .desired_since
            .remove(&r)
            .map(|since| now.saturating_since(since));
        *self.leases.pending_stop.entry(session).or_default() += 1;
        let id = LeaseId(self.leases.next);
        self.leases.next += 1;
        self.leases.held.insert(
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
            epoch: self.claims.desired_epoch,
            session,
            waited,
        });
    }

    /// The application stopped using `lease` on `resource` (a stale release changes nothing).
    /// Once nothing is held, a suspended session may resume with a keepalive sent after now.
    pub(super) fn release(&mut self, now: Time, resource: &ResourceId, lease: LeaseId) {
        if self.leases.held.get(resource).map(|l| l.id) != Some(lease) {
            return;
        }
        if let Some(l) = self.leases.held.remove(resource) {
            if !l.late {
                self.leases.not_pending_stop(l.session);
            }
        }
        self.touch(resource);
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

    /// Revokes the lease on `r`, if there is one.
    pub(super) fn revoke(&mut self, r: &ResourceId, reason: RevokeReason) {
        if let Some(l) = self.leases.held.get_mut(r) {
            l.revoked = true;
            self.events.push_back(Event::Revoke {
                lease: l.id,
                resource: r.clone(),
                reason,
            });
        }
    }

    /// Revokes every lease not yet revoked.
    pub(super) fn revoke_all(&mut self, reason: RevokeReason) {
        for (r, l) in self.leases.held.iter_mut().filter(|(_, l)| !l.revoked) {
            l.revoked = true;
            self.events.push_back(Event::Revoke {
                lease: l.id,
                resource: r.clone(),
                reason,
            });
        }
    }

    /// DESIGN §8 rule 3: a lease still held at its deadline has no safe continuation; the
    /// driver must force the stop.
    pub(super) fn check_stop_deadline(&mut self, now: Time) {
        if cfg!(debug_assertions) && self.leases.held.len() <= 256 {
            let mut counted: BTreeMap<SessionId, usize> = BTreeMap::new();
            for l in self.leases.held.values().filter(|l| !l.late) {
                *counted.entry(l.session).or_default() += 1;
            }
            debug_assert_eq!(*self.leases.pending_stop, counted, "the per-session count");
        }
        let due: Vec<SessionId> = self
            .leases
            .pending_stop
            .keys()
            .copied()
            .filter(|s| now >= self.abort_at(*s))
            .collect();
        if due.is_empty() {
            return;
        }
        let late: Vec<ResourceId> = self
            .leases
            .held
            .iter()
            .filter(|(_, l)| !l.late && due.contains(&l.session))
            .map(|(r, _)| r.clone())
            .collect();
        for r in &late {
            if let Some(l) = self.leases.held.get_mut(r) {
                l.late = true;
                let s = l.session;
                self.leases.not_pending_stop(s);
            }
        }
        self.events
            .push_back(Event::StopDeadlineMissed { resources: late });
    }

    /// Timers: the stop deadline of every lease not yet reported late.
    pub(super) fn lease_deadlines(&self, at: &mut impl FnMut(Time)) {
        for s in self.leases.pending_stop.keys() {
            at(self.abort_at(*s));
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
}

impl Leases {
    /// One lease of `session` is released or reported late.
    fn not_pending_stop(&mut self, session: SessionId) {
        if let Some(n) = self.pending_stop.get_mut(&session) {
            *n -= 1;
            if *n == 0 {
                self.pending_stop.remove(&session);
            }
        }
    }
}
