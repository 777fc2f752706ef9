//! The oracle: judges access by what the applications did and what the store holds, never by
//! what a member believes (its deadline, its claims, its role). The judgement itself is shared
//! with the model checker and the hand-driven tests ([`crate::access::judge`]); this module
//! decides when it runs, which processes access (running ones, not while paused), and words
//! and deduplicates the findings. Also the convergence check once faults stopped.
//!
//! **Never** consult `Member::valid_until`, a member's leases or claims here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rebalanser_core::layout::Mode;
use rebalanser_core::{ResourceId, Time};

use super::{State, World};
use crate::access::{judge, Access};
use crate::convergence_bound;

/// Who accesses, for the findings: the slot and incarnation of the process.
type Who = (usize, u32);

impl World {
    /// The oracle (a), judged only from what the applications did and what the store holds,
    /// never from what a member believes (its deadline, its claims): over `[now, until)`, in
    /// which nothing happens,
    /// - no two applications of different incarnations access one resource;
    /// - every access is under a session the store still has, which the store will not expire
    ///   before `until` (a session past its expiry is gone for the store even before a reaper
    ///   runs: `MemModel` expires on every operation);
    /// - every access is under the store's claim of that session, with the lease's token.
    ///
    /// Checked only when time advances, so what happens at one instant (a paused process
    /// woken past its deadline and aborted at once) is judged by where it ends up.
    pub(super) fn check_access(&mut self, until: Time) {
        let now = self.now;
        let accesses = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == State::Running && s.paused_until.is_none_or(|u| u <= now))
            .flat_map(|(i, s)| s.app.accesses((i, s.inc)));
        let found: Vec<(String, String)> = judge(&self.store, &self.layout, accesses, until)
            .iter()
            .map(|f| f.describe(who))
            .collect();
        for (key, what) in found {
            if self.reported.insert(key) {
                self.violation(what);
            }
        }
        self.check_failover(until);
    }

    /// (c) once faults stopped and the bound passed: every resource leased exactly once,
    /// counts within one of each other.
    pub(super) fn check_converged(&mut self) {
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
            for (r, _, l) in s.app.leases() {
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

fn who(a: &Access<'_, Who, Time>) -> String {
    format!(
        "m{}#{} (token {}, {}, since {})",
        a.who.0, a.who.1, a.held.token, a.held.session, a.held.since
    )
}

impl World {
    /// Barrier mode (DESIGN §4.10): a lease granted in round R (the latest round whose start
    /// the store committed before the grant) while another application still accesses a lease
    /// of an earlier round breaks the barrier. Judged from the store's writes and the
    /// applications' accesses, not from what any member believes.
    pub(super) fn check_barrier(
        &mut self,
        slot: usize,
        inc: u32,
        resource: &ResourceId,
        lease: rebalanser_core::LeaseId,
    ) {
        if self.cfg.mode != Mode::Barrier {
            return;
        }
        let round = self.started_round;
        let now = self.now;
        let mut older = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state != State::Running || s.paused_until.is_some_and(|u| u > now) {
                continue;
            }
            for (r, l, _) in s.app.leases() {
                if let Some(&g) = self.grant_rounds.get(&(i, s.inc, r.clone(), l)) {
                    if g < round {
                        older.push(format!("m{i} {r} (round {g})"));
                    }
                }
            }
        }
        self.grant_rounds
            .insert((slot, inc, resource.clone(), lease), round);
        if !older.is_empty() {
            self.violation(format!(
                "barrier: m{slot} granted {resource} in round {round} while {} still accessed",
                older.join(", ")
            ));
        }
    }
}
