//! The event queue and the main loop: what can happen ([`Ev`]), in which order (virtual time,
//! then scheduling order), and what each event does. A paused process's events wait for it to
//! wake. The checks run as time advances (`check_access` over every interval in which nothing
//! happens), and after faults stop (convergence, then stability).
//!
//! **Never** reorder events of one instant, or draw from the generator in a new place: a seed
//! replays exactly, its trace byte for byte.

use std::cmp::Reverse;
use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::store::{StoreOp, StoreReply, StoreResult};
use rebalanser_core::{LeaseId, OpId, ResourceId, SessionId, Time};

use super::trace::{short_op, short_res};
use super::{ms, scenarios, State, World, STORE_TICK};
use crate::{convergence_bound, Scenario, SimReport};

/// Something that happens at an instant.
#[derive(Debug, Clone)]
pub(super) enum Ev {
    /// A request reaches the store.
    Arrive {
        slot: usize,
        inc: u32,
        op: OpId,
        req: StoreOp,
        sent: Time,
    },
    Reply {
        slot: usize,
        inc: u32,
        op: OpId,
        res: StoreResult,
    },
    /// A keepalive that went through a reconnect renegotiating a lower TTL: the store applies
    /// the new TTL when the member learns it (see `reneg` in `arrive`).
    RenegotiatedReply {
        slot: usize,
        inc: u32,
        op: OpId,
        session: SessionId,
        ttl: Duration,
    },
    /// A write the client gave up on (it got `Indeterminate`) reaches the store late.
    LateApply {
        req: StoreOp,
    },
    Notify {
        slot: usize,
        inc: u32,
        /// The keys it names, or `None` for a bare "something changed" (SQLite's kind).
        keys: Option<std::sync::Arc<Vec<rebalanser_core::store::Key>>>,
    },
    Timer {
        slot: usize,
        inc: u32,
        /// The time it was set for (it fires later when the member was paused).
        at: Time,
    },
    /// The application finished stopping a revoked lease.
    Release {
        slot: usize,
        inc: u32,
        resource: ResourceId,
        lease: LeaseId,
    },
    StoreTick,
    Chaos,
    /// A supervisor restarts a crashed member (quiet phase only).
    Restart {
        slot: usize,
    },
    Heal {
        slot: usize,
    },
    /// A step of a scripted scenario.
    Script(scenarios::Script),
    /// A degraded link fails: partition `slot` until `heal_after` from now.
    Cut {
        slot: usize,
        heal_after: Duration,
    },
    /// Re-add a resource removed a moment ago (remove + re-add faster than a handover).
    ReAdd {
        resource: ResourceId,
    },
    /// Make a member leave (shortly after joining: assignment flips A→B→A).
    QuickLeave {
        slot: usize,
        inc: u32,
    },
}

impl World {
    pub fn run(mut self) -> SimReport {
        if self.cfg.scenario != Scenario::Chaos {
            return self.run_scenario();
        }
        let mut fault_steps = 0;
        while fault_steps < self.cfg.steps {
            if !self.step() {
                break;
            }
            fault_steps += 1;
        }
        self.quiesce();
        let end = self.now + convergence_bound();
        self.run_until(end);
        self.check_converged();
        if self.violations.is_empty() {
            // Converged is not enough: it must stay put. Another bound with nothing changing
            // (stale reads and notification loss go on) must not move, grant or revoke
            // anything, nor change the coordinator.
            let before = self.counters.clone();
            let end = self.now + convergence_bound();
            self.run_until(end);
            let changed: Vec<String> = [
                "grant",
                "revoke",
                "coordinator",
                "stepped_down",
                "rebalance",
                "suspended",
                "session_lost",
            ]
            .iter()
            .filter_map(|k| {
                let n = self.counters.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
                (n > 0).then(|| format!("{n} {k}"))
            })
            .collect();
            if !changed.is_empty() {
                self.violation(format!(
                    "not stable after convergence: {}",
                    changed.join(", ")
                ));
            }
            self.check_converged();
        }
        self.into_report()
    }

    pub(super) fn run_until(&mut self, end: Time) {
        while self.peek_time().is_some_and(|t| t <= end) {
            self.step();
        }
        if end > self.now {
            self.check_access(end);
        }
        self.now = end;
    }

