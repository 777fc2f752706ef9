//! [`Lease`]: the application's permission to access one resource.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rebalanser_core::{Epoch, LeaseId, ResourceId, RevokeReason, SessionId, Time, Token};
use tokio::sync::{mpsc, watch};

use crate::clock;

/// What leases and the handle tell the driver.
#[derive(Debug)]
pub(crate) enum Cmd {
    Released {
        resource: ResourceId,
        lease: LeaseId,
    },
    Leave,
    /// A static member stopping for a restart (`Member::stop_for_restart`).
    StopForRestart,
    /// The application reports the resource failing here (`Lease::report_unhealthy`).
    Unhealthy {
        resource: ResourceId,
    },
}

/// Delivery states of a lease. A granted lease waits in the handle's queue until the
/// application takes it; a lease revoked while still queued was never seen by the application,
/// so the driver may release it at once instead of waiting for someone to pull it out. The
/// compare-and-swap decides the race between the two.
const QUEUED: u8 = 0;
const DELIVERED: u8 = 1;
const RECLAIMED: u8 = 2;

/// State shared by a lease, its checkers and the driver.
pub(crate) struct LeaseShared {
    /// The local deadline of the session the lease was granted under, in [`clock::now`]
    /// nanoseconds; 0 once the session is no longer valid. Written only by the driver.
    deadline: Arc<AtomicU64>,
    released: AtomicBool,
    delivery: AtomicU8,
    revoke: watch::Receiver<Option<RevokeReason>>,
    /// For the watchdog's message.
    resource: ResourceId,
}

impl LeaseShared {
    pub(crate) fn new(
        deadline: Arc<AtomicU64>,
        revoke: watch::Receiver<Option<RevokeReason>>,
        resource: ResourceId,
    ) -> Arc<LeaseShared> {
        Arc::new(LeaseShared {
            deadline,
            released: AtomicBool::new(false),
            delivery: AtomicU8::new(QUEUED),
            revoke,
            resource,
        })
    }

    pub(crate) fn deadline(&self) -> Time {
        Time(self.deadline.load(Ordering::Acquire))
    }

    pub(crate) fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub(crate) fn is_delivered(&self) -> bool {
        self.delivery.load(Ordering::Acquire) == DELIVERED
    }

    pub(crate) fn resource(&self) -> &ResourceId {
        &self.resource
    }

    fn is_valid(&self) -> bool {
        // The deadline is compared with the clock here, at call time: a driver that has not
        // run for a while (blocked executor, paused process) cannot make it stale (PITFALLS 7).
        !self.released.load(Ordering::Acquire) && clock::now() < self.deadline()
    }

    fn remaining(&self) -> Duration {
        if self.released.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        self.deadline().saturating_since(clock::now())
    }

    fn is_revoked(&self) -> bool {
        // A closed channel means the driver is gone: nobody keeps the session alive any more.
        self.revoke.borrow().is_some() || self.revoke.has_changed().is_err()
    }

