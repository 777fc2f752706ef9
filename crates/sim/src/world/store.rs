//! The store side of the world: every change to the store model goes through here. Members'
//! requests through [`World::store_apply`], which checks what the store then holds (an
//! assignment written only under the store's current leader and epoch, DESIGN §8 rule 10);
//! admin changes through [`World::admin`]; both notify the members of a change. Also the
//! store's own view of the group, for the world and the checks.
//!
//! **Never** judge from a member's beliefs here; only from the request and the store.

use rebalanser_core::layout::{self, View};
use rebalanser_core::store::{StoreOp, StoreResult, Write};
use rebalanser_core::{ResourceId, SessionId};

use super::World;
use crate::access::store_view;

impl World {
    pub(super) fn admin(&mut self, op: StoreOp) {
        let before = self.store.rev();
        let _ = self.store.apply(self.now, &op);
        if self.store.rev() != before {
            self.notify_all();
        }
    }

    pub(super) fn model_alive(&mut self, s: SessionId) -> bool {
        self.store.expire(self.now);
        self.store.session_alive(s)
    }

    /// The group as the store holds it now.
    pub(super) fn store_view(&self) -> View {
        store_view(&self.store, &self.layout)
    }

    /// The resources of the group, as the store holds them now.
    pub(super) fn resources(&self) -> Vec<ResourceId> {
        self.store_view().resources.into_iter().collect()
    }

    /// Applies a member's request to the store and checks what the store then holds: an
    /// assignment is written only under the epoch in force and the leader that owns it
    /// (DESIGN §8 rule 10), judged from the store's own leader and epoch keys.
    pub(super) fn store_apply(&mut self, req: &StoreOp) -> StoreResult {
        let res = self.store.apply(self.now, req);
        let (StoreOp::Txn { writes, .. }, Ok(_)) = (req, &res) else {
            return res;
        };
        // Barrier mode: the latest round the store started, for the barrier check.
        if let Some(b) = self
            .store
            .entries()
            .get(&self.layout.barrier())
            .and_then(|e| layout::decode::<layout::BarrierRec>(&e.value))
        {
            if !b.stop {
                self.started_round = self.started_round.max(b.round);
            }
        }
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
