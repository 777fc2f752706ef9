//! The member's view of the group: listing reads (one in flight, re-read when notified, a
//! periodic resync, retries), linearizable reads when the coordinator plans or a listing went
//! back in time, and view monotonicity per session. Never writes to the store.

use crate::config::Variant;
use std::collections::BTreeSet;

use crate::ids::{OpId, ResourceId, Time};
use crate::layout::{self, KeyKind, View};
use crate::store::{Entry, Key, StoreOp, StoreReply, StoreResult};

use super::{Event, Member, Pending};

/// The last view of the group and the reads that refresh it.
#[derive(Debug, Clone, Default)]
pub(super) struct ViewState {
    /// The group as the last applied listing showed it.
    pub(super) group: View,
    /// Store revision of `group`, once one was applied in the current session: a
    /// non-linearizable listing older than this is never applied.
    pub(super) rev: Option<u64>,
    /// The next read must be linearizable (the last one was older than `group`).
    pub(super) want_linearizable: bool,
    /// Number of listings applied so far (0: none yet); "a newer view" compares these.
    pub(super) seq: u64,
    /// Number of reads sent so far; the number of a read is its count.
    pub(super) reads_sent: u64,
    /// The read in flight (at most one).
    pub(super) read: Option<OpId>,
    /// Something may have changed since the last read was sent: read again.
    pub(super) dirty: bool,
    /// Only this member's assignment changed (by a notification naming its chunks): read
    /// just those keys (issue 10: a member whose assignment changed need not list the group).
    /// A wanted full read covers it.
    pub(super) want_own: bool,
    /// The read in flight is of this member's assignment only.
    pub(super) read_own: bool,
    /// Number of own-assignment reads applied: `desired` is derived per (`seq`, `own_seq`).
    pub(super) own_seq: u64,
    /// The own assignment is newer than the rest of the view (a partial read was applied
    /// since the last listing): the view's claims of resources it adds may be stale.
    pub(super) own_newer: bool,
    /// Resources whose claim a notification named since the last listing was sent, whether
    /// or not it concerned us then: where the view's claim of such a resource may be stale.
    pub(super) changed_claims: BTreeSet<ResourceId>,
    /// `changed_claims` as they were when the listing in flight was sent: that listing will
    /// say who holds them. Until it does, the view's claims of these are stale too.
    pub(super) listing_covers: BTreeSet<ResourceId>,
    /// The claims the view shows what the store said of (`view_read`: those this member
    /// wanted or settled when it read). A claim outside them is unseen.
    pub(super) claims_read: BTreeSet<ResourceId>,
    /// The claims the read in flight reads.
    pub(super) reading_claims: BTreeSet<ResourceId>,
    /// After a failed or refused read: the next one not before this time.
    pub(super) retry_at: Option<Time>,
    /// When the periodic re-read is due (the first at once).
    pub(super) next_resync: Time,
    /// Keys already reported as `Event::BadData`.
    pub(super) reported_bad: BTreeSet<Key>,
}

impl Member {
    /// Whether a change of `key` can matter to this member, judged against the current view
    /// (issue 10: a change must cost a listing of the group only to the members it concerns,
    /// not to every member). Only these kinds of change are ever ignored:
    /// - a claim of a resource this member does not want and is not settling by a read:
    ///   which member may access it is that member's business, nothing this member plans
    ///   reads claims (the plan input excludes them), and the outcome of this member's own
    ///   creates and deletes comes with their replies;
    /// - a claim this member wants and has proved, or has an operation in flight for: most
    ///   likely its own create, whose notification comes before the reply (a listing of the
    ///   group per created batch was most of a large leave's reads, issue 10); a refused
    ///   create asks for a new view itself, and a proved claim's lease never depends on a
    ///   view;
    /// - another member's record, draining mark or assignment, or the resource set, while
    ///   this member is neither coordinator nor standing for election: only the coordinator
    ///   plans from those (and a new coordinator re-reads before it plans), and such a member
    ///   does not even read them (`member_read`).
    ///
    /// The caller also re-reads whenever a read is in flight: its result may be a view in
    /// which the change does matter (say, one assigning the resource to us), and the change
    /// may have come after that read was served. Without a read in flight, any read after
    /// this notification reflects the change, so nothing is lost by waiting for one.
    /// Notifications are hints either way (DESIGN §8): safety never rests on them.
    pub fn concerns(&self, key: &str) -> bool {
        match self.layout.classify(key) {
            KeyKind::Claim(r) => {
                self.claims.unresolved.contains(&r)
                    || (self.claims.desired.contains(&r)
                        && !self.claims.proved.contains_key(&r)
                        && !self.claims.in_flight.contains_key(&r))
            }
            KeyKind::OfMember(m) | KeyKind::Assign(m) => m == self.cfg.name || self.group_wide(),
            KeyKind::Resource => self.group_wide(),
            KeyKind::Other => true,
        }
    }

