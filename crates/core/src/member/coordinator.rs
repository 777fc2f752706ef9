//! The coordinator role: standing for election (leader key + epoch bump in one transaction),
//! proving an uncertain election, stepping down when the view shows it deposed, writing the
//! rebalance planned in `plan.rs` fenced by leader key and epoch, and resigning after repeated
//! failures. Plans only from linearizable views that reflect its own last write.

use std::sync::Arc;

use crate::config::{Variant, INITIAL_DELAY_CAP};
use crate::ids::{Epoch, OpId, SessionId, Time};
use crate::layout::{self, BarrierRec, CounterRec, LeaderRec, Mode};
use crate::store::{Cond, StoreError, StoreOp, StoreReply, StoreResult, Write};

use super::memo::Memo;
use super::pending::{get_lin, owned_delete};
use super::plan::Plan;
use super::report::{self, SharedReport};
use super::{Event, Member, Pending};

#[derive(Debug, Clone)]
pub(super) struct Coordinator {
    pub(super) epoch: Epoch,
    pub(super) leader_rev: u64,
    /// Set while the coordinator waits for a view that reflects its election or its last
    /// write: one from a read sent at or after this number. It plans nothing before.
    pub(super) fresh_from_read: Option<u64>,
    pub(super) last_rebalance: Option<Time>,
    pub(super) rebalance_at: Option<Time>,
    pub(super) txn: Option<OpId>,
    pub(super) failures: u32,
    pub(super) seq: u64,
    /// `Variant::DebounceRebalance` only: the view that last restarted the wait.
    pub(super) debounce_view: Option<u64>,
    /// The plan of `(View::plan_input, epoch, seq)`: planning runs the assignor over the
    /// whole group, so it runs when what it reads changed, not once per input or per view
    /// (most views differ only in claims; issue 10). Two different states could share a
    /// signature only if revisions were reused (a store restored in place); even then a stale
    /// plan costs balance, not safety: claims, not assignments, make access exclusive, and the
    /// chunks it rewrites are guarded by the versions it read.
    pub(super) planned: Memo<((usize, u64), Epoch, u64), Option<Plan>>,
    /// While the group has no assignment: when this coordinator first saw it so, and when
    /// its member set last changed (the initial settle delay).
    pub(super) settle: Option<Settle>,
    /// The report of a rebalance whose first transactions committed and whose last has not.
    pub(super) rebalance_start: Option<SharedReport>,
    /// The members (and draining marks) of the last view this coordinator planned from, and
    /// that view's plan input: membership changes are told against it.
    pub(super) members_seen: Option<((usize, u64), report::Seen)>,
}

/// The initial settle delay's clock (see `Config::initial_rebalance_delay`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Settle {
    first: Time,
    last_change: Time,
    /// (count, xor of session ids) of the registered members: changes when one joins.
    members: (usize, u64),
}

/// The election slot: at most one election, verification or resignation in flight, and when
/// another may be tried.
#[derive(Debug, Clone, Default)]
pub(super) struct Election {
    /// The `Elect`, `ElectVerify` or `Resign` in flight.
    pub(super) op: Option<OpId>,
    /// After a failed or uncertain election: stand again only with a view newer than this
    /// one (by `ViewState::seq`).
    pub(super) after_view: Option<u64>,
    /// After resigning: stand again only from this time on (the store may still show our
    /// leader key until then).
    pub(super) no_election_before: Option<Time>,
}

impl Election {
    /// Resigned, and still within the hold-off.
    fn resigned_until(&self, now: Time) -> bool {
        self.no_election_before.is_some_and(|t| now < t)
    }
}

impl Member {
    /// Timers: a rate-limited rebalance, the end of a resignation's hold-off.
    pub(super) fn coordinator_timers(&self, at: &mut impl FnMut(Time)) {
        if let Some(r) = self.coord.as_ref().and_then(|c| c.rebalance_at) {
            at(r);
        }
        if self.view.group.leader.is_none() {
            if let Some(t) = self.election.no_election_before {
                at(t);
            }
        }
    }

