//! The simulated world: its state and set-up. A [`World`] holds the members (the real core,
//! each in a [`Slot`] with its process, clock and application), the store model, the event
//! queue and what the checks found; this module builds it from a seed and starts, crashes and
//! stops member processes.
//!
//! The rest of the world, by concern:
//! - `run`: the event queue and the main loop (what each event does, in virtual time);
//! - `process`: a member process and its application (moving ops, events and timers out of the
//!   core; what the application does on a grant or revoke, through [`crate::access::App`]);
//! - `network`: requests and replies between members and the store (latency, loss,
//!   `Indeterminate`, late writes, notifications);
//! - `store`: every change to the store model goes through here, and is checked;
//! - `chaos`: the random faults of a seed, and stopping them (`quiesce`);
//! - `oracle`: the checks, from the applications' access and the store only;
//! - `scenarios`: scripted faults; `trace`: one-line renderings of ops, replies and events.
//!
//! **Never** let anything here depend on wall time, `HashMap` iteration or thread order: a
//! seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::layout::Layout;
use rebalanser_core::{Config, GroupId, Member, MemberId, ResourceId, SessionId, Time};
use rebalanser_store::{MemModel, ModelConfig};

use crate::access::{App, Tokens};
use crate::rng::Rng;
use crate::Scenario;

mod chaos;
mod network;
mod oracle;
mod process;
mod run;
mod scenarios;
mod store;
mod trace;
use crate::{SimConfig, SimReport, SESSION_TTL};
use chaos::{Faults, QUIET};
use run::Ev;

const MS: u64 = 1_000_000;
const STORE_TICK: Duration = Duration::from_millis(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Crashed,
    Left,
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
    /// What the application accesses: from each `Grant` until it has stopped (its release,
    /// or its process's crash or abort), whatever the member believes about its deadline. A
    /// paused process accesses nothing while paused. Stamped with the grant's (true) time.
    app: App<Time>,
    leaving: bool,
    /// Stopping for a restart under the same name (static membership): started again,
    /// within the TTL or not, once it has stopped.
    parking: bool,
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

/// One seed's world (see the module docs); [`World::run`] runs it to its report.
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
    /// The last token granted per resource, for check (b).
    tokens: Tokens,
    /// Barrier mode: the round each lease was granted in, by the store (the latest round
    /// whose start it held at the grant), per (slot, incarnation, resource, lease).
    grant_rounds: BTreeMap<(usize, u32, ResourceId, rebalanser_core::LeaseId), u64>,
    /// Barrier mode: the latest round whose start the store committed (rounds that were
    /// stopped and never started are skipped).
    started_round: u64,
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
        let mut store = MemModel::new(ModelConfig {
            min_ttl: ms(100),
            max_ttl,
            history: 4,
        });
        // Notifications name the keys that changed, as the ZooKeeper and memory stores' do.
        store.record_changes();
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
        // Tiny: exercise split assignments.
        member_cfg.assignment_chunk_bytes = 300;
        // Sometimes tiny: exercise rebalances written in several transactions.
        member_cfg.max_txn_writes = if rng.chance(0.5) {
            rng.range(1, 4) as usize
        } else {
            64
        };
        // Sometimes tiny: exercise claim operations waiting for room.
        member_cfg.max_claim_ops_in_flight = if rng.chance(0.5) {
            rng.range(1, 3) as usize
        } else {
            16
        };
        member_cfg.variant = cfg.variant;
        // Half the seeds run as on ZooKeeper via a follower: a keepalive success proves only
        // the one before it, and the store sometimes answers one without touching the session.
        let zk_like = rng.chance(0.5);
        member_cfg.count_from_previous_keepalive = zk_like;
        // Half the seeds run static members: a restart under the same name takes the record
        // over, and some leaves are stops for a restart.
        member_cfg.static_membership = rng.chance(0.5);
        // Resources reported unhealthy are avoided for a while (short: the checks after the
        // faults stop wait for balance).
        member_cfg.unhealthy_backoff = ms(rng.range(100, 1500));
        // Half the seeds hold a fresh group's first assignment back (the initial settle delay).
        member_cfg.initial_rebalance_delay = if rng.chance(0.5) {
            ms(rng.range(1, 400))
        } else {
            Duration::ZERO
        };
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
            tokens: Tokens::default(),
            grant_rounds: BTreeMap::new(),
            started_round: 0,
            lied: BTreeSet::new(),
            violations: Vec::new(),
            reported: BTreeSet::new(),
            trace: Vec::new(),
            steps: 0,
            same_instant: 0,
            counters: BTreeMap::new(),
            failover: None,
        };
        w.admin(admin::create_group_with(&w.layout, w.cfg.mode));
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
            app: App::new(),
            leaving: false,
            parking: false,
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
        slot.parking = false;
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

    fn leave(&mut self, i: usize) {
        let local = self.slots[i].local(self.now);
        let inc = self.slots[i].inc;
        self.slots[i].leaving = true;
        if self.member_cfg.static_membership && self.rng.chance(0.5) {
            self.log(|| format!("m{i}#{inc} stop for restart"));
            self.slots[i].parking = true;
            if let Some(m) = self.slots[i].core.as_mut() {
                m.stop_for_restart(local);
            }
        } else {
            self.log(|| format!("m{i}#{inc} leave"));
            if let Some(m) = self.slots[i].core.as_mut() {
                m.leave(local);
            }
        }
        self.drain(i);
    }

    fn live(&self, slot: usize, inc: u32) -> bool {
        let s = &self.slots[slot];
        s.inc == inc && s.core.is_some() && s.state == State::Running
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
}