    async fn revoked(&self) {
        let mut rx = self.revoke.clone();
        // Err = the driver is gone, which ends the lease's future just as a revoke does.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// The driver takes back a lease the application never received. True when it did.
    pub(crate) fn try_reclaim(&self) -> bool {
        let won = self
            .delivery
            .compare_exchange(QUEUED, RECLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.released.store(true, Ordering::Release);
        }
        won
    }

    /// The handle hands the lease to the application. False when the driver reclaimed it.
    pub(crate) fn try_deliver(&self) -> bool {
        self.delivery
            .compare_exchange(QUEUED, DELIVERED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Permission to access one resource, from a grant until the application drops it.
///
/// Access the resource only while [`Lease::is_valid`] is true, and pass [`Lease::token`] to
/// the resource if it can reject stale owners. When [`Lease::revoked`] completes, finish or
/// abandon the work in hand and drop the lease (or call [`Lease::release`]): that is what tells
/// the library the application has stopped, after which the resource can move. The member's
/// `stop_timeout` bounds how long this may take; a stop that overruns it is escalated by the
/// member's [`crate::StopPolicy`] (by default, the process aborts).
///
/// A revoked lease that was not yet released stays *safe* to use until its deadline (the
/// claim is still held), so committing in-flight work after a revoke is fine; starting new work
/// is not.
///
/// Dropping a lease that was *not* revoked gives the resource back only for a moment: it is
/// still assigned to this member, which still holds its claim, so a new `Lease` for it (same
/// token) is granted at once. That restarts the work on it; it does not hand it to another
/// member (use [`crate::Admin::remove_resources`] or leave for that).
pub struct Lease {
    pub(crate) id: LeaseId,
    pub(crate) resource: ResourceId,
    pub(crate) token: Token,
    pub(crate) epoch: Epoch,
    pub(crate) session: SessionId,
    pub(crate) shared: Arc<LeaseShared>,
    pub(crate) cmds: mpsc::UnboundedSender<Cmd>,
    pub(crate) dropped: DropLog,
}

/// The ids of leases the application dropped, in the order it did, for the driver to collect:
/// it learns of each drop from this log at its next input, at a cost of the drops, where a
/// scan of every lease's flag cost the size of the assignment per input.
pub(crate) type DropLog = Arc<std::sync::Mutex<Vec<LeaseId>>>;

impl Lease {
    /// The resource this lease is for.
    pub fn resource(&self) -> &ResourceId {
        &self.resource
    }

    /// The fencing token: one integer (`token().get()`, printed in decimal) that strictly grows
    /// per resource across owners and across generation bumps. Pass it to resources that can
    /// reject a stale owner: such a resource keeps the largest token it accepted and refuses a
    /// writer with a smaller one (see [`Token`] for storing values above 64 bits).
    pub fn token(&self) -> Token {
        self.token
    }

    /// The coordinator epoch of the assignment that granted the lease (informational; it is
    /// not a fence).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The store session the lease was granted under.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Completes when the lease is revoked (the resource moves, the member leaves, or the
    /// session is in doubt or lost) or when the member's driver stops. Cancel-safe.
    pub async fn revoked(&self) {
        self.shared.revoked().await
    }

    /// Whether [`Lease::revoked`] would complete now.
    pub fn is_revoked(&self) -> bool {
        self.shared.is_revoked()
    }

    /// Why the lease was revoked, if it was. `None` while it is not, and also when it ended
    /// because the member's driver stopped.
    pub fn revoke_reason(&self) -> Option<RevokeReason> {
        *self.shared.revoke.borrow()
    }

    /// True while the resource may be accessed: not released, and the clock is before the
    /// lease deadline. Computed at call time from the clock, so it turns false on time even if
    /// the member's driver is stalled. Check it before each access.
    pub fn is_valid(&self) -> bool {
        self.shared.is_valid()
    }

    /// Time left before [`Lease::is_valid`] turns false (zero once it has). The deadline moves
    /// forward with every successful keepalive.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// A cheap, cloneable view of this lease's validity for worker threads.
    pub fn checker(&self) -> LeaseChecker {
        LeaseChecker {
            shared: self.shared.clone(),
        }
    }

    /// Tells the library the application has stopped using the resource. Same as dropping.
    pub fn release(self) {
        drop(self)
    }

    /// Reports that the work on this resource keeps failing on this member (a crash loop, a
    /// dependency only this host lacks). The lease is revoked (reason
    /// [`crate::RevokeReason::Unhealthy`]; drop it as for any revoke), the resource is given
    /// back, and the coordinator assigns it to another member and avoids this one for it
    /// for the member's `unhealthy_backoff`. A resource that fails on every member is
    /// assigned to nobody until a back-off ends, and `status` shows it, rather than bouncing
    /// from member to member.
    pub fn report_unhealthy(&self) {
        let _ = self.cmds.send(Cmd::Unhealthy {
            resource: self.resource.clone(),
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.released.store(true, Ordering::Release);
        if self.shared.delivery.load(Ordering::Acquire) == RECLAIMED {
            return; // the driver already reported it released
        }
        // A poisoned log only means a thread panicked while pushing: the ids are still good.
        self.dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.id);
        // The driver may be gone (member closed, runtime shut down): then nobody needs to hear.
        let _ = self.cmds.send(Cmd::Released {
            resource: self.resource.clone(),
            lease: self.id,
        });
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("resource", &self.resource)
            .field("token", &self.token)
            .field("epoch", &self.epoch)
            .field("session", &self.session)
            .field("valid", &self.is_valid())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

/// A cloneable, thread-safe view of one [`Lease`]'s validity, for code that accesses the
/// resource away from the task that owns the lease. It grants nothing by itself: once the
/// lease is dropped, [`LeaseChecker::is_valid`] is false.
#[derive(Clone)]
pub struct LeaseChecker {
    shared: Arc<LeaseShared>,
}

impl LeaseChecker {
    /// See [`Lease::is_valid`]; also false once the lease was released.
    pub fn is_valid(&self) -> bool {
        self.shared.is_valid()
    }
    /// See [`Lease::remaining`].
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }
    /// See [`Lease::is_revoked`].
    pub fn is_revoked(&self) -> bool {
        self.shared.is_revoked()
    }
    /// See [`Lease::revoked`].
    pub async fn revoked(&self) {
        self.shared.revoked().await
    }
}

impl fmt::Debug for LeaseChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseChecker")
            .field("valid", &self.is_valid())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(
        deadline: Time,
    ) -> (
        Lease,
        mpsc::UnboundedReceiver<Cmd>,
        watch::Sender<Option<RevokeReason>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (rtx, rrx) = watch::channel(None);
        let l = Lease {
            id: LeaseId(7),
            resource: ResourceId::new("r").expect("valid id"),
            token: Token::default(),
            epoch: Epoch(1),
            session: SessionId(1),
            shared: LeaseShared::new(
                Arc::new(AtomicU64::new(deadline.0)),
                rrx,
                ResourceId::new("r").expect("valid id"),
            ),
            cmds: tx,
            dropped: Default::default(),
        };
        (l, rx, rtx)
    }

    #[test]
    fn validity_is_computed_at_call_time() {
        let (l, _rx, _rtx) = lease(clock::now() + Duration::from_millis(50));
        assert!(l.is_valid());
        assert!(l.remaining() > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(60));
        // Nothing updated the deadline: the clock alone made the lease invalid.
        assert!(!l.is_valid());
        assert_eq!(l.remaining(), Duration::ZERO);
    }

    #[test]
    fn drop_reports_release_once_and_a_reclaimed_lease_not_at_all() {
        let (l, mut rx, _rtx) = lease(clock::now() + Duration::from_secs(5));
        let checker = l.checker();
        let log = l.dropped.clone();
        assert!(checker.is_valid());
        l.release();
        assert_eq!(
            *log.lock().unwrap(),
            [LeaseId(7)],
            "the drop is logged for the driver"
        );
        assert!(!checker.is_valid(), "a released lease is not valid");
        assert!(matches!(
            rx.try_recv(),
            Ok(Cmd::Released {
                lease: LeaseId(7),
                ..
            })
        ));
        assert!(rx.try_recv().is_err());

        let (l, mut rx, _rtx) = lease(clock::now() + Duration::from_secs(5));
        let log = l.dropped.clone();
        assert!(l.shared.try_reclaim());
        assert!(
            !l.shared.try_deliver(),
            "a reclaimed lease is never delivered"
        );
        drop(l);
        assert!(rx.try_recv().is_err());
        assert!(
            log.lock().unwrap().is_empty(),
            "the driver released it itself"
        );
    }

    #[test]
    fn release_without_a_driver_does_not_panic() {
        let (l, rx, rtx) = lease(clock::now() + Duration::from_secs(5));
        drop(rx);
        drop(rtx);
        assert!(l.is_revoked(), "driver gone counts as revoked");
        assert_eq!(l.revoke_reason(), None);
        l.release();
    }
}
