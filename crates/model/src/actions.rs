//! The stateright [`Model`]: which actions each state offers (within the fault, delay and
//! admin budgets, and the horizon) and what each does, through the driver.
//!
//! **Never** let an action bypass the driver's inputs to the cores.

use rebalanser_core::admin;
use stateright::{Model, Property};

use crate::driver::{timeout_error, RebalanserModel};
use crate::oracle;
use crate::quiet_bound;
use crate::state::{Action, State};

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
        oracle::properties()
    }
}
