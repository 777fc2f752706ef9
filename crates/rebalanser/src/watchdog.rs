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
        leases.retain(|w| w.upgrade().is_some_and(|l| !l.is_released()));
        let now = clock::now();
        let mut sleep = MAX_SLEEP;
        for l in leases.iter().filter_map(Weak::upgrade) {
            // A lease the application never received is not being used.
            if !l.is_delivered() {
                continue;
            }
            let deadline = l.deadline();
            if now >= deadline {
                eprintln!(
                    "rebalanser: lease on {:?} still held past its deadline while the member \
                     could not act; aborting the process (StopPolicy::Abort)",
                    l.resource()
                );
                std::process::abort();
            }
            sleep = sleep.min(deadline.saturating_since(now));
        }
        leases = wd
            .wake
            .wait_timeout(leases, sleep)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}
