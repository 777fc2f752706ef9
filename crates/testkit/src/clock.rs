//! The clock that lease deadlines run on, read the way the code under test reads it.

/// CLOCK_BOOTTIME now, in nanoseconds: the clock of the guard's deadlines, of `chaos-member`'s
/// access log and of the SQLite store's session expiry. Unlike CLOCK_MONOTONIC it keeps counting
/// while the host is suspended, and unlike the wall clock nothing steps it.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
