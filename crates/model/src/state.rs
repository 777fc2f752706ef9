//! The explored state and the actions between states. A [`State`] holds everything: the real
//! cores, the store model, requests and replies in flight, pending notifications, each
//! member's application ([`App`]), the clock, the fault budgets left and what the oracle saw
//! inside actions. It is compared and hashed by its complete canonical rendering: nothing is
//! abstracted away.
//!
//! **Never** put anything in the state that tells apart states the protocol cannot (a grant
//! time, a counter of steps): it multiplies the states explored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use rebalanser_core::store::{StoreOp, StoreResult};
use rebalanser_core::{LeaseId, Member, ResourceId, SessionId, Time};
use rebalanser_sim::access::{App, Tokens};
use rebalanser_store::MemModel;

/// One member process: its incarnation, its core (none while crashed), its application and
/// whether a change notification is pending for it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub inc: u32,
    pub core: Option<Member>,
    /// What the application is accessing, by resource and lease: a second grant on a resource
    /// whose first lease is still being stopped is a second entry, not an overwrite. No grant
    /// time is recorded: it would tell apart states that differ in nothing else. What is
    /// recorded is the barrier round the store had started at the grant (always 0 in resource
    /// mode), for the barrier property.
    pub app: App<u64>,
    pub notify: bool,
}

/// A request on its way to the store, or a reply on its way back.
#[derive(Debug, Clone)]
pub struct Flight {
    pub req: StoreOp,
    pub sent: Time,
    /// `Some` once the store answered (reply held back).
    pub res: Option<StoreResult>,
}

/// Everything at one point of a path (see the module docs).
#[derive(Clone)]
pub struct State {
    pub now: Time,
    pub store: MemModel,
    pub slots: Vec<Slot>,
    /// Keyed by (slot, incarnation, op id).
    pub flight: BTreeMap<(usize, u32, u64), Flight>,
    pub sessions: BTreeSet<SessionId>,
    pub faults_left: u8,
    pub delays_left: u8,
    pub admin_left: u8,
    pub removed: BTreeSet<ResourceId>,
    /// The last token granted per resource and to which slot.
    pub tokens: Tokens,
    pub token_violation: Option<String>,
    /// Barrier mode: the latest round whose start the store committed (0 in resource mode).
    pub started_round: u64,
    /// Barrier mode: the first grant of a round while a lease of an earlier round was still
    /// accessed.
    pub barrier_violation: Option<String>,
    /// A violation of the oracle seen at an instant inside an action rather than in a state:
    /// at a tick, right after the store expired sessions and before anything else happened at
    /// that instant; or at any step of `Quiesce`'s fault-free run. The first per property.
    pub seen: BTreeMap<&'static str, String>,
    pub handover: bool,
    /// Set by `Quiesce`: `Ok` when the fault-free continuation converged.
    pub quiesced: Option<Result<(), String>>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "t={} store rev {}", self.now, self.store.rev())?;
        for (i, s) in self.slots.iter().enumerate() {
            let leases: Vec<String> = s
                .app
                .leases()
                .map(|(r, _, l)| {
                    let v = s
                        .core
                        .as_ref()
                        .map(|m| m.valid_until(l.session))
                        .unwrap_or(Time::ZERO);
                    format!(
                        "{r}(token {}, {}{}, member's deadline {v}{})",
                        l.token,
                        l.session,
                        match self.store.expires_at(l.session) {
                            Some(e) => format!(" expiring {e}"),
                            None => " GONE from the store".into(),
                        },
                        if l.revoked { ", revoked" } else { "" }
                    ) + &if l.since > 0 {
                        format!(" round {}", l.since)
                    } else {
                        String::new()
                    }
                })
                .collect();
            writeln!(
                f,
                "  m{i}#{} {} session={:?} coord={:?} leases=[{}]",
                s.inc,
                if s.core.is_some() { "up" } else { "DOWN" },
                s.core.as_ref().and_then(|m| m.session()),
                s.core.as_ref().and_then(|m| m.is_coordinator()),
                leases.join(", ")
            )?;
        }
        if let Some(v) = &self.token_violation {
            writeln!(f, "  TOKEN VIOLATION {v}")?;
        }
        if let Some(v) = &self.barrier_violation {
            writeln!(f, "  BARRIER VIOLATION {v}")?;
        }
        for (p, v) in &self.seen {
            writeln!(f, "  VIOLATION ({p}) {v}")?;
        }
        if let Some(q) = &self.quiesced {
            writeln!(f, "  quiesced: {q:?}")?;
        }
        Ok(())
    }
}

/// Feeds formatted text into a hasher without allocating.
struct HashWriter<'a, H: Hasher>(&'a mut H);
impl<H: Hasher> fmt::Write for HashWriter<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

impl State {
    /// Everything in the state, rendered canonically (ordered maps throughout).
    fn render(&self, w: &mut impl fmt::Write) -> fmt::Result {
        write!(
            w,
            "{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{}|{:?}",
            self.now,
            self.store,
            self.slots,
            self.flight,
            self.sessions,
            self.faults_left,
            self.delays_left,
            self.admin_left,
            self.removed,
            self.tokens,
            self.token_violation,
            self.started_round,
            self.barrier_violation,
            self.seen,
            self.handover,
            self.quiesced
        )
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        let (mut a, mut b) = (String::new(), String::new());
        let _ = self.render(&mut a);
        let _ = other.render(&mut b);
        a == b
    }
}

impl Hash for State {
    /// The fingerprint covers everything: the cores' complete `Debug` rendering (every field,
    /// all in ordered maps, so it is canonical) and the store's. Nothing is abstracted away.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let _ = self.render(&mut HashWriter(state));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// The store executes a request and the reply arrives at once.
    Exec(usize, u32, u64),
    /// The store executes a request; the reply is held back (delay budget).
    Arrive(usize, u32, u64),
    /// A held-back reply arrives.
    Reply(usize, u32, u64),
    /// Fault: executed, but the client times out (`Indeterminate` / `Unavailable`).
    AppliedUnknown(usize, u32, u64),
    /// Fault: lost before the store; the client times out.
    Lost(usize, u32, u64),
    Notify(usize),
    /// Fault.
    LoseNotify(usize),
    /// Fault: delivered, and delivered again later.
    DupNotify(usize),
    /// The application finished stopping a revoked lease.
    Release(usize, ResourceId, LeaseId),
    /// Fault: the member process dies (its application with it).
    Crash(usize),
    /// A crashed member is started again under the same name.
    Restart(usize),
    AdminRemove(ResourceId),
    AdminAdd(ResourceId),
    /// Advance the clock to the next instant something is due.
    Tick,
    /// Faults stop: run the deterministic fault-free driver and check convergence.
    Quiesce,
}
