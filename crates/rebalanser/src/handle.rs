//! [`Member`]: what `join` returns — the stream of leases, status events and `leave`.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use rebalanser_core::store::StoreError;
use rebalanser_core::{
    Epoch, GroupId, MemberId, MembershipChange, RebalanceReport, ResourceId, RevokeReason,
    SessionId, Token,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::lease::{Cmd, Lease};

/// A change in a member's life, for logging, metrics and UIs. Leases themselves come from
/// [`Member::next_lease`]; `Granted`/`Revoked` here only report them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A store session was opened (at join, and again after a session was lost).
    SessionOpened { session: SessionId, ttl: Duration },
    /// Registered in the group under this session.
    Joined { session: SessionId },
    /// Another live session holds this member's name; the member waits for it to expire.
    NameInUse { holder: SessionId },
    /// Static membership: this member took its name's record over from `from`, an earlier
    /// session of the same static member (a restart within the TTL); it gets that session's
    /// resources once their claims are released or expire, and nothing moves elsewhere.
    TookOver { from: SessionId },
    /// A newer instance of this static member (session `by`) took the name over: this one
    /// gives up every resource and leaves. Two live processes run under one static name.
    Replaced { by: SessionId },
    /// This member now coordinates the group.
    BecameCoordinator { epoch: Epoch },
    /// This member stopped coordinating.
    SteppedDown { epoch: Epoch },
    /// This member, as coordinator, committed a new assignment: why, between which members,
    /// and every resource whose owner changed.
    Rebalanced { report: Arc<RebalanceReport> },
    /// This member, as coordinator, saw another member join, start leaving, leave or expire.
    Membership {
        member: MemberId,
        session: SessionId,
        change: MembershipChange,
    },
    /// A lease was granted.
    Granted {
        resource: ResourceId,
        token: Token,
        epoch: Epoch,
    },
    /// A lease was revoked; `to` is the new owner when this member knows it (it planned the
    /// move as coordinator).
    Revoked {
        resource: ResourceId,
        reason: RevokeReason,
        to: Option<MemberId>,
    },
    /// The session could not be proved alive in time: every lease was revoked, and leases
    /// stay valid for at most `remaining`.
    Suspended { remaining: Duration },
    /// The same session was proved alive again; leases will be granted again.
    Resumed,
    /// The store expired the session; the member rejoins with a new one (`Joined` follows).
    SessionLost { session: SessionId },
    /// Leases were still held at their deadline, or longer than `stop_timeout` after their
    /// revoke. The [`crate::StopPolicy`] was applied.
    StopDeadlineMissed { resources: Vec<ResourceId> },
    /// A key under the group could not be understood and was skipped.
    BadData { key: String, reason: &'static str },
    /// A store operation failed in a way worth reporting; the member retries by itself.
    Error { op: &'static str, error: StoreError },
    /// The store granted a session timeout the configured timings do not fit in
    /// (`needed` = 2 keepalive intervals + op timeout + stop timeout + safety margin). The
    /// member refuses to hold leases on it and leaves; `Left` follows.
    TtlTooShort { granted: Duration, needed: Duration },
    /// This event stream fell behind and `missed` events were dropped.
    Lagged { missed: u64 },
    /// The member left the group and closed its session. Final.
    Left,
}

impl MemberEvent {
    /// True for the events that report a problem (the ones the callback adapter passes to
    /// `on_error`).
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            MemberEvent::NameInUse { .. }
                | MemberEvent::Replaced { .. }
                | MemberEvent::Suspended { .. }
                | MemberEvent::SessionLost { .. }
                | MemberEvent::StopDeadlineMissed { .. }
                | MemberEvent::TtlTooShort { .. }
                | MemberEvent::BadData { .. }
                | MemberEvent::Error { .. }
                | MemberEvent::Lagged { .. }
        )
    }
}

