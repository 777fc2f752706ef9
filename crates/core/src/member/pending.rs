//! Operations in flight: the [`Pending`] record kept for every store operation sent (what to
//! do with its reply), sending, reply dispatch to the concern that sent it, and the small
//! store-op constructors the concerns share. Owns no protocol decision: each reply is handled
//! by the file of the concern it belongs to.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{Epoch, OpId, ResourceId, SessionId, Time, Token};
use crate::store::{Cond, Key, StoreOp, StoreResult, Write};

use super::report::SharedReport;
use super::Member;

/// Store operations: those sent and not yet answered, and those queued for the driver.
#[derive(Debug, Clone, Default)]
pub(super) struct Ops {
    /// The id of the next operation.
    next: u64,
    /// Sent (or queued) and not yet answered.
    pub(super) pending: BTreeMap<OpId, Pending>,
    /// Not yet taken by the driver ([`Member::poll_op`]).
    queue: VecDeque<(OpId, StoreOp)>,
    /// How many of `pending` are claim operations (`Config::max_claim_ops_in_flight`).
    pub(super) claim_ops: usize,
}

impl Ops {
    /// Records `p` for the reply and queues `op` for the driver.
    fn send(&mut self, p: Pending, op: StoreOp) -> OpId {
        let id = OpId(self.next);
        self.next += 1;
        self.claim_ops += usize::from(p.is_claim());
        self.pending.insert(id, p);
        self.queue.push_back((id, op));
        id
    }

    /// The record of `op`, no longer pending: its reply arrived.
    pub(super) fn take(&mut self, op: OpId) -> Option<Pending> {
        let p = self.pending.remove(&op)?;
        self.claim_ops -= usize::from(p.is_claim());
        Some(p)
    }

    /// The next operation for the driver.
    pub(super) fn poll(&mut self) -> Option<(OpId, StoreOp)> {
        self.queue.pop_front()
    }

    /// How many operations wait for the driver.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A `CloseSession` is awaiting its reply.
    pub(super) fn closing(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::Close { .. }))
    }
}

#[derive(Debug, Clone)]
pub(super) enum Pending {
    Open {
        sent: Time,
    },
    KeepAlive {
        session: SessionId,
        sent: Time,
    },
    Close {
        session: SessionId,
        /// Failures are retried until then.
        give_up: Time,
    },
    Read {
        number: u64,
        linearizable: bool,
        /// Only this member's assignment (`ViewState::want_own`), not the group.
        own: bool,
    },
    /// A barrier round's acknowledgement (`barrier.rs`).
    Ack {
        session: SessionId,
        epoch: Epoch,
        round: u64,
    },
    /// An unhealthy mark's `Create` (`create`) or `Delete` (`unhealthy.rs`).
    Mark {
        session: SessionId,
        resource: ResourceId,
        create: bool,
    },
    Register {
        session: SessionId,
        /// A static member's takeover of the record of this previous session.
        from: Option<SessionId>,
    },
    RegisterVerify {
        session: SessionId,
        /// The takeover being verified, if it was one.
        from: Option<SessionId>,
    },
    Drain {
        session: SessionId,
    },
    /// One transaction creating these claims.
    ClaimCreate {
        session: SessionId,
        rs: Vec<ResourceId>,
    },
    /// One read settling these claims (`Claims::verify_with`).
    ClaimVerify {
        session: SessionId,
        rs: Vec<ResourceId>,
    },
    /// One transaction deleting these claim instances.
    ClaimDelete {
        session: SessionId,
        items: Vec<(ResourceId, Token)>,
    },
    /// One read of these claims, settling which of these instances are gone
    /// (`Claims::delete_check`).
    DeleteCheck {
        session: SessionId,
        items: Vec<(ResourceId, Token)>,
    },
    Elect {
        session: SessionId,
        epoch: Epoch,
    },
    ElectVerify {
        session: SessionId,
    },
    Rebalance {
        session: SessionId,
        sent: Time,
        /// More transactions must follow to reach the plan's target.
        partial: bool,
        /// Reported once committed (`None`: a barrier record alone).
        report: Option<SharedReport>,
    },
    Resign {
        session: SessionId,
    },
}

