//! The simulated world: members, their applications, the network, the store and the chaos.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::layout::{self, Layout};
use rebalanser_core::store::{StoreError, StoreOp, StoreReply, StoreResult};
use rebalanser_core::{
    Config, Event, GroupId, LeaseId, Member, MemberId, OpId, ResourceId, SessionId, Time, Token,
};
use rebalanser_store::{MemModel, ModelConfig};

use crate::rng::Rng;
use crate::Scenario;

mod oracle;
mod scenarios;
use crate::{convergence_bound, SimConfig, SimReport, SESSION_TTL};

const MS: u64 = 1_000_000;
const MAX_MEMBERS: usize = 6;
const STORE_TICK: Duration = Duration::from_millis(20);
/// How late a timer may fire on a loaded machine: below the members' safety margin (150 ms)
/// less clock drift.
const MAX_TIMER_LATENESS_MS: u64 = 100;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, Clone)]
enum Ev {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Crashed,
    Left,
}

/// What the application of one member does with one resource: it accesses it from the
/// `Grant` until it has stopped (its release, or its process's crash or abort), whatever the
/// member believes about its deadline. A paused process accesses nothing while paused.
#[derive(Debug)]
struct AppLease {
    lease: LeaseId,
    token: Token,
    session: SessionId,
    revoked: bool,
    since: Time,
}

#[derive(Debug)]
struct Slot {
    name: MemberId,
    inc: u32,
    core: Option<Member>,
    state: State,
    partitioned: bool,
    /// Replies reach the member just before its operation timeout (a congested link).
    degraded: bool,
    paused_until: Option<Time>,
    /// Local clock = offset + t·(1 + ppm/10⁶).
    ppm: i64,
    offset: u64,
    timer: Option<Time>,
    app: BTreeMap<ResourceId, AppLease>,
    leaving: bool,
    /// The application ignores revokes (stuck in a call): only an abort stops it.
    stuck: bool,
}

impl Slot {
    fn local(&self, t: Time) -> Time {
        let drift = (t.0 as i128) * (self.ppm as i128) / 1_000_000;
        Time((self.offset as i128 + t.0 as i128 + drift).max(0) as u64)
    }

    /// The earliest true time at which the local clock reads at least `l`.
    fn true_time(&self, l: Time) -> Time {
        if l == Time::MAX {
            return Time::MAX;
        }
        let x = (l.0 as i128 - self.offset as i128).max(0);
        let mut t = Time((x * 1_000_000 / (1_000_000 + self.ppm as i128)).max(0) as u64);
        while self.local(t) < l {
            t.0 += 1;
        }
        t
    }
}

/// Fault probabilities of one seed (zero in the quiet phase).
#[derive(Debug, Clone, Copy)]
struct Faults {
    lost_request: f64,
    lost_reply: f64,
    fast_fail: f64,
    slow: f64,
    stale_read: f64,
    lost_notify: f64,
    dup_notify: f64,
    slow_stop: f64,
    late_write: f64,
    renegotiate: f64,
    /// A keepalive answered OK that never reached the expiry authority (never two in a row
    /// for one session: the server that lied is then cut off and stops answering).
    keepalive_lie: f64,
    /// A member's timer fires late (scheduling delay on a loaded machine).
    late_timer: f64,
}

