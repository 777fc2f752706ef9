//! Exhaustive model checking of the real protocol core with stateright (issue 5, deliverable 4).
//!
//! The state holds the real [`rebalanser_core::Member`]s (cloned, never re-implemented), the
//! real store model [`rebalanser_store::MemModel`] (explicit `now`), the requests in flight,
//! the replies in flight, pending notifications, each member's application, and a discrete
//! clock that only jumps to the next instant something is due (a member timer, a session
//! expiry, an operation timeout).
//!
//! Actions (see [`Action`]): a request is executed by the store and answered at once, or
//! (bounded by `delays`) executed with its reply held back for later; faults (bounded by
//! `faults`): a request executed but answered `Indeterminate` (reads: `Unavailable`), a request
//! lost (answered the same way, not applied), a notification lost or duplicated, a member
//! crashed (restarted later under the same name, with a new core); admin removal and re-add
//! of a resource (bounded by `admin`); the application releasing a revoked lease; time
//! advancing (a request not yet executed when its timeout comes is answered as timed out and
//! never applied: this costs no fault budget). Notifications are reordered with respect to
//! replies by construction: every pending delivery is its own action.
//!
//! # The oracle
//!
//! The properties never ask the member what it believes (its deadline, [`Member::valid_until`],
//! its leases): a core that computes its deadline wrongly would be believed. They use only
//! facts outside the core:
//!
//! - **the application's access interval**: from the `Grant` event it received until it
//!   actually stopped: it released the lease (`Action::Release`, after a `Revoke`), or its
//!   process died (a crash, the abort the runtime performs on `StopDeadlineMissed`, the member
//!   closing). A revoked lease not yet released is still being accessed. Leases are kept per
//!   (resource, lease), so a second grant while the first is still being stopped is a second
//!   access, not an overwrite;
//! - **the store**: whether a session is alive and when it expires ([`MemModel::expires_at`],
//!   gone once expired or closed), and which claim it holds.
//!
//! `always` properties (messages from [`RebalanserModel::violations`]):
//!
//! - (a) [`NO_DOUBLE_ACCESS`]: no resource accessed by two applications (two member
//!   incarnations, or two leases in one process) at once;
//! - (b) [`NO_ACCESS_AFTER_EXPIRY`]: no application still accessing a resource under a session
//!   the store has expired or closed (from that instant another session may claim it);
//! - (c) [`TOKENS_INCREASE`]: tokens granted per resource grow across owners;
//! - (d) [`NO_UNCLAIMED_ACCESS`]: no application accessing a resource while the store does not
//!   hold that resource's claim owned by the lease's session (the claim must exist before the
//!   grant and outlive the access). Stronger than (a): it flags an unbacked lease even when no
//!   second application collides within the explored depth;
//! - (e) [`TOKEN_IS_CLAIM_REVISION`]: the application's token is its claim's create revision
//!   (the fencing token the resource compares, DESIGN §8 rule 9);
//! - [`BALANCED`] once faults stop: a fault-free continuation from the horizon (the `Quiesce`
//!   action runs the deterministic driver the warm-up uses) ends with every resource held by
//!   exactly one application (granted, not revoked, not released), counts within one, every
//!   running member joined, one coordinator;
//!
//! and `sometimes` [`HANDOVER`] (a resource granted to a second member: not vacuous).
//!
//! **Time.** The properties are checked on every state, and also inside actions: at a tick,
//! right after the store expired sessions and before anything else happens at that instant
//! (members' timeouts included), and at every step of `Quiesce`'s fault-free run. So an
//! application its member aborts at the very instant the store expires the session is a
//! violation of (b) (a real abort is not instantaneous); the correct core aborts at its
//! deadline, a full `safety_margin` (1 s) before the store's expiry, and is never flagged.
//! The warm-up is a fixture: what the oracle sees during it is not reported (for the correct
//! core it is asserted clean); the initial state is checked like any other.
//!
//! # What is explored, and which broken builds it catches
//!
//! The tests (`tests/model.rs`) run three correct-core checks, depth-first to a depth bound,
//! asserting the number of unique states: 2 members × 2 resources with one fault to depth 14;
//! 3 × 3 fault-free to depth 12; 2 × 2 with a fault, a delayed reply, an admin change and
//! `Quiesce` offered in every state to depth 10. Each broken build below is then run with the
//! *same* set-up and depth as one of these (only [`Setup::variant`] changed), breadth-first,
//! and must be caught:
//!
//! - `GrantBeforeClaim` (2 × 2 faults=1): (a), two applications on one resource;
//! - `GrantOnClaimSent` (2 × 2 faults=1): (d), a grant before its create was even applied;
//!   the initial state also violates (e) (the guessed token is not the claim's revision);
//! - `LateAbort`, `NoSafetyMargin`, `IgnoreDeadline` (2 × 2 faults=1): (b), time passes with
//!   every request timed out until the store expires the session while the application still
//!   runs (revoked and not released, or never revoked); with no margin the abort coincides
//!   with the expiry, which (b) flags;
//! - `RemoveDeletesClaim` (2 × 2 quiesce everywhere): (d), the admin removal deletes the claim
//!   of a resource an application is accessing.
//!
//! Not caught, and why:
//!
//! - `DeadlineFromReply` counts the deadline from a keepalive reply's arrival. The model's
//!   clock has whole seconds and `op_timeout` is 1 s, so a reply is always delivered at the
//!   instant it was sent or not at all (it times out): arrival time equals send time and the
//!   variant behaves exactly like the correct core here. The simulator (random sub-second
//!   latencies) covers it.
//! - `AdoptAnyClaim` adopts a foreign claim when verifying an `Indeterminate` create. A foreign
//!   claim can be there only if another session claimed the resource between this member's
//!   listing and its create, which needs two members assigned the same resource by two
//!   successive rebalances (a crash and a session expiry, or a removal and a re-add, in between):
//!   some 20–35 steps, beyond what the exhaustive search reaches. The simulator covers it.
//! - `TrustLastKeepalive`, `AcceptOlderViews`, `DebounceRebalance`, `UnguardedRebalance` are
//!   not tested here (ZooKeeper followers, stale reads, rate limits and deposed coordinators
//!   are not in this model).
//!
//! The search is depth-bounded: unbounded breadth-first search at 2 × 2 runs out of memory,
//! and an admin change added to the 2 × 2 faults=1 check multiplies it to about 8 million
//! states at depth 14 (over 5 minutes), so admin changes are explored in the quiesce-everywhere
//! check only. Session expiry after a crash is exercised mostly inside `Quiesce`; clock drift,
//! stale reads, TTL renegotiation, graceful `leave` and writes applied after their timeout are
//! not in this model (the simulator injects them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::layout::{self, Layout};
use rebalanser_core::store::{StoreError, StoreOp, StoreReply, StoreResult};
use rebalanser_core::{
    Config, Event, GroupId, LeaseId, Member, MemberId, ResourceId, SessionId, Time, Token, Variant,
};
use rebalanser_store::{MemModel, ModelConfig};
use stateright::{Model, Property};

