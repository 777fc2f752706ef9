//! Claims: the desired set (from the view's assignment), the session-owned claim keys that
//! back leases (L1, L2), proving claims (own create or a linearizable read), unresolved and
//! deleting instances, per-resource gates, and `reconcile_claims`, the pass that revokes,
//! proves, deletes, claims and grants. Never deletes a claim whose lease is outstanding, and
//! never grants without a proved claim (through `grant`, in `leases.rs`).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Variant;
use crate::ids::{Epoch, OpId, ResourceId, SessionId, Time, Token};
use crate::layout::{self, ClaimRec, KeyKind};
use crate::store::{Cond, StoreError, StoreOp, StoreReply, StoreResult, Write};

use super::memo::{Memo, Unseen};
use super::pending::get_lin;
use super::{Event, Member, Pending, RevokeReason};

/// The resources this member should hold and the claim keys that back them, per resource.
#[derive(Debug, Clone, Default)]
pub(super) struct Claims {
    /// Assigned to this member's current session by the last complete assignment read.
    pub(super) desired: BTreeSet<ResourceId>,
    /// Epoch of that assignment (reported with each grant).
    pub(super) desired_epoch: Epoch,
    /// When each desired resource not granted since entered `desired`: the grant reports the
    /// wait (`Event::Grant::waited`, the handover latency metric). Entries of resources that
    /// left `desired` ungranted linger until the next derived set drops them. Metrics
    /// bookkeeping that no decision reads, hence invisible to `Debug` (the model checker's
    /// fingerprint), where times would only split equal states.
    pub(super) desired_since: Unseen<BTreeMap<ResourceId, Time>>,
    /// Claims proved to belong to the current session, with their tokens.
    pub(super) proved: BTreeMap<ResourceId, Token>,
    /// Claims whose ownership must be settled by a linearizable read before anything else.
    pub(super) unresolved: BTreeSet<ResourceId>,
    /// Unresolved claims of one create transaction whose outcome was unknown: (that
    /// transaction, its first resource). The store applies a transaction whole, so one read
    /// of the first claim settles them all (a read per claim was thousands of reads after
    /// one slow batch, issue 10), provided an instance of that claim owned by this session
    /// can only come from that transaction: recorded only when no earlier create of it had
    /// an unknown outcome (`maybe_late`), and used only while that first claim is unresolved
    /// from the same transaction.
    pub(super) verify_with: BTreeMap<ResourceId, (OpId, ResourceId)>,
    /// Resources with a create in this session whose outcome was unknown: it may be applied
    /// at any later time, even after a read found it absent (PITFALLS 12), so an instance of
    /// the claim owned by this session may come from it. Never the read for a batch.
    pub(super) maybe_late: BTreeSet<ResourceId>,
    /// Resources a pass had a claim operation for but no room to send it
    /// (`Config::max_claim_ops_in_flight`): looked at again, in order, by the next passes
    /// with room.
    pub(super) waiting_room: BTreeSet<ResourceId>,
    /// One operation in flight per claim key (DESIGN §8 rule 5).
    pub(super) in_flight: BTreeMap<ResourceId, OpId>,
    /// Claim instances whose delete had an unknown outcome. The delete may still be applied
    /// later (after any read of ours), so the instance is never granted again, only deleted
    /// again with the same guard until Ok or Conflict settles it (PITFALLS 12).
    pub(super) deleting: BTreeMap<ResourceId, Token>,
    /// Of `deleting`: those whose delete was refused as part of a batch (an instance of the
    /// batch is gone, which one is unknown): one read of their claims settles them all (an
    /// instance once gone never comes back), and those still there are deleted again in a
    /// batch. The others are deleted again in batches: after a timeout, a batch's `Ok`
    /// settles all of them at once. (Each deleted alone until its own refusal settled it
    /// was 53,864 refused deletes in three 10 x 10,000 runs on ZooKeeper, issue 10.)
    pub(super) delete_check: BTreeSet<ResourceId>,
    /// Per resource: when a claim operation may be tried again.
    pub(super) gates: BTreeMap<ResourceId, Gate>,
    /// Claim instances (by creation revision) our own delete is known to have removed: a view
    /// read before the delete still shows them, and is not a reason to prove them again
    /// (that cost a read per moved resource). Kept while the view still shows the instance.
    pub(super) gone: BTreeMap<ResourceId, u64>,
    /// Claims whose last create was refused as part of a batch: created alone until one
    /// succeeds, so one contested claim cannot hold back the rest of a batch again and again.
    pub(super) solo: BTreeSet<ResourceId>,
    /// Desired resources whose claim the view shows held by another session, and whose claim
    /// key a notification has named since: most likely its owner let go, so the claim is
    /// tried at once instead of after a listing of the whole group (issue 10: that listing
    /// was most of a handover's time). Create-if-absent decides, as always; a refusal gates
    /// the resource until a newer view. Dropped when the create is sent or the resource is
    /// no longer desired.
    pub(super) maybe_free: BTreeSet<ResourceId>,
    /// The (view, session) `desired` was last derived from: derived once per view.
    pub(super) desired_from: Memo<(u64, u64, SessionId), ()>,
    /// Resources whose claim or lease state changed since the last reconcile pass. Between
    /// full passes the pass looks at these only, so a reply costs what it changed, not the
    /// size of the group (issue 10). Invisible to `Debug` (the model's fingerprint) because a
    /// pass over them does exactly what a full pass would: checked in debug builds.
    pub(super) dirty: Unseen<BTreeSet<ResourceId>>,
    /// What the last full pass ran for: everything a pass reads that is not per resource.
    pub(super) full_for: Memo<FullPassKey, ()>,
}

