//! Scripted scenarios: one fault, chosen so that a whole class of broken builds must show up
//! in the oracle's findings, where random chaos would reach it only by luck.

use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::{Config, ResourceId, SessionId, Time};

use super::run::Ev;
use super::{ms, Faults, State, World, QUIET, STORE_TICK};
use crate::{Scenario, SimReport, SESSION_TTL};

/// When the scripted fault strikes.
const FAULT_AT: Duration = Duration::from_secs(3);
/// `Trickle`: a resource is added this often, from 1 s to the end.
const TRICKLE_EVERY: Duration = Duration::from_millis(50);
/// `Trickle`: the rate limit of rebalances, four trickle periods.
const TRICKLE_RATE_LIMIT: Duration = Duration::from_millis(200);
/// DESIGN §1 guarantee 4 counts "a few round trips" after expiry, the store's expiry
/// granularity and the rate limit: notification, linearizable read, rebalance, the new
/// owner's read, claim and grant, at most 5 ms each way here.
const FEW_ROUND_TRIPS: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub(super) enum Script {
    TrickleAdd,
    /// Crash the member holding the most leases.
    Crash,
    /// Degrade the link of the member holding the most leases and make its application
    /// ignore revokes; cut the link for good a moment later.
    Degrade,
    Cut {
        slot: usize,
    },
}

/// The resources of a crashed member that must run elsewhere by `deadline`.
#[derive(Debug)]
pub(super) struct Failover {
    slot: usize,
    /// The crashed incarnation's session: a keepalive it sent just before the crash may reach
    /// the store after it and push the expiry later, so the expiry is read from the store for
    /// as long as the session lives.
    session: Option<SessionId>,
    orphans: Vec<ResourceId>,
    expiry: Time,
    bound: Duration,
    deadline: Time,
}

/// A scenario's world: no random faults but timers firing late (the margin's business),
/// the store granting what was asked.
pub(super) fn calm(member_cfg: &mut Config, faults: &mut Faults) {
    let late_timer = 0.3;
    *faults = Faults {
        late_timer,
        ..QUIET
    };
    member_cfg.min_rebalance_interval = TRICKLE_RATE_LIMIT;
    member_cfg.max_txn_writes = 64;
    member_cfg.count_from_previous_keepalive = false;
    // The bounds judged here start from assignments that exist; a group left with none
    // would wait out the initial settle delay on top (DESIGN §4.5).
    member_cfg.initial_rebalance_delay = Duration::ZERO;
}

impl World {
    pub(super) fn start_scenario(&mut self) {
        self.chaos = false;
        let ids: Vec<ResourceId> = (0..6).map(|_| self.new_resource()).collect();
        self.admin(admin::add_resources(&self.layout, &ids));
        for _ in 0..3 {
            self.add_member();
        }
        self.schedule(Time::ZERO + STORE_TICK, Ev::StoreTick);
        match self.cfg.scenario {
            Scenario::Trickle => {
                self.schedule(Time::ZERO + ms(1000), Ev::Script(Script::TrickleAdd));
                self.schedule(Time::ZERO + FAULT_AT, Ev::Script(Script::Crash));
            }
            Scenario::Cutoff => {
                self.schedule(Time::ZERO + FAULT_AT, Ev::Script(Script::Degrade));
            }
            Scenario::Chaos => {}
        }
    }

    pub(super) fn run_scenario(mut self) -> SimReport {
        let end = Time::ZERO + FAULT_AT + SESSION_TTL * 3 + ms(2000);
        self.run_until(end);
        if let Some(f) = self.failover.take() {
            self.violation(format!(
                "scenario ended before the failover of m{} was judged",
                f.slot
            ));
        }
        self.into_report()
    }

