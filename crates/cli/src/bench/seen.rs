//! What the application saw, whichever process it ran in: who holds what, grants, revokes,
//! the gap each resource spent unheld between two holders, and any resource held by two
//! members at once. "Stable" is judged from this, never from the members' own state.
//!
//! Times are CLOCK_BOOTTIME nanoseconds, one clock for every process on the host, because
//! the events of member processes arrive through separate pipes and so out of order: a grant
//! of B may be read before the release of A that preceded it. Overlap is therefore judged by
//! the times the members stamped, not by the order the bench read them in.

use std::collections::{BTreeMap, BTreeSet};

use super::counting::Counts;

/// What the application observed, under one lock.
#[derive(Default)]
pub struct Seen {
    /// Resource → the members holding a lease on it now, with when each was granted (more
    /// than one is allowed only while the older holder's release is still in flight).
    pub holders: BTreeMap<String, Vec<(usize, u64)>>,
    /// Member → how many leases it holds now.
    pub per_member: BTreeMap<usize, usize>,
    /// Resource → the member that released it last, and when.
    pub last_release: BTreeMap<String, (usize, u64)>,
    pub grants: u64,
    pub revokes: u64,
    /// Grants of a resource before another member's release of it.
    pub doubles: u64,
    /// Release → next grant of one resource, in nanoseconds, in the order seen.
    pub gaps: Vec<u64>,
    /// When the last grant or revoke happened.
    pub last_change: Option<u64>,
    /// Members that said they joined (member processes say so on stdout).
    pub joined: BTreeSet<usize>,
    /// Members whose end the bench caused (a leave or a kill).
    pub expected_exit: BTreeSet<usize>,
    /// Members that ended on their own: a failed run.
    pub unexpected_exits: Vec<String>,
    /// The latest store counts each member process reported.
    pub child_counts: BTreeMap<usize, Counts>,
}

impl Seen {
    /// Member `i` was granted `r` at `at`.
    pub fn grant(&mut self, i: usize, r: &str, at: u64) {
        let holders = self.holders.entry(r.to_string()).or_default();
        if holders.is_empty() {
            if let Some(&(_, released)) = self.last_release.get(r) {
                if released > at {
                    // Read after the release, but granted before it.
                    self.doubles += 1;
                } else {
                    self.gaps.push(at - released);
                }
            }
        }
        // Otherwise the current holder's release is still on its way; it judges this grant.
        holders.push((i, at));
        *self.per_member.entry(i).or_default() += 1;
        self.grants += 1;
        self.touch(at);
    }

    /// Member `i` stopped accessing `r` at `at`.
    pub fn release(&mut self, i: usize, r: &str, at: u64) {
        if let Some(h) = self.holders.get_mut(r) {
            let before = h.len();
            h.retain(|(m, _)| *m != i);
            if h.len() != before {
                for &(_, granted) in h.iter() {
                    if granted < at {
                        self.doubles += 1;
                    } else {
                        self.gaps.push(granted - at);
                    }
                }
                if let Some(n) = self.per_member.get_mut(&i) {
                    *n = n.saturating_sub(1);
                }
            }
            if h.is_empty() {
                self.holders.remove(r);
            }
        }
        self.last_release.insert(r.to_string(), (i, at));
        self.revokes += 1;
        self.touch(at);
    }

    /// Member `i` is gone (its process died): whatever it held, it stopped accessing by `at`.
    pub fn release_all(&mut self, i: usize, at: u64) {
        let held: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| h.iter().any(|(m, _)| *m == i))
            .map(|(r, _)| r.clone())
            .collect();
        for r in held {
            self.release(i, &r, at);
        }
    }

    fn touch(&mut self, at: u64) {
        self.last_change = Some(self.last_change.map_or(at, |t| t.max(at)));
    }

    /// Every resource held by exactly one member, each of `live` members within one of the
    /// others (the balanced assignment of equal weights).
    pub fn stable(&self, resources: usize, live: &[usize]) -> bool {
        if self.holders.len() != resources || self.holders.values().any(|h| h.len() != 1) {
            return false;
        }
        let counts: Vec<usize> = live
            .iter()
            .map(|m| self.per_member.get(m).copied().unwrap_or(0))
            .collect();
        let total: usize = counts.iter().sum();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        total == resources && hi - lo <= 1
    }

    /// Resource → its one holder (for resources with exactly one).
    pub fn owners(&self) -> BTreeMap<String, usize> {
        self.holders
            .iter()
            .filter(|(_, h)| h.len() == 1)
            .map(|(r, h)| (r.clone(), h[0].0))
            .collect()
    }

    /// The store counts of every member process, summed.
    pub fn child_total(&self) -> Counts {
        self.child_counts
            .values()
            .fold(Counts::default(), |a, c| a.plus(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holders: &[(&str, &[usize])]) -> Seen {
        let mut s = Seen::default();
        for (r, hs) in holders {
            for m in *hs {
                s.holders.entry(r.to_string()).or_default().push((*m, 0));
                *s.per_member.entry(*m).or_default() += 1;
            }
        }
        s
    }

    #[test]
    fn stable_means_each_resource_once_and_the_members_balanced() {
        let ok = seen(&[("a", &[0]), ("b", &[1]), ("c", &[0])]);
        assert!(ok.stable(3, &[0, 1]));
        assert!(!ok.stable(4, &[0, 1]), "a resource nobody holds");
        assert!(!ok.stable(3, &[0, 1, 2]), "member 2 holds nothing: 2 vs 0");
        let twice = seen(&[("a", &[0, 1]), ("b", &[1])]);
        assert!(!twice.stable(2, &[0, 1]), "a resource held twice");
        let lopsided = seen(&[("a", &[0]), ("b", &[0]), ("c", &[0]), ("d", &[1])]);
        assert!(!lopsided.stable(4, &[0, 1]), "3 vs 1");
        assert_eq!(ok.owners().len(), 3);
        assert_eq!(
            twice.owners().len(),
            1,
            "only resources with one holder have an owner"
        );
    }

    #[test]
    fn overlap_is_judged_by_the_stamped_times_in_whatever_order_they_are_read() {
        // A releases at 100, B is granted at 150: read in order, and read grant-first.
        let mut s = Seen::default();
        s.grant(0, "r", 10);
        s.release(0, "r", 100);
        s.grant(1, "r", 150);
        assert_eq!((s.doubles, s.gaps.clone()), (0, vec![50]));
        let mut s = Seen::default();
        s.grant(0, "r", 10);
        s.grant(1, "r", 150);
        s.release(0, "r", 100);
        assert_eq!((s.doubles, s.gaps.clone()), (0, vec![50]));
        assert_eq!(s.owners().get("r"), Some(&1));

        // B granted at 90, before A's release at 100: a double hold, in either order.
        let mut s = Seen::default();
        s.grant(0, "r", 10);
        s.grant(1, "r", 90);
        s.release(0, "r", 100);
        assert_eq!(s.doubles, 1);
        let mut s = Seen::default();
        s.grant(0, "r", 10);
        s.release(0, "r", 100);
        s.grant(1, "r", 90);
        assert_eq!(s.doubles, 1);
    }

    #[test]
    fn a_dead_member_releases_everything_it_held() {
        let mut s = Seen::default();
        s.grant(0, "a", 1);
        s.grant(0, "b", 2);
        s.grant(1, "c", 3);
        s.release_all(0, 50);
        assert_eq!(s.owners().len(), 1);
        assert_eq!(s.per_member.get(&0), Some(&0));
        assert_eq!(s.revokes, 2);
        assert_eq!(s.last_change, Some(50));
    }
}