    /// The coordinator's part of a step: stand for election when nobody leads; as
    /// coordinator, check that the view still shows this member leading in its epoch, then
    /// plan from it and write the rebalance, at most at the configured rate.
    pub(super) fn coordinate(&mut self, now: Time) {
        let Some(session) = self.session.id() else {
            return;
        };
        let Some(c) = self.coord.as_ref() else {
            self.maybe_elect(now, session);
            return;
        };
        if c.fresh_from_read.is_some() || c.txn.is_some() {
            return;
        }
        let (epoch, seq) = (c.epoch, c.seq);
        let Some(epoch_version) = self.still_leading(session) else {
            self.step_down();
            self.wait_for_newer_view();
            return;
        };
        self.tell_membership();
        let key = (self.view.group.plan_input, epoch, seq);
        let planned = self.coord.as_mut().and_then(|c| c.planned.take(&key));
        let plan = planned.unwrap_or_else(|| self.plan(epoch, seq + 1));
        // Barrier mode: the memo keeps the plan itself, never what the gate made of it.
        let barrier = self.view.group.mode == Mode::Barrier;
        let keep = barrier.then(|| plan.clone());
        let plan = if barrier {
            match self.barrier_gate(epoch, plan) {
                Ok(p) => p,
                Err(waiting) => {
                    // Waiting for acknowledgements: their keys' changes bring a new view.
                    if let Some(c) = self.coord.as_mut() {
                        c.planned.set(key, waiting);
                        c.rebalance_at = None;
                    }
                    return;
                }
            }
        } else {
            plan
        };
        let Some(plan) = plan else {
            if let Some(c) = self.coord.as_mut() {
                c.planned.set(key, None);
                c.rebalance_at = None;
                // A fresh view with nothing to write: earlier failures were races, not a
                // wedge (PITFALLS 23 counts only failures in a row).
                c.failures = 0;
            }
            return;
        };
        if self.settling(now, plan.initial) || self.rate_limited(now) {
            if let Some(c) = self.coord.as_mut() {
                c.planned.set(key, keep.unwrap_or(Some(plan)));
            }
            return;
        }
        self.send_rebalance(now, session, epoch_version, plan);
    }

    /// Coordinator: one event per membership change since the last view it planned from (none
    /// for the members it found when elected). Runs when the plan input changed, which every
    /// member record and draining mark is part of; O(members) then.
    fn tell_membership(&mut self) {
        let input = self.view.group.plan_input;
        let Some(c) = self.coord.as_ref() else {
            return;
        };
        if c.members_seen.as_ref().is_some_and(|(i, _)| *i == input) {
            return;
        }
        let now_seen = report::seen(&self.view.group);
        let changes = match &c.members_seen {
            Some((_, old)) => report::membership_changes(old, &now_seen),
            None => Vec::new(),
        };
        for (member, session, change) in changes {
            self.events.push_back(Event::Membership {
                member,
                session,
                change,
            });
        }
        if let Some(c) = self.coord.as_mut() {
            c.members_seen = Some((input, now_seen));
        }
    }

    /// Barrier mode (DESIGN §4.10): what to write instead of `plan`. A change while the round
    /// runs (or an unfinished round of an earlier coordinator) writes the stop of a new round;
    /// in the stop phase the plan waits (`Err`, with the plan to keep) until every registered
    /// member acknowledged this round, and the write that completes it starts the round.
    /// Claims are taken as always: safety never rests on the acknowledgements.
    fn barrier_gate(&self, epoch: Epoch, plan: Option<Plan>) -> Result<Option<Plan>, Option<Plan>> {
        let v = &self.view.group;
        let key = self.layout.barrier();
        let (cond, cur) = match v.barrier {
            Some((b, version)) => (Cond::Version(key.clone(), version), Some(b)),
            None => (Cond::Absent(key.clone()), None),
        };
        let running = cur.is_none_or(|b| !b.stop);
        let ours = cur.is_some_and(|b| b.epoch == epoch);
        let round = cur.map_or(0, |b| b.round);
        let record = |stop: bool, round: u64| Write::Put {
            key: key.clone(),
            value: layout::encode(&BarrierRec { epoch, round, stop }),
        };
        let alone = |write: Write| Plan {
            report: None,
            initial: false,
            partial: false,
            conds: vec![cond.clone()],
            writes: vec![write],
        };
        let stop_next = || Ok(Some(alone(record(true, round + 1))));
        match plan {
            None if running => Ok(None),
            None if !ours => stop_next(),
            None if self.all_acked(epoch, round) => Ok(Some(alone(record(false, round)))),
            None => Err(None),
            Some(_) if running || !ours => stop_next(),
            Some(p) if !self.all_acked(epoch, round) => Err(Some(p)),
            Some(mut p) => {
                p.conds.push(cond);
                if !p.partial {
                    p.writes.push(record(false, round));
                }
                Ok(Some(p))
            }
        }
    }