    pub(super) fn script(&mut self, what: Script) {
        match what {
            Script::TrickleAdd => {
                let r = self.new_resource();
                self.log(|| format!("script: add {r}"));
                self.admin(admin::add_resources(&self.layout, &[r]));
                self.schedule(self.now + TRICKLE_EVERY, Ev::Script(Script::TrickleAdd));
            }
            Script::Crash => {
                let Some(i) = self.busiest() else { return };
                let session = self.slots[i].core.as_ref().and_then(|m| m.session());
                let orphans: Vec<ResourceId> = self.slots[i].app.resources().cloned().collect();
                let expiry = session.and_then(|s| self.store.expires_at(s));
                self.crash(i, "script");
                let (Some(expiry), false) = (expiry, orphans.is_empty()) else {
                    self.violation(format!("scenario vacuous: m{i} held nothing at the crash"));
                    return;
                };
                *self.counters.entry("failover_checked").or_default() += 1;
                let bound = STORE_TICK + self.member_cfg.min_rebalance_interval + FEW_ROUND_TRIPS;
                self.failover = Some(Failover {
                    slot: i,
                    session,
                    orphans,
                    expiry,
                    bound,
                    deadline: expiry + bound,
                });
            }
            Script::Degrade => {
                let Some(i) = self.busiest() else { return };
                if self.slots[i].app.is_empty() {
                    self.violation(format!("scenario vacuous: m{i} held nothing"));
                    return;
                }
                *self.counters.entry("cutoff_holding").or_default() += 1;
                self.log(|| format!("script: degrade m{i}, its application stuck"));
                self.slots[i].degraded = true;
                self.slots[i].stuck = true;
                // After a keepalive or two answered late, so the member's last proof of life
                // is a late reply.
                let cut = self.member_cfg.keepalive_interval * 2;
                self.schedule(self.now + cut, Ev::Script(Script::Cut { slot: i }));
            }
            Script::Cut { slot } => {
                self.log(|| format!("script: cut m{slot} for good"));
                self.slots[slot].partitioned = true;
            }
        }
    }

    /// The running member holding the most leases (the first on a tie).
    fn busiest(&self) -> Option<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].state == State::Running)
            .max_by_key(|i| (self.slots[*i].app.len(), usize::MAX - i))
    }

    /// DESIGN §1 guarantee 4, judged while changes go on: a crashed member's resources run
    /// elsewhere within the bound after the store expired its session.
    pub(super) fn check_failover(&mut self, until: Time) {
        let Some(f) = self.failover.as_mut() else {
            return;
        };
        if let Some(e) = f.session.and_then(|s| self.store.expires_at(s)) {
            f.expiry = e;
            f.deadline = e + f.bound;
        }
        // The crashed incarnation's application died with it: any holder now is a live
        // process (possibly its restarted successor under the same name).
        let slots = &self.slots;
        f.orphans.retain(|r| {
            !slots
                .iter()
                .any(|s| s.state == State::Running && s.app.holds(r))
        });
        if f.orphans.is_empty() {
            self.failover = None;
            return;
        }
        if until > f.deadline {
            let what = format!(
                "failover bound exceeded during churn: {:?} of crashed m{} not running elsewhere \
                 {:?} after its session expired in the store at {}",
                f.orphans,
                f.slot,
                Duration::from_nanos(f.deadline.0 - f.expiry.0),
                f.expiry
            );
            self.failover = None;
            if self.cfg.trace {
                let view = self.store_view();
                for (m, mv) in &view.members {
                    let set = view.assignment_of(m, mv.session);
                    self.log(|| format!("store: {m} ({}) assigned {set:?}", mv.session));
                }
                let chunks: Vec<String> = view
                    .assign
                    .iter()
                    .map(|(m, c)| {
                        format!(
                            "{m}: {} chunks of session {:?}",
                            c.len(),
                            c.first().map(|c| c.rec.session)
                        )
                    })
                    .collect();
                self.log(|| format!("store: chunks {chunks:?}"));
            }
            self.violation(what);
        }
    }
}
