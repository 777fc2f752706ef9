//! Claims: the desired set (from the view's assignment), the session-owned claim keys that
//! back leases (L1, L2), proving claims (own create or a linearizable read), unresolved and
//! deleting instances, per-resource gates, and `reconcile_claims`, the pass that revokes,
//! proves, deletes, claims and grants. Never deletes a claim whose lease is outstanding, and
//! never grants without a proved claim (through `grant`, in `leases.rs`).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Variant;
use crate::ids::{Epoch, OpId, ResourceId, SessionId, Time, Token};
use crate::layout::{self, ClaimRec};
use crate::store::{StoreError, StoreOp, StoreReply, StoreResult, Write};

use super::pending::{get_lin, owned_delete};
use super::{Event, Member, Pending, RevokeReason};

/// The resources this member should hold and the claim keys that back them, per resource.
#[derive(Debug, Clone, Default)]
pub(super) struct Claims {
    /// Assigned to this member's current session by the last complete assignment read.
    pub(super) desired: BTreeSet<ResourceId>,
    /// Epoch of that assignment (reported with each grant).
    pub(super) desired_epoch: Epoch,
    /// Claims proved to belong to the current session, with their tokens.
    pub(super) proved: BTreeMap<ResourceId, Token>,
    /// Claims whose ownership must be settled by a linearizable read before anything else.
    pub(super) unresolved: BTreeSet<ResourceId>,
    /// One operation in flight per claim key (DESIGN §8 rule 5).
    pub(super) in_flight: BTreeMap<ResourceId, OpId>,
    /// Claim instances whose delete had an unknown outcome. The delete may still be applied
    /// later (after any read of ours), so the instance is never granted again, only deleted
    /// again with the same guard until Ok or Conflict settles it (PITFALLS 12).
    pub(super) deleting: BTreeMap<ResourceId, Token>,
    /// Per resource: when a claim operation may be tried again.
    pub(super) gates: BTreeMap<ResourceId, Gate>,
}

/// When a claim operation may be tried again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    /// Not before a view newer than this one (by `ViewState::seq`), when set.
    pub(super) after_view: Option<u64>,
    pub(super) at: Time,
}

impl Member {
    /// Timers: the claim gates.
    pub(super) fn claim_timers(&self, at: &mut impl FnMut(Time)) {
        for g in self.claims.gates.values() {
            at(g.at);
        }
    }

    /// The desired set: the complete assignment of this name for the current session (none
    /// once the leave timed out; the last complete one while the stored one is torn).
    pub(super) fn update_desired(&mut self, now: Time) {
        let Some(session) = self.session.id() else {
            return;
        };
        let leave_expired = self.leaving.as_ref().is_some_and(|l| now >= l.deadline);
        if leave_expired {
            self.claims.desired.clear();
            return;
        }
        match self.view.group.assign.get(&self.cfg.name) {
            None => self.claims.desired.clear(),
            Some(chunks) => match layout::complete_set(chunks) {
                Some((s, e, set)) if s == session => {
                    self.claims.desired = set;
                    self.claims.desired_epoch = e;
                }
                // An assignment for an earlier incarnation of this name.
                Some(_) => self.claims.desired.clear(),
                // Torn: keep acting on the last complete set (PITFALLS 21).
                None => {}
            },
        }
    }

    /// The reconcile pass: makes leases and claims follow the desired set. The steps run in
    /// this order: a lease is revoked before its claim may be deleted (L2), and a claim is
    /// proved before a lease is granted under it (L4).
    pub(super) fn reconcile_claims(&mut self, now: Time) {
        let Some((session, deadline, suspended)) = self
            .session
            .current()
            .map(|s| (s.id, s.deadline, s.suspended.is_some()))
        else {
            return;
        };
        self.revoke_unbacked(session);
        self.prove_unknown_claims(now, session);
        self.delete_undesired_claims(now, session);
        // 4. Acquire desired resources (claim, then grant). Not while suspended: suspension
        // begins at the deadline minus the stop budget (`session_upkeep`, earlier in this
        // step), so a session that is not suspended leaves a whole stop budget to any lease
        // granted now. (A second check of that room was redundant: its mutants survived.)
        if suspended {
            return;
        }
        debug_assert!(
            now < deadline - self.cfg.stop_timeout || self.cfg.variant == Variant::IgnoreDeadline,
            "not suspended within a stop budget of the deadline"
        );
        let desired: Vec<ResourceId> = self.claims.desired.iter().cloned().collect();
        for r in desired {
            self.acquire(now, session, r);
        }
    }