/// (view sequence, own-assignment sequence, session, suspended, leaving, leave timed out):
/// when any changes, the next reconcile pass looks at every resource.
pub(super) type FullPassKey = (u64, u64, SessionId, bool, bool, bool);

/// The entries of `map` whose keys are in `only` (all of them for `None`), in key order: what
/// a pass over the changed resources costs is the number changed, not the size of `map`.
fn subset<'a, V>(
    map: &'a BTreeMap<ResourceId, V>,
    only: Option<&'a BTreeSet<ResourceId>>,
) -> Box<dyn Iterator<Item = (&'a ResourceId, &'a V)> + 'a> {
    match only {
        None => Box::new(map.iter()),
        Some(only) => Box::new(only.iter().filter_map(|r| map.get_key_value(r))),
    }
}

/// The members of `set` that are in `only` (all of them for `None`), in order, owned: the
/// same as [`subset`] for sets.
fn subset_of(set: &BTreeSet<ResourceId>, only: Option<&BTreeSet<ResourceId>>) -> Vec<ResourceId> {
    match only {
        None => set.iter().cloned().collect(),
        Some(only) => only.iter().filter(|r| set.contains(*r)).cloned().collect(),
    }
}

/// When a claim operation may be tried again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    /// Not before a view newer than this one (by `ViewState::seq`), when set.
    pub(super) after_view: Option<u64>,
    pub(super) at: Time,
}

