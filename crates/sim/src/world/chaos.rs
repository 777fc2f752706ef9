//! Fault injection: the fault probabilities of a seed ([`Faults`], drawn in `World::new`) and
//! the chaos events that strike at random (joins, crashes, restarts under the same name, quick
//! leaves, partitions, pauses past the TTL, admin adds, removes and re-adds, links that degrade
//! then fail); then [`World::quiesce`], which stops them all (heal, wake, restart) so the
//! convergence checks can run.
//!
//! **Never** draw from the generator outside the seed's order: a seed replays exactly.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use rebalanser_core::admin;
use rebalanser_core::{ResourceId, Time};

use super::run::{ev_slot, Ev};
use super::{ms, State, World};
use crate::SESSION_TTL;

const MAX_MEMBERS: usize = 6;

/// Fault probabilities of one seed (zero in the quiet phase).
#[derive(Debug, Clone, Copy)]
pub(super) struct Faults {
    pub(super) lost_request: f64,
    pub(super) lost_reply: f64,
    pub(super) fast_fail: f64,
    pub(super) slow: f64,
    pub(super) stale_read: f64,
    pub(super) lost_notify: f64,
    pub(super) dup_notify: f64,
    pub(super) slow_stop: f64,
    pub(super) late_write: f64,
    pub(super) renegotiate: f64,
    /// A keepalive answered OK that never reached the expiry authority (never two in a row
    /// for one session: the server that lied is then cut off and stops answering).
    pub(super) keepalive_lie: f64,
    /// A member's timer fires late (scheduling delay on a loaded machine).
    pub(super) late_timer: f64,
}

pub(super) const QUIET: Faults = Faults {
    lost_request: 0.0,
    lost_reply: 0.0,
    fast_fail: 0.0,
    slow: 0.0,
    stale_read: 0.0,
    lost_notify: 0.0,
    dup_notify: 0.0,
    slow_stop: 0.0,
    late_write: 0.0,
    renegotiate: 0.0,
    keepalive_lie: 0.0,
    late_timer: 0.0,
};

