//! Barrier mode, the member's part (DESIGN §4.10): while the group's barrier record is in its
//! stop phase the member holds nothing (its desired set is empty, `claims.rs`); once it holds
//! no lease and no claim it acknowledges the round with `acks/<me>` (session-owned). Chunks
//! count only in the start phase of their own round. Never grants or revokes itself.

use crate::ids::{Epoch, OpId, SessionId, Time};
use crate::layout::{self, AckRec, Mode};
use crate::store::{StoreReply, StoreResult};

use super::pending::replace_owned;
use super::{Member, Pending};

/// This member's acknowledgement of the current round.
#[derive(Debug, Clone, Default)]
pub(super) struct Ack {
    /// (session, epoch, round) the store confirmed, and the view sequence number then: a
    /// newer view that does not show it means a late duplicate of an older acknowledgement
    /// replaced it (or the view's read was in flight): written again.
    done: Option<(SessionId, Epoch, u64, u64)>,
    /// The write in flight, and its session (a reply of an ended session never comes).
    op: Option<(OpId, SessionId)>,
    /// After a failed write: not again before.
    retry_at: Option<Time>,
}

impl Member {
    /// Barrier mode: whether the view lets this member act on its chunks of `round` (the
    /// round is in its start phase). Always true in per-resource mode.
    pub(super) fn round_started(&self, round: u64) -> bool {
        let v = &self.view.group;
        match v.mode {
            Mode::Resource => true,
            Mode::Barrier => v.barrier.is_some_and(|(b, _)| !b.stop && b.round == round),
        }
    }

    /// Timers: a failed acknowledgement's retry.
    pub(super) fn barrier_timers(&self, at: &mut impl FnMut(Time)) {
        if let Some(t) = self.barrier.retry_at {
            at(t);
        }
    }

    /// Acknowledges the round in its stop phase once nothing is held (no lease, no claim).
    pub(super) fn barrier_upkeep(&mut self, now: Time) {
        let v = &self.view.group;
        let (Mode::Barrier, Some((b, _)), Some(session)) = (v.mode, v.barrier, self.session.id())
        else {
            return;
        };
        let rec = AckRec {
            epoch: b.epoch,
            round: b.round,
        };
        let shown = v.acks.get(&self.cfg.name) == Some(&(session, rec));
        let just_done = self.barrier.done.is_some_and(|(s, e, r, seq)| {
            (s, e, r) == (session, b.epoch, b.round) && self.view.seq <= seq
        });
        if !b.stop
            || shown
            || just_done
            || self.barrier.op.is_some_and(|(_, s)| s == session)
            || self.barrier.retry_at.is_some_and(|t| now < t)
        {
            return;
        }
        let c = &self.claims;
        let holds = !self.leases.held.is_empty()
            || !c.proved.is_empty()
            || !c.unresolved.is_empty()
            || !c.in_flight.is_empty()
            || !c.deleting.is_empty();
        if holds {
            return;
        }
        let key = self.layout.ack(&self.cfg.name);
        // Replaces this member's earlier acknowledgement (or an earlier session's).
        let op = self.send(
            Pending::Ack {
                session,
                epoch: b.epoch,
                round: b.round,
            },
            replace_owned(key, layout::encode(&rec), session),
        );
        self.barrier.op = Some((op, session));
        self.barrier.retry_at = None;
    }

    /// The reply to an acknowledgement.
    pub(super) fn on_ack(
        &mut self,
        now: Time,
        session: SessionId,
        (epoch, round): (Epoch, u64),
        result: StoreResult,
    ) {
        self.barrier.op = None;
        match result {
            Ok(StoreReply::Committed { .. }) => {
                self.barrier.done = Some((session, epoch, round, self.view.seq))
            }
            _ => self.barrier.retry_at = Some(now + self.cfg.retry_delay),
        }
    }
}
