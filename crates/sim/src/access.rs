//! The applications' side of the oracle, shared by every checker of the core: the simulator
//! ([`crate::World`]), its hand-driven regression tests (`tests/regressions.rs`) and the model
//! checker (`rebalanser-model`).
//!
//! - [`App`]: what the application of one member process accesses. It accesses a resource from
//!   the `Grant` event it received until it stopped: it released the lease ([`App::release`]),
//!   or its process died (a crash: [`App::clear`]; the abort the runtime performs on
//!   `StopDeadlineMissed`: [`App::on_event`] ends every access and says so). A revoked lease not
//!   yet released is still being accessed.
//! - [`Tokens`]: fencing tokens granted per resource grow across owners.
//! - [`judge`]: the accesses held against the store model ([`MemModel`]): no resource accessed
//!   twice at once, every access under a session the store still has and does not expire
//!   before the access ends, under that session's claim, with the claim's create revision as
//!   its token.
//!
//! **Never** ask a member what it believes here (its deadline, `Member::valid_until`, its
//! leases or claims): a core that computes its deadline wrongly would be believed. Drivers
//! decide everything else (when to check, what a crash is, how a finding is worded).

use std::collections::BTreeMap;

use rebalanser_core::layout::{self, Layout, View};
use rebalanser_core::{Event, LeaseId, ResourceId, SessionId, Time, Token};
use rebalanser_store::MemModel;

/// One lease as its application sees it. `S` is when it was granted, for drivers that report
/// it (the simulator: [`Time`]); the model checker records nothing (`()`), since a grant time
/// would tell apart states that differ in nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLease<S = ()> {
    pub token: Token,
    pub session: SessionId,
    /// A `Revoke` arrived: the application is stopping, but still accessing the resource.
    pub revoked: bool,
    pub since: S,
}

/// What the application of one member process accesses, per resource and lease: a second
/// grant on a resource whose first lease is still being stopped is a second access, not an
/// overwrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App<S = ()> {
    leases: BTreeMap<(ResourceId, LeaseId), AppLease<S>>,
}

impl<S> Default for App<S> {
    fn default() -> App<S> {
        App {
            leases: BTreeMap::new(),
        }
    }
}

/// What an event a member emitted means for its application (and its driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEffect {
    /// The application now accesses `resource` under `lease`. `others`: how many leases on
    /// `resource` it was already accessing (a correct core grants none while one is held).
    Granted {
        resource: ResourceId,
        lease: LeaseId,
        token: Token,
        session: SessionId,
        others: usize,
    },
    /// The application was told, for the first time, to stop accessing under `lease`. It goes
    /// on accessing until the driver calls [`App::release`].
    Revoked {
        resource: ResourceId,
        lease: LeaseId,
    },
    /// The member missed a stop deadline: the runtime aborts the process. Every access has
    /// ended (the application died); the driver must end the process (its member with it).
    Abort,
    /// Nothing for the application.
    None,
}

impl<S> App<S> {
    pub fn new() -> App<S> {
        App::default()
    }

    /// Applies an event drained from the member to its application; `since` is now.
    pub fn on_event(&mut self, e: &Event, since: S) -> AppEffect {
        match e {
            Event::Grant {
                lease,
                resource,
                token,
                session,
                ..
            } => {
                let others = self.leases_on(resource).count();
                self.leases.insert(
                    (resource.clone(), *lease),
                    AppLease {
                        token: *token,
                        session: *session,
                        revoked: false,
                        since,
                    },
                );
                AppEffect::Granted {
                    resource: resource.clone(),
                    lease: *lease,
                    token: *token,
                    session: *session,
                    others,
                }
            }
            Event::Revoke {
                lease, resource, ..
            } => match self.leases.get_mut(&(resource.clone(), *lease)) {
                Some(l) if !l.revoked => {
                    l.revoked = true;
                    AppEffect::Revoked {
                        resource: resource.clone(),
                        lease: *lease,
                    }
                }
                _ => AppEffect::None,
            },
            Event::StopDeadlineMissed { .. } => {
                self.clear();
                AppEffect::Abort
            }
            _ => AppEffect::None,
        }
    }

    /// The application finished stopping `lease` on `resource`: false if it was not
    /// accessing under it (a stale release).
    pub fn release(&mut self, resource: &ResourceId, lease: LeaseId) -> bool {
        self.leases.remove(&(resource.clone(), lease)).is_some()
    }