    /// Step 1: revokes leases that are no longer desired or no longer backed by a proved
    /// claim of the current session.
    fn revoke_unbacked(&mut self, session: SessionId) {
        let leaving = self.leaving.is_some();
        let revoke: Vec<(ResourceId, RevokeReason)> = self
            .leases
            .held
            .iter()
            .filter(|(_, l)| !l.revoked)
            .filter_map(|(r, l)| {
                let reason = self.revoke_reason(r, l.session, session, leaving)?;
                Some((r.clone(), reason))
            })
            .collect();
        for (r, reason) in revoke {
            self.revoke(&r, reason);
        }
    }

    /// Why the lease on `r`, granted under `lease_session`, must stop, if it must.
    fn revoke_reason(
        &self,
        r: &ResourceId,
        lease_session: SessionId,
        session: SessionId,
        leaving: bool,
    ) -> Option<RevokeReason> {
        if !self.claims.desired.contains(r) {
            Some(if leaving {
                RevokeReason::Leaving
            } else {
                RevokeReason::Reassigned
            })
        } else if lease_session != session {
            Some(RevokeReason::SessionLost)
        } else {
            // L4 holds for as long as the lease does: `proved` loses a claim only when it is
            // deleted (after its lease was revoked and released) or when a verification finds
            // it not ours (only unresolved claims, which no lease stands on); a new session
            // clears it, caught above. (A branch revoking here was dead code: mutants of it
            // survived every test, docs/mutants.md.) The broken variants grant without proof.
            debug_assert!(
                self.claims.proved.contains_key(r)
                    || matches!(
                        self.cfg.variant,
                        Variant::GrantBeforeClaim | Variant::GrantOnClaimSent
                    ),
                "a live lease on {r} without a proved claim"
            );
            None
        }
    }

    /// Step 2: claims of this session the member does not track yet are unresolved (they may
    /// come from an Indeterminate create that was applied, PITFALLS 24); every unresolved
    /// claim is settled by a linearizable read.
    fn prove_unknown_claims(&mut self, now: Time, session: SessionId) {
        let mine: Vec<ResourceId> = self
            .view
            .group
            .claims
            .iter()
            .filter(|(r, c)| {
                c.session == session
                    && !self.claims.proved.contains_key(*r)
                    && !self.claims.deleting.contains_key(*r)
            })
            .map(|(r, _)| r.clone())
            .collect();
        self.claims.unresolved.extend(mine);
        let unresolved: Vec<ResourceId> = self.claims.unresolved.iter().cloned().collect();
        for r in unresolved {
            if !self.claims.in_flight.contains_key(&r) && self.gate_open(&r, now) {
                self.verify_claim(session, r);
            }
        }
    }

    /// Step 3: deletes claims that are not desired, once their lease is released, and
    /// repeats deletes whose outcome was unknown.
    fn delete_undesired_claims(&mut self, now: Time, session: SessionId) {
        let mut to_delete: Vec<(ResourceId, Token)> = self
            .claims
            .proved
            .iter()
            .filter(|(r, _)| {
                !self.claims.desired.contains(*r)
                    && !self.leases.held.contains_key(*r)
                    && !self.claims.in_flight.contains_key(*r)
                    && !self.claims.unresolved.contains(*r)
            })
            .map(|(r, t)| (r.clone(), *t))
            .collect();
        to_delete.extend(
            self.claims
                .deleting
                .iter()
                .filter(|(r, _)| !self.claims.in_flight.contains_key(*r) && self.gate_open(r, now))
                .map(|(r, t)| (r.clone(), *t)),
        );
        for (r, t) in to_delete {
            self.delete_claim(session, r, t);
        }
    }

    /// L2: deletes the claim instance of `session` created at `t.revision`, and nothing else.
    fn delete_claim(&mut self, session: SessionId, r: ResourceId, t: Token) {
        // Paired assertion: a claim is deleted only after its lease was released.
        debug_assert!(!self.leases.held.contains_key(&r));
        let key = self.layout.claim(&r);
        let op = self.send(
            Pending::ClaimDelete {
                session,
                r: r.clone(),
                token: t,
            },
            owned_delete(key, session, t.revision),
        );
        self.claims.in_flight.insert(r, op);
    }

    /// Step 4, for one desired resource: grants it under a proved claim, or claims it when
    /// no session holds it and nothing about its claim is pending.
    fn acquire(&mut self, now: Time, session: SessionId, r: ResourceId) {
        if self.leases.held.contains_key(&r) {
            // Granted, or an earlier lease is still being stopped (rule 14).
            return;
        }
        if let Some(t) = self.claims.proved.get(&r).copied() {
            if !self.claims.unresolved.contains(&r) && !self.claims.in_flight.contains_key(&r) {
                self.grant(now, session, r, t);
            }
            return;
        }
        if self.cfg.variant == Variant::GrantBeforeClaim {
            let t = self
                .view
                .group
                .claims
                .get(&r)
                .map(|c| self.token(c.create_rev));
            self.grant(now, session, r.clone(), t.unwrap_or_default());
        }
        if self.claims.in_flight.contains_key(&r)
            || self.claims.unresolved.contains(&r)
            || self.claims.deleting.contains_key(&r)
        {
            return;
        }
        if !self.gate_open(&r, now) {
            return;
        }
        // Held by another session: wait for its owner to release it or expire.
        if !self.view.group.claims.contains_key(&r) {
            self.create_claim(now, session, r);
        }
    }