impl fmt::Display for MemberEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberEvent::SessionOpened { session, ttl } => {
                write!(f, "session {session} opened (ttl {ttl:?})")
            }
            MemberEvent::Joined { session } => write!(f, "joined with session {session}"),
            MemberEvent::NameInUse { holder } => {
                write!(
                    f,
                    "member name in use by session {holder}; waiting for it to expire"
                )
            }
            MemberEvent::TookOver { from } => write!(
                f,
                "static member restarted: took the name over from session {from}"
            ),
            MemberEvent::Replaced { by } => write!(
                f,
                "a newer instance of this static member (session {by}) took the name over; \
                 leaving"
            ),
            MemberEvent::BecameCoordinator { epoch } => {
                write!(f, "became coordinator (epoch {epoch})")
            }
            MemberEvent::SteppedDown { epoch } => {
                write!(f, "stepped down as coordinator (epoch {epoch})")
            }
            MemberEvent::Rebalanced { report } => write!(
                f,
                "rebalanced {} resources over {} members, {} moved (epoch {})",
                report.resources,
                report.members_after.len(),
                report.moved(),
                report.epoch
            ),
            MemberEvent::Membership {
                member,
                session,
                change,
            } => write!(f, "member {member} {} (session {session})", change.as_str()),
            MemberEvent::Granted {
                resource,
                token,
                epoch,
            } => write!(f, "granted {resource} (token {token}, epoch {epoch})"),
            MemberEvent::Revoked {
                resource,
                reason,
                to: None,
            } => write!(f, "revoked {resource} ({})", reason.as_str()),
            MemberEvent::Revoked {
                resource,
                reason,
                to: Some(to),
            } => write!(f, "revoked {resource} ({}; to {to})", reason.as_str()),
            MemberEvent::Suspended { remaining } => write!(
                f,
                "session in doubt: every lease revoked, valid for at most {remaining:?}"
            ),
            MemberEvent::Resumed => write!(f, "session proved alive again"),
            MemberEvent::SessionLost { session } => {
                write!(f, "session {session} expired; rejoining")
            }
            MemberEvent::StopDeadlineMissed { resources } => write!(
                f,
                "the application did not stop in time on {} resource(s): {resources:?}",
                resources.len()
            ),
            MemberEvent::BadData { key, reason } => write!(f, "skipped {key}: {reason}"),
            MemberEvent::Error { op, error } => write!(f, "store operation {op} failed: {error}"),
            MemberEvent::TtlTooShort { granted, needed } => write!(
                f,
                "the store granted a session timeout of {granted:?}, but the timings need more \
                 than {needed:?}; leaving"
            ),
            MemberEvent::Lagged { missed } => {
                write!(f, "event stream lagged; {missed} events lost")
            }
            MemberEvent::Left => write!(f, "left the group"),
        }
    }
}

/// A cheap snapshot of a member's state (see [`Member::status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The current store session, if one is open.
    pub session: Option<SessionId>,
    /// Registered in the group under the current session.
    pub joined: bool,
    /// `Some(epoch)` while this member coordinates the group.
    pub coordinator: Option<Epoch>,
    /// The session is in doubt (see [`MemberEvent::Suspended`]).
    pub suspended: bool,
    /// Leases granted and not yet released.
    pub leases: usize,
    /// The member left; final.
    pub left: bool,
}

/// A stream of [`MemberEvent`] events. Ends when the member's driver stops.
pub struct Events {
    inner: BoxStream<'static, MemberEvent>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<MemberEvent>) -> Events {
        let inner = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(s) => Some((s, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((MemberEvent::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed();
        Events { inner }
    }

    /// The next event; `None` once the member's driver has stopped.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        self.inner.next().await
    }
}

impl Stream for Events {
    type Item = MemberEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MemberEvent>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events")
    }
}

/// A member of a group, running. Returned by [`crate::MemberBuilder::join`].
///
/// Take leases with [`Member::next_lease`] (or use the handle as a `Stream` of
/// [`Lease`]s) and keep doing so: leases wait in a queue until taken. A lease revoked while
/// still queued is released by the library itself, since the application never saw it, but
/// its entry stays queued until taken (and then skipped): an application that never takes
/// leases makes the queue grow with every grant.
///
/// Dropping the handle starts a graceful leave in the background; [`Member::leave`]
/// does the same and waits for it. Either way, leases the application still holds must be
/// released (dropped) when revoked, or the member cannot close its session.
pub struct Member {
    pub(crate) group: GroupId,
    pub(crate) name: MemberId,
    pub(crate) leases: mpsc::UnboundedReceiver<Lease>,
    pub(crate) cmds: mpsc::UnboundedSender<Cmd>,
    pub(crate) status_tx: broadcast::Sender<MemberEvent>,
    /// The receiver subscribed at join, so the first `events()` call misses nothing.
    pub(crate) first_events: Mutex<Option<broadcast::Receiver<MemberEvent>>>,
    pub(crate) snapshot: watch::Receiver<MemberStatus>,
    pub(crate) driver: AbortHandle,
    pub(crate) leave_bound: Duration,
    /// Set by `simulate_crash`, so that dropping the handle does not ask for a leave.
    pub(crate) crashed: bool,
}

impl Member {
    /// The member's name.
    pub fn name(&self) -> &MemberId {
        &self.name
    }

