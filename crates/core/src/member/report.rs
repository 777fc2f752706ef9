//! What a rebalance did and why, and who joined or left: plain data for logs, metrics and
//! operators (issue 14: a crash once logged `moved=0` while 7 resources changed owner,
//! because only live members' assignments were compared). Decides nothing.
//!
//! "Before" is the stored assignment of every member, live or not, so a dead member's
//! resources count as moved to their new owner. A rebalance that takes several
//! transactions (removals first, PITFALLS 21) is reported once, when its last transaction
//! commits, against the assignment it started from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::assignor::Assignment;
use crate::ids::{Epoch, MemberId, ResourceId, SessionId};
use crate::layout::View;

/// One resource whose assigned owner changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub resource: ResourceId,
    /// `None`: the resource was new (or its last assignment was torn).
    pub from: Option<MemberId>,
    /// `None`: the resource was removed from the group.
    pub to: Option<MemberId>,
}

/// Why a rebalance ran: what differed between the stored assignment and the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RebalanceCause {
    /// The group had no assignment yet.
    Initial,
    /// A member without an assignment for its current session (new, or back with a new
    /// session).
    Joined,
    /// A member that marked itself draining (a graceful leave).
    Left,
    /// A member with a stored assignment and no record any more: its session expired (or it
    /// left before its draining mark was read).
    Expired,
    ResourcesAdded,
    ResourcesRemoved,
    /// A resource reported failing where it is assigned.
    Unhealthy,
    /// None of the above: weights, balance, or an assignment rewritten for a new round.
    Other,
}

impl RebalanceCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RebalanceCause::Initial => "initial",
            RebalanceCause::Joined => "member_joined",
            RebalanceCause::Left => "member_left",
            RebalanceCause::Expired => "member_expired",
            RebalanceCause::ResourcesAdded => "resources_added",
            RebalanceCause::ResourcesRemoved => "resources_removed",
            RebalanceCause::Unhealthy => "unhealthy",
            RebalanceCause::Other => "other",
        }
    }
}

/// A committed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceReport {
    pub epoch: Epoch,
    pub causes: Vec<RebalanceCause>,
    /// Members with a stored assignment before, live or not.
    pub members_before: Vec<MemberId>,
    /// The members assigned to: live and not draining.
    pub members_after: Vec<MemberId>,
    pub joined: Vec<MemberId>,
    pub left: Vec<MemberId>,
    pub expired: Vec<MemberId>,
    /// Every resource whose owner changed, in resource order.
    pub moves: Vec<Move>,
    /// Resources in the group after.
    pub resources: usize,
}

impl RebalanceReport {
    /// Resources taken from one member and given to another.
    pub fn moved(&self) -> usize {
        self.moves
            .iter()
            .filter(|m| m.from.is_some() && m.to.is_some())
            .count()
    }

    /// Resources assigned that had no owner before (new, or from a torn assignment).
    pub fn assigned(&self) -> usize {
        self.moves.iter().filter(|m| m.from.is_none()).count()
    }

    /// Resources removed from the group, with their assignment.
    pub fn unassigned(&self) -> usize {
        self.moves.iter().filter(|m| m.to.is_none()).count()
    }
}

/// Who owned what in the stored assignment, every member's chunks included (a torn set counts
/// what its chunks name).
pub(super) fn stored_owners(v: &View) -> BTreeMap<ResourceId, MemberId> {
    let mut owners = BTreeMap::new();
    for (m, chunks) in &v.assign {
        for c in chunks {
            for r in &c.rec.resources {
                owners.insert(r.clone(), m.clone());
            }
        }
    }
    owners
}