pub use stateright;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What to explore.
#[derive(Debug, Clone)]
pub struct Setup {
    pub members: usize,
    pub resources: usize,
    /// Fault budget per path: lost/indeterminate ops, lost/duplicated notifications, crashes.
    pub faults: u8,
    /// Replies that may be held back while other things happen.
    pub delays: u8,
    /// Admin removals / re-adds of a resource per path.
    pub admin: u8,
    /// Crashes allowed (they also count against `faults`).
    pub crashes: bool,
    /// Time explored past the warm-up; at the horizon only `Quiesce` and instant actions.
    pub horizon: Duration,
    pub variant: Variant,
    /// Offer `Quiesce` in every state (not only at the horizon): checks convergence from
    /// every explored state, at the cost of one fault-free run per state.
    pub quiesce_everywhere: bool,
}

impl Setup {
    pub fn new(members: usize, resources: usize) -> Setup {
        Setup {
            members,
            resources,
            faults: 1,
            delays: 1,
            admin: 0,
            crashes: true,
            horizon: secs(12),
            variant: Variant::Correct,
            quiesce_everywhere: false,
        }
    }
}

/// Member timings, in whole seconds so that the clock takes few distinct values.
pub fn member_config(name: &str, variant: Variant) -> Config {
    let mut c = Config::new(GroupId::new("g").unwrap(), MemberId::new(name).unwrap());
    c.session_ttl = secs(10);
    c.safety_margin = secs(1);
    c.stop_timeout = secs(2);
    c.keepalive_interval = secs(2);
    c.op_timeout = secs(1);
    c.min_rebalance_interval = Duration::ZERO;
    c.resync_interval = secs(30);
    c.leave_timeout = secs(30);
    c.retry_delay = secs(1);
    c.variant = variant;
    c.validate().unwrap();
    c
}

