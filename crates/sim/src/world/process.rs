//! A member process and its application: after every input, the member's ops go to the
//! network, its events to the application and the driver, its timer to the queue (in true
//! time, from the process's drifting local clock). The application accesses a resource from a
//! `Grant` until it released the lease (within its stop budget, or much later, or never when
//! it is stuck) or its process died; [`crate::access::App`] records it. A missed stop deadline
//! aborts the process.
//!
//! **Never** read what a member believes about its leases here to decide what the
//! application does: it acts on the events only, like a real one.

use std::time::Duration;

use rebalanser_core::{Event, Time};

use super::run::Ev;
use super::trace::short_event;
use super::{ms, State, World};
use crate::access::{claim_problem, AppEffect};
use crate::SESSION_TTL;

/// How late a timer may fire on a loaded machine: below the members' safety margin (150 ms)
/// less clock drift.
const MAX_TIMER_LATENESS_MS: u64 = 100;

impl World {
    /// Moves ops, events and the timer out of a member after an input.
    pub(super) fn drain(&mut self, i: usize) {
        loop {
            let Some(m) = self.slots[i].core.as_mut() else {
                return;
            };
            let op = m.poll_op();
            let ev = if op.is_none() { m.poll_event() } else { None };
            match (op, ev) {
                (Some((id, req)), _) => self.send(i, id, req),
                (None, Some(e)) => self.member_event(i, e),
                (None, None) => break,
            }
        }
        let Some(m) = self.slots[i].core.as_ref() else {
            return;
        };
        if m.is_closed() {
            let inc = self.slots[i].inc;
            self.log(|| format!("m{i}#{inc} left"));
            let still: Vec<String> = self.slots[i]
                .app
                .resources()
                .map(|r| r.to_string())
                .collect();
            if !still.is_empty() {
                self.violation(format!(
                    "m{i}#{inc} left while its application still accesses {}",
                    still.join(", ")
                ));
            }
            self.slots[i].state = State::Left;
            self.slots[i].core = None;
            self.slots[i].timer = None;
            self.slots[i].app.clear();
            if self.slots[i].parking {
                // Stopped for a restart: the next instance comes within the TTL, or later.
                self.slots[i].state = State::Crashed;
                let ttl = SESSION_TTL.as_millis() as u64;
                let d = self.rng.range(0, ttl * 3 / 2);
                self.log(|| format!("m{i}#{inc} restarts in {d}ms"));
                self.schedule(self.now + ms(d), Ev::Restart { slot: i });
            }
            return;
        }
        let want = m
            .poll_timeout()
            .map(|l| self.slots[i].true_time(l).max(self.now));
        if want != self.slots[i].timer {
            self.slots[i].timer = want;
            if let Some(t) = want {
                if t != Time::MAX {
                    let inc = self.slots[i].inc;
                    // A busy machine runs a timer late (the safety margin covers it).
                    let late = if self.rng.chance(self.faults.late_timer) {
                        ms(self.rng.range(1, MAX_TIMER_LATENESS_MS))
                    } else {
                        Duration::ZERO
                    };
                    self.schedule(
                        t + late,
                        Ev::Timer {
                            slot: i,
                            inc,
                            at: t,
                        },
                    );
                }
            }
        }
    }

    fn member_event(&mut self, i: usize, e: Event) {
        let inc = self.slots[i].inc;
        let kind = match &e {
            Event::Grant { .. } => "grant",
            Event::Revoke { .. } => "revoke",
            Event::Suspended { .. } => "suspended",
            Event::Resumed => "resumed",
            Event::SessionLost { .. } => "session_lost",
            Event::StopDeadlineMissed { .. } => "abort",
            Event::BecameCoordinator { .. } => "coordinator",
            Event::SteppedDown { .. } => "stepped_down",
            Event::NameInUse { .. } => "name_in_use",
            Event::TookOver { .. } => "took_over",
            Event::Replaced { .. } => "replaced",
            Event::Rebalanced { .. } => "rebalance",
            Event::Left => "left",
            _ => "other",
        };
        *self.counters.entry(kind).or_default() += 1;
        match self.slots[i].app.on_event(&e, self.now) {
            AppEffect::Granted {
                resource,
                lease,
                token,
                session,
                others,
            } => {
                if let Some(p) = self.tokens.grant(&resource, i, session, token) {
                    if p.regressed {
                        let (s, t) = (p.session, p.token);
                        self.violation(format!(
                            "token for {resource} went from {t} ({s}) to {token} ({session}) at m{i}"
                        ));
                    }
                }
                if let Some(p) = claim_problem(&self.store, &self.layout, &resource, session, token)
                {
                    self.violation(format!(
                        "m{i}#{inc} granted {resource} (token {token}, {session}) but {}",
                        p.why(session)
                    ));
                }
                self.check_barrier(i, inc, &resource, lease);
                if others > 0 {
                    self.violation(format!("m{i} got two leases on {resource}"));
                    // Reported once; the new lease replaces the old one.
                    self.slots[i].app.supersede(&resource, lease);
                }
            }
            AppEffect::Revoked { resource, lease } => {
                if self.slots[i].stuck {
                    self.log(|| format!("m{i}#{inc} {}", short_event(&e)));
                    return;
                }
                let budget = self.member_cfg.stop_timeout.as_millis() as u64;
                let stop = if self.rng.chance(self.faults.slow_stop) {
                    self.rng.range(budget, budget * 3)
                } else {
                    // Well-behaved: stops within its budget, sometimes only just.
                    self.rng.range(0, budget)
                };
                self.schedule(
                    self.now + ms(stop),
                    Ev::Release {
                        slot: i,
                        inc,
                        resource,
                        lease,
                    },
                );
            }
            AppEffect::Abort => {
                self.log(|| format!("m{i}#{inc} {e:?}"));
                // The runtime aborts the process: the only stop a library can force. Its
                // application died with it (`on_event` ended its access).
                self.crash(i, "stop deadline missed: abort");
                return;
            }
            AppEffect::None => {}
        }
        self.log(|| format!("m{i}#{inc} {}", short_event(&e)));
    }
}