const QUIET: Faults = Faults {
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

pub struct World {
    cfg: SimConfig,
    rng: Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    evs: BTreeMap<usize, Ev>,
    next_ev: usize,
    store: MemModel,
    layout: Layout,
    member_cfg: Config,
    slots: Vec<Slot>,
    faults: Faults,
    chaos: bool,
    op_timeout: Duration,
    next_resource: u32,
    removed: Vec<ResourceId>,
    /// Last (session, token) granted per resource, for check (b).
    last_token: BTreeMap<ResourceId, (SessionId, Token)>,
    /// Sessions whose last keepalive was answered without being seen.
    lied: BTreeSet<SessionId>,
    violations: Vec<String>,
    /// Oracle findings already reported (a double access lasts many steps).
    reported: BTreeSet<String>,
    trace: Vec<String>,
    steps: u64,
    same_instant: u64,
    counters: BTreeMap<&'static str, u64>,
    /// The scripted crash of `Scenario::Trickle`, until its resources moved.
    failover: Option<scenarios::Failover>,
}

impl World {
    pub fn new(cfg: &SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let group = GroupId::new("sim").unwrap_or_else(|_| unreachable!("valid literal"));
        let layout = Layout::new(&group);
        // Sometimes the store grants less than requested (PITFALLS 2), still above every
        // member's timing budget (1.1 s, or 1.3 s when counting from the previous keepalive).
        let max_ttl = if rng.chance(0.3) {
            ms(rng.range(1400, 1900))
        } else {
            ms(60_000)
        };
        let store = MemModel::new(ModelConfig {
            min_ttl: ms(100),
            max_ttl,
            history: 4,
        });
        let mut member_cfg = Config::new(
            group.clone(),
            MemberId::new("m").unwrap_or_else(|_| unreachable!()),
        );
        member_cfg.session_ttl = SESSION_TTL;
        // Covers 1000 ppm of drift over T (2 ms) with a wide berth for scheduling.
        member_cfg.safety_margin = ms(150);
        member_cfg.stop_timeout = ms(300);
        member_cfg.keepalive_interval = ms(200);
        member_cfg.op_timeout = ms(250);
        member_cfg.min_rebalance_interval = ms(rng.range(0, 300));
        member_cfg.resync_interval = ms(1000);
        member_cfg.leave_timeout = ms(3000);
        member_cfg.retry_delay = ms(40);
        member_cfg.assignment_chunk_bytes = 300; // tiny: exercise split assignments
                                                 // Sometimes tiny: exercise rebalances written in several transactions.
        member_cfg.max_txn_writes = if rng.chance(0.5) {
            rng.range(1, 4) as usize
        } else {
            64
        };
        member_cfg.variant = cfg.variant;
        // Half the seeds run as on ZooKeeper via a follower: a keepalive success proves only
        // the one before it, and the store sometimes answers one without touching the session.
        let zk_like = rng.chance(0.5);
        member_cfg.count_from_previous_keepalive = zk_like;
        debug_assert!(member_cfg.validate().is_ok());
        let op_timeout = member_cfg.op_timeout;
        let mut faults = Faults {
            lost_request: rng.range(0, 30) as f64 / 1000.0,
            lost_reply: rng.range(0, 30) as f64 / 1000.0,
            fast_fail: rng.range(0, 20) as f64 / 1000.0,
            slow: rng.range(0, 30) as f64 / 1000.0,
            stale_read: rng.range(0, 200) as f64 / 1000.0,
            lost_notify: rng.range(0, 100) as f64 / 1000.0,
            dup_notify: rng.range(0, 100) as f64 / 1000.0,
            slow_stop: rng.range(0, 200) as f64 / 1000.0,
            late_write: rng.range(0, 60) as f64 / 1000.0,
            renegotiate: rng.range(0, 30) as f64 / 1000.0,
            keepalive_lie: if zk_like {
                rng.range(0, 200) as f64 / 1000.0
            } else {
                0.0
            },
            late_timer: rng.range(0, 300) as f64 / 1000.0,
        };
        if cfg.scenario != Scenario::Chaos {
            scenarios::calm(&mut member_cfg, &mut faults);
        }
        let mut w = World {
            cfg: cfg.clone(),
            rng,
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            evs: BTreeMap::new(),
            next_ev: 0,
            store,
            layout,
            member_cfg,
            slots: Vec::new(),
            faults,
            chaos: true,
            op_timeout,
            next_resource: 0,
            removed: Vec::new(),
            last_token: BTreeMap::new(),
            lied: BTreeSet::new(),
            violations: Vec::new(),
            reported: BTreeSet::new(),
            trace: Vec::new(),
            steps: 0,
            same_instant: 0,
            counters: BTreeMap::new(),
            failover: None,
        };
        w.admin(admin::create_group(&w.layout));
        if cfg.scenario != Scenario::Chaos {
            w.start_scenario();
            return w;
        }
        let n_res = w.rng.range(1, 12);
        let ids: Vec<ResourceId> = (0..n_res).map(|_| w.new_resource()).collect();
        w.admin(admin::add_resources(&w.layout, &ids));
        let n_members = w.rng.range(1, 4);
        for _ in 0..n_members {
            w.add_member();
        }
        w.schedule(Time::ZERO + STORE_TICK, Ev::StoreTick);
        let first = w.rng.range(50, 400);
        w.schedule(Time::ZERO + ms(first), Ev::Chaos);
        w
    }

    fn new_resource(&mut self) -> ResourceId {
        self.next_resource += 1;
        // Ids with a space, a slash and a dot exercise the key encoding.
        let id = match self.next_resource % 3 {
            0 => format!("r{}", self.next_resource),
            1 => format!("q/{}.x", self.next_resource),
            _ => format!("res {}", self.next_resource),
        };
        ResourceId::new(id).unwrap_or_else(|_| unreachable!("generated ids are valid"))
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = line();
            self.trace.push(format!("{} {}", self.now, l));
        }
    }

    fn violation(&mut self, what: String) {
        if self.cfg.trace {
            self.trace.push(format!("{} VIOLATION {}", self.now, what));
        }
        self.violations.push(format!("t={} {}", self.now, what));
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, id)));
    }

    fn admin(&mut self, op: StoreOp) {
        let before = self.store.rev();
        let _ = self.store.apply(self.now, &op);
        if self.store.rev() != before {
            self.notify_all();
        }
    }

    fn add_member(&mut self) -> usize {
        let i = self.slots.len();
        let name = MemberId::new(format!("m{i}")).unwrap_or_else(|_| unreachable!());
        let ppm = self.rng.range(0, 2000) as i64 - 1000;
        let offset = self.rng.range(0, 1_000_000) * MS;
        self.slots.push(Slot {
            name,
            inc: 0,
            core: None,
            state: State::Crashed,
            partitioned: false,
            degraded: false,
            paused_until: None,
            ppm,
            offset,
            timer: None,
            app: BTreeMap::new(),
            leaving: false,
            stuck: false,
        });
        self.start_member(i);
        i
    }

    fn start_member(&mut self, i: usize) {
        let mut cfg = self.member_cfg.clone();
        cfg.name = self.slots[i].name.clone();
        let slot = &mut self.slots[i];
        slot.inc += 1;
        slot.state = State::Running;
        slot.timer = None;
        slot.app.clear();
        slot.leaving = false;
        let local = slot.local(self.now);
        let mut m = Member::new(cfg);
        m.start(local);
        slot.core = Some(m);
        let inc = slot.inc;
        self.log(|| format!("m{i}#{inc} start"));
        self.drain(i);
    }

    fn crash(&mut self, i: usize, why: &str) {
        let slot = &mut self.slots[i];
        if slot.state != State::Running {
            return;
        }
        slot.state = State::Crashed;
        slot.core = None;
        slot.app.clear();
        slot.timer = None;
        slot.paused_until = None;
        let inc = slot.inc;
        self.log(|| format!("m{i}#{inc} crash ({why})"));
        if !self.chaos {
            // Once faults stop, a supervisor brings every crashed process back.
            self.schedule(self.now + ms(100), Ev::Restart { slot: i });
        }
    }

    // ----- main loop ------------------------------------------------------------------

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

    fn into_report(self) -> SimReport {
        SimReport {
            seed: self.cfg.seed,
            steps: self.steps,
            violations: self.violations,
            trace: self.trace,
            counters: self.counters,
        }
    }

    fn run_until(&mut self, end: Time) {
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
            Ev::Notify { slot, inc } => {
                if self.live(slot, inc) {
                    let local = self.slots[slot].local(self.now);
                    if let Some(m) = self.slots[slot].core.as_mut() {
                        m.handle_notify(local);
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
                if self.live(slot, inc)
                    && self.slots[slot]
                        .app
                        .get(&resource)
                        .is_some_and(|l| l.lease == lease)
                {
                    self.slots[slot].app.remove(&resource);
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

    fn live(&self, slot: usize, inc: u32) -> bool {
        let s = &self.slots[slot];
        s.inc == inc && s.core.is_some() && s.state == State::Running
    }

    /// Moves ops, events and the timer out of a member after an input.
    fn drain(&mut self, i: usize) {
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
            let still: Vec<String> = self.slots[i].app.keys().map(|r| r.to_string()).collect();
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
            Event::Rebalanced { .. } => "rebalance",
            Event::Left => "left",
            _ => "other",
        };
        *self.counters.entry(kind).or_default() += 1;
        match &e {
            Event::Grant {
                lease,
                resource,
                token,
                session,
                ..
            } => {
                if let Some((s, t)) = self.last_token.get(resource) {
                    let bad = if s == session { token < t } else { token <= t };
                    if bad {
                        self.violation(format!(
                            "token for {resource} went from {t} ({s}) to {token} ({session}) at m{i}"
                        ));
                    }
                }
                self.last_token.insert(resource.clone(), (*session, *token));
                if let Some(why) = self.claim_problem(resource, *session, *token) {
                    self.violation(format!(
                        "m{i}#{inc} granted {resource} (token {token}, {session}) but {why}"
                    ));
                }
                let prev = self.slots[i].app.insert(
                    resource.clone(),
                    AppLease {
                        lease: *lease,
                        token: *token,
                        session: *session,
                        revoked: false,
                        since: self.now,
                    },
                );
                if prev.is_some() {
                    self.violation(format!("m{i} got two leases on {resource}"));
                }
            }
            Event::Revoke {
                lease, resource, ..
            } => {
                if let Some(l) = self.slots[i].app.get_mut(resource) {
                    if l.lease == *lease && !l.revoked {
                        l.revoked = true;
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
                                resource: resource.clone(),
                                lease: *lease,
                            },
                        );
                    }
                }
            }
            Event::StopDeadlineMissed { .. } => {
                self.log(|| format!("m{i}#{inc} {e:?}"));
                // The runtime aborts the process: the only stop a library can force.
                self.crash(i, "stop deadline missed: abort");
                return;
            }
            _ => {}
        }
        self.log(|| format!("m{i}#{inc} {}", short_event(&e)));
    }

    fn send(&mut self, i: usize, op: OpId, req: StoreOp) {
        let inc = self.slots[i].inc;
        self.log(|| format!("m{i}#{inc} op{} -> {}", op.0, short_op(&req)));
        let f = self.faults;
        let timeout_at = self.now + self.op_timeout;
        let failed = timeout_error(&req);
        if self.slots[i].partitioned || self.rng.chance(f.lost_request) {
            self.reply(timeout_at, i, inc, op, failed);
            return;
        }
        if self.rng.chance(f.fast_fail) {
            let at = self.now + ms(self.rng.range(0, 5));
            let res = Err(StoreError::Unavailable("injected".into()));
            self.reply(at, i, inc, op, res);
            return;
        }
        if req.is_write() && self.rng.chance(f.late_write) {
            // The request is stuck in a queue: the client times out, the store applies it
            // later (etcd, PostgreSQL; PITFALLS 12).
            self.reply(timeout_at, i, inc, op, failed);
            let late = self.rng.range(1, 400);
            self.schedule(timeout_at + ms(late), Ev::LateApply { req });
            return;
        }
        let d1 = self.latency();
        if self.now + d1 >= timeout_at {
            self.reply(timeout_at, i, inc, op, failed);
            return;
        }
        let sent = self.now;
        self.schedule(
            self.now + d1,
            Ev::Arrive {
                slot: i,
                inc,
                op,
                req,
                sent,
            },
        );
    }

    fn reply(&mut self, at: Time, slot: usize, inc: u32, op: OpId, res: StoreResult) {
        self.schedule(at, Ev::Reply { slot, inc, op, res });
    }

    fn latency(&mut self) -> Duration {
        if self.rng.chance(self.faults.slow) {
            ms(self.rng.range(50, 400))
        } else {
            Duration::from_micros(self.rng.range(200, 5000))
        }
    }

    fn arrive(&mut self, i: usize, inc: u32, op: OpId, req: StoreOp, sent: Time) {
        let timeout_at = sent + self.op_timeout;
        if self.slots[i].partitioned {
            let res = timeout_error(&req);
            self.reply(timeout_at, i, inc, op, res);
            return;
        }
        if let StoreOp::KeepAlive { session } = &req {
            let session = *session;
            let lied_last = !self.lied.insert(session);
            if lied_last
                || !self.model_alive(session)
                || !self.rng.chance(self.faults.keepalive_lie)
            {
                self.lied.remove(&session);
            } else if let Some(ttl) = self.store.session_ttl(session) {
                // Answered by a server cut off from the one that decides expiry.
                self.log(|| format!("store op{} m{i}#{inc} keepalive answered, not seen", op.0));
                let d2 = self.latency();
                let res = Ok(StoreReply::KeptAlive { ttl });
                self.reply(self.now + d2.min(ms(1)), i, inc, op, res);
                return;
            }
        }
        if let StoreOp::KeepAlive { session } = &req {
            if self.model_alive(*session) && self.rng.chance(self.faults.renegotiate) {
                // Mostly still above the timing budget; sometimes below it, which the member
                // must refuse.
                let budget = self.member_cfg.timing_budget().as_millis() as u64;
                let ttl = if self.rng.chance(0.1) {
                    ms(self.rng.range(500, budget))
                } else {
                    ms(self.rng.range(budget + 50, 1900))
                };
                let session = *session;
                self.schedule(
                    self.now + ms(1),
                    Ev::RenegotiatedReply {
                        slot: i,
                        inc,
                        op,
                        session,
                        ttl,
                    },
                );
                return;
            }
        }
        let stale = match &req {
            StoreOp::Get {
                linearizable: false,
                ..
            }
            | StoreOp::List {
                linearizable: false,
                ..
            } if self.rng.chance(self.faults.stale_read) => {
                let age = self.rng.range(1, 4) as usize;
                self.store.apply_stale_read(&req, age)
            }
            _ => None,
        };
        let before = self.store.rev();
        let res = match stale {
            Some(r) => r,
            None => self.store_apply(&req),
        };
        self.log(|| format!("store op{} m{i}#{inc} {}", op.0, short_res(&res)));
        if self.store.rev() != before {
            self.notify_all();
        }
        let mut d2 = self.latency();
        if self.slots[i].degraded {
            let room = timeout_at.0.saturating_sub(self.now.0);
            d2 = Duration::from_nanos(room / 100 * self.rng.range(60, 99));
        }
        let lost = self.slots[i].partitioned || self.rng.chance(self.faults.lost_reply);
        if lost || self.now + d2 >= timeout_at {
            // Applied, but the client never learns it: the Indeterminate case.
            let res = timeout_error(&req);
            self.reply(timeout_at, i, inc, op, res);
        } else {
            self.reply(self.now + d2, i, inc, op, res);
        }
    }

    fn model_alive(&mut self, s: SessionId) -> bool {
        self.store.expire(self.now);
        self.store.session_alive(s)
    }

    fn notify_all(&mut self) {
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.core.is_none() || s.partitioned {
                continue;
            }
            let inc = s.inc;
            if self.rng.chance(self.faults.lost_notify) {
                continue;
            }
            let d = self.latency();
            self.schedule(self.now + d, Ev::Notify { slot: i, inc });
            if self.rng.chance(self.faults.dup_notify) {
                let d = self.latency();
                self.schedule(self.now + d, Ev::Notify { slot: i, inc });
            }
        }
    }

    fn leave(&mut self, i: usize) {
        let local = self.slots[i].local(self.now);
        let inc = self.slots[i].inc;
        self.log(|| format!("m{i}#{inc} leave"));
        self.slots[i].leaving = true;
        if let Some(m) = self.slots[i].core.as_mut() {
            m.leave(local);
        }
        self.drain(i);
    }

    // ----- chaos ----------------------------------------------------------------------

    fn chaos(&mut self) {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].state == State::Running)
            .collect();
        let down: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].state != State::Running)
            .collect();
        let ttl = SESSION_TTL.as_millis() as u64;
        match self.rng.below(13) {
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
            _ => {}
        }
    }

    fn resources(&self) -> Vec<ResourceId> {
        let entries: Vec<_> = self
            .store
            .entries()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        layout::parse_view(&self.layout, &entries)
            .0
            .resources
            .into_iter()
            .collect()
    }

    /// Stops every fault: heal, wake, restart, no more churn or message loss.
    fn quiesce(&mut self) {
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

    // ----- checks ---------------------------------------------------------------------

    /// (c) once faults stopped and the bound passed: every resource leased exactly once,
    /// counts within one of each other.
    fn check_converged(&mut self) {
        let resources: BTreeSet<ResourceId> = self.resources().into_iter().collect();
        let mut owner: BTreeMap<ResourceId, Vec<usize>> = BTreeMap::new();
        let mut counts = Vec::new();
        let mut problems = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state != State::Running {
                continue;
            }
            let Some(m) = s.core.as_ref() else { continue };
            if !s.leaving && !m.is_joined() {
                problems.push(format!("m{i} is running but not joined"));
            }
            let mut n = 0;
            for (r, l) in &s.app {
                if !l.revoked {
                    owner.entry(r.clone()).or_default().push(i);
                    n += 1;
                }
            }
            counts.push((i, n));
        }
        for r in &resources {
            match owner.get(r).map(Vec::len).unwrap_or(0) {
                1 => {}
                n => problems.push(format!("{r} leased {n} times")),
            }
        }
        for r in owner.keys().filter(|r| !resources.contains(*r)) {
            problems.push(format!("removed resource {r} still leased"));
        }
        let coordinators = self
            .slots
            .iter()
            .filter(|s| {
                s.core
                    .as_ref()
                    .is_some_and(|m| m.is_coordinator().is_some())
            })
            .count();
        if !counts.is_empty() && coordinators != 1 {
            problems.push(format!("{coordinators} coordinators"));
        }
        let max = counts.iter().map(|c| c.1).max().unwrap_or(0);
        let min = counts.iter().map(|c| c.1).min().unwrap_or(0);
        if max > min + 1 {
            problems.push(format!("unbalanced: {counts:?}"));
        }
        if !problems.is_empty() {
            let mut s = format!(
                "no convergence within {:?} after faults stopped:",
                convergence_bound()
            );
            for p in problems.iter().take(8) {
                let _ = write!(s, " {p};");
            }
            self.violation(s);
        }
    }
}

