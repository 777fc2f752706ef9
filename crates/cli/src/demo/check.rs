//! What the demo measures and verifies, from `Admin::status` snapshots alone: when the group is
//! balanced again, how many resources moved (and the fewest that had to), and that no resource
//! was ever claimed by two members.

use std::collections::{BTreeMap, BTreeSet};

use rebalanser::{GroupStatus, SessionId, Token};

/// What the group should look like once a step has settled.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub members: BTreeSet<String>,
    pub resources: BTreeSet<String>,
}

/// Resource → name of the member holding its claim, for the resources in the set.
pub fn owners(s: &GroupStatus) -> BTreeMap<String, String> {
    s.resources
        .iter()
        .filter_map(|r| Some((r.id.to_string(), r.claim.as_ref()?.member.to_string())))
        .collect()
}

/// Claims held per registered member, by name.
pub fn claims_by_name(s: &GroupStatus) -> BTreeMap<String, usize> {
    s.claims_per_member()
        .into_iter()
        .map(|(m, n)| (m.to_string(), n))
        .collect()
}

/// Claims held per member of the target (0 for a target member holding none).
fn counts(s: &GroupStatus, t: &Target) -> BTreeMap<String, usize> {
    let mut c: BTreeMap<String, usize> = t.members.iter().map(|m| (m.clone(), 0)).collect();
    for (m, n) in s.claims_per_member() {
        if let Some(v) = c.get_mut(m.as_str()) {
            *v = n;
        }
    }
    c
}

/// Why the group is not (yet) balanced on `t`; empty when it is: exactly the target's members
/// and resources, every resource claimed by the member it is assigned to, nothing in transit,
/// nobody draining, a coordinator, and claim counts within one of each other.
pub fn unsettled(s: &GroupStatus, t: &Target) -> Vec<String> {
    let mut why = Vec::new();
    let members: BTreeSet<String> = s.members.iter().map(|m| m.name.to_string()).collect();
    let missing: Vec<_> = t.members.difference(&members).cloned().collect();
    let extra: Vec<_> = members.difference(&t.members).cloned().collect();
    if !missing.is_empty() {
        why.push(format!("not registered yet: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        why.push(format!("still registered: {}", extra.join(", ")));
    }
    let resources: BTreeSet<String> = s.resources.iter().map(|r| r.id.to_string()).collect();
    if resources != t.resources {
        why.push("the resource set is not the expected one".to_string());
    }
    if s.coordinator.is_none() {
        why.push("no coordinator".to_string());
    }
    let draining: Vec<String> = s
        .members
        .iter()
        .filter(|m| m.draining)
        .map(|m| m.name.to_string())
        .collect();
    if !draining.is_empty() {
        why.push(format!("draining: {}", draining.join(", ")));
    }
    for h in &s.pending_handovers {
        let from = match &h.from {
            Some(c) if c.session_registered => format!("claimed by {}", c.member),
            Some(c) => format!("claimed by {} (session gone, waiting for expiry)", c.member),
            None => "unclaimed".to_string(),
        };
        let to = match &h.to {
            Some(m) => format!("assigned to {m}"),
            None => "not assigned".to_string(),
        };
        why.push(format!("{}: {from}, {to}", h.resource));
    }
    for r in &s.resources {
        if r.claim.is_none() && !s.pending_handovers.iter().any(|h| h.resource == r.id) {
            why.push(format!("{}: unclaimed", r.id));
        }
    }
    let c = counts(s, t);
    if let (Some(lo), Some(hi)) = (c.values().min(), c.values().max()) {
        if hi - lo > 1 {
            let list: Vec<String> = c.iter().map(|(m, n)| format!("{m} {n}")).collect();
            why.push(format!("unbalanced: {}", list.join(", ")));
        }
    }
    why
}

/// What a step is waiting for, in a few words (the live line under the table).
pub fn progress(s: &GroupStatus, t: &Target) -> String {
    let mut parts = Vec::new();
    let registered: BTreeSet<String> = s.members.iter().map(|m| m.name.to_string()).collect();
    let missing: Vec<&str> = t
        .members
        .iter()
        .filter(|m| !registered.contains(*m))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        parts.push(format!("{} joining", missing.join(", ")));
    }
    for m in s
        .members
        .iter()
        .filter(|m| !t.members.contains(m.name.as_str()))
    {
        parts.push(if m.draining {
            format!("{} leaving, {} claims left", m.name, m.claimed)
        } else {
            format!(
                "{} gone, its {} claims wait for its session to expire",
                m.name, m.claimed
            )
        });
    }
    if s.coordinator.is_none() {
        parts.push("no coordinator".to_string());
    }
    let n = s.pending_handovers.len();
    if n > 0 {
        parts.push(format!(
            "{n} handover{} in progress",
            if n == 1 { "" } else { "s" }
        ));
    }
    if parts.is_empty() && !unsettled(s, t).is_empty() {
        parts.push("rebalancing".to_string());
    }
    parts.join("; ")
}

/// How ownership changed between two settled snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Resources in both sets whose owner changed.
    pub moved: usize,
    /// The fewest that had to move for a balanced (±1) result with these members.
    pub min: usize,
    /// Resources that had no owner before (new, or the group had no members yet).
    pub placed: usize,
    /// Resources no longer in the set.
    pub removed: usize,
    /// (from, to) → count, for the moved ones.
    pub flows: BTreeMap<(String, String), usize>,
}