    /// Whether the view's claim of `r` may be stale: a notification named it since the last
    /// listing that was applied. Such a claim is not created from the view (a member whose
    /// view lagged created claims their last owner still held, refused one by one, issue
    /// 10); the listing that follows, or a named release, decides.
    pub(super) fn claim_unseen(&self, r: &ResourceId) -> bool {
        self.view.changed_claims.contains(r)
            || self.view.listing_covers.contains(r)
            || !self.view.claims_read.contains(r)
    }

    /// Whether the view, or the read in flight, holds what the store said of the claim of
    /// `r`: a change of any other claim is unseen anyway.
    pub(super) fn claim_read(&self, r: &ResourceId) -> bool {
        let in_flight = self.view.read.is_some() && !self.view.read_own;
        self.view.claims_read.contains(r) || (in_flight && self.view.reading_claims.contains(r))
    }

    /// Coordinator or standing for election: every member's keys matter, and reads are of
    /// the whole group.
    pub(super) fn group_wide(&self) -> bool {
        self.coord.is_some() || self.election.op.is_some()
    }

    /// Timers: the periodic resync and a read retry.
    pub(super) fn view_timers(&self, at: &mut impl FnMut(Time)) {
        at(self.view.next_resync);
        if let Some(r) = self.view.retry_at {
            at(r);
        }
    }

    /// Sends a read when one is wanted (notified, resync due, retry) and none is in flight:
    /// the whole group for the coordinator or a candidate, what concerns this member
    /// otherwise (`member_read`); linearizable for the coordinator or after a read that went
    /// back in time.
    pub(super) fn reads(&mut self, now: Time) {
        if now >= self.view.next_resync {
            self.view.next_resync = now + self.cfg.resync_interval;
            self.view.dirty = true;
        }
        let retry_ok = self.view.retry_at.is_none_or(|t| now >= t);
        if self.view.want_own && self.group_wide() {
            self.view.want_own = false;
            self.view.dirty = true;
        }
        if self.view.read.is_some() || !retry_ok {
            return;
        }
        if !self.view.dirty && self.view.want_own {
            self.view.want_own = false;
            self.view.reads_sent += 1;
            let linearizable = self.view.want_linearizable;
            self.view.want_linearizable = false;
            let op = self.send(
                Pending::Read {
                    number: self.view.reads_sent,
                    linearizable,
                    own: true,
                },
                StoreOp::List {
                    prefix: self.layout.assign_prefix(&self.cfg.name),
                    linearizable,
                },
            );
            self.view.read = Some(op);
            self.view.read_own = true;
            return;
        }
        if self.view.dirty {
            self.view.dirty = false;
            self.view.want_own = false;
            // The listing reflects every change notified so far.
            self.view.listing_covers = std::mem::take(&mut self.view.changed_claims);
            self.view.reads_sent += 1;
            let number = self.view.reads_sent;
            // The coordinator plans its writes from what it reads: only linearizable reads
            // (PITFALLS 20; DESIGN §8 rule 6: a stale read decides when, never what).
            let linearizable = self.coord.is_some() || self.view.want_linearizable;
            self.view.want_linearizable = false;
            let (op, claims) = self.view_read(linearizable);
            let op = self.send(
                Pending::Read {
                    number,
                    linearizable,
                    own: false,
                },
                op,
            );
            self.view.read = Some(op);
            self.view.read_own = false;
            self.view.reading_claims = claims;
        }
    }

    /// The read of the view, and the claims it reads. Every member reads the group's own
    /// keys and the claims it wants or must settle (a create of unknown outcome may land any
    /// time, PITFALLS 12). A member that neither coordinates nor stands for election reads
    /// its own record, draining mark and assignment besides, so its read is its share, not
    /// the group (issue 10: every member listing the whole group was O(group) per change for
    /// each, and a copy of the group in every member); the coordinator and a candidate read
    /// every member's record, draining mark and assignment and the resource set, which is
    /// what a plan is made of. Nobody lists the claims of the group: no plan reads them,
    /// they are half of a group's keys, and on ZooKeeper a listing of the group kept failing
    /// while a member deleted thousands of them (issue 10: a 1 x 100,000 join waited 30 s).
    fn view_read(&self, linearizable: bool) -> (StoreOp, BTreeSet<ResourceId>) {
        let me = &self.cfg.name;
        let claims: BTreeSet<ResourceId> = self
            .claims
            .desired
            .iter()
            .chain(&self.claims.unresolved)
            .chain(&self.claims.maybe_late)
            .cloned()
            .collect();
        let mut keys = vec![
            self.layout.meta(),
            self.layout.generation(),
            self.layout.epoch(),
            self.layout.leader(),
            self.layout.barrier(),
        ];
        let prefixes = if self.group_wide() {
            self.layout.plan_prefixes()
        } else {
            keys.push(self.layout.member(me));
            keys.push(self.layout.draining(me));
            keys.push(self.layout.ack(me));
            vec![self.layout.assign_prefix(me)]
        };
        keys.extend(claims.iter().map(|r| self.layout.claim(r)));
        let op = StoreOp::Read {
            keys,
            prefixes,
            linearizable,
        };
        (op, claims)
    }

