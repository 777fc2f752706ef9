//! The one clock of the runtime (DESIGN §8 rule 2, PITFALLS 7).
//!
//! Lease deadlines must be measured on a clock that keeps running while the machine is
//! suspended: `Instant` (CLOCK_MONOTONIC on Linux) stops during suspend, so after a laptop
//! sleep or a VM pause an expired member would believe it still had most of its lease left.
//! On Linux this reads CLOCK_BOOTTIME. Elsewhere it falls back to an `Instant` origin, which is
//! correct only on platforms whose monotonic clock counts suspend (macOS's does not: there a
//! suspend longer than the safety margin can break guarantee 1).
//!
//! Every `handle_*` call into the protocol core takes its `now` from [`now`], and every lease
//! deadline published to the application is on the same scale, so [`crate::Lease::is_valid`]
//! can compare them without the driver running.

use rebalanser_core::Time;

/// The current time on the runtime's clock, in nanoseconds since an arbitrary origin
/// (boot, on Linux). Never decreases.
pub fn now() -> Time {
    imp::now()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    use rebalanser_core::Time;

    fn boottime() -> Option<Time> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec that outlives the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        Some(Time(
            secs.saturating_mul(1_000_000_000).saturating_add(nanos),
        ))
    }

    /// Decided once, so that two readings never come from different clocks: CLOCK_BOOTTIME
    /// exists on every kernel since 2.6.39, but a seccomp filter could deny it.
    enum Source {
        Boottime,
        Instant(Instant),
    }

    fn source() -> &'static Source {
        static SOURCE: OnceLock<Source> = OnceLock::new();
        SOURCE.get_or_init(|| match boottime() {
            Some(_) => Source::Boottime,
            None => {
                tracing::warn!(
                    "CLOCK_BOOTTIME is unavailable; lease deadlines fall back to the monotonic \
                     clock, which stops during system suspend"
                );
                Source::Instant(Instant::now())
            }
        })
    }

    pub fn now() -> Time {
        match source() {
            Source::Boottime => boottime().unwrap_or_else(|| {
                // The clock worked at start-up; a later failure has no sound answer. Aborting
                // is the only stop the library can force (DESIGN §8 rule 3).
                tracing::error!("CLOCK_BOOTTIME stopped working; aborting");
                std::process::abort()
            }),
            // +1 s keeps the origin away from Time::ZERO, which the core uses for "invalid".
            Source::Instant(origin) => {
                Time::from_duration(origin.elapsed() + std::time::Duration::from_secs(1))
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use rebalanser_core::Time;

    pub fn now() -> Time {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = ORIGIN.get_or_init(Instant::now);
        // +1 s keeps the origin away from Time::ZERO, which the core uses for "invalid".
        Time::from_duration(origin.elapsed() + Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn never_decreases_and_follows_real_time() {
        let a = now();
        std::thread::sleep(Duration::from_millis(20));
        let b = now();
        assert!(b > a, "{a} then {b}");
        let d = b.saturating_since(a);
        assert!(
            d >= Duration::from_millis(20) && d < Duration::from_secs(2),
            "{d:?}"
        );
        assert!(a > Time::ZERO);
    }
}