impl World {
    pub(super) fn chaos(&mut self) {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].state == State::Running)
            .collect();
        let down: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].state != State::Running)
            .collect();
        let ttl = SESSION_TTL.as_millis() as u64;
        match self.rng.below(14) {
            0 if self.slots.len() < MAX_MEMBERS => {
                let i = self.add_member();
                self.log(|| format!("chaos: join m{i}"));
            }
            1 | 2 => {
                if let Some(&i) = self.rng.pick(&running) {
                    self.crash(i, "chaos");
                }
            }
            3 => {
                if let Some(&i) = self.rng.pick(&down) {
                    self.log(|| format!("chaos: restart m{i}"));
                    self.start_member(i);
                }
            }
            4 => {
                if let Some(&i) = self.rng.pick(&running) {
                    // Through the member's inbox: a paused process learns of it on waking.
                    let inc = self.slots[i].inc;
                    self.schedule(self.now, Ev::QuickLeave { slot: i, inc });
                }
            }
            5 => {
                if let Some(&i) = self.rng.pick(&running) {
                    let d = self.rng.range(100, ttl * 3);
                    self.slots[i].partitioned = true;
                    self.log(|| format!("chaos: partition m{i} for {d}ms"));
                    self.schedule(self.now + ms(d), Ev::Heal { slot: i });
                }
            }
            6 => {
                if let Some(&i) = self.rng.pick(&running) {
                    let d = self.rng.range(100, ttl * 3);
                    // A second pause of a paused process can only extend it: its deferred
                    // inbox wakes at the later time.
                    let until = self.now + ms(d);
                    let until = self.slots[i].paused_until.map_or(until, |u| u.max(until));
                    self.slots[i].paused_until = Some(until);
                    self.log(|| format!("chaos: pause m{i} for {d}ms"));
                }
            }
            7 => {
                let r = match self.rng.pick(&self.removed).cloned() {
                    Some(r) if self.rng.chance(0.5) => r,
                    _ => self.new_resource(),
                };
                self.removed.retain(|x| *x != r);
                self.log(|| format!("chaos: admin add {r}"));
                self.admin(admin::add_resources(&self.layout, &[r]));
            }
            8 | 9 => {
                let all = self.resources();
                if let Some(r) = self.rng.pick(&all).cloned() {
                    self.log(|| format!("chaos: admin remove {r}"));
                    let op = admin::remove_resources_variant(
                        &self.layout,
                        std::slice::from_ref(&r),
                        self.cfg.variant,
                    );
                    self.admin(op);
                    if self.rng.chance(0.5) {
                        let d = self.rng.range(1, 200);
                        self.schedule(self.now + ms(d), Ev::ReAdd { resource: r });
                    } else {
                        self.removed.push(r);
                    }
                }
            }
            10 if self.slots.len() < MAX_MEMBERS => {
                let i = self.add_member();
                let inc = self.slots[i].inc;
                let d = self.rng.range(20, 400);
                self.log(|| format!("chaos: join m{i}, leave in {d}ms"));
                self.schedule(self.now + ms(d), Ev::QuickLeave { slot: i, inc });
            }
            11 => {
                // Restart with the same name while the old session may still live (PITFALLS 10).
                if let Some(&i) = self.rng.pick(&running) {
                    self.crash(i, "chaos: replaced");
                    self.start_member(i);
                }
            }
            12 => {
                // A link that degrades before it fails: replies arrive just before their
                // timeout (a keepalive's reply much later than its send), then nothing.
                if let Some(&i) = self.rng.pick(&running) {
                    self.slots[i].degraded = true;
                    let cut = ms(self.rng.range(150, 450));
                    let heal_after = ms(self.rng.range(ttl / 2, ttl * 3));
                    self.log(|| format!("chaos: degrade m{i}, cut in {cut:?}"));
                    self.schedule(
                        self.now + cut,
                        Ev::Cut {
                            slot: i,
                            heal_after,
                        },
                    );
                }
            }
            13 => {
                // The application reports a resource it holds failing here.
                if let Some(&i) = self.rng.pick(&running) {
                    let held: Vec<ResourceId> = self.slots[i].app.resources().cloned().collect();
                    if let Some(r) = self.rng.pick(&held).cloned() {
                        let local = self.slots[i].local(self.now);
                        self.log(|| format!("chaos: m{i} reports {r} unhealthy"));
                        if let Some(m) = self.slots[i].core.as_mut() {
                            m.report_unhealthy(local, &r);
                        }
                        self.drain(i);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stops every fault: heal, wake, restart, no more churn or message loss.
    pub(super) fn quiesce(&mut self) {
        self.chaos = false;
        // Stale reads and lost or duplicated notifications are how real stores behave when
        // nothing is wrong (follower reads, reconnects): they stay on.
        self.faults = Faults {
            stale_read: self.faults.stale_read,
            lost_notify: self.faults.lost_notify,
            dup_notify: self.faults.dup_notify,
            ..QUIET
        };
        self.log(|| "faults stop".to_string());
        for i in 0..self.slots.len() {
            self.slots[i].partitioned = false;
            self.slots[i].degraded = false;
            if let Some(u) = self.slots[i].paused_until {
                if u > self.now {
                    self.slots[i].paused_until = Some(self.now);
                }
            }
        }
        for i in 0..self.slots.len() {
            if self.slots[i].state == State::Crashed {
                self.start_member(i);
            }
        }
        if !self
            .slots
            .iter()
            .any(|s| s.state == State::Running && !s.leaving)
        {
            let i = self.add_member();
            self.log(|| format!("m{i} started so the group has a member"));
        }
        // Wake paused members: the events deferred to their wake-up are due now.
        let paused: BTreeSet<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].paused_until.is_some())
            .collect();
        let queued: Vec<(Time, u64, usize)> = self.queue.drain().map(|Reverse(x)| x).collect();
        for (t, seq, id) in queued {
            let wakes = self
                .evs
                .get(&id)
                .and_then(ev_slot)
                .is_some_and(|s| paused.contains(&s));
            let t = if wakes { t.min(self.now) } else { t };
            self.queue.push(Reverse((t, seq, id)));
        }
    }
}
