//! The stop-deadline watchdog: one OS thread per process that aborts the process when the
//! application still holds a lease past its deadline (DESIGN §8 rule 3, PITFALLS 7).
//!
//! The member's driver applies the same rule, but it runs on the tokio executor: a blocked
//! executor (a CPU-bound task, a blocking call on a runtime thread) delays it without bound,
//! while the application may keep working. This thread does not depend on the executor. It
//! reads each lease's published deadline and release flag directly, so it needs nothing from
//! the driver; a lease granted under [`crate::StopPolicy::Log`] is never registered.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use rebalanser_core::{ResourceId, Time};

use crate::clock;
use crate::lease::LeaseShared;

/// Longest sleep between checks: the condvar waits on the monotonic clock, which stops during
/// system suspend, so the thread re-reads the boot-time clock at least this often.
const MAX_SLEEP: Duration = Duration::from_millis(50);

struct Watchdog {
    leases: Mutex<Vec<Weak<LeaseShared>>>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static WD: OnceLock<&'static Watchdog> = OnceLock::new();
    WD.get_or_init(|| {
        let wd: &'static Watchdog = Box::leak(Box::new(Watchdog {
            leases: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("rebalanser-watchdog".into())
            .spawn(move || run(wd));
        if let Err(e) = spawned {
            // Without the thread the driver's own check still applies; say so loudly.
            tracing::error!(error = %e, "could not start the lease watchdog thread");
        }
        wd
    })
}

/// Watches `lease` until it is released (or dropped).
pub(crate) fn watch(lease: &Arc<LeaseShared>) {
    let wd = watchdog();
    let mut leases = wd.leases.lock().unwrap_or_else(|p| p.into_inner());
    leases.push(Arc::downgrade(lease));
    wd.wake.notify_one();
}

fn run(wd: &'static Watchdog) {
    let mut leases = wd.leases.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let sleep = match check(&mut leases, clock::now()) {
            Ok(sleep) => sleep,
            Err(resource) => {
                eprintln!(
                    "rebalanser: lease on {resource:?} still held past its deadline while the \
                     member could not act; aborting the process (StopPolicy::Abort)"
                );
                std::process::abort();
            }
        };
        leases = wd
            .wake
            .wait_timeout(leases, sleep)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// One pass: forgets released leases; `Err` names a delivered lease held past its deadline,
/// `Ok` is how long to sleep.
///
/// Released is the lease's own flag, set first thing in `Lease::drop`, so a drop counts here
/// the moment it happens, however far behind the driver is with its release messages.
fn check(leases: &mut Vec<Weak<LeaseShared>>, now: Time) -> Result<Duration, ResourceId> {
    leases.retain(|w| w.upgrade().is_some_and(|l| !l.is_released()));
    let mut sleep = MAX_SLEEP;
    for l in leases.iter().filter_map(Weak::upgrade) {
        // A lease the application never received is not being used.
        if !l.is_delivered() {
            continue;
        }
        let deadline = l.deadline();
        // Re-read after the deadline: a drop racing with this check is not a reason to abort.
        if now >= deadline && !l.is_released() {
            return Err(l.resource().clone());
        }
        sleep = sleep.min(deadline.saturating_since(now));
    }
    Ok(sleep)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::sync::watch as channel;

    use super::*;

    #[test]
    fn a_dropped_lease_past_its_deadline_is_no_reason_to_abort() {
        let (_revoke_tx, revoke_rx) = channel::channel(None);
        let (cmds, _cmds_rx) = tokio::sync::mpsc::unbounded_channel();
        let now = clock::now();
        let resource = ResourceId::new("r").expect("valid id");
        let shared = LeaseShared::new(Arc::new(AtomicU64::new(now.0)), revoke_rx, resource.clone());
        assert!(shared.try_deliver());
        let lease = crate::Lease {
            id: rebalanser_core::LeaseId(1),
            resource: resource.clone(),
            token: rebalanser_core::Token::default(),
            epoch: rebalanser_core::Epoch(1),
            session: rebalanser_core::SessionId(1),
            shared: shared.clone(),
            cmds,
            dropped: Default::default(),
        };
        let mut leases = vec![Arc::downgrade(&shared)];
        // Held at its deadline: abort.
        assert_eq!(check(&mut leases, now), Err(resource));
        // Dropped, the driver not told yet (nobody reads the channel): no abort, forgotten.
        drop(lease);
        assert_eq!(check(&mut leases, now), Ok(MAX_SLEEP));
        assert!(leases.is_empty());
    }
}
