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
//! The properties never ask the member what it believes (its deadline,
//! [`Member::valid_until`](rebalanser_core::Member::valid_until), its leases): a core that
//! computes its deadline wrongly would be believed. They use only facts outside the core:
//!
//! - **the application's access interval**: from the `Grant` event it received until it
//!   actually stopped: it released the lease (`Action::Release`, after a `Revoke`), or its
//!   process died (a crash, the abort the runtime performs on `StopDeadlineMissed`, the member
//!   closing). A revoked lease not yet released is still being accessed. Leases are kept per
//!   (resource, lease), so a second grant while the first is still being stopped is a second
//!   access, not an overwrite;
//! - **the store**: whether a session is alive and when it expires
//!   ([`MemModel::expires_at`](rebalanser_store::MemModel::expires_at), gone once expired or
//!   closed), and which claim it holds.
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
//! - [`BARRIER`] (barrier mode, DESIGN §4.10): no lease granted in a round while any
//!   application still accesses a lease of an earlier round. A lease's round is the latest
//!   round whose start the store had committed when it was granted (tracked from the store's
//!   `barrier` key after every transaction), never what a member believes;
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
//! `Quiesce` offered in every state to depth 10; and in barrier mode ([`Setup::mode`]) 2 × 2
//! with one fault to depth 14 and fault-free to depth 16 (the second member's join is a stop
//! round, both acknowledgements and a start; the handover asserted happens only in the new
//! round). Each broken build below is then run with the
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
//!   of a resource an application is accessing;
//! - `BarrierOlderAck` (barrier mode, fault-free, depth 16): [`BARRIER`] in 13 steps, the
//!   coordinator counts its own acknowledgement of round 1 for round 2, starts it, and is
//!   granted a resource again while its application still stops the other one.
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
//!
//! # Layout
//!
//! - this file: what to explore ([`Setup`], [`member_config`]) and the crate's docs;
//! - `state`: the [`State`] (compared and hashed by its complete rendering) and [`Action`];
//! - `driver`: [`RebalanserModel`] and the glue that drives the real cores through their
//!   public inputs and outputs (warm-up, draining ops and events, ticks, the fault-free
//!   driver of `Quiesce`);
//! - `actions`: the stateright `Model`: the actions each state offers and what they do;
//! - `oracle`: the properties, from the applications' access and the store only.
//!
//! The application's side of the oracle (its access from `Grant` to release or death, the
//! token log, the judgement against `MemModel`) is [`rebalanser_sim::access`], shared with the
//! simulator and its tests, so the two checkers cannot drift apart.

use std::time::Duration;

use rebalanser_core::layout::Mode;
use rebalanser_core::{Config, GroupId, MemberId, Variant};

mod actions;
mod driver;
mod oracle;
mod state;

pub use driver::RebalanserModel;
pub use oracle::{
    BALANCED, BARRIER, HANDOVER, NO_ACCESS_AFTER_EXPIRY, NO_DOUBLE_ACCESS, NO_UNCLAIMED_ACCESS,
    SAFETY, TOKENS_INCREASE, TOKEN_IS_CLAIM_REVISION,
};
pub use rebalanser_sim::access::{App, AppLease, Tokens};
pub use state::{Action, Flight, Slot, State};
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
    /// The group's rebalancing mode, written at creation (DESIGN §4.10).
    pub mode: Mode,
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
            mode: Mode::Resource,
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

/// How long a fault-free continuation may take to converge: an expired session's TTL, a
/// rebalance and a stop budget, with room.
pub fn quiet_bound() -> Duration {
    secs(30)
}