/// Compares the owners (and resource sets) `before` and `after` a step; `members` are the
/// members after it.
pub fn moves(
    before: &BTreeMap<String, Option<String>>,
    after: &BTreeMap<String, String>,
    members: &BTreeSet<String>,
) -> Moves {
    let mut m = Moves::default();
    for (r, old) in before {
        match (old, after.get(r)) {
            (_, None) => m.removed += 1,
            (None, Some(_)) => m.placed += 1,
            (Some(a), Some(b)) if a != b => {
                m.moved += 1;
                *m.flows.entry((a.clone(), b.clone())).or_default() += 1;
            }
            _ => {}
        }
    }
    m.placed += after.keys().filter(|r| !before.contains_key(*r)).count();
    m.min = min_moves(before, after, members);
    m
}

/// The fewest owned resources that must change owner to reach a balanced assignment of
/// `after`'s resources over `members`: those whose owner is gone, plus each remaining
/// member's excess over its share (the larger shares going to the members that hold the most).
fn min_moves(
    before: &BTreeMap<String, Option<String>>,
    after: &BTreeMap<String, String>,
    members: &BTreeSet<String>,
) -> usize {
    if members.is_empty() {
        return 0;
    }
    let mut orphaned = 0;
    let mut held: BTreeMap<&str, usize> = members.iter().map(|m| (m.as_str(), 0)).collect();
    // Only owned resources that stay in the set count: a removed one needs no new owner.
    for (r, owner) in before {
        let Some(owner) = owner else { continue };
        if !after.contains_key(r) {
            continue;
        }
        match held.get_mut(owner.as_str()) {
            Some(n) => *n += 1,
            None => orphaned += 1,
        }
    }
    orphaned + excess(held.into_values().collect(), after.len(), members.len())
}

fn excess(mut held: Vec<usize>, total: usize, k: usize) -> usize {
    let (base, extra) = (total / k, total % k);
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.iter()
        .enumerate()
        .map(|(i, &h)| h.saturating_sub(base + usize::from(i < extra)))
        .sum()
}

/// Checks every snapshot for what the library promises never happens: a resource claimed by
/// two members at once. Per resource, a claim is (session, fencing token); within a snapshot a
/// resource has at most one claim, the same token always belongs to the same session, and a
/// new claim always carries a larger token than every earlier one.
#[derive(Debug, Default)]
pub struct Safety {
    last: BTreeMap<String, (Token, SessionId, String)>,
    pub snapshots: u64,
    /// Distinct claims observed (resource, token).
    pub claims: u64,
    pub violations: Vec<String>,
}

impl Safety {
    pub fn observe(&mut self, s: &GroupStatus) {
        // The set's resources, and removed ones whose claim is still held.
        let claims = s
            .resources
            .iter()
            .filter_map(|r| Some((r.id.to_string(), r.claim.as_ref()?)))
            .chain(
                s.pending_handovers
                    .iter()
                    .filter_map(|h| Some((h.resource.to_string(), h.from.as_ref()?))),
            )
            .map(|(r, c)| (r, c.token, c.session, c.member.to_string()));
        self.observe_claims(claims);
    }

