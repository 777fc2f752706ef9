//! Deterministic simulation of Rebalanser (DESIGN §7 tier 3).
//!
//! The real protocol core ([`rebalanser_core::Member`]) runs against the pure store model
//! ([`rebalanser_store::MemModel`]) in virtual time, with every random choice drawn from one
//! seeded generator: a seed replays exactly. The simulated world is harsher than production:
//! it loses, delays and duplicates messages, makes writes `Indeterminate` (applied or not),
//! serves stale reads, cuts members off, pauses them past their TTL, crashes and restarts them,
//! drifts their clocks, and churns members and resources.
//!
//! As time advances it checks, from what the applications did and what the store holds (never
//! from what a member believes):
//! - (a) no two applications access one resource at once, and every access is under a session
//!   the store still has and does not expire meanwhile, under that session's claim, with the
//!   claim's revision as its token;
//! - (b) fencing tokens per resource strictly increase across owners;
//!
//! and once faults stop, that within [`convergence_bound`] every resource is leased exactly
//! once and lease counts differ by at most one (c).
//!
//! The applications' side of those checks is [`access`], shared with the model checker
//! (`rebalanser-model`) and the hand-driven tests.

pub mod access;
mod rng;
mod world;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

pub use rebalanser_core::layout::Mode;
pub use rebalanser_core::Variant;
pub use world::World;

/// What the world does to the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    /// Random faults of every kind, then quiet and convergence checks.
    #[default]
    Chaos,
    /// A resource added every 50 ms while the busiest member crashes: its resources must run
    /// elsewhere within the failover bound (DESIGN §1.4) while the trickle goes on.
    Trickle,
    /// The busiest member's link degrades (replies just before their timeout), then fails for
    /// good, while its application ignores revokes: only the member's forced stop ends its
    /// access, and it must come before the store expires the session. Timers fire late.
    Cutoff,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Events processed while faults are injected.
    pub steps: u64,
    pub variant: Variant,
    pub scenario: Scenario,
    /// How the group rebalances (per resource, or global barrier).
    pub mode: rebalanser_core::layout::Mode,
    /// Record one line per event (costly; used to print a failing seed).
    pub trace: bool,
}

impl SimConfig {
    pub fn new(seed: u64, steps: u64) -> SimConfig {
        SimConfig {
            seed,
            steps,
            variant: Variant::Correct,
            scenario: Scenario::Chaos,
            mode: rebalanser_core::layout::Mode::Resource,
            trace: false,
        }
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    /// Events processed in all (fault phase and quiet phase).
    pub steps: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// How often interesting things happened (grants, suspensions, resumes, session losses,
    /// aborts, coordinator changes): evidence that a run was not vacuous.
    pub counters: BTreeMap<&'static str, u64>,
}

/// The session TTL every simulated member requests.
pub const SESSION_TTL: Duration = Duration::from_secs(2);

/// Once faults stop (partitions healed, pauses ended, no churn, no message loss), every
/// resource is leased exactly once and counts differ by at most one within this much virtual
/// time: a dead member's session expires (T), a dead coordinator is replaced (T), a
/// rebalance is rate-limited, handovers wait for stops and a few round trips. 4·T + 2 s.
pub fn convergence_bound() -> Duration {
    SESSION_TTL * 4 + Duration::from_secs(2)
}

/// Runs one seed. A panic inside the core or the simulator is reported as a violation.
pub fn run(cfg: &SimConfig) -> SimReport {
    match catch_unwind(AssertUnwindSafe(|| World::new(cfg).run())) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            SimReport {
                seed: cfg.seed,
                steps: 0,
                violations: vec![format!("panic: {msg}")],
                trace: Vec::new(),
                counters: BTreeMap::new(),
            }
        }
    }
}

/// Runs seeds `[first, first + n)` on `threads` OS threads; reports in seed order.
pub fn run_many(
    first: u64,
    n: u64,
    steps: u64,
    variant: Variant,
    threads: usize,
) -> Vec<SimReport> {
    let mut template = SimConfig::new(first, steps);
    template.variant = variant;
    run_seeds(first, n, &template, threads)
}

/// Runs seeds `[first, first + n)` of `template` (its seed is ignored) on `threads` OS
/// threads; reports in seed order.
pub fn run_seeds(first: u64, n: u64, template: &SimConfig, threads: usize) -> Vec<SimReport> {
    let threads = threads.max(1) as u64;
    // Seeds past u64::MAX do not exist: the range ends there.
    let end = first.saturating_add(n);
    let mut out: Vec<SimReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first..end)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| {
                            run(&SimConfig {
                                seed,
                                ..template.clone()
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // `run` catches panics, so a worker cannot die with seeds unreported.
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    out.sort_by_key(|r| r.seed);
    out
}