    /// Barrier mode: every registered member acknowledged round `round` of `epoch` from its
    /// current session.
    fn all_acked(&self, epoch: Epoch, round: u64) -> bool {
        let v = &self.view.group;
        v.members.iter().all(|(m, mv)| {
            v.acks.get(m).is_some_and(|(s, a)| {
                *s == mv.session
                    && if self.cfg.variant == Variant::BarrierOlderAck {
                        // Test-only mutation: an acknowledgement of the previous round counts.
                        a.round + 1 >= round
                    } else {
                        a.epoch == epoch && a.round == round
                    }
            })
        })
    }

    /// The version of the epoch key when the view shows our leader key and our epoch; `None`
    /// when deposed (a newer epoch exists) or the read is stale: fenced either way.
    fn still_leading(&self, session: SessionId) -> Option<u64> {
        let c = self.coord.as_ref()?;
        let view = &self.view.group;
        let leader_ok = view
            .leader
            .as_ref()
            .is_some_and(|l| l.session == session && l.create_rev == c.leader_rev);
        match view.epoch {
            Some((e, v)) if leader_ok && e == c.epoch => Some(v),
            _ => None,
        }
    }

    /// The initial settle delay: the first assignment of a group in which no live member has
    /// one waits until no member joined for `initial_rebalance_delay`, and at most
    /// `INITIAL_DELAY_CAP` delays in all, so members started together are assigned together
    /// instead of the first taking everything and handing most of it on. Safety never rests
    /// on it: it only postpones a plan. Whether the plan must wait (until `rebalance_at`).
    fn settling(&mut self, now: Time, initial: bool) -> bool {
        let delay = self.cfg.initial_rebalance_delay;
        let v = &self.view.group;
        let members = (
            v.members.len(),
            v.members.values().fold(0, |x, m| x ^ m.session.0),
        );
        let Some(c) = self.coord.as_mut() else {
            return false;
        };
        if !initial || delay.is_zero() {
            c.settle = None;
            return false;
        }
        let s = c.settle.get_or_insert(Settle {
            first: now,
            last_change: now,
            members,
        });
        if s.members != members {
            s.members = members;
            s.last_change = now;
        }
        let due = (s.last_change + delay).min(s.first + delay.saturating_mul(INITIAL_DELAY_CAP));
        if now < due {
            c.rebalance_at = Some(due);
            return true;
        }
        false
    }

    /// Whether the rebalance must wait (and until when: `Coordinator::rebalance_at`).
    fn rate_limited(&mut self, now: Time) -> bool {
        let view_seq = self.view.seq;
        let interval = self.cfg.min_rebalance_interval;
        let debounce = self.cfg.variant == Variant::DebounceRebalance;
        let Some(c) = self.coord.as_mut() else {
            return true;
        };
        if debounce {
            // Test-only mutation: every new view restarts the wait.
            if c.debounce_view != Some(view_seq) {
                c.debounce_view = Some(view_seq);
                c.rebalance_at = Some(now + interval);
            }
            if c.rebalance_at.is_some_and(|at| now < at) {
                return true;
            }
        }
        // PITFALLS 22: a rate limit with a trailing edge, never a debounce.
        if let Some(last) = c.last_rebalance {
            let at = last + interval;
            if now < at {
                c.rebalance_at = Some(at);
                return true;
            }
        }
        false
    }

