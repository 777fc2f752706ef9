//! A callback adapter over [`Member`], for applications that prefer
//! `on_assigned` / `on_revoked` to a stream of leases.
//!
//! The adapter owns every lease. `on_assigned(&lease)` starts the work (read the resource id
//! and token, hand a [`crate::LeaseChecker`] to workers); `on_revoked(&resource)` must stop
//! it before returning — when it returns, the adapter drops the lease, which tells the library
//! the application has stopped. Callbacks run one at a time on the adapter's task, so they
//! must not block for long: the member's `stop_timeout` bounds `on_revoked`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rebalanser_core::ResourceId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::handle::{Member, MemberEvent};
use crate::lease::Lease;

type OnAssigned = Box<dyn FnMut(&Lease) + Send>;
type OnRevoked = Box<dyn FnMut(&ResourceId) + Send>;
type OnError = Box<dyn FnMut(&MemberEvent) + Send>;

/// The callbacks; every one is optional.
pub struct Callbacks {
    on_assigned: OnAssigned,
    on_revoked: OnRevoked,
    on_error: OnError,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks::new()
    }
}

impl Callbacks {
    pub fn new() -> Callbacks {
        Callbacks {
            on_assigned: Box::new(|_| {}),
            on_revoked: Box::new(|_| {}),
            on_error: Box::new(|_| {}),
        }
    }

    /// Called once per granted lease. The adapter keeps the lease until it is revoked.
    pub fn on_assigned(mut self, f: impl FnMut(&Lease) + Send + 'static) -> Self {
        self.on_assigned = Box::new(f);
        self
    }

    /// Called when a lease is revoked (or the member stops). Stop using the resource before
    /// returning: the adapter releases the lease right after.
    pub fn on_revoked(mut self, f: impl FnMut(&ResourceId) + Send + 'static) -> Self {
        self.on_revoked = Box::new(f);
        self
    }

    /// Called with every status event that reports a problem ([`MemberEvent::is_problem`]).
    pub fn on_error(mut self, f: impl FnMut(&MemberEvent) + Send + 'static) -> Self {
        self.on_error = Box::new(f);
        self
    }

    /// Runs the callbacks for `member` on a spawned task. Dropping the returned handle leaves
    /// the group, like dropping a [`Member`].
    #[must_use = "dropping the handle makes the member leave at once"]
    pub fn run(self, member: Member) -> CallbackHandle {
        let (leave_tx, leave_rx) = oneshot::channel();
        let task = tokio::spawn(drive(self, member, leave_rx));
        CallbackHandle {
            leave: Some(leave_tx),
            task,
        }
    }
}

/// A member driven by [`Callbacks`].
#[derive(Debug)]
pub struct CallbackHandle {
    leave: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl CallbackHandle {
    /// Leaves gracefully (see [`Member::leave`]); revokes keep reaching `on_revoked`
    /// until the member has left.
    pub async fn leave(mut self) -> Result<(), Error> {
        if let Some(tx) = self.leave.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            // The task panicked (in a callback) or was cancelled with the runtime.
            Err(e) => {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                Ok(())
            }
        }
    }
}

async fn drive(
    mut cb: Callbacks,
    mut member: Member,
    mut leave_rx: oneshot::Receiver<()>,
) -> Result<(), Error> {
    let mut events = member.events();
    let mut held: BTreeMap<u64, Lease> = BTreeMap::new();
    let mut revokes: FuturesUnordered<BoxFuture<'static, u64>> = FuturesUnordered::new();
    let mut next_key = 0u64;
    let revoke = |cb: &mut Callbacks, held: &mut BTreeMap<u64, Lease>, key| {
        if let Some(lease) = held.remove(&key) {
            (cb.on_revoked)(lease.resource());
            drop(lease);
        }
    };
    loop {
        tokio::select! {
            lease = member.next_lease() => match lease {
                Some(lease) => {
                    (cb.on_assigned)(&lease);
                    let key = next_key;
                    next_key += 1;
                    let checker = lease.checker();
                    revokes.push(async move { checker.revoked().await; key }.boxed());
                    held.insert(key, lease);
                }
                None => {
                    for key in held.keys().copied().collect::<Vec<_>>() {
                        revoke(&mut cb, &mut held, key);
                    }
                    return Err(Error::DriverGone { member: member.name().clone() });
                }
            },
            Some(key) = revokes.next(), if !revokes.is_empty() => revoke(&mut cb, &mut held, key),
            Some(s) = events.next() => {
                if s.is_problem() {
                    (cb.on_error)(&s);
                }
            }
            // Sent, or the handle was dropped: leave either way.
            _ = &mut leave_rx => break,
        }
    }
    let leave = member.leave();
    tokio::pin!(leave);
    loop {
        tokio::select! {
            r = &mut leave => {
                for key in held.keys().copied().collect::<Vec<_>>() {
                    revoke(&mut cb, &mut held, key);
                }
                return r;
            }
            Some(key) = revokes.next(), if !revokes.is_empty() => revoke(&mut cb, &mut held, key),
            Some(s) = events.next() => {
                if s.is_problem() {
                    (cb.on_error)(&s);
                }
            }
        }
    }
}