    /// One snapshot's claims: (resource, token, owner session, member name).
    fn observe_claims(&mut self, claims: impl Iterator<Item = (String, Token, SessionId, String)>) {
        self.snapshots += 1;
        let mut now: BTreeMap<String, (Token, SessionId, String)> = BTreeMap::new();
        for (r, token, session, member) in claims {
            let this = (token, session, member);
            match now.get(&r) {
                Some(other) if other.0 != this.0 || other.1 != this.1 => {
                    self.violations.push(format!(
                        "{r} claimed by {} (token {}) and {} (token {}) in one snapshot",
                        other.2, other.0, this.2, this.0
                    ));
                }
                _ => {
                    now.insert(r, this);
                }
            }
        }
        for (r, this) in now {
            match self.last.get(&r) {
                Some(prev) if prev.0 == this.0 => {
                    if prev.1 != this.1 {
                        self.violations.push(format!(
                            "{r}: token {} held by {} and then by {}",
                            this.0, prev.2, this.2
                        ));
                    }
                }
                Some(prev) if this.0 < prev.0 => {
                    self.violations.push(format!(
                        "{r}: token went back from {} ({}) to {} ({})",
                        prev.0, prev.2, this.0, this.2
                    ));
                }
                _ => {
                    self.claims += 1;
                    self.last.insert(r, this);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(r, o)| (r.to_string(), o.map(str::to_string)))
            .collect()
    }

    fn after(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(r, o)| (r.to_string(), o.to_string()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_join_moves_a_fair_share_and_no_more() {
        let b = before(&[
            ("a", Some("m1")),
            ("b", Some("m1")),
            ("c", Some("m2")),
            ("d", Some("m2")),
        ]);
        let a = after(&[("a", "m1"), ("b", "m3"), ("c", "m2"), ("d", "m2")]);
        let m = moves(&b, &a, &set(&["m1", "m2", "m3"]));
        assert_eq!((m.moved, m.min, m.placed, m.removed), (1, 1, 0, 0));
        assert_eq!(m.flows.get(&("m1".into(), "m3".into())), Some(&1));
    }

    #[test]
    fn a_dead_members_resources_must_all_move() {
        let b = before(&[("a", Some("m1")), ("b", Some("m2")), ("c", Some("m2"))]);
        let a = after(&[("a", "m1"), ("b", "m1"), ("c", "m3")]);
        let m = moves(&b, &a, &set(&["m1", "m3"]));
        assert_eq!((m.moved, m.min), (2, 2));
    }

    #[test]
    fn first_placement_and_resource_changes_are_not_moves() {
        let b = before(&[("a", None), ("b", None)]);
        let m = moves(&b, &after(&[("a", "m1"), ("b", "m2")]), &set(&["m1", "m2"]));
        assert_eq!((m.moved, m.min, m.placed, m.removed), (0, 0, 2, 0));
        let b = before(&[("a", Some("m1")), ("b", Some("m2")), ("c", Some("m2"))]);
        let a = after(&[("a", "m1"), ("c", "m2"), ("d", "m1")]);
        let m = moves(&b, &a, &set(&["m1", "m2"]));
        assert_eq!((m.moved, m.min, m.placed, m.removed), (0, 0, 1, 1));
    }

    #[test]
    fn excess_gives_the_larger_shares_to_the_largest_holders() {
        assert_eq!(excess(vec![5, 5, 0], 10, 3), 3);
        assert_eq!(excess(vec![4, 4, 4], 12, 3), 0);
        assert_eq!(excess(vec![6, 6, 0], 12, 3), 4);
    }

    fn claim(r: &str, rev: u64, session: u64, m: &str) -> (String, Token, SessionId, String) {
        let token = Token::new(0, rev);
        (r.to_string(), token, SessionId(session), m.to_string())
    }

    #[test]
    fn safety_accepts_handovers_with_growing_tokens() {
        let mut s = Safety::default();
        s.observe_claims([claim("a", 5, 1, "m1"), claim("b", 6, 2, "m2")].into_iter());
        s.observe_claims([claim("a", 5, 1, "m1")].into_iter());
        s.observe_claims([claim("a", 9, 2, "m2"), claim("b", 7, 1, "m1")].into_iter());
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert_eq!((s.snapshots, s.claims), (3, 4));
    }

    #[test]
    fn safety_catches_two_holders_and_tokens_going_back() {
        let mut s = Safety::default();
        s.observe_claims([claim("a", 5, 1, "m1"), claim("a", 6, 2, "m2")].into_iter());
        assert_eq!(s.violations.len(), 1, "{:?}", s.violations);
        s.observe_claims([claim("a", 5, 3, "m3")].into_iter());
        assert_eq!(s.violations.len(), 2, "{:?}", s.violations);
        s.observe_claims([claim("a", 4, 1, "m1")].into_iter());
        assert_eq!(s.violations.len(), 3, "{:?}", s.violations);
    }
}