    /// Forgets every lease on `resource` but `lease`: for a driver that reports a second grant
    /// and then treats it as replacing the first.
    pub fn supersede(&mut self, resource: &ResourceId, lease: LeaseId) {
        self.leases.retain(|(r, l), _| r != resource || *l == lease);
    }

    /// The process died: its application accesses nothing any more.
    pub fn clear(&mut self) {
        self.leases.clear();
    }

    /// Number of leases accessed.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease accessed, revoked or not, by resource then lease.
    pub fn leases(&self) -> impl Iterator<Item = (&ResourceId, LeaseId, &AppLease<S>)> {
        self.leases.iter().map(|((r, id), l)| (r, *id, l))
    }

    fn leases_on<'a>(
        &'a self,
        resource: &'a ResourceId,
    ) -> impl Iterator<Item = (&'a ResourceId, LeaseId, &'a AppLease<S>)> {
        self.leases().filter(move |(r, _, _)| *r == resource)
    }

    /// The resources accessed (each once), in order.
    pub fn resources(&self) -> impl Iterator<Item = &ResourceId> {
        let mut last: Option<&ResourceId> = None;
        self.leases.keys().filter_map(move |(r, _)| {
            let new = last != Some(r);
            last = Some(r);
            new.then_some(r)
        })
    }

    /// Whether `resource` is accessed at all (revoked or not).
    pub fn accesses_resource(&self, resource: &ResourceId) -> bool {
        self.leases_on(resource).next().is_some()
    }

    /// Whether `resource` is accessed under a lease not revoked.
    pub fn holds(&self, resource: &ResourceId) -> bool {
        self.leases_on(resource).any(|(_, _, l)| !l.revoked)
    }

    /// The accesses for [`judge`], each named `who`.
    pub fn accesses<W: Copy>(&self, who: W) -> impl Iterator<Item = Access<'_, W, S>> {
        self.leases().map(move |(resource, lease, held)| Access {
            who,
            resource,
            lease,
            held,
        })
    }
}

/// The last token granted per resource and to whom (a member slot): fencing tokens grow
/// across owners (DESIGN §8 rule 9).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    last: BTreeMap<ResourceId, (usize, SessionId, Token)>,
}

/// The grant of a resource before the one [`Tokens::grant`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrevGrant {
    pub owner: usize,
    pub session: SessionId,
    pub token: Token,
    /// The new token does not grow past this one: another session's must be greater; the
    /// same session's (a lease granted again under the same claim) must not be smaller.
    pub regressed: bool,
}

impl Tokens {
    /// Records that `owner` was granted `resource` under `session` with `token`; returns the
    /// grant before it, if any.
    pub fn grant(
        &mut self,
        resource: &ResourceId,
        owner: usize,
        session: SessionId,
        token: Token,
    ) -> Option<PrevGrant> {
        let prev = self.last.insert(resource.clone(), (owner, session, token));
        prev.map(|(o, s, t)| PrevGrant {
            owner: o,
            session: s,
            token: t,
            regressed: if s == session { token < t } else { token <= t },
        })
    }
}

/// One application's access to one resource, named by the driver (`who`).
#[derive(Debug)]
pub struct Access<'a, W, S = ()> {
    pub who: W,
    pub resource: &'a ResourceId,
    pub lease: LeaseId,
    pub held: &'a AppLease<S>,
}

impl<W: Copy, S> Clone for Access<'_, W, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: Copy, S> Copy for Access<'_, W, S> {}

/// Why the store's claim of a resource does not back a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimProblem {
    /// The store holds no claim of the resource.
    Absent,
    /// The claim is not the lease's session's.
    Foreign {
        owner: Option<SessionId>,
        create_rev: u64,
    },
    /// The lease's session's claim, but created at another revision than the lease's token
    /// (the fencing token the resource compares).
    WrongToken { create_rev: u64 },
}

impl ClaimProblem {
    /// In words, for a lease of `session`.
    pub fn why(self, session: SessionId) -> String {
        let (owner, create_rev) = match self {
            ClaimProblem::Absent => return "the store has no claim for it".into(),
            ClaimProblem::Foreign { owner, create_rev } => (owner, create_rev),
            ClaimProblem::WrongToken { create_rev } => (Some(session), create_rev),
        };
        format!("the store's claim is {owner:?}'s, created at revision {create_rev}")
    }
}