impl Claims {
    /// `next` replaces `desired` at `now`: what enters it starts waiting for its grant.
    /// Costs the size of the own assignment, which deriving `next` already did, once per view.
    fn note_desired(&mut self, now: Time, next: &BTreeSet<ResourceId>) {
        self.desired_since.retain(|r, _| next.contains(r));
        for r in next.difference(&self.desired) {
            self.desired_since.insert(r.clone(), now);
        }
    }
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
        // A leave that timed out, or a static member stopping for a restart, gives up all.
        let leave_expired = self
            .leaving
            .as_ref()
            .is_some_and(|l| l.park || now >= l.deadline);
        if leave_expired {
            self.claims.desired.clear();
            return;
        }
        let from = (self.view.seq, self.view.own_seq, session);
        if self.claims.desired_from.holds(&from) {
            return;
        }
        self.claims.desired_from.set(from, ());
        let maybe_free = std::mem::take(&mut self.claims.maybe_free);
        let before = self.view.own_newer.then(|| self.claims.desired.clone());
        match self.view.group.assign.get(&self.cfg.name) {
            None => self.claims.desired.clear(),
            Some(chunks) => match layout::complete_set(chunks) {
                // Barrier mode: only the chunks of a round in its start phase.
                Some((s, e, mut set))
                    if s == session
                        && chunks
                            .first()
                            .is_some_and(|c| self.round_started(c.rec.round)) =>
                {
                    // Resources failing here are given back (`unhealthy.rs`).
                    set.retain(|r| !self.avoids(r));
                    self.claims.note_desired(now, &set);
                    self.claims.desired = set;
                    self.claims.desired_epoch = e;
                }
                // An assignment for an earlier incarnation of this name, or a round that is
                // stopping or not started.
                Some(_) => self.claims.desired.clear(),
                // Torn: keep acting on the last complete set (PITFALLS 21).
                None => {}
            },
        }
        if let Some(before) = before {
            // From a read of the assignment alone, the rest of the view being older: the
            // view's claim of a resource it adds is current unless a notification named that
            // claim since the last listing (it did not concern us then), and then only a
            // listing says what it is now. Otherwise its next change will be named, and
            // concerns us now.
            if self
                .claims
                .desired
                .difference(&before)
                .any(|r| self.view.changed_claims.contains(r))
            {
                self.view.dirty = true;
            }
        }
        // The view shows the claims this member wanted when it read: the claims of
        // resources assigned since were not read, and only a read says whether they are free.
        if !self.claims.desired.is_subset(&self.view.claims_read) {
            self.view.dirty = true;
        }
        let desired = &self.claims.desired;
        self.claims.maybe_free = maybe_free
            .into_iter()
            .filter(|r| desired.contains(r))
            .collect();
    }

    /// The resource whose claim `key` is, if this member wants it and the view shows another
    /// session holding it: a change of that key is most likely its release, to be tried at
    /// once (`maybe_free`).
    pub(super) fn claim_to_try(&self, key: &str) -> Option<ResourceId> {
        let KeyKind::Claim(r) = self.layout.classify(key) else {
            return None;
        };
        let session = self.session.id()?;
        let theirs = self
            .view
            .group
            .claims
            .get(&r)
            .is_some_and(|c| c.session != session);
        (theirs && self.claims.desired.contains(&r)).then_some(r)
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
        self.open_due_gates(now);
        let key = (
            self.view.seq,
            self.view.own_seq,
            session,
            suspended,
            self.leaving.is_some(),
            self.leaving.as_ref().is_some_and(|l| now >= l.deadline),
        );
        let dirty = std::mem::take(&mut *self.claims.dirty);
        let only = if self.claims.full_for.holds(&key) {
            Some(dirty)
        } else {
            self.claims.full_for.set(key, ());
            None
        };
        if only.is_none() {
            // Everything is looked at: what still finds no room waits again.
            self.claims.waiting_room.clear();
        }
        let partial = only.is_some();
        self.reconcile_over(now, (session, deadline, suspended), only.as_ref());
        // Then what waited for room, as much as there is room for, until the room is used or
        // nothing waits: a pass costs what it sends, not the number waiting (re-marking every
        // waiting resource on each input made a 100,000-resource start quadratic).
        while self.claim_room() > 0 && !self.claims.waiting_room.is_empty() {
            let n = self.claim_room() * self.cfg.max_txn_writes;
            let mut next = BTreeSet::new();
            while next.len() < n {
                let Some(r) = self.claims.waiting_room.pop_first() else {
                    break;
                };
                next.insert(r);
            }
            self.reconcile_over(now, (session, deadline, suspended), Some(&next));
        }
        if partial {
            self.check_partial_pass(now);
        }
    }

    /// The steps of a reconcile pass over `only` (every resource for `None`).
    fn reconcile_over(
        &mut self,
        now: Time,
        (session, deadline, suspended): (SessionId, Time, bool),
        only: Option<&BTreeSet<ResourceId>>,
    ) {
        self.revoke_unbacked(session, only);
        self.prove_unknown_claims(now, session, only);
        self.delete_undesired_claims(now, session, only);
        self.acquire_desired(now, session, deadline, suspended, only);
    }

    /// Marks `r` for the next reconcile pass.
    pub(super) fn touch(&mut self, r: &ResourceId) {
        self.claims.dirty.insert(r.clone());
    }

    /// Gates that opened by time since the last pass: their resources are looked at again,
    /// and the gates dropped (an open gate and no gate mean the same).
    fn open_due_gates(&mut self, now: Time) {
        let view = self.view.seq;
        let open: Vec<ResourceId> = self
            .claims
            .gates
            .iter()
            .filter(|(_, g)| now >= g.at && g.after_view.is_none_or(|v| view > v))
            .map(|(r, _)| r.clone())
            .collect();
        for r in open {
            self.claims.gates.remove(&r);
            self.touch(&r);
        }
    }

    /// Debug builds: after a pass over the changed resources only, a full pass must find
    /// nothing more to do (else a change was not marked, and a resource would wait for the
    /// next view). Small groups only: it repeats the pass on a copy.
    fn check_partial_pass(&self, now: Time) {
        if !cfg!(debug_assertions) || self.claims.desired.len() + self.leases.held.len() > 64 {
            return;
        }
        let mut full = self.clone();
        full.claims.full_for = Memo::default();
        let (ops, events) = (full.ops.queued(), full.events.len());
        full.reconcile_claims(now);
        debug_assert!(
            full.ops.queued() == ops && full.events.len() == events,
            "a full reconcile pass found more to do than the pass over the changed resources"
        );
    }

    /// Step 4. Acquire desired resources (claim, then grant).
    fn acquire_desired(
        &mut self,
        now: Time,
        session: SessionId,
        deadline: Time,
        suspended: bool,
        only: Option<&BTreeSet<ResourceId>>,
    ) {
        // Not while suspended: suspension begins at the deadline minus the stop budget
        // (`session_upkeep`, earlier in this step), so a session that is not suspended leaves
        // a whole stop budget to any lease granted now. (A second check of that room was
        // redundant: its mutants survived.)
        if suspended {
            return;
        }
        debug_assert!(
            now < deadline - self.cfg.stop_timeout || self.cfg.variant == Variant::IgnoreDeadline,
            "not suspended within a stop budget of the deadline"
        );
        let desired = subset_of(&self.claims.desired, only);
        let mut create = Vec::new();
        for r in desired {
            if self.acquire(now, session, &r) {
                create.push(r);
            }
        }
        self.create_claims(now, session, create);
    }

    /// Step 1: revokes leases that are no longer desired or no longer backed by a proved
    /// claim of the current session.
    fn revoke_unbacked(&mut self, session: SessionId, only: Option<&BTreeSet<ResourceId>>) {
        let leaving = self.leaving.is_some();
        let held = &self.leases.held;
        let revoke: Vec<(ResourceId, RevokeReason)> = subset(held, only)
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
            } else if self.avoids(r) {
                RevokeReason::Unhealthy
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
    /// A claim whose create is in flight is left to that create's reply.
    fn prove_unknown_claims(
        &mut self,
        now: Time,
        session: SessionId,
        only: Option<&BTreeSet<ResourceId>>,
    ) {
        if only.is_none() {
            let claims = &self.view.group.claims;
            self.claims
                .gone
                .retain(|r, rev| claims.get(r).is_some_and(|c| c.create_rev == *rev));
        }
        let unknown = |r: &ResourceId, c: &layout::ClaimView| {
            c.session == session
                && !self.claims.proved.contains_key(r)
                && !self.claims.deleting.contains_key(r)
                && !self.claims.in_flight.contains_key(r)
                && self.claims.gone.get(r) != Some(&c.create_rev)
        };
        let claims = &self.view.group.claims;
        let mine: Vec<ResourceId> = match only {
            None => claims
                .iter()
                .filter(|(r, c)| unknown(r, c))
                .map(|(r, _)| r.clone())
                .collect(),
            Some(only) => only
                .iter()
                .filter(|r| claims.get(*r).is_some_and(|c| unknown(r, c)))
                .cloned()
                .collect(),
        };
        self.claims.unresolved.extend(mine);
        let ready: BTreeSet<ResourceId> = subset_of(&self.claims.unresolved, only)
            .into_iter()
            .filter(|r| !self.claims.in_flight.contains_key(r) && self.gate_open(r, now))
            .collect();
        // Grouped by the transaction that created them, read through its first claim when
        // that one is ready too (`verify_with`); any other claim alone, through its own key.
        let mut groups: BTreeMap<ResourceId, Vec<ResourceId>> = BTreeMap::new();
        for r in &ready {
            let lead = match self.claims.verify_with.get(r) {
                Some((op, lead))
                    if ready.contains(lead)
                        && self.claims.verify_with.get(lead) == Some(&(*op, lead.clone())) =>
                {
                    lead.clone()
                }
                _ => r.clone(),
            };
            groups.entry(lead).or_default().push(r.clone());
        }
        for (lead, rs) in groups {
            if self.claim_room() == 0 {
                self.claims.waiting_room.extend(rs);
                continue;
            }
            self.verify_claims(session, lead, rs);
        }
    }

    /// Step 3: deletes claims that are not desired, once their lease is released, and
    /// repeats deletes whose outcome was unknown.
    /// Deletes go in batches within the transaction limits; a delete whose batch was refused
    /// is settled by a read first (`delete_check`).
    fn delete_undesired_claims(
        &mut self,
        now: Time,
        session: SessionId,
        only: Option<&BTreeSet<ResourceId>>,
    ) {
        let fresh: Vec<(ResourceId, Token)> = subset(&self.claims.proved, only)
            .filter(|(r, _)| {
                !self.claims.desired.contains(*r)
                    && !self.leases.held.contains_key(*r)
                    && !self.claims.in_flight.contains_key(*r)
                    && !self.claims.unresolved.contains(*r)
            })
            .map(|(r, t)| (r.clone(), *t))
            .collect();
        let (check, again): (Vec<_>, Vec<_>) = subset(&self.claims.deleting, only)
            .filter(|(r, _)| !self.claims.in_flight.contains_key(*r) && self.gate_open(r, now))
            .map(|(r, t)| (r.clone(), *t))
            .partition(|(r, _)| self.claims.delete_check.contains(r));
        let sized = |items: Vec<(ResourceId, Token)>| -> Vec<_> {
            items
                .into_iter()
                .map(|(r, t)| {
                    let size = 2 * self.layout.claim(&r).len();
                    ((r, t), size)
                })
                .collect()
        };
        let deletes = self.batches(sized(fresh.into_iter().chain(again).collect()));
        let checks = self.batches(sized(check));
        let ops = deletes
            .into_iter()
            .map(|b| (b, false))
            .chain(checks.into_iter().map(|b| (b, true)));
        for (batch, check) in ops {
            if self.claim_room() == 0 {
                self.claims
                    .waiting_room
                    .extend(batch.into_iter().map(|(r, _)| r));
            } else if check {
                self.check_deletes(session, batch);
            } else {
                self.delete_claims(session, batch);
            }
        }
    }

    /// Reads, in one linearizable read, the claims of `items` whose delete was refused as
    /// part of a batch: which of these instances are gone.
    fn check_deletes(&mut self, session: SessionId, items: Vec<(ResourceId, Token)>) {
        let keys = items.iter().map(|(r, _)| self.layout.claim(r)).collect();
        let rs: Vec<ResourceId> = items.iter().map(|(r, _)| r.clone()).collect();
        let op = self.send(
            Pending::DeleteCheck { session, items },
            StoreOp::Read {
                keys,
                prefixes: vec![],
                linearizable: true,
            },
        );
        for r in rs {
            self.claims.in_flight.insert(r, op);
        }
    }

    /// The claim operation for these resources was answered: none in flight, each looked at
    /// by the next pass.
    fn answered(&mut self, items: &[(ResourceId, Token)]) {
        for (r, _) in items {
            self.claims.in_flight.remove(r);
            self.touch(r);
        }
    }

    /// The read of `check_deletes`: an instance the store no longer has is gone for good
    /// (settled); one it still has is deleted again, in a batch.
    pub(super) fn on_delete_check(
        &mut self,
        now: Time,
        items: Vec<(ResourceId, Token)>,
        result: StoreResult,
    ) {
        self.answered(&items);
        let Ok(StoreReply::Listed { entries, .. }) = result else {
            for (r, _) in items {
                self.gate(r, now + self.cfg.retry_delay, false);
            }
            return;
        };
        let found: BTreeMap<&str, u64> = entries
            .iter()
            .map(|(k, e)| (k.as_str(), e.create_rev))
            .collect();
        for (r, token) in items {
            self.claims.delete_check.remove(&r);
            let key = self.layout.claim(&r);
            if found.get(key.as_str()) != Some(&token.revision()) {
                self.claims.deleting.remove(&r);
                self.claims.gone.insert(r, token.revision());
            }
        }
    }

    /// How many more claim operations may be sent now (`Config::max_claim_ops_in_flight`).
    /// What does not fit waits in `waiting_room` for a pass with room, which a reply to one of
    /// those in flight brings.
    fn claim_room(&self) -> usize {
        self.cfg
            .max_claim_ops_in_flight
            .saturating_sub(self.ops.claim_ops)
    }

    /// L2: deletes, in one transaction, the claim instance of `session` created at
    /// `t.revision()` for each `(r, t)`, and nothing else: all of them or none.
    fn delete_claims(&mut self, session: SessionId, items: Vec<(ResourceId, Token)>) {
        let mut conds = Vec::with_capacity(items.len());
        let mut writes = Vec::with_capacity(items.len());
        for (r, t) in &items {
            // Paired assertion: a claim is deleted only after its lease was released.
            debug_assert!(!self.leases.held.contains_key(r));
            let key = self.layout.claim(r);
            // Guarded by the instance (PITFALLS 12): safe to repeat, and never removes a
            // later owner's key.
            conds.push(Cond::Owned {
                key: key.clone(),
                session,
                create_rev: t.revision(),
            });
            writes.push(Write::Delete { key });
        }
        let rs: Vec<ResourceId> = items.iter().map(|(r, _)| r.clone()).collect();
        let op = self.send(
            Pending::ClaimDelete { session, items },
            StoreOp::Txn { conds, writes },
        );
        for r in rs {
            self.claims.in_flight.insert(r, op);
        }
    }

    /// Splits sized items into batches within the transaction limits (`max_txn_writes`
    /// writes and `max_txn_bytes` bytes each; an oversized item still goes alone), in order.
    fn batches<T>(&self, items: Vec<(T, usize)>) -> Vec<Vec<T>> {
        let mut out = Vec::new();
        let (mut batch, mut bytes) = (Vec::new(), 0);
        for (item, size) in items {
            let full =
                batch.len() >= self.cfg.max_txn_writes || bytes + size > self.cfg.max_txn_bytes;
            if !batch.is_empty() && full {
                out.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(item);
        }
        if !batch.is_empty() {
            out.push(batch);
        }
        out
    }

    /// Step 4, for one desired resource: grants it under a proved claim; true when it must
    /// be claimed (no session holds it and nothing about its claim is pending).
    fn acquire(&mut self, now: Time, session: SessionId, r: &ResourceId) -> bool {
        if self.leases.held.contains_key(r) {
            // Granted, or an earlier lease is still being stopped (rule 14).
            return false;
        }
        if let Some(t) = self.claims.proved.get(r).copied() {
            if !self.claims.unresolved.contains(r) && !self.claims.in_flight.contains_key(r) {
                self.grant(now, session, r.clone(), t);
            }
            return false;
        }
        if self.cfg.variant == Variant::GrantBeforeClaim {
            let t = self
                .view
                .group
                .claims
                .get(r)
                .map(|c| self.token(c.create_rev));
            self.grant(now, session, r.clone(), t.unwrap_or_default());
        }
        if self.claims.in_flight.contains_key(r)
            || self.claims.unresolved.contains(r)
            || self.claims.deleting.contains_key(r)
        {
            return false;
        }
        // Held by another session: wait for its owner to release it or expire, or for a
        // notification that it may have.
        self.gate_open(r, now)
            && ((!self.view.group.claims.contains_key(r) && !self.claim_unseen(r))
                || self.claims.maybe_free.contains(r))
    }

    /// L1: creates the claims of `rs` for `session` (create-if-absent, never rewritten), in
    /// batches within the transaction limits; a claim refused in a batch goes alone.
    fn create_claims(&mut self, now: Time, session: SessionId, rs: Vec<ResourceId>) {
        if rs.is_empty() {
            return;
        }
        let desired = &self.claims.desired;
        self.claims.solo.retain(|r| desired.contains(r));
        let value = layout::encode(&ClaimRec {
            member: self.cfg.name.clone(),
        });
        let (alone, together): (Vec<_>, Vec<_>) =
            rs.into_iter().partition(|r| self.claims.solo.contains(r));
        let sized: Vec<_> = together
            .into_iter()
            .map(|r| {
                let size = self.layout.claim(&r).len() + value.len();
                (r, size)
            })
            .collect();
        let batches = self.batches(sized);
        let alone = alone.into_iter().map(|r| vec![r]);
        for batch in batches.into_iter().chain(alone) {
            if self.claim_room() == 0 {
                self.claims.waiting_room.extend(batch);
                continue;
            }
            self.send_creates(now, session, batch, &value);
        }
    }

    /// One transaction creating the claims of `rs`: all of them or none.
    fn send_creates(&mut self, now: Time, session: SessionId, rs: Vec<ResourceId>, value: &[u8]) {
        let writes = rs
            .iter()
            .map(|r| Write::Create {
                key: self.layout.claim(r),
                value: value.to_vec(),
                owner: Some(session),
            })
            .collect();
        let op = self.send(
            Pending::ClaimCreate {
                session,
                rs: rs.clone(),
            },
            StoreOp::Txn {
                conds: vec![],
                writes,
            },
        );
        for r in rs {
            self.claims.gates.remove(&r);
            self.claims.maybe_free.remove(&r);
            self.claims.in_flight.insert(r.clone(), op);
            if self.cfg.variant == Variant::GrantOnClaimSent {
                // Test-only mutation: grant before the create's reply, with a guessed token
                // (the last revision seen: always older than the claim, as the model's
                // token check must find).
                let t = self.token(self.view.rev.unwrap_or(0));
                self.grant(now, session, r, t);
            }
        }
    }

    /// The reply to a batch of claim `Create`s: all proved ours on success (L1); an unknown
    /// outcome is settled by a read (of one of them when that is enough: `verify_with`);
    /// otherwise each is tried again after its gate, alone if the batch was refused (which
    /// of its claims was taken is unknown).
    pub(super) fn on_claim_create(
        &mut self,
        now: Time,
        op: OpId,
        rs: Vec<ResourceId>,
        res: StoreResult,
    ) {
        for r in &rs {
            self.claims.in_flight.remove(r);
            self.touch(r);
        }
        match res {
            Ok(StoreReply::Committed { rev }) => {
                for r in rs {
                    self.claims.solo.remove(&r);
                    self.claims.proved.insert(r, self.token(rev));
                }
            }
            Err(StoreError::Indeterminate(_)) => {
                // PITFALLS 11: settled by a linearizable read before anything else (sent by
                // this step's pass, as room allows: the resources are marked above), one for
                // the whole transaction.
                let lead = rs
                    .first()
                    .filter(|lead| rs.len() > 1 && !self.claims.maybe_late.contains(*lead))
                    .cloned();
                for r in rs {
                    if let Some(lead) = &lead {
                        self.claims
                            .verify_with
                            .insert(r.clone(), (op, lead.clone()));
                    }
                    self.claims.maybe_late.insert(r.clone());
                    self.claims.unresolved.insert(r);
                }
            }
            Err(StoreError::Unavailable(_)) | Ok(_) => {
                for r in rs {
                    self.gate(r, now + self.cfg.retry_delay, false);
                }
            }
            Err(e) => {
                if !matches!(e, StoreError::Conflict(_)) {
                    self.events.push_back(Event::StoreError {
                        op: "claim",
                        error: e,
                    });
                }
                let batch = rs.len() > 1;
                for r in rs {
                    if batch {
                        self.claims.solo.insert(r.clone());
                    }
                    self.gate(r, now + self.cfg.retry_delay, true);
                }
                self.view.dirty = true;
            }
        }
    }

    /// The linearizable read that settles whose the claims of `rs` are, all created by one
    /// transaction (or one claim alone): each is adopted only when the claim read is ours and
    /// not an instance we are deleting.
    pub(super) fn on_claim_verify(
        &mut self,
        now: Time,
        session: SessionId,
        rs: Vec<ResourceId>,
        res: StoreResult,
    ) {
        for r in &rs {
            self.claims.in_flight.remove(r);
            self.touch(r);
        }
        let entry = match res {
            Ok(StoreReply::Got(entry)) => entry,
            _ => {
                for r in rs {
                    self.gate(r, now + self.cfg.retry_delay, false);
                }
                return;
            }
        };
        for r in rs {
            self.claims.unresolved.remove(&r);
            self.claims.verify_with.remove(&r);
            match &entry {
                // An instance we are deleting is never adopted again.
                Some(e)
                    if self
                        .claims
                        .deleting
                        .get(&r)
                        .is_some_and(|t| t.revision() == e.create_rev) => {}
                Some(e)
                    if e.owner == Some(session) || self.cfg.variant == Variant::AdoptAnyClaim =>
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
    }

    /// The reply to a batch of guarded deletes. `Ok` settles all; `Conflict` settles a lone
    /// delete (the instance is gone), but of a batch it says only that one instance did not
    /// match: each is then deleted again alone, as an instance whose fate is unknown.
    pub(super) fn on_claim_delete(
        &mut self,
        now: Time,
        items: Vec<(ResourceId, Token)>,
        result: StoreResult,
    ) {
        self.answered(&items);
        let batch = items.len() > 1;
        let (settled, refused) = match &result {
            Ok(_) => (true, false),
            Err(StoreError::Conflict(_)) => (!batch, batch),
            Err(_) => (false, false),
        };
        for (r, token) in items {
            self.claims.proved.remove(&r);
            if settled {
                self.claims.deleting.remove(&r);
                self.claims.delete_check.remove(&r);
                self.claims.gone.insert(r, token.revision());
            } else {
                if refused {
                    self.claims.delete_check.insert(r.clone());
                }
                self.claims.deleting.insert(r.clone(), token);
                self.gate(r, now + self.cfg.retry_delay, false);
            }
        }
    }

    /// The token of a claim created at store revision `rev`.
    fn token(&self, rev: u64) -> Token {
        Token::new(self.view.group.generation, rev)
    }

    /// No claim operation on `r` before `at` (and, with `need_new_view`, before a newer view,
    /// which is then asked for: nothing else may bring one before the periodic resync, and a
    /// tenth of a 10,000-resource start waited that long on ZooKeeper, issue 10).
    fn gate(&mut self, r: ResourceId, at: Time, need_new_view: bool) {
        let after_view = need_new_view.then_some(self.view.seq);
        if need_new_view {
            self.view.dirty = true;
        }
        self.claims.gates.insert(r, Gate { after_view, at });
    }

    /// Whether `r`'s gate lets a claim operation through now.
    fn gate_open(&self, r: &ResourceId, now: Time) -> bool {
        self.claims
            .gates
            .get(r)
            .is_none_or(|g| now >= g.at && g.after_view.is_none_or(|v| self.view.seq > v))
    }

    /// Settles by one linearizable read of the claim of `lead` whether the claims of `rs`
    /// are ours (`lead` is in `rs`; the others were created in one transaction with it).
    fn verify_claims(&mut self, session: SessionId, lead: ResourceId, rs: Vec<ResourceId>) {
        let key = self.layout.claim(&lead);
        let op = self.send(
            Pending::ClaimVerify {
                session,
                rs: rs.clone(),
            },
            get_lin(key),
        );
        for r in rs {
            self.claims.in_flight.insert(r, op);
        }
    }
}
