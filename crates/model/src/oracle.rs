//! The properties: the oracle, judged from the applications' access and the store only (see
//! the crate docs), through [`rebalanser_sim::access::judge`], which the simulator shares; and
//! convergence once faults stop ([`RebalanserModel::balanced`]).
//!
//! **Never** ask a member what it believes here (`Member::valid_until`, its leases, its
//! claims): a core that computes its deadline wrongly would be believed.

use std::collections::BTreeMap;

use rebalanser_core::ResourceId;
use rebalanser_sim::access::{judge, just_after, store_view, Access, ClaimProblem, Finding};
use stateright::Property;

use crate::driver::RebalanserModel;
use crate::state::State;

/// Who accesses, for the findings: the slot and incarnation of the process.
type Who = (usize, u32);

/// `m0#1`: the process.
fn who(a: &Access<'_, Who, u64>) -> String {
    format!("m{}#{}", a.who.0, a.who.1)
}

/// `(LeaseId(0), token 0.6, s1, revoked)`: the lease as its application holds it.
fn lease(a: &Access<'_, Who, u64>) -> String {
    format!(
        "({:?}, token {}, {}{})",
        a.lease,
        a.held.token,
        a.held.session,
        revoked(a)
    )
}

fn revoked(a: &Access<'_, Who, u64>) -> &'static str {
    if a.held.revoked {
        ", revoked"
    } else {
        ""
    }
}

impl RebalanserModel {
    /// Every resource held exactly once by an application (granted, not revoked, not
    /// released), counts within one, every running member joined, one coordinator.
    pub fn balanced(&self, s: &State) -> Result<(), String> {
        let resources = store_view(&s.store, &self.layout).resources;
        let mut owners: BTreeMap<&ResourceId, usize> = BTreeMap::new();
        let mut counts = Vec::new();
        let mut coordinators = 0;
        for (i, slot) in s.slots.iter().enumerate() {
            let Some(m) = slot.core.as_ref() else {
                continue;
            };
            if !m.is_joined() {
                return Err(format!("m{i} not joined"));
            }
            if m.is_coordinator().is_some() {
                coordinators += 1;
            }
            let mut n = 0;
            for (r, _, l) in slot.app.leases() {
                if !l.revoked {
                    *owners.entry(r).or_default() += 1;
                    n += 1;
                }
            }
            counts.push(n);
        }
        for r in &resources {
            let n = owners.get(r).copied().unwrap_or(0);
            if n != 1 {
                return Err(format!("{r} leased {n} times"));
            }
        }
        if owners.len() != resources.len() {
            return Err("a removed resource is still leased".into());
        }
        if coordinators != 1 {
            return Err(format!("{coordinators} coordinators"));
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        if let (Some(a), Some(b)) = (min, max) {
            if b > &(a + 1) {
                return Err(format!("unbalanced: {counts:?}"));
            }
        }
        Ok(())
    }

    /// The oracle's accesses in `s` at its instant, judged against its store: every
    /// application's, revoked or not (a crashed process's application is gone with it).
    fn judge<'a>(&self, s: &'a State) -> Vec<Finding<'a, Who, u64>> {
        let accesses = s
            .slots
            .iter()
            .enumerate()
            .flat_map(|(i, slot)| slot.app.accesses((i, slot.inc)));
        judge(&s.store, &self.layout, accesses, just_after(s.now))
    }

    /// The oracle's (a): a resource accessed by two applications at once. An application
    /// accesses a resource from the `Grant` it received until it released the lease or its
    /// process died (crash, or the abort on `StopDeadlineMissed`), revoked or not; the core's
    /// deadline plays no part. Two entries are two accessors (different member incarnations,
    /// or two leases in one process).
    pub fn double_access(&self, s: &State) -> Option<String> {
        self.judge(s).into_iter().find_map(|f| match f {
            Finding::Double(v) => {
                let holders: Vec<String> = v
                    .iter()
                    .map(|a| format!("{} {}", who(a), lease(a)))
                    .collect();
                Some(format!(
                    "t={}: {} accessed by {}",
                    s.now,
                    v[0].resource,
                    holders.join(" and ")
                ))
            }
            _ => None,
        })
    }

    /// The oracle's (b): an application still accessing a resource (revoked or not) under a
    /// session the store no longer has (expired, or closed). The store's word, not the
    /// member's: from that instant another session may claim the resource.
    pub fn access_after_expiry(&self, s: &State) -> Option<String> {
        self.judge(s).into_iter().find_map(|f| match f {
            Finding::SessionGone(a) | Finding::SessionExpires(a, _) => Some(format!(
                "t={}: {} still accesses {} ({:?}, token {}{}) under {}, which the store has \
                 expired or closed",
                s.now,
                who(&a),
                a.resource,
                a.lease,
                a.held.token,
                revoked(&a),
                a.held.session
            )),
            _ => None,
        })
    }

    /// The oracle's four judgements of the applications' access in `s`, by property name.
    fn findings(&self, s: &State) -> [(&'static str, Option<String>); 4] {
        [
            (NO_DOUBLE_ACCESS, self.double_access(s)),
            (NO_ACCESS_AFTER_EXPIRY, self.access_after_expiry(s)),
            (NO_UNCLAIMED_ACCESS, self.unclaimed_access(s)),
            (TOKEN_IS_CLAIM_REVISION, self.wrong_token(s)),
        ]
    }

    /// Records the first oracle violation at an instant inside an action.
    pub(crate) fn observe(&self, s: &mut State) {
        let found = self.findings(s);
        for (p, m) in found {
            if let Some(m) = m {
                s.seen.entry(p).or_insert(m);
            }
        }
    }

    fn seen(s: &State, p: &str) -> bool {
        s.seen.contains_key(p)
    }

    /// The oracle's (d): an application accessing a resource (revoked or not) while the
    /// store does not hold that resource's claim owned by the lease's session. The claim is
    /// the store's record of who may access the resource: a lease must be backed from its
    /// grant (the claim exists before it) until the application stops (the owner deletes the
    /// claim only after the release; an expiry first is (b)). Stronger than (a): it flags an
    /// unbacked grant even when no second application collides within the explored depth.
    pub fn unclaimed_access(&self, s: &State) -> Option<String> {
        self.judge(s).into_iter().find_map(|f| {
            let (a, claim) = match f {
                Finding::Claim(a, ClaimProblem::Absent) => (a, "absent".to_string()),
                Finding::Claim(a, ClaimProblem::Foreign { owner, .. }) => {
                    (a, format!("owned by {owner:?}"))
                }
                _ => return None,
            };
            Some(format!(
                "t={}: {} accesses {} {} but the store's claim is {claim}",
                s.now,
                who(&a),
                a.resource,
                lease(&a)
            ))
        })
    }

    /// The oracle's (e): an application holding a token that is not the create revision of
    /// the claim backing its lease (DESIGN §8 rule 9: the claim's create revision is the
    /// fencing token the resource compares). Only checked where (d) holds.
    pub fn wrong_token(&self, s: &State) -> Option<String> {
        self.judge(s).into_iter().find_map(|f| match f {
            Finding::Claim(a, ClaimProblem::WrongToken { create_rev }) => Some(format!(
                "t={}: {} accesses {} ({:?}) with token {}, but its claim was created at \
                 revision {create_rev}",
                s.now,
                who(&a),
                a.resource,
                a.lease,
                a.held.token
            )),
            _ => None,
        })
    }

    /// Every oracle violation in `s`, by property name (for counterexample reports).
    pub fn violations(&self, s: &State) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = self
            .findings(s)
            .into_iter()
            .filter_map(|(p, m)| Some((p, m?)))
            .collect();
        for (p, m) in &s.seen {
            v.push((p, format!("inside an action on the way: {m}")));
        }
        if let Some(m) = &s.token_violation {
            v.push((TOKENS_INCREASE, m.clone()));
        }
        if let Some(m) = &s.barrier_violation {
            v.push((BARRIER, m.clone()));
        }
        if let Some(Err(m)) = &s.quiesced {
            v.push((BALANCED, m.clone()));
        }
        v
    }
}