    /// Writes `plan` in one transaction, fenced by the leader key and the epoch.
    fn send_rebalance(&mut self, now: Time, session: SessionId, epoch_version: u64, plan: Plan) {
        let Some(leader_rev) = self.coord.as_ref().map(|c| c.leader_rev) else {
            return;
        };
        // DESIGN §8 rule 10: the write is fenced by the leader key and the epoch, so a deposed
        // coordinator's late write cannot land.
        let mut conds = vec![
            Cond::Owned {
                key: self.layout.leader(),
                session,
                create_rev: leader_rev,
            },
            Cond::Version(self.layout.epoch(), epoch_version),
        ];
        if self.cfg.variant == Variant::UnguardedRebalance {
            conds.clear();
        }
        conds.extend(plan.conds);
        let op = self.send(
            Pending::Rebalance {
                session,
                sent: now,
                partial: plan.partial,
                report: plan.report,
            },
            StoreOp::Txn {
                conds,
                writes: plan.writes,
            },
        );
        if let Some(c) = self.coord.as_mut() {
            c.txn = Some(op);
            c.seq += 1;
            c.rebalance_at = None;
        }
    }

    /// Not coordinator: stand for election when the view shows no leader, prove a leader key
    /// of ours the view shows, or delete it again after resigning. One at a time.
    fn maybe_elect(&mut self, now: Time, session: SessionId) {
        if self.election.op.is_some()
            || self.election.after_view.is_some_and(|v| self.view.seq <= v)
        {
            return;
        }
        match &self.view.group.leader {
            Some(l) if l.session == session && self.election.resigned_until(now) => {
                // We resigned, but the view still shows our leader key (the Resign may not
                // have landed yet): delete it again rather than take it back.
                let create_rev = l.create_rev;
                self.send_resign(session, create_rev);
            }
            Some(l) if l.session == session => {
                // The view says we lead (an Indeterminate election that was applied, or a
                // false step-down): prove it before acting.
                self.verify_election(session);
            }
            Some(_) => {}
            None => {
                // A leaving member stands for election too: when every other member is gone
                // or leaving, nobody else would move its resources and its leave would wait
                // out leave_timeout. As coordinator it drains itself like any other member.
                // Not while stopping for a restart: its leader key would outlive it by a TTL.
                if self.election.resigned_until(now)
                    || self.leaving.as_ref().is_some_and(|l| l.park)
                {
                    return;
                }
                self.stand_for_election(session);
            }
        }
    }

    /// DESIGN §8 rule 10: the leader key and the epoch bump in one transaction.
    fn stand_for_election(&mut self, session: SessionId) {
        let (cond, epoch) = match self.view.group.epoch {
            Some((e, v)) => (Cond::Version(self.layout.epoch(), v), Epoch(e.0 + 1)),
            None => (Cond::Absent(self.layout.epoch()), Epoch(1)),
        };
        let rec = LeaderRec {
            member: self.cfg.name.clone(),
            epoch,
        };
        let op = self.send(
            Pending::Elect { session, epoch },
            StoreOp::Txn {
                conds: vec![Cond::Absent(self.layout.leader()), cond],
                writes: vec![
                    Write::Create {
                        key: self.layout.leader(),
                        value: layout::encode(&rec),
                        owner: Some(session),
                    },
                    Write::Put {
                        key: self.layout.epoch(),
                        value: layout::encode(&CounterRec { value: epoch.0 }),
                    },
                ],
            },
        );
        self.election.op = Some(op);
    }

    /// Settles by a linearizable read whether the leader key is ours.
    fn verify_election(&mut self, session: SessionId) {
        let op = self.send(
            Pending::ElectVerify { session },
            get_lin(self.layout.leader()),
        );
        self.election.op = Some(op);
    }

    /// Deletes our leader key (the instance created at `create_rev`). Held in the election
    /// slot until answered, so that a view still showing the key does not send a second
    /// delete (`maybe_elect`).
    pub(super) fn send_resign(&mut self, session: SessionId, create_rev: u64) {
        let key = self.layout.leader();
        let op = self.send(
            Pending::Resign { session },
            owned_delete(key, session, create_rev),
        );
        self.election.op = Some(op);
    }

    /// No election before a newer view; ask for one.
    fn wait_for_newer_view(&mut self) {
        self.election.after_view = Some(self.view.seq);
        self.view.dirty = true;
    }

    /// The reply to the election transaction (leader key + epoch bump).
    pub(super) fn on_elect(&mut self, session: SessionId, epoch: Epoch, result: StoreResult) {
        self.election.op = None;
        match result {
            Ok(StoreReply::Committed { rev }) => self.become_coordinator(epoch, rev),
            Ok(_) => {}
            Err(StoreError::Indeterminate(_)) => self.verify_election(session),
            Err(_) => self.wait_for_newer_view(),
        }
    }