/// The report of bringing `v`'s stored assignment to `next`.
pub(super) fn report(epoch: Epoch, v: &View, next: &Assignment, initial: bool) -> RebalanceReport {
    let before = stored_owners(v);
    let mut moves = Vec::new();
    let mut after: BTreeMap<&ResourceId, &MemberId> = BTreeMap::new();
    for (m, set) in next {
        for r in set {
            after.insert(r, m);
        }
    }
    for (r, to) in &after {
        match before.get(*r) {
            Some(from) if from == *to => {}
            from => moves.push(Move {
                resource: (*r).clone(),
                from: from.cloned(),
                to: Some((*to).clone()),
            }),
        }
    }
    for (r, from) in &before {
        if !after.contains_key(r) {
            moves.push(Move {
                resource: r.clone(),
                from: Some(from.clone()),
                to: None,
            });
        }
    }
    moves.sort_by(|a, b| a.resource.cmp(&b.resource));
    let members_before: Vec<MemberId> = v.assign.keys().cloned().collect();
    let members_after: Vec<MemberId> = next.keys().cloned().collect();
    let has_assignment = |m: &MemberId, s: SessionId| {
        v.assign
            .get(m)
            .is_some_and(|cs| cs.iter().any(|c| c.rec.session == s))
    };
    let joined: Vec<MemberId> = next
        .keys()
        .filter(|m| {
            v.members
                .get(*m)
                .is_some_and(|mv| !has_assignment(m, mv.session))
        })
        .cloned()
        .collect();
    let left: Vec<MemberId> = members_before
        .iter()
        .filter(|m| v.draining.contains_key(*m) && v.members.contains_key(*m))
        .cloned()
        .collect();
    let expired: Vec<MemberId> = members_before
        .iter()
        .filter(|m| !v.members.contains_key(*m))
        .cloned()
        .collect();
    let mut causes = BTreeSet::new();
    if initial {
        causes.insert(RebalanceCause::Initial);
    } else if !joined.is_empty() {
        causes.insert(RebalanceCause::Joined);
    }
    if !left.is_empty() {
        causes.insert(RebalanceCause::Left);
    }
    if !expired.is_empty() {
        causes.insert(RebalanceCause::Expired);
    }
    if after.keys().any(|r| !before.contains_key(*r)) && !initial {
        causes.insert(RebalanceCause::ResourcesAdded);
    }
    if before.keys().any(|r| !v.resources.contains(r)) {
        causes.insert(RebalanceCause::ResourcesRemoved);
    }
    let avoided = v.avoided();
    if before
        .iter()
        .any(|(r, m)| avoided.get(r).is_some_and(|on| on.contains(m)))
    {
        causes.insert(RebalanceCause::Unhealthy);
    }
    if causes.is_empty() {
        causes.insert(RebalanceCause::Other);
    }
    RebalanceReport {
        epoch,
        causes: causes.into_iter().collect(),
        members_before,
        members_after,
        joined,
        left,
        expired,
        moves,
        resources: v.resources.len(),
    }
}

/// A rebalance of several transactions: the report of its last transaction (`last`, planned
/// from the state the earlier ones left) told from where it started (`first`). The removal
/// transactions left the moved resources unassigned, so `last` shows them as new; `first`
/// knows their owner before. O(what moved).
pub(super) fn combine(first: &RebalanceReport, last: &RebalanceReport) -> RebalanceReport {
    let from: BTreeMap<&ResourceId, &Option<MemberId>> =
        first.moves.iter().map(|m| (&m.resource, &m.from)).collect();
    let mut moves: Vec<Move> = last
        .moves
        .iter()
        .map(|m| Move {
            resource: m.resource.clone(),
            from: match (&m.from, from.get(&m.resource)) {
                (None, Some(f)) => (*f).clone(),
                (f, _) => f.clone(),
            },
            to: m.to.clone(),
        })
        .filter(|m| m.from != m.to)
        .collect();
    // Removed by an earlier transaction of the same rebalance and not re-added.
    let in_last: BTreeSet<&ResourceId> = last.moves.iter().map(|m| &m.resource).collect();
    for m in &first.moves {
        if m.to.is_none() && !in_last.contains(&m.resource) {
            moves.push(m.clone());
        }
    }
    moves.sort_by(|a, b| a.resource.cmp(&b.resource));
    let union = |a: &[MemberId], b: &[MemberId]| -> Vec<MemberId> {
        a.iter()
            .chain(b)
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut causes: BTreeSet<RebalanceCause> = first.causes.iter().copied().collect();
    causes.extend(last.causes.iter().copied());
    if causes.len() > 1 {
        causes.remove(&RebalanceCause::Other);
    }
    RebalanceReport {
        epoch: last.epoch,
        causes: causes.into_iter().collect(),
        members_before: first.members_before.clone(),
        members_after: last.members_after.clone(),
        joined: union(&first.joined, &last.joined),
        left: union(&first.left, &last.left),
        expired: union(&first.expired, &last.expired),
        moves,
        resources: last.resources,
    }
}

/// A change of the group's membership as the coordinator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Registered (a new member, or a new session of one).
    Joined,
    /// Marked itself draining: leaving gracefully.
    Leaving,
    /// Gone after draining.
    Left,
    /// Gone without a draining mark seen: its session expired (or it left between two reads).
    Expired,
}

impl MembershipChange {
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipChange::Joined => "joined",
            MembershipChange::Leaving => "leaving",
            MembershipChange::Left => "left",
            MembershipChange::Expired => "expired",
        }
    }
}

/// The members a coordinator last saw: session and whether draining.
pub(super) type Seen = BTreeMap<MemberId, (SessionId, bool)>;

