//! The oracle: judges access by what the applications did and what the store holds, never by
//! what a member believes (its deadline, its claims, its role).

use rebalanser_core::layout;
use rebalanser_core::store::{StoreOp, StoreResult, Write};
use rebalanser_core::{ResourceId, SessionId, Time, Token};
use std::collections::BTreeMap;

use super::{State, World};

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
        let mut holders: BTreeMap<ResourceId, Vec<String>> = BTreeMap::new();
        let mut found: Vec<(String, String)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state != State::Running || s.paused_until.is_some_and(|u| u > self.now) {
                continue;
            }
            for (r, l) in &s.app {
                let who = format!(
                    "m{i}#{} (token {}, {}, since {})",
                    s.inc, l.token, l.session, l.since
                );
                match self.store.expires_at(l.session) {
                    None => found.push((
                        format!("gone {r} {}", l.session),
                        format!("{who} accesses {r} under a session the store no longer has"),
                    )),
                    Some(e) if e < until => found.push((
                        format!("expired {r} {}", l.session),
                        format!("{who} accesses {r} past its session's expiry in the store at {e}"),
                    )),
                    Some(_) => {}
                }
                if let Some(why) = self.claim_problem(r, l.session, l.token) {
                    found.push((
                        format!("claim {r} {} {}", l.session, l.token),
                        format!("{who} accesses {r} but {why}"),
                    ));
                }
                holders.entry(r.clone()).or_default().push(who);
            }
        }
        for (r, v) in holders.into_iter().filter(|(_, v)| v.len() > 1) {
            found.push((
                format!("double {r} {}", v.join(" ")),
                format!("double access on {r}: {}", v.join(" and ")),
            ));
        }
        for (key, what) in found {
            if self.reported.insert(key) {
                self.violation(what);
            }
        }
        self.check_failover(until);
    }

    /// Why the store's claim of `r` does not back a lease of `session` with `token`, if not.
    pub(super) fn claim_problem(
        &self,
        r: &ResourceId,
        session: SessionId,
        token: Token,
    ) -> Option<String> {
        match self.store.entries().get(&self.layout.claim(r)) {
            None => Some("the store has no claim for it".into()),
            Some(e) if e.owner != Some(session) || e.create_rev != token.revision => Some(format!(
                "the store's claim is {:?}'s, created at revision {}",
                e.owner, e.create_rev
            )),
            Some(_) => None,
        }
    }

    /// Applies a member's request to the store and checks what the store then holds: an
    /// assignment is written only under the epoch in force and the leader that owns it
    /// (DESIGN §8 rule 10), judged from the store's own leader and epoch keys.
    pub(super) fn store_apply(&mut self, req: &StoreOp) -> StoreResult {
        let res = self.store.apply(self.now, req);
        let (StoreOp::Txn { writes, .. }, Ok(_)) = (req, &res) else {
            return res;
        };
        let assign_prefix = format!("{}assign/", self.layout.prefix());
        let epoch = self
            .store
            .entries()
            .get(&self.layout.epoch())
            .and_then(|e| layout::decode::<layout::CounterRec>(&e.value))
            .map(|c| c.value);
        let leader = self
            .store
            .entries()
            .get(&self.layout.leader())
            .and_then(|e| layout::decode::<layout::LeaderRec>(&e.value))
            .map(|l| l.epoch.0);
        for w in writes {
            let Write::Put { key, value } = w else {
                continue;
            };
            if !key.starts_with(&assign_prefix) {
                continue;
            }
            let Some(rec) = layout::decode::<layout::ChunkRec>(value) else {
                continue;
            };
            if Some(rec.epoch.0) != epoch || Some(rec.epoch.0) != leader {
                self.violation(format!(
                    "assignment {key} written at epoch {} while the store's epoch is {epoch:?} \
                     and its leader's {leader:?}",
                    rec.epoch.0
                ));
            }
        }
        res
    }
}