/// One lease as the application sees it: from the `Grant` it received until it stopped
/// (released the lease, or its process died). This, not the core's idea of the lease, is what
/// the oracle checks.
#[derive(Debug, Clone)]
pub struct AppLease {
    pub token: Token,
    pub session: SessionId,
    /// A `Revoke` arrived: the application is stopping, but still accessing the resource.
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub inc: u32,
    pub core: Option<Member>,
    /// What the application is accessing, keyed by resource and lease: a second grant on a
    /// resource whose first lease is still being stopped is a second entry, not an overwrite.
    pub app: BTreeMap<(ResourceId, LeaseId), AppLease>,
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
    pub last_token: BTreeMap<ResourceId, (usize, SessionId, Token)>,
    pub token_violation: Option<String>,
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
                .iter()
                .map(|((r, _), l)| {
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
                    )
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
            "{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
            self.now,
            self.store,
            self.slots,
            self.flight,
            self.sessions,
            self.faults_left,
            self.delays_left,
            self.admin_left,
            self.removed,
            self.last_token,
            self.token_violation,
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

pub struct RebalanserModel {
    pub setup: Setup,
    pub layout: Layout,
    pub resources: Vec<ResourceId>,
    init: State,
    horizon_at: Time,
}

fn timeout_error(op: &StoreOp) -> StoreResult {
    if op.is_write() {
        Err(StoreError::Indeterminate("timed out".into()))
    } else {
        Err(StoreError::Unavailable("timed out".into()))
    }
}

impl RebalanserModel {
    /// Builds the model; its initial state comes from running the real cores fault-free:
    /// member 0 alone until it holds every resource, then the other members are started
    /// (their first operations in flight).
    pub fn new(setup: Setup) -> RebalanserModel {
        let layout = Layout::new(&GroupId::new("g").unwrap());
        let resources: Vec<ResourceId> = (0..setup.resources)
            .map(|i| ResourceId::new(format!("r{i}")).unwrap())
            .collect();
        let mut store = MemModel::new(ModelConfig {
            min_ttl: Duration::from_millis(1),
            max_ttl: secs(3600),
            history: 0,
        });
        store
            .apply(Time::ZERO, &admin::create_group(&layout))
            .unwrap();
        store
            .apply(Time::ZERO, &admin::add_resources(&layout, &resources))
            .unwrap();
        let mut m = RebalanserModel {
            setup: setup.clone(),
            layout,
            resources,
            init: State {
                now: Time::ZERO,
                store,
                slots: (0..setup.members)
                    .map(|_| Slot {
                        inc: 0,
                        core: None,
                        app: BTreeMap::new(),
                        notify: false,
                    })
                    .collect(),
                flight: BTreeMap::new(),
                sessions: BTreeSet::new(),
                faults_left: setup.faults,
                delays_left: setup.delays,
                admin_left: setup.admin,
                removed: BTreeSet::new(),
                last_token: BTreeMap::new(),
                token_violation: None,
                seen: BTreeMap::new(),
                handover: false,
                quiesced: None,
            },
            horizon_at: Time::ZERO,
        };
        let mut s = m.init.clone();
        m.start(&mut s, 0);
        let until = s.now + secs(8);
        m.run_quiet(&mut s, until, true);
        assert!(
            m.balanced(&s).is_ok(),
            "warm-up did not converge: {:?}",
            m.balanced(&s)
        );
        // The warm-up is a fixture, not part of the search: a broken variant must be caught
        // in the explored states, so what the oracle saw during the warm-up is dropped (the
        // correct core's warm-up is asserted clean).
        let seen = std::mem::take(&mut s.seen);
        assert!(
            setup.variant != Variant::Correct || (seen.is_empty() && m.violations(&s).is_empty()),
            "warm-up violated the oracle: {seen:?} {:?}",
            m.violations(&s)
        );
        for i in 1..setup.members {
            m.start(&mut s, i);
        }
        m.horizon_at = s.now + setup.horizon;
        m.init = s;
        m
    }

    pub fn initial(&self) -> &State {
        &self.init
    }

    fn cfg(&self, i: usize) -> Config {
        member_config(&format!("m{i}"), self.setup.variant)
    }

    fn start(&self, s: &mut State, i: usize) {
        let slot = &mut s.slots[i];
        slot.inc += 1;
        slot.app.clear();
        slot.notify = false;
        let mut m = Member::new(self.cfg(i));
        m.start(s.now);
        slot.core = Some(m);
        self.drain(s, i);
    }

    fn crash(&self, s: &mut State, i: usize) {
        let slot = &mut s.slots[i];
        slot.core = None;
        slot.app.clear();
        slot.notify = false;
        // Replies to a dead incarnation are never read; requests it sent may still land.
        let inc = slot.inc;
        s.flight
            .retain(|(j, k, _), f| !(*j == i && *k == inc && f.res.is_some()));
    }

    /// Moves ops and events out of member `i` after an input.
    fn drain(&self, s: &mut State, i: usize) {
        loop {
            let inc = s.slots[i].inc;
            let Some(m) = s.slots[i].core.as_mut() else {
                return;
            };
            if let Some((id, req)) = m.poll_op() {
                s.flight.insert(
                    (i, inc, id.0),
                    Flight {
                        req,
                        sent: s.now,
                        res: None,
                    },
                );
                continue;
            }
            let Some(e) = m.poll_event() else { break };
            match e {
                Event::Grant {
                    lease,
                    resource,
                    token,
                    session,
                    ..
                } => {
                    if let Some((j, sess, t)) = s.last_token.get(&resource) {
                        let bad = if *sess == session {
                            token < *t
                        } else {
                            token <= *t
                        };
                        if bad && s.token_violation.is_none() {
                            s.token_violation = Some(format!(
                                "token for {resource} went from {t} (m{j}, {sess}) to {token} (m{i}, {session})"
                            ));
                        }
                        if *j != i {
                            s.handover = true;
                        }
                    }
                    s.last_token.insert(resource.clone(), (i, session, token));
                    s.slots[i].app.insert(
                        (resource, lease),
                        AppLease {
                            token,
                            session,
                            revoked: false,
                        },
                    );
                }
                Event::Revoke {
                    lease, resource, ..
                } => {
                    if let Some(l) = s.slots[i].app.get_mut(&(resource, lease)) {
                        l.revoked = true;
                    }
                }
                Event::SessionOpened { session, .. } => {
                    s.sessions.insert(session);
                }
                Event::StopDeadlineMissed { .. } => {
                    // The runtime aborts the process: the only stop a library can force.
                    self.crash(s, i);
                    return;
                }
                _ => {}
            }
        }
        if s.slots[i].core.as_ref().is_some_and(|m| m.is_closed()) {
            self.crash(s, i);
        }
    }

    fn notify_all(&self, s: &mut State) {
        for slot in s.slots.iter_mut().filter(|x| x.core.is_some()) {
            slot.notify = true;
        }
    }

    fn store_apply(&self, s: &mut State, req: &StoreOp) -> StoreResult {
        let before = s.store.rev();
        let res = s.store.apply(s.now, req);
        if let Ok(StoreReply::Session { session, .. }) = &res {
            s.sessions.insert(*session);
        }
        if s.store.rev() != before {
            self.notify_all(s);
        }
        res
    }

    fn reply(&self, s: &mut State, i: usize, inc: u32, op: u64, res: StoreResult) {
        if s.slots[i].inc != inc {
            return;
        }
        let now = s.now;
        if let Some(m) = s.slots[i].core.as_mut() {
            m.handle_reply(now, rebalanser_core::OpId(op), res);
            self.drain(s, i);
        }
    }

    /// The next instant something is due, if any.
    fn next_time(&self, s: &State) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut at = |x: Time| {
            if x > s.now {
                t = Some(t.map_or(x, |t: Time| t.min(x)));
            }
        };
        for slot in &s.slots {
            if let Some(x) = slot.core.as_ref().and_then(|m| m.poll_timeout()) {
                at(x);
            }
        }
        for sess in &s.sessions {
            if let Some(x) = s.store.expires_at(*sess) {
                at(x);
            }
        }
        let op_timeout = self.cfg(0).op_timeout;
        for f in s.flight.values() {
            at(f.sent + op_timeout);
        }
        t
    }

    fn tick(&self, s: &mut State, to: Time) {
        s.now = to;
        let before = s.store.rev();
        s.store.expire(to);
        if s.store.rev() != before {
            self.notify_all(s);
        }
        // The store's expiry comes first at this instant: an application still accessing
        // under an expired session now overlaps whoever claims next, even if its member
        // aborts it at this same instant (a real abort is not instantaneous).
        self.observe(s);
        let alive: BTreeSet<SessionId> = s
            .sessions
            .iter()
            .copied()
            .filter(|x| s.store.session_alive(*x))
            .collect();
        s.sessions = alive;
        // Operations past their timeout: the driver answers them (never applied later).
        let op_timeout = self.cfg(0).op_timeout;
        let overdue: Vec<((usize, u32, u64), Flight)> = s
            .flight
            .iter()
            .filter(|(_, f)| f.sent + op_timeout <= to)
            .map(|(k, f)| (*k, f.clone()))
            .collect();
        for (k, f) in overdue {
            s.flight.remove(&k);
            self.reply(s, k.0, k.1, k.2, timeout_error(&f.req));
        }
        for i in 0..s.slots.len() {
            let due = s.slots[i]
                .core
                .as_ref()
                .and_then(|m| m.poll_timeout())
                .is_some_and(|x| x <= to);
            if due {
                if let Some(m) = s.slots[i].core.as_mut() {
                    m.handle_timeout(to);
                }
                self.drain(s, i);
            }
        }
    }

    /// The deterministic fault-free driver: first request, first reply, notifications,
    /// releases, then time. Used for the warm-up and by `Quiesce`.
    fn run_quiet(&self, s: &mut State, until: Time, restart: bool) {
        if restart {
            for i in 0..s.slots.len() {
                if s.slots[i].core.is_none() && s.slots[i].inc > 0 {
                    self.start(s, i);
                }
            }
        }
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 100_000, "quiet driver livelock");
            self.observe(s);
            if let Some((k, f)) = s.flight.iter().next().map(|(k, f)| (*k, f.clone())) {
                s.flight.remove(&k);
                let res = match f.res {
                    Some(r) => r,
                    None => self.store_apply(s, &f.req),
                };
                self.reply(s, k.0, k.1, k.2, res);
                continue;
            }
            if let Some(i) = (0..s.slots.len()).find(|i| s.slots[*i].notify) {
                s.slots[i].notify = false;
                let now = s.now;
                if let Some(m) = s.slots[i].core.as_mut() {
                    m.handle_notify(now);
                }
                self.drain(s, i);
                continue;
            }
            if let Some((i, r, l)) = self.releasable(s).into_iter().next() {
                self.release(s, i, &r, l);
                continue;
            }
            match self.next_time(s) {
                Some(t) if t <= until => self.tick(s, t),
                _ => break,
            }
        }
    }

    fn releasable(&self, s: &State) -> Vec<(usize, ResourceId, LeaseId)> {
        let mut v = Vec::new();
        for (i, slot) in s.slots.iter().enumerate() {
            for ((r, lease), l) in &slot.app {
                if l.revoked {
                    v.push((i, r.clone(), *lease));
                }
            }
        }
        v
    }

    fn release(&self, s: &mut State, i: usize, r: &ResourceId, lease: LeaseId) {
        if s.slots[i].app.remove(&(r.clone(), lease)).is_none() {
            return;
        }
        let now = s.now;
        if let Some(m) = s.slots[i].core.as_mut() {
            m.handle_released(now, r, lease);
        }
        self.drain(s, i);
    }

    /// Every resource held exactly once by an application (granted, not revoked, not
    /// released), counts within one, every running member joined, one coordinator.
    pub fn balanced(&self, s: &State) -> Result<(), String> {
        let entries: Vec<_> = s
            .store
            .entries()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let resources = layout::parse_view(&self.layout, &entries).0.resources;
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
            for ((r, _), l) in &slot.app {
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

    /// The oracle's (a): a resource accessed by two applications at once. An application
    /// accesses a resource from the `Grant` it received until it released the lease or its
    /// process died (crash, or the abort on `StopDeadlineMissed`), revoked or not; the core's
    /// deadline plays no part. Two entries are two accessors (different member incarnations,
    /// or two leases in one process).
    pub fn double_access(s: &State) -> Option<String> {
        let mut holders: BTreeMap<&ResourceId, Vec<String>> = BTreeMap::new();
        for (i, slot) in s.slots.iter().enumerate() {
            for ((r, lease), l) in &slot.app {
                holders.entry(r).or_default().push(format!(
                    "m{i}#{} ({lease:?}, token {}, {}{})",
                    slot.inc,
                    l.token,
                    l.session,
                    if l.revoked { ", revoked" } else { "" }
                ));
            }
        }
        holders
            .into_iter()
            .find(|(_, v)| v.len() > 1)
            .map(|(r, v)| format!("t={}: {r} accessed by {}", s.now, v.join(" and ")))
    }

    /// The oracle's (b): an application still accessing a resource (revoked or not) under a
    /// session the store no longer has (expired, or closed). The store's word, not the
    /// member's: from that instant another session may claim the resource.
    pub fn access_after_expiry(s: &State) -> Option<String> {
        for (i, slot) in s.slots.iter().enumerate() {
            for ((r, lease), l) in &slot.app {
                let gone = match s.store.expires_at(l.session) {
                    None => true,
                    Some(e) => s.now >= e,
                };
                if gone {
                    return Some(format!(
                        "t={}: m{i}#{} still accesses {r} ({lease:?}, token {}{}) under {}, \
                         which the store has expired or closed",
                        s.now,
                        slot.inc,
                        l.token,
                        if l.revoked { ", revoked" } else { "" },
                        l.session
                    ));
                }
            }
        }
        None
    }

    /// Records the first oracle violation at an instant inside an action.
    fn observe(&self, s: &mut State) {
        let found = [
            (NO_DOUBLE_ACCESS, Self::double_access(s)),
            (NO_ACCESS_AFTER_EXPIRY, Self::access_after_expiry(s)),
            (NO_UNCLAIMED_ACCESS, self.unclaimed_access(s)),
            (TOKEN_IS_CLAIM_REVISION, self.wrong_token(s)),
        ];
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
        for (i, slot) in s.slots.iter().enumerate() {
            for ((r, lease), l) in &slot.app {
                let claim = s.store.entries().get(&self.layout.claim(r));
                if claim.is_none_or(|e| e.owner != Some(l.session)) {
                    return Some(format!(
                        "t={}: m{i}#{} accesses {r} ({lease:?}, token {}, {}{}) but the store's \
                         claim is {}",
                        s.now,
                        slot.inc,
                        l.token,
                        l.session,
                        if l.revoked { ", revoked" } else { "" },
                        match claim {
                            None => "absent".to_string(),
                            Some(e) => format!("owned by {:?}", e.owner),
                        }
                    ));
                }
            }
        }
        None
    }

    /// The oracle's (e): an application holding a token that is not the create revision of
    /// the claim backing its lease (DESIGN §8 rule 9: the claim's create revision is the
    /// fencing token the resource compares). Only checked where (d) holds.
    pub fn wrong_token(&self, s: &State) -> Option<String> {
        for (i, slot) in s.slots.iter().enumerate() {
            for ((r, lease), l) in &slot.app {
                let Some(e) = s.store.entries().get(&self.layout.claim(r)) else {
                    continue;
                };
                if e.owner == Some(l.session) && e.create_rev != l.token.revision {
                    return Some(format!(
                        "t={}: m{i}#{} accesses {r} ({lease:?}) with token {}, but its claim \
                         was created at revision {}",
                        s.now, slot.inc, l.token, e.create_rev
                    ));
                }
            }
        }
        None
    }

    /// Every oracle violation in `s`, by property name (for counterexample reports).
    pub fn violations(&self, s: &State) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(m) = Self::double_access(s) {
            v.push((NO_DOUBLE_ACCESS, m));
        }
        if let Some(m) = Self::access_after_expiry(s) {
            v.push((NO_ACCESS_AFTER_EXPIRY, m));
        }
        if let Some(m) = self.unclaimed_access(s) {
            v.push((NO_UNCLAIMED_ACCESS, m));
        }
        if let Some(m) = self.wrong_token(s) {
            v.push((TOKEN_IS_CLAIM_REVISION, m));
        }
        for (p, m) in &s.seen {
            v.push((p, format!("inside an action on the way: {m}")));
        }
        if let Some(m) = &s.token_violation {
            v.push((TOKENS_INCREASE, m.clone()));
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
pub const HANDOVER: &str = "handover completes";
/// The safety properties (everything but the `sometimes` one).
pub const SAFETY: [&str; 6] = [
    NO_DOUBLE_ACCESS,
    NO_ACCESS_AFTER_EXPIRY,
    NO_UNCLAIMED_ACCESS,
    TOKEN_IS_CLAIM_REVISION,
    TOKENS_INCREASE,
    BALANCED,
];

impl Model for RebalanserModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.init.clone()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.quiesced.is_some() {
            return;
        }
        let faults = s.faults_left > 0;
        for ((i, inc, op), f) in &s.flight {
            let (i, inc, op) = (*i, *inc, *op);
            if f.res.is_some() {
                actions.push(Action::Reply(i, inc, op));
                continue;
            }
            actions.push(Action::Exec(i, inc, op));
            let live = s.slots[i].inc == inc && s.slots[i].core.is_some();
            if s.delays_left > 0 && live {
                actions.push(Action::Arrive(i, inc, op));
            }
            if faults && live {
                actions.push(Action::AppliedUnknown(i, inc, op));
                actions.push(Action::Lost(i, inc, op));
            }
        }
        for (i, slot) in s.slots.iter().enumerate() {
            if slot.core.is_some() {
                if slot.notify {
                    actions.push(Action::Notify(i));
                    if faults {
                        actions.push(Action::LoseNotify(i));
                        actions.push(Action::DupNotify(i));
                    }
                }
                if faults && self.setup.crashes {
                    actions.push(Action::Crash(i));
                }
            } else if slot.inc > 0 {
                actions.push(Action::Restart(i));
            }
        }
        for (i, r, l) in self.releasable(s) {
            actions.push(Action::Release(i, r, l));
        }
        if s.admin_left > 0 {
            for r in &self.resources {
                if s.removed.contains(r) {
                    actions.push(Action::AdminAdd(r.clone()));
                } else {
                    actions.push(Action::AdminRemove(r.clone()));
                }
            }
        }
        match self.next_time(s) {
            Some(t) if t <= self.horizon_at => {
                actions.push(Action::Tick);
                if self.setup.quiesce_everywhere {
                    actions.push(Action::Quiesce);
                }
            }
            _ => actions.push(Action::Quiesce),
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Exec(i, inc, op) => {
                let f = s.flight.remove(&(i, inc, op))?;
                let res = self.store_apply(&mut s, &f.req);
                self.reply(&mut s, i, inc, op, res);
            }
            Action::Arrive(i, inc, op) => {
                s.delays_left -= 1;
                let req = s.flight.get(&(i, inc, op))?.req.clone();
                let res = self.store_apply(&mut s, &req);
                s.flight.get_mut(&(i, inc, op))?.res = Some(res);
            }
            Action::Reply(i, inc, op) => {
                let f = s.flight.remove(&(i, inc, op))?;
                self.reply(&mut s, i, inc, op, f.res?);
            }
            Action::AppliedUnknown(i, inc, op) => {
                s.faults_left -= 1;
                let f = s.flight.remove(&(i, inc, op))?;
                let _ = self.store_apply(&mut s, &f.req);
                self.reply(&mut s, i, inc, op, timeout_error(&f.req));
            }
            Action::Lost(i, inc, op) => {
                s.faults_left -= 1;
                let f = s.flight.remove(&(i, inc, op))?;
                self.reply(&mut s, i, inc, op, timeout_error(&f.req));
            }
            Action::Notify(i) | Action::DupNotify(i) => {
                if matches!(action, Action::DupNotify(_)) {
                    s.faults_left -= 1;
                } else {
                    s.slots[i].notify = false;
                }
                let now = s.now;
                s.slots[i].core.as_mut()?.handle_notify(now);
                self.drain(&mut s, i);
            }
            Action::LoseNotify(i) => {
                s.faults_left -= 1;
                s.slots[i].notify = false;
            }
            Action::Release(i, r, l) => self.release(&mut s, i, &r, l),
            Action::Crash(i) => {
                s.faults_left -= 1;
                self.crash(&mut s, i);
            }
            Action::Restart(i) => self.start(&mut s, i),
            Action::AdminRemove(r) => {
                s.admin_left -= 1;
                s.removed.insert(r.clone());
                let op = admin::remove_resources_variant(
                    &self.layout,
                    std::slice::from_ref(&r),
                    self.setup.variant,
                );
                let _ = self.store_apply(&mut s, &op);
            }
            Action::AdminAdd(r) => {
                s.admin_left -= 1;
                s.removed.remove(&r);
                let op = admin::add_resources(&self.layout, std::slice::from_ref(&r));
                let _ = self.store_apply(&mut s, &op);
            }
            Action::Tick => {
                let t = self.next_time(&s)?;
                self.tick(&mut s, t);
            }
            Action::Quiesce => {
                let until = s.now + quiet_bound();
                self.run_quiet(&mut s, until, true);
                s.quiesced = Some(self.balanced(&s));
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NO_DOUBLE_ACCESS, |_, s: &State| {
                RebalanserModel::double_access(s).is_none()
                    && !RebalanserModel::seen(s, NO_DOUBLE_ACCESS)
            }),
            Property::always(NO_ACCESS_AFTER_EXPIRY, |_, s: &State| {
                RebalanserModel::access_after_expiry(s).is_none()
                    && !RebalanserModel::seen(s, NO_ACCESS_AFTER_EXPIRY)
            }),
            Property::always(NO_UNCLAIMED_ACCESS, |m: &RebalanserModel, s: &State| {
                m.unclaimed_access(s).is_none() && !RebalanserModel::seen(s, NO_UNCLAIMED_ACCESS)
            }),
            Property::always(TOKEN_IS_CLAIM_REVISION, |m: &RebalanserModel, s: &State| {
                m.wrong_token(s).is_none() && !RebalanserModel::seen(s, TOKEN_IS_CLAIM_REVISION)
            }),
            Property::always(TOKENS_INCREASE, |_, s: &State| s.token_violation.is_none()),
            Property::always(BALANCED, |_, s: &State| !matches!(s.quiesced, Some(Err(_)))),
            Property::sometimes(HANDOVER, |_, s: &State| s.handover),
        ]
    }
}

/// How long a fault-free continuation may take to converge: an expired session's TTL, a
/// rebalance and a stop budget, with room.
pub fn quiet_bound() -> Duration {
    secs(30)
}