pub(super) fn seen(v: &View) -> Seen {
    v.members
        .iter()
        .map(|(m, mv)| {
            (
                m.clone(),
                (mv.session, v.draining.get(m) == Some(&mv.session)),
            )
        })
        .collect()
}

/// The changes from `old` to `new`, in member order.
pub(super) fn membership_changes(
    old: &Seen,
    new: &Seen,
) -> Vec<(MemberId, SessionId, MembershipChange)> {
    let mut out = Vec::new();
    for (m, &(s, draining)) in new {
        match old.get(m) {
            Some(&(os, od)) if os == s => {
                if draining && !od {
                    out.push((m.clone(), s, MembershipChange::Leaving));
                }
            }
            Some(&(os, od)) => {
                // The same name under a new session: the old one ended first.
                let gone = if od {
                    MembershipChange::Left
                } else {
                    MembershipChange::Expired
                };
                out.push((m.clone(), os, gone));
                out.push((m.clone(), s, MembershipChange::Joined));
                if draining {
                    out.push((m.clone(), s, MembershipChange::Leaving));
                }
            }
            None => {
                out.push((m.clone(), s, MembershipChange::Joined));
                if draining {
                    out.push((m.clone(), s, MembershipChange::Leaving));
                }
            }
        }
    }
    for (m, &(s, draining)) in old {
        if !new.contains_key(m) {
            let gone = if draining {
                MembershipChange::Left
            } else {
                MembershipChange::Expired
            };
            out.push((m.clone(), s, gone));
        }
    }
    out
}

/// Shared: a report rides in plans, pending operations and events without copying its moves.
pub(super) type SharedReport = Arc<RebalanceReport>;

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }
    fn mv(r: &str, from: Option<&str>, to: Option<&str>) -> Move {
        Move {
            resource: ResourceId::new(r).unwrap(),
            from: from.map(m),
            to: to.map(m),
        }
    }
    fn rep(causes: Vec<RebalanceCause>, moves: Vec<Move>) -> RebalanceReport {
        RebalanceReport {
            epoch: Epoch(3),
            causes,
            members_before: vec![m("a"), m("b")],
            members_after: vec![m("a"), m("b"), m("c")],
            joined: vec![],
            left: vec![],
            expired: vec![],
            moves,
            resources: 4,
        }
    }

    /// A rebalance in two transactions: the removals leave r1 and r2 unassigned, the last
    /// transaction assigns them; the combined report tells them moved from their first owner,
    /// and a resource removed in the first transaction stays reported.
    #[test]
    fn a_rebalance_of_several_transactions_is_told_from_where_it_started() {
        let first = rep(
            vec![RebalanceCause::Joined],
            vec![
                mv("r1", Some("a"), Some("c")),
                mv("r2", Some("b"), Some("c")),
                mv("r9", Some("b"), None),
            ],
        );
        let last = rep(
            vec![RebalanceCause::Other],
            vec![mv("r1", None, Some("c")), mv("r2", None, Some("c"))],
        );
        let r = combine(&first, &last);
        assert_eq!(
            r.moves,
            vec![
                mv("r1", Some("a"), Some("c")),
                mv("r2", Some("b"), Some("c")),
                mv("r9", Some("b"), None),
            ]
        );
        assert_eq!((r.moved(), r.assigned(), r.unassigned()), (2, 0, 1));
        assert_eq!(r.causes, vec![RebalanceCause::Joined]);
        // A resource that went back to its first owner did not move.
        let back = rep(vec![], vec![mv("r1", None, Some("a"))]);
        assert!(combine(&first, &back)
            .moves
            .iter()
            .all(|x| x.resource.as_str() != "r1"));
    }

    #[test]
    fn membership_changes_tell_joins_graceful_leaves_and_expiries_apart() {
        let s = |n: u64| SessionId(n);
        let old: Seen = [
            (m("a"), (s(1), false)),
            (m("b"), (s(2), true)),
            (m("c"), (s(3), false)),
            (m("d"), (s(4), false)),
        ]
        .into_iter()
        .collect();
        let new: Seen = [
            (m("a"), (s(1), true)),
            (m("d"), (s(7), false)),
            (m("e"), (s(5), false)),
        ]
        .into_iter()
        .collect();
        let got = membership_changes(&old, &new);
        use MembershipChange::*;
        assert_eq!(
            got,
            vec![
                (m("a"), s(1), Leaving),
                (m("d"), s(4), Expired),
                (m("d"), s(7), Joined),
                (m("e"), s(5), Joined),
                (m("b"), s(2), Left),
                (m("c"), s(3), Expired),
            ]
        );
        assert!(membership_changes(&new, &new).is_empty());
    }
}