/// Why the store's claim of `resource` does not back a lease of `session` with `token`, if
/// not.
pub fn claim_problem(
    store: &MemModel,
    layout: &Layout,
    resource: &ResourceId,
    session: SessionId,
    token: Token,
) -> Option<ClaimProblem> {
    match store.entries().get(&layout.claim(resource)) {
        None => Some(ClaimProblem::Absent),
        Some(e) if e.owner != Some(session) => Some(ClaimProblem::Foreign {
            owner: e.owner,
            create_rev: e.create_rev,
        }),
        Some(e) if e.create_rev != token.revision() => Some(ClaimProblem::WrongToken {
            create_rev: e.create_rev,
        }),
        Some(_) => None,
    }
}

/// What [`judge`] found.
#[derive(Debug)]
pub enum Finding<'a, W, S = ()> {
    /// An access under a session the store no longer has (expired or closed).
    SessionGone(Access<'a, W, S>),
    /// An access under a session the store expires at this time, before the access ends.
    SessionExpires(Access<'a, W, S>, Time),
    /// An access the store's claim does not back.
    Claim(Access<'a, W, S>, ClaimProblem),
    /// One resource accessed by several applications (or under several leases of one) at
    /// once, in the order given.
    Double(Vec<Access<'a, W, S>>),
}

impl<W: Copy, S> Finding<'_, W, S> {
    /// The finding in words, each access named by `who`, with a key that names it apart from
    /// when it was seen (an access that breaks a rule does so at every check: report it once
    /// per key). The simulator's wording; the model checker words its own per property.
    pub fn describe(&self, who: impl Fn(&Access<'_, W, S>) -> String) -> (String, String) {
        match self {
            Finding::SessionGone(a) => (
                format!("gone {} {}", a.resource, a.held.session),
                format!(
                    "{} accesses {} under a session the store no longer has",
                    who(a),
                    a.resource
                ),
            ),
            Finding::SessionExpires(a, e) => (
                format!("expired {} {}", a.resource, a.held.session),
                format!(
                    "{} accesses {} past its session's expiry in the store at {e}",
                    who(a),
                    a.resource
                ),
            ),
            Finding::Claim(a, p) => (
                format!("claim {} {} {}", a.resource, a.held.session, a.held.token),
                format!(
                    "{} accesses {} but {}",
                    who(a),
                    a.resource,
                    p.why(a.held.session)
                ),
            ),
            Finding::Double(v) => {
                let r = v[0].resource;
                let v: Vec<String> = v.iter().map(who).collect();
                (
                    format!("double {r} {}", v.join(" ")),
                    format!("double access on {r}: {}", v.join(" and ")),
                )
            }
        }
    }
}

/// Judges `accesses`, each lasting until `until` (exclusive), against the store. A session
/// the store has not reaped yet is gone from its expiry on (`MemModel` expires on every
/// operation). For an access at one instant `now`, pass `until = `[`just_after`]`(now)`.
///
/// Findings come per access in the order given (its session's, then its claim's), then one
/// [`Finding::Double`] per resource accessed more than once, by resource.
pub fn judge<'a, W: Copy, S>(
    store: &MemModel,
    layout: &Layout,
    accesses: impl IntoIterator<Item = Access<'a, W, S>>,
    until: Time,
) -> Vec<Finding<'a, W, S>> {
    let mut found = Vec::new();
    let mut holders: BTreeMap<&'a ResourceId, Vec<Access<'a, W, S>>> = BTreeMap::new();
    for a in accesses {
        match store.expires_at(a.held.session) {
            None => found.push(Finding::SessionGone(a)),
            Some(e) if e < until => found.push(Finding::SessionExpires(a, e)),
            Some(_) => {}
        }
        if let Some(p) = claim_problem(store, layout, a.resource, a.held.session, a.held.token) {
            found.push(Finding::Claim(a, p));
        }
        holders.entry(a.resource).or_default().push(a);
    }
    found.extend(
        holders
            .into_values()
            .filter(|v| v.len() > 1)
            .map(Finding::Double),
    );
    found
}

/// The end of an access at the one instant `now`, for [`judge`].
pub fn just_after(now: Time) -> Time {
    Time(now.0.saturating_add(1))
}

/// The group as the store holds it now (for convergence checks: which resources exist).
pub fn store_view(store: &MemModel, layout: &Layout) -> View {
    let entries: Vec<_> = store
        .entries()
        .iter()
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    layout::parse_view(layout, &entries).0
}
