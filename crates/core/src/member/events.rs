//! What a member tells its driver and application: the public [`Event`] stream and
//! [`RevokeReason`]. Plain data; nothing here decides anything.

use std::sync::Arc;
use std::time::Duration;

use super::report::{MembershipChange, RebalanceReport};
use crate::ids::{Epoch, LeaseId, MemberId, ResourceId, SessionId, Time, Token};
use crate::layout::BadData;
use crate::store::StoreError;

/// Why a lease was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The coordinator moved the resource, or it was removed.
    Reassigned,
    /// The session could not be proved alive in time: stop before the deadline.
    SessionInDoubt,
    /// The store says the session expired.
    SessionLost,
    /// This member is leaving.
    Leaving,
    /// The application reported the resource failing on this member
    /// (`Member::report_unhealthy`): it is given back and avoided here for a while.
    Unhealthy,
}

impl RevokeReason {
    /// The reason as a fixed lower-case string (for logs).
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Reassigned => "reassigned",
            RevokeReason::SessionInDoubt => "session_in_doubt",
            RevokeReason::SessionLost => "session_lost",
            RevokeReason::Leaving => "leaving",
            RevokeReason::Unhealthy => "unhealthy",
        }
    }
}

/// Something the application (or the driver) must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start accessing `resource`. The lease is valid while `session` is current and the
    /// clock is before [`Member::valid_until`](super::Member::valid_until).
    Grant {
        lease: LeaseId,
        resource: ResourceId,
        token: Token,
        epoch: Epoch,
        session: SessionId,
        /// How long since `resource` entered this member's assignment (as this member read
        /// it): for a resource moved here, the old owner's stop and release included — the
        /// handover's latency as the gaining member sees it. `None` for a lease granted
        /// again on a resource that stayed assigned here (after a suspension ended):
        /// nothing was handed over. Bookkeeping only; nothing decides from it.
        waited: Option<Duration>,
    },
    /// Stop accessing `resource`, then report it with
    /// [`Member::handle_released`](super::Member::handle_released).
    Revoke {
        lease: LeaseId,
        resource: ResourceId,
        reason: RevokeReason,
    },
    SessionOpened {
        session: SessionId,
        ttl: Duration,
    },
    /// Registered under `members/<name>`.
    Joined {
        session: SessionId,
    },
    /// Another live session holds this member's name; waiting for it to expire.
    NameInUse {
        holder: SessionId,
    },
    /// Static membership: this member took over the record of its name from `from`, a
    /// previous session of the same static member (a restart within the TTL).
    TookOver {
        from: SessionId,
    },
    /// Another session took this member's record over (a newer instance of the same static
    /// member): this one gives up every resource and leaves.
    Replaced {
        by: SessionId,
    },
    BecameCoordinator {
        epoch: Epoch,
    },
    SteppedDown {
        epoch: Epoch,
    },
    /// A rebalance was committed (its last transaction, when it took several): what moved,
    /// between whom, and why.
    Rebalanced {
        report: Arc<RebalanceReport>,
    },
    /// Coordinator only: the group's membership changed as its view shows it.
    Membership {
        member: MemberId,
        session: SessionId,
        change: MembershipChange,
    },
    /// The session is in doubt: every lease was revoked.
    Suspended {
        deadline: Time,
    },
    /// The same session was proved alive again.
    Resumed,
    /// The session expired; a new one is being opened.
    SessionLost {
        session: SessionId,
    },
    /// Leases were still held at their deadline: the driver must force the stop (abort).
    StopDeadlineMissed {
        resources: Vec<ResourceId>,
    },
    /// Data under the group that could not be understood; skipped.
    BadData(BadData),
    /// A store operation failed in a way worth reporting.
    StoreError {
        op: &'static str,
        error: StoreError,
    },
    /// The store granted a session timeout too short for the configured timings: the member
    /// cannot keep its leases safely and leaves. Final; fix the store's or the member's
    /// configuration.
    TtlTooShort {
        granted: Duration,
        needed: Duration,
    },
    /// The member left the group and closed its session. Final.
    Left,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs and `member run` print the reason as a field value: each is its variant's name
    /// in snake case, so a reader can map it back (and no two collide).
    #[test]
    fn revoke_reasons_log_as_their_names_in_snake_case() {
        let all = [
            RevokeReason::Reassigned,
            RevokeReason::SessionInDoubt,
            RevokeReason::SessionLost,
            RevokeReason::Leaving,
        ];
        for r in all {
            let mut snake = String::new();
            for (i, ch) in format!("{r:?}").chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(ch.to_ascii_lowercase());
            }
            assert_eq!(r.as_str(), snake);
        }
    }
}