impl Pending {
    /// A claim operation: counted against `Config::max_claim_ops_in_flight`.
    fn is_claim(&self) -> bool {
        matches!(
            self,
            Pending::ClaimCreate { .. }
                | Pending::ClaimVerify { .. }
                | Pending::ClaimDelete { .. }
                | Pending::DeleteCheck { .. }
        )
    }

    /// The session the operation belongs to; it dies with it (DESIGN §8 rule 5).
    pub(super) fn session(&self) -> Option<SessionId> {
        match self {
            Pending::Open { .. } | Pending::Close { .. } | Pending::Read { .. } => None,
            Pending::KeepAlive { session, .. }
            | Pending::Register { session, .. }
            | Pending::Mark { session, .. }
            | Pending::Ack { session, .. }
            | Pending::RegisterVerify { session, .. }
            | Pending::Drain { session }
            | Pending::ClaimCreate { session, .. }
            | Pending::ClaimVerify { session, .. }
            | Pending::ClaimDelete { session, .. }
            | Pending::DeleteCheck { session, .. }
            | Pending::Elect { session, .. }
            | Pending::ElectVerify { session }
            | Pending::Rebalance { session, .. }
            | Pending::Resign { session } => Some(*session),
        }
    }
}

impl Member {
    /// Sends `op`; its reply is handled as `p` says.
    pub(super) fn send(&mut self, p: Pending, op: StoreOp) -> OpId {
        self.ops.send(p, op)
    }

    /// Routes a reply of the current session (or a session-less op) to the concern that sent
    /// the operation. The caller runs `step` afterwards.
    pub(super) fn on_reply(&mut self, now: Time, op: OpId, p: Pending, result: StoreResult) {
        match p {
            Pending::Open { sent } => self.on_open(now, sent, result),
            Pending::KeepAlive { sent, .. } => self.on_keepalive(now, sent, result),
            Pending::Close { session, give_up } => self.on_close(now, session, give_up, result),
            Pending::Read {
                number,
                linearizable,
                own,
            } => self.on_read(now, number, linearizable, own, result),
            Pending::Register { session, from } => self.on_register(now, session, from, result),
            Pending::Mark {
                session,
                resource,
                create,
            } => self.on_mark(now, session, resource, create, result),
            Pending::Ack {
                session,
                epoch,
                round,
            } => self.on_ack(now, session, (epoch, round), result),
            Pending::RegisterVerify { session, from } => {
                self.on_register_verify(now, session, from, result)
            }
            Pending::Drain { session } => self.on_drain(now, session, result),
            Pending::ClaimCreate { rs, .. } => self.on_claim_create(now, op, rs, result),
            Pending::ClaimVerify { session, rs } => self.on_claim_verify(now, session, rs, result),
            Pending::ClaimDelete { items, .. } => self.on_claim_delete(now, items, result),
            Pending::DeleteCheck { items, .. } => self.on_delete_check(now, items, result),
            Pending::Elect { session, epoch } => self.on_elect(session, epoch, result),
            Pending::ElectVerify { session } => self.on_elect_verify(session, result),
            Pending::Rebalance {
                sent,
                partial,
                report,
                ..
            } => self.on_rebalance(now, sent, partial, report, result),
            Pending::Resign { .. } => self.on_resign(op),
        }
    }
}

/// Deletes `key` only if it is still the instance `session` created at `create_rev`: safe
/// to repeat, and never removes a later owner's key (PITFALLS 12).
pub(super) fn owned_delete(key: Key, session: SessionId, create_rev: u64) -> StoreOp {
    StoreOp::Txn {
        conds: vec![Cond::Owned {
            key: key.clone(),
            session,
            create_rev,
        }],
        writes: vec![Write::Delete { key }],
    }
}

/// Creates `key` owned by `session`, replacing whatever instance of it exists (an earlier
/// session's, or a late duplicate's): for keys only this member writes and that are advice,
/// never access (unhealthy marks, barrier acknowledgements).
pub(super) fn replace_owned(key: Key, value: Vec<u8>, session: SessionId) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes: vec![
            Write::Delete { key: key.clone() },
            Write::Create {
                key,
                value,
                owner: Some(session),
            },
        ],
    }
}

pub(super) fn get_lin(key: Key) -> StoreOp {
    StoreOp::Get {
        key,
        linearizable: true,
    }
}