    /// The member's group.
    pub fn group(&self) -> &GroupId {
        &self.group
    }

    /// The next granted lease, or `None` once the member has left (or its driver stopped).
    /// Cancel-safe. A lease already revoked when its turn comes is skipped (and released).
    pub async fn next_lease(&mut self) -> Option<Lease> {
        futures::future::poll_fn(|cx| self.poll_lease(cx)).await
    }

    fn poll_lease(&mut self, cx: &mut Context<'_>) -> Poll<Option<Lease>> {
        loop {
            match self.leases.poll_recv(cx) {
                Poll::Ready(Some(lease)) => {
                    if lease.shared.try_deliver() {
                        return Poll::Ready(Some(lease));
                    }
                    // Reclaimed by the driver after a revoke: dropping it reports nothing.
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// MemberEvent events from now on; the first call also returns everything since `join`.
    /// Each call returns an independent stream.
    pub fn events(&self) -> Events {
        let first = self
            .first_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Events::new(first.unwrap_or_else(|| self.status_tx.subscribe()))
    }

    /// A snapshot of the member's state, as of the driver's last step.
    pub fn status(&self) -> MemberStatus {
        self.snapshot.borrow().clone()
    }

    /// Leaves the group gracefully: the coordinator moves this member's resources to others
    /// through normal handovers (each lease is revoked and must be dropped by the
    /// application), then the session is closed. Waits for that, bounded by the member's
    /// `leave_timeout` plus its `stop_timeout` and two `op_timeout`s. Leases not yet taken
    /// from the queue are handed back by the library when revoked.
    /// Members may leave in any order, all at once included: a leaving member still
    /// stands for election, so someone always moves the resources of those leaving.
    pub async fn leave(self) -> Result<(), Error> {
        self.stop(Cmd::Leave).await
    }

    /// A static member ([`crate::MemberBuilder::static_membership`]) stopping to be restarted
    /// under the same name: every lease is revoked (drop them) and its claim deleted, but the
    /// member record stays, and with it the assignment, until the session expires one TTL
    /// later. An instance started under the same name before then takes the record over and
    /// is granted the same resources, with nothing moved to other members. If none comes,
    /// the resources move when the session expires. Without static membership, this is
    /// [`Member::leave`]. Bounded like `leave`.
    pub async fn stop_for_restart(self) -> Result<(), Error> {
        self.stop(Cmd::StopForRestart).await
    }

    async fn stop(mut self, how: Cmd) -> Result<(), Error> {
        self.stop_taking_leases();
        let _ = self.cmds.send(how);
        let mut snapshot = self.snapshot.clone();
        let bound = self.leave_bound;
        let waited =
            tokio::time::timeout(bound, async { snapshot.wait_for(|s| s.left).await.is_ok() })
                .await;
        match waited {
            Ok(true) => Ok(()),
            // The driver stopped: it publishes `left` before it ends after a leave.
            Ok(false) if snapshot.borrow().left => Ok(()),
            Ok(false) => Err(Error::DriverGone {
                member: self.name.clone(),
            }),
            Err(_) => Err(Error::LeaveTimedOut {
                member: self.name.clone(),
                after: bound,
            }),
        }
    }

    /// Later grants stay with the driver until revoked. Leases already queued stay queued:
    /// the driver takes each back when it is revoked (releasing them now would only make
    /// the core grant them again).
    fn stop_taking_leases(&mut self) {
        self.leases.close();
    }

    /// Testing only: stops the driver at once, as if the process had crashed — no leave, no
    /// session close. Leases already handed out keep their last deadline, so they turn invalid
    /// on time; the store expires the session after its TTL.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.crashed = true;
        self.driver.abort();
    }
}

impl Stream for Member {
    type Item = Lease;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Lease>> {
        self.get_mut().poll_lease(cx)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.crashed {
            return;
        }
        self.stop_taking_leases();
        // Leave is idempotent in the core, so this is harmless after `leave()`.
        let _ = self.cmds.send(Cmd::Leave);
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.group)
            .field("name", &self.name)
            .field("status", &*self.snapshot.borrow())
            .finish()
    }
}