    /// The linearizable read that settles whether the leader key is ours.
    pub(super) fn on_elect_verify(&mut self, session: SessionId, result: StoreResult) {
        self.election.op = None;
        match result {
            Ok(StoreReply::Got(Some(e))) if e.owner == Some(session) => {
                match layout::decode::<LeaderRec>(&e.value) {
                    Some(l) => self.become_coordinator(l.epoch, e.create_rev),
                    None => self.election.after_view = Some(self.view.seq),
                }
            }
            _ => self.wait_for_newer_view(),
        }
    }

    /// Elected (or proved elected): coordinator of `epoch`, planning only from a view read
    /// after this.
    fn become_coordinator(&mut self, epoch: Epoch, leader_rev: u64) {
        self.coord = Some(Coordinator {
            epoch,
            leader_rev,
            fresh_from_read: Some(self.view.reads_sent + 1),
            last_rebalance: None,
            rebalance_at: None,
            txn: None,
            failures: 0,
            seq: 0,
            debounce_view: None,
            planned: Memo::default(),
            settle: None,
            rebalance_start: None,
            members_seen: None,
        });
        self.view.dirty = true;
        self.events.push_back(Event::BecameCoordinator { epoch });
    }

    /// No longer coordinator (deposed, fenced, resigning or session lost).
    pub(super) fn step_down(&mut self) {
        if let Some(c) = self.coord.take() {
            self.events.push_back(Event::SteppedDown { epoch: c.epoch });
        }
    }

    /// The reply to a rebalance transaction sent at `sent`: re-read before planning again;
    /// resign after `max_failed_rebalances` failures in a row.
    pub(super) fn on_rebalance(
        &mut self,
        now: Time,
        sent: Time,
        partial: bool,
        report: Option<SharedReport>,
        result: StoreResult,
    ) {
        let max_failures = self.cfg.max_failed_rebalances;
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        c.txn = None;
        c.last_rebalance = Some(sent);
        self.view.dirty = true;
        match result {
            Ok(_) => {
                c.failures = 0;
                if partial {
                    // The rest of the same rebalance follows at once: the rate limit spaces
                    // rebalances, not the transactions of one (DESIGN §1.4's bound).
                    c.last_rebalance = None;
                }
                // Plan the next rebalance from a view that includes this write, not from the
                // one it was planned on (that would resend the same writes into a Conflict).
                c.fresh_from_read = Some(self.view.reads_sent + 1);
                // A rebalance of several transactions is reported once, from where it
                // started, when its last one commits.
                if let Some(report) = report {
                    let report = match c.rebalance_start.take() {
                        Some(first) => Arc::new(report::combine(&first, &report)),
                        None => report,
                    };
                    if partial {
                        c.rebalance_start = Some(report);
                    } else {
                        self.events.push_back(Event::Rebalanced { report });
                    }
                }
            }
            Err(e) => {
                c.failures += 1;
                // A failure may mean the base was stale: re-read before the next attempt.
                c.fresh_from_read = Some(self.view.reads_sent + 1);
                let give_up = c.failures >= max_failures;
                if !matches!(e, StoreError::Conflict(_)) {
                    self.events.push_back(Event::StoreError {
                        op: "rebalance",
                        error: e,
                    });
                }
                if give_up {
                    // PITFALLS 23: a coordinator that keeps failing resigns and stays a member.
                    self.resign(now);
                }
            }
        }
    }

    /// PITFALLS 23: a coordinator that keeps failing resigns (and stays a member); no
    /// election for one session TTL.
    pub(super) fn resign(&mut self, now: Time) {
        let (Some(c), Some(s)) = (self.coord.as_ref(), self.session.current()) else {
            return;
        };
        let (session, leader_rev) = (s.id, c.leader_rev);
        self.send_resign(session, leader_rev);
        self.step_down();
        self.election.no_election_before = Some(now + self.cfg.session_ttl);
    }

    /// The reply to the leader key's delete: the election slot is free again.
    pub(super) fn on_resign(&mut self, op: OpId) {
        if self.election.op == Some(op) {
            self.election.op = None;
            self.wait_for_newer_view();
        }
    }
}