    /// L1: creates the claim of `r` for `session` (create-if-absent, never rewritten).
    fn create_claim(&mut self, now: Time, session: SessionId, r: ResourceId) {
        self.claims.gates.remove(&r);
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
        self.claims.in_flight.insert(r.clone(), op);
        if self.cfg.variant == Variant::GrantOnClaimSent {
            // Test-only mutation: grant before the create's reply, with a guessed token.
            let t = self.token(self.view.rev.map_or(1, |rev| rev + 1));
            self.grant(now, session, r, t);
        }
    }

    /// The reply to a claim's `Create`: proved ours on success (L1); an unknown outcome is
    /// settled by a read; otherwise the claim is tried again after its gate.
    pub(super) fn on_claim_create(
        &mut self,
        now: Time,
        session: SessionId,
        r: ResourceId,
        res: StoreResult,
    ) {
        self.claims.in_flight.remove(&r);
        match res {
            Ok(StoreReply::Committed { rev }) => {
                self.claims.proved.insert(r, self.token(rev));
            }
            Err(StoreError::Indeterminate(_)) => {
                // PITFALLS 11: settled by a linearizable read before anything else.
                self.claims.unresolved.insert(r.clone());
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
                self.view.dirty = true;
            }
        }
    }

    /// The linearizable read that settles whose a claim is: adopted only when it is ours and
    /// not an instance we are deleting.
    pub(super) fn on_claim_verify(
        &mut self,
        now: Time,
        session: SessionId,
        r: ResourceId,
        res: StoreResult,
    ) {
        self.claims.in_flight.remove(&r);
        match res {
            Ok(StoreReply::Got(entry)) => {
                self.claims.unresolved.remove(&r);
                match entry {
                    // An instance we are deleting is never adopted again.
                    Some(e)
                        if self
                            .claims
                            .deleting
                            .get(&r)
                            .is_some_and(|t| t.revision == e.create_rev) => {}
                    Some(e)
                        if e.owner == Some(session)
                            || self.cfg.variant == Variant::AdoptAnyClaim =>
                    {
                        let t = self.token(e.create_rev);
                        self.claims.proved.insert(r, t);
                    }
                    _ => {
                        self.claims.proved.remove(&r);
                        self.gate(r, now, true);
                    }
                }
            }
            _ => self.gate(r, now + self.cfg.retry_delay, false),
        }
    }

    /// The reply to a claim's guarded delete.
    pub(super) fn on_claim_delete(
        &mut self,
        now: Time,
        r: ResourceId,
        token: Token,
        result: StoreResult,
    ) {
        self.claims.in_flight.remove(&r);
        match result {
            Ok(_) | Err(StoreError::Conflict(_)) => {
                self.claims.proved.remove(&r);
                self.claims.deleting.remove(&r);
            }
            Err(_) => {
                self.claims.proved.remove(&r);
                self.claims.deleting.insert(r.clone(), token);
                self.gate(r, now + self.cfg.retry_delay, false);
            }
        }
    }

    /// The token of a claim created at store revision `rev`.
    fn token(&self, rev: u64) -> Token {
        Token {
            generation: self.view.group.generation,
            revision: rev,
        }
    }

    /// No claim operation on `r` before `at` (and, with `need_new_view`, before a newer view).
    fn gate(&mut self, r: ResourceId, at: Time, need_new_view: bool) {
        let after_view = need_new_view.then_some(self.view.seq);
        self.claims.gates.insert(r, Gate { after_view, at });
    }

    /// Whether `r`'s gate lets a claim operation through now.
    fn gate_open(&self, r: &ResourceId, now: Time) -> bool {
        self.claims
            .gates
            .get(r)
            .is_none_or(|g| now >= g.at && g.after_view.is_none_or(|v| self.view.seq > v))
    }

    /// Settles by a linearizable read whether the claim of `r` is ours.
    fn verify_claim(&mut self, session: SessionId, r: ResourceId) {
        let key = self.layout.claim(&r);
        let op = self.send(
            Pending::ClaimVerify {
                session,
                r: r.clone(),
            },
            get_lin(key),
        );
        self.claims.in_flight.insert(r, op);
    }
}