/// Property names.
pub const NO_DOUBLE_ACCESS: &str = "no resource accessed by two applications";
pub const NO_ACCESS_AFTER_EXPIRY: &str = "no access under a session the store ended";
pub const NO_UNCLAIMED_ACCESS: &str = "no access without the session's claim in the store";
pub const TOKEN_IS_CLAIM_REVISION: &str = "the application's token is its claim's revision";
pub const TOKENS_INCREASE: &str = "tokens increase";
pub const BALANCED: &str = "balanced once faults stop";
/// Barrier mode: no lease granted in a round while one of an earlier round is accessed.
pub const BARRIER: &str = "no grant of a round while an earlier round's lease is accessed";
pub const HANDOVER: &str = "handover completes";
/// The safety properties (everything but the `sometimes` one).
pub const SAFETY: [&str; 7] = [
    NO_DOUBLE_ACCESS,
    NO_ACCESS_AFTER_EXPIRY,
    NO_UNCLAIMED_ACCESS,
    TOKEN_IS_CLAIM_REVISION,
    TOKENS_INCREASE,
    BALANCED,
    BARRIER,
];

/// The properties checked on every state.
pub(crate) fn properties() -> Vec<Property<RebalanserModel>> {
    vec![
        Property::always(NO_DOUBLE_ACCESS, |m: &RebalanserModel, s: &State| {
            m.double_access(s).is_none() && !RebalanserModel::seen(s, NO_DOUBLE_ACCESS)
        }),
        Property::always(NO_ACCESS_AFTER_EXPIRY, |m: &RebalanserModel, s: &State| {
            m.access_after_expiry(s).is_none() && !RebalanserModel::seen(s, NO_ACCESS_AFTER_EXPIRY)
        }),
        Property::always(NO_UNCLAIMED_ACCESS, |m: &RebalanserModel, s: &State| {
            m.unclaimed_access(s).is_none() && !RebalanserModel::seen(s, NO_UNCLAIMED_ACCESS)
        }),
        Property::always(TOKEN_IS_CLAIM_REVISION, |m: &RebalanserModel, s: &State| {
            m.wrong_token(s).is_none() && !RebalanserModel::seen(s, TOKEN_IS_CLAIM_REVISION)
        }),
        Property::always(TOKENS_INCREASE, |_, s: &State| s.token_violation.is_none()),
        Property::always(BALANCED, |_, s: &State| !matches!(s.quiesced, Some(Err(_)))),
        Property::always(BARRIER, |_, s: &State| s.barrier_violation.is_none()),
        Property::sometimes(HANDOVER, |_, s: &State| s.handover),
    ]
}