    fn peek_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((t, seq, id))) = self.queue.pop() else {
            return false;
        };
        let Some(ev) = self.evs.remove(&id) else {
            return true;
        };
        if t == self.now {
            self.same_instant += 1;
            if self.same_instant > 100_000 {
                self.violation("livelock: 100000 events at one instant".into());
                self.queue.clear();
                return false;
            }
        } else {
            self.same_instant = 0;
        }
        if t > self.now {
            self.check_access(t);
        }
        self.now = t;
        self.steps += 1;
        // A paused process handles nothing until it wakes; its inbox keeps the order. Its
        // requests already on the wire still reach the store (and do not wake it).
        if let Some(slot) = ev_slot(&ev) {
            if let Some(until) = self.slots[slot].paused_until {
                if until > self.now {
                    if !matches!(ev, Ev::Arrive { .. }) {
                        self.evs.insert(id, ev);
                        self.queue.push(Reverse((until, seq, id)));
                        return true;
                    }
                } else {
                    self.slots[slot].paused_until = None;
                }
            }
        }
        self.handle(ev);
        true
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive {
                slot,
                inc,
                op,
                req,
                sent,
            } => self.arrive(slot, inc, op, req, sent),
            Ev::Reply { slot, inc, op, res } => {
                if self.live(slot, inc) {
                    self.log(|| format!("m{slot}#{inc} op{} <- {}", op.0, short_res(&res)));
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        m.handle_reply(local, op, res);
                    }
                    self.drain(slot);
                }
            }
            Ev::RenegotiatedReply {
                slot,
                inc,
                op,
                session,
                ttl,
            } => {
                // The store lowers the TTL at the instant the member learns it: a member that
                // is paused meanwhile is not modelled (see the closing note of issue 2: the
                // ZooKeeper backend must report a renegotiated timeout at once).
                self.store.renegotiate(session, ttl, self.now);
                self.log(|| format!("store renegotiates {session} ttl to {ttl:?}"));
                if self.live(slot, inc) {
                    let res = Ok(StoreReply::KeptAlive { ttl });
                    self.log(|| format!("m{slot}#{inc} op{} <- {}", op.0, short_res(&res)));
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        m.handle_reply(local, op, res);
                    }
                    self.drain(slot);
                }
            }
            Ev::LateApply { req } => {
                let before = self.store.rev();
                let res = self.store_apply(&req);
                self.log(|| format!("store LATE {} {}", short_op(&req), short_res(&res)));
                if self.store.rev() != before {
                    self.notify_all();
                }
            }
            Ev::Notify { slot, inc, keys } => {
                if self.live(slot, inc) {
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        match keys {
                            Some(keys) => m.handle_notify_keys(local, &keys),
                            None => m.handle_notify(local),
                        }
                    }
                    self.drain(slot);
                }
            }
            Ev::Timer { slot, inc, at } => {
                if self.live(slot, inc) && self.slots[slot].timer == Some(at) {
                    self.slots[slot].timer = None;
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        m.handle_timeout(local);
                    }
                    self.drain(slot);
                }
            }
            Ev::Release {
                slot,
                inc,
                resource,
                lease,
            } => {
                if self.live(slot, inc) && self.slots[slot].app.release(&resource, lease) {
                    self.log(|| format!("m{slot}#{inc} app released {resource}"));
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        m.handle_released(local, &resource, lease);
                    }
                    self.drain(slot);
                }
            }
            Ev::StoreTick => {
                let before = self.store.rev();
                let expired = self.store.expire(self.now);
                if !expired.is_empty() {
                    self.log(|| format!("store expired {expired:?}"));
                }
                if self.store.rev() != before {
                    self.notify_all();
                }
                self.schedule(self.now + STORE_TICK, Ev::StoreTick);
            }
            Ev::Chaos => {
                if self.chaos {
                    self.chaos();
                    let next = self.rng.range(30, 500);
                    self.schedule(self.now + ms(next), Ev::Chaos);
                }
            }
            Ev::Restart { slot } => {
                if self.slots[slot].state == State::Crashed {
                    self.start_member(slot);
                }
            }
            Ev::Heal { slot } => {
                self.slots[slot].degraded = false;
                if self.slots[slot].partitioned {
                    self.slots[slot].partitioned = false;
                    self.log(|| format!("m{slot} healed"));
                }
            }
            Ev::Script(what) => self.script(what),
            Ev::Cut { slot, heal_after } => {
                if self.chaos {
                    self.slots[slot].partitioned = true;
                    self.log(|| format!("m{slot} cut off for {heal_after:?}"));
                    self.schedule(self.now + heal_after, Ev::Heal { slot });
                }
            }
            Ev::ReAdd { resource } => {
                if self.chaos {
                    self.log(|| format!("admin re-add {resource}"));
                    self.removed.retain(|r| *r != resource);
                    self.admin(admin::add_resources(&self.layout, &[resource]));
                }
            }
            Ev::QuickLeave { slot, inc } => {
                if self.chaos && self.live(slot, inc) {
                    self.leave(slot);
                }
            }
        }
    }
}

pub(super) fn ev_slot(ev: &Ev) -> Option<usize> {
    match ev {
        Ev::Arrive { slot, .. }
        | Ev::Reply { slot, .. }
        | Ev::RenegotiatedReply { slot, .. }
        | Ev::Notify { slot, .. }
        | Ev::Timer { slot, .. }
        | Ev::Release { slot, .. }
        | Ev::QuickLeave { slot, .. } => Some(*slot),
        _ => None,
    }
}
