//! The member/driver glue: how the model drives the real cores, like the runtime does, only
//! through their public inputs (start, replies, notifications, timeouts, releases) and outputs
//! (ops, events, the next timeout). Builds the model and its warm-up, moves ops and events out
//! of a member after every input (the application's side through
//! [`rebalanser_sim::access::App`], shared with the simulator), ticks the clock to the next
//! instant something is due, and runs the deterministic fault-free driver (`run_quiet`).
//!
//! **Never** read a member's beliefs here to decide anything: only its outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::layout::{self, Layout, Mode};
use rebalanser_core::store::{StoreError, StoreOp, StoreReply, StoreResult};
use rebalanser_core::{
    Config, Event, GroupId, LeaseId, Member, ResourceId, SessionId, Time, Variant,
};
use rebalanser_sim::access::{App, AppEffect, Tokens};
use rebalanser_store::{MemModel, ModelConfig};

use crate::state::{Flight, Slot, State};
use crate::{member_config, secs, Setup};

pub struct RebalanserModel {
    pub setup: Setup,
    pub layout: Layout,
    pub resources: Vec<ResourceId>,
    pub(crate) init: State,
    pub(crate) horizon_at: Time,
}

/// What a client sees when it gave up on an operation.
pub(crate) fn timeout_error(op: &StoreOp) -> StoreResult {
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
            .apply(Time::ZERO, &admin::create_group_with(&layout, setup.mode))
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
                        app: App::new(),
                        notify: false,
                    })
                    .collect(),
                flight: BTreeMap::new(),
                sessions: BTreeSet::new(),
                faults_left: setup.faults,
                delays_left: setup.delays,
                admin_left: setup.admin,
                removed: BTreeSet::new(),
                tokens: Tokens::default(),
                token_violation: None,
                started_round: 0,
                barrier_violation: None,
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

    pub(crate) fn cfg(&self, i: usize) -> Config {
        member_config(&format!("m{i}"), self.setup.variant)
    }

    pub(crate) fn start(&self, s: &mut State, i: usize) {
        let slot = &mut s.slots[i];
        slot.inc += 1;
        slot.app.clear();
        slot.notify = false;
        let mut m = Member::new(self.cfg(i));
        m.start(s.now);
        slot.core = Some(m);
        self.drain(s, i);
    }

    pub(crate) fn crash(&self, s: &mut State, i: usize) {
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
    pub(crate) fn drain(&self, s: &mut State, i: usize) {
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
            if let Event::SessionOpened { session, .. } = e {
                s.sessions.insert(session);
            }
            let round = s.started_round;
            match s.slots[i].app.on_event(&e, round) {
                AppEffect::Granted {
                    resource,
                    token,
                    session,
                    ..
                } => {
                    self.check_barrier(s, i, &resource);
                    if let Some(p) = s.tokens.grant(&resource, i, session, token) {
                        if p.regressed && s.token_violation.is_none() {
                            let (j, sess, t) = (p.owner, p.session, p.token);
                            s.token_violation = Some(format!(
                                "token for {resource} went from {t} (m{j}, {sess}) to {token} (m{i}, {session})"
                            ));
                        }
                        if p.owner != i {
                            s.handover = true;
                        }
                    }
                }
                AppEffect::Abort => {
                    // The runtime aborts the process: the only stop a library can force.
                    self.crash(s, i);
                    return;
                }
                AppEffect::Revoked { .. } | AppEffect::None => {}
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

    pub(crate) fn store_apply(&self, s: &mut State, req: &StoreOp) -> StoreResult {
        let before = s.store.rev();
        let res = s.store.apply(s.now, req);
        if let Ok(StoreReply::Session { session, .. }) = &res {
            s.sessions.insert(*session);
        }
        if self.setup.mode == Mode::Barrier && matches!(req, StoreOp::Txn { .. }) && res.is_ok() {
            let barrier = s
                .store
                .entries()
                .get(&self.layout.barrier())
                .and_then(|e| layout::decode::<layout::BarrierRec>(&e.value));
            if let Some(b) = barrier.filter(|b| !b.stop) {
                s.started_round = s.started_round.max(b.round);
            }
        }
        if s.store.rev() != before {
            self.notify_all(s);
        }
        res
    }

    /// Barrier mode (DESIGN §4.10): a lease granted in round R (the latest round whose start
    /// the store committed before the grant) while any application still accesses a lease of
    /// an earlier round breaks the barrier. Judged from the store and the applications only.
    fn check_barrier(&self, s: &mut State, i: usize, resource: &ResourceId) {
        if self.setup.mode != Mode::Barrier || s.barrier_violation.is_some() {
            return;
        }
        let round = s.started_round;
        let older: Vec<String> = s
            .slots
            .iter()
            .enumerate()
            .flat_map(|(j, slot)| {
                slot.app
                    .leases()
                    .filter(|(_, _, l)| l.since < round)
                    .map(move |(r, _, l)| format!("m{j} {r} (round {})", l.since))
            })
            .collect();
        if !older.is_empty() {
            s.barrier_violation = Some(format!(
                "t={}: m{i} granted {resource} in round {round} while {} still accessed",
                s.now,
                older.join(", ")
            ));
        }
    }

    pub(crate) fn reply(&self, s: &mut State, i: usize, inc: u32, op: u64, res: StoreResult) {
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
    pub(crate) fn next_time(&self, s: &State) -> Option<Time> {
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

    pub(crate) fn tick(&self, s: &mut State, to: Time) {
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
    pub(crate) fn run_quiet(&self, s: &mut State, until: Time, restart: bool) {
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

    pub(crate) fn releasable(&self, s: &State) -> Vec<(usize, ResourceId, LeaseId)> {
        let mut v = Vec::new();
        for (i, slot) in s.slots.iter().enumerate() {
            for (r, lease, l) in slot.app.leases() {
                if l.revoked {
                    v.push((i, r.clone(), lease));
                }
            }
        }
        v
    }

    pub(crate) fn release(&self, s: &mut State, i: usize, r: &ResourceId, lease: LeaseId) {
        if !s.slots[i].app.release(r, lease) {
            return;
        }
        let now = s.now;
        if let Some(m) = s.slots[i].core.as_mut() {
            m.handle_released(now, r, lease);
        }
        self.drain(s, i);
    }
}