fn ev_slot(ev: &Ev) -> Option<usize> {
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

fn timeout_error(op: &StoreOp) -> StoreResult {
    if op.is_write() {
        Err(StoreError::Indeterminate("timed out".into()))
    } else {
        Err(StoreError::Unavailable("timed out".into()))
    }
}

fn short_op(op: &StoreOp) -> String {
    match op {
        StoreOp::OpenSession { ttl } => format!("open(ttl={ttl:?})"),
        StoreOp::KeepAlive { session } => format!("keepalive({session})"),
        StoreOp::CloseSession { session } => format!("close({session})"),
        StoreOp::Get { key, linearizable } => format!("get({key}, lin={linearizable})"),
        StoreOp::List { linearizable, .. } => format!("list(lin={linearizable})"),
        StoreOp::Txn { conds, writes } => {
            let w: Vec<String> = writes
                .iter()
                .map(|w| match w {
                    rebalanser_core::store::Write::Create { key, owner, .. } => {
                        format!(
                            "create {key}{}",
                            owner.map(|o| format!(" by {o}")).unwrap_or_default()
                        )
                    }
                    rebalanser_core::store::Write::Put { key, .. } => format!("put {key}"),
                    rebalanser_core::store::Write::Delete { key } => format!("delete {key}"),
                })
                .collect();
            format!("txn[{} conds] {}", conds.len(), w.join(", "))
        }
    }
}

fn short_res(res: &StoreResult) -> String {
    match res {
        Ok(StoreReply::Listed { entries, rev }) => {
            format!("ok listed {} keys at rev {rev}", entries.len())
        }
        Ok(StoreReply::Got(Some(e))) => format!("ok got owner={:?} rev={}", e.owner, e.create_rev),
        Ok(r) => format!("ok {r:?}"),
        Err(e) => format!("err {e}"),
    }
}

fn short_event(e: &Event) -> String {
    match e {
        Event::Grant {
            resource, token, ..
        } => format!("GRANT {resource} token {token}"),
        Event::Revoke {
            resource, reason, ..
        } => format!("REVOKE {resource} ({})", reason.as_str()),
        other => format!("{other:?}"),
    }
}