    /// A listing: applied unless it is older than the view already acted on and not
    /// linearizable (then the next read is linearizable); failures are retried after a pause.
    pub(super) fn on_read(
        &mut self,
        now: Time,
        number: u64,
        linearizable: bool,
        own: bool,
        result: StoreResult,
    ) {
        self.view.read = None;
        self.view.read_own = false;
        if own {
            return self.on_own_read(now, linearizable, result);
        }
        let covered = std::mem::take(&mut self.view.listing_covers);
        let claims = std::mem::take(&mut self.view.reading_claims);
        let applied = match result {
            Ok(StoreReply::Listed { rev, .. }) if self.goes_back(rev, linearizable) => {
                self.view.want_linearizable = true;
                self.view.dirty = true;
                self.view.retry_at = Some(now + self.cfg.retry_delay);
                false
            }
            Ok(StoreReply::Listed { entries, rev }) => {
                self.view.rev = Some(rev);
                self.view.group = self.parse_listing(&entries);
                self.view.claims_read = claims;
                self.view.seq += 1;
                self.view.own_newer = false;
                if let Some(c) = self.coord.as_mut() {
                    if c.fresh_from_read.is_some_and(|n| number >= n) {
                        c.fresh_from_read = None;
                    }
                }
                self.view.retry_at = None;
                true
            }
            other => {
                self.read_failed(now, other);
                self.view.dirty = true;
                false
            }
        };
        if !applied {
            // Not applied: the next listing must cover these again.
            self.view.changed_claims.extend(covered);
        }
    }

    /// A read that failed or was answered with the wrong kind of reply: reported, and
    /// retried after `retry_delay`.
    fn read_failed(&mut self, now: Time, result: StoreResult) {
        if let Err(error) = result {
            self.events
                .push_back(Event::StoreError { op: "read", error });
        }
        self.view.retry_at = Some(now + self.cfg.retry_delay);
    }

    /// Whether a read at `rev` is older than the view already acted on (a lagging replica)
    /// and may not be applied: never go back in time; ask the authority next. A linearizable
    /// read is always current, even below the view's revision (a store whose revisions went
    /// back after a restore).
    fn goes_back(&self, rev: u64, linearizable: bool) -> bool {
        self.view.rev.is_some_and(|v| rev < v)
            && !linearizable
            && self.cfg.variant != Variant::AcceptOlderViews
    }

    /// The view in `entries`, reporting each bad entry once.
    fn parse_listing(&mut self, entries: &[(Key, Entry)]) -> layout::View {
        let (view, bad) = layout::parse_view(&self.layout, entries);
        for b in bad {
            if self.view.reported_bad.insert(b.key.clone()) {
                self.events.push_back(Event::BadData(b));
            }
        }
        view
    }

    /// A read of this member's assignment only: applied to the view's assignment of this
    /// member under the same revision rule as a listing. The rest of the view stays as it
    /// was (`own_newer`): `update_desired` asks for a listing when a resource the new
    /// assignment adds had its claim named since the last one.
    fn on_own_read(&mut self, now: Time, linearizable: bool, result: StoreResult) {
        match result {
            Ok(StoreReply::Listed { rev, .. }) if self.goes_back(rev, linearizable) => {
                self.view.want_linearizable = true;
                self.view.want_own = true;
                self.view.retry_at = Some(now + self.cfg.retry_delay);
            }
            Ok(StoreReply::Listed { entries, rev }) => {
                self.view.rev = Some(self.view.rev.map_or(rev, |v| v.max(rev)));
                let part = self.parse_listing(&entries);
                let me = self.cfg.name.clone();
                match part.assign.get(&me) {
                    Some(chunks) => {
                        self.view.group.assign.insert(me, chunks.clone());
                    }
                    None => {
                        self.view.group.assign.remove(&me);
                    }
                }
                self.view.own_seq += 1;
                self.view.own_newer = true;
                self.view.retry_at = None;
            }
            other => {
                self.read_failed(now, other);
                self.view.want_own = true;
            }
        }
    }
}
