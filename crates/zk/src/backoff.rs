//! Reconnect backoff of the shared connection and of watches that failed to arm. Timing only:
//! it never decides whether to retry.

use std::time::Duration;

/// Reconnect backoff of the shared connection: doubled from the first to the last, ±50 % jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);

/// Exponential backoff with ±50 % jitter (jitter from the clock's nanoseconds: enough to
/// spread a fleet reconnecting together, and no RNG dependency).
pub(crate) fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_FIRST.saturating_mul(1 << failures.min(16).saturating_sub(1));
    let base = exp.min(BACKOFF_LAST);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = f64::from(nanos % 1000) / 1000.0; // 0..1
    base.mul_f64(0.5 + jitter)
}
