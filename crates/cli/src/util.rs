//! Helpers every subcommand shares: duration arguments and CLOCK_BOOTTIME.

use std::fmt;
use std::time::Duration;

/// Why a duration argument was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Empty,
    NoNumber,
    NoUnit,
    BadNumber(String),
    UnknownUnit(String),
    Zero,
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Empty => write!(f, "it is empty"),
            DurationError::NoNumber => write!(f, "it must start with a number"),
            DurationError::NoUnit => write!(f, "a unit is required"),
            DurationError::BadNumber(n) => write!(f, "{n:?} is not a number"),
            DurationError::UnknownUnit(u) => write!(f, "unknown unit {u:?}"),
            DurationError::Zero => write!(f, "it must be longer than zero"),
            DurationError::TooLong => write!(f, "it is longer than a day"),
        }
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h` (also `us`). A unit is required; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(DurationError::NoNumber);
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit);
    }
    let value: f64 = num
        .parse()
        .map_err(|_| DurationError::BadNumber(num.to_string()))?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => return Err(DurationError::UnknownUnit(other.to_string())),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(DurationError::TooLong);
    }
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(d)
}

/// [`duration_arg`], and `0` (or `0s`, `0ms`) for none.
pub fn duration_or_zero_arg(s: &str) -> Result<Duration, String> {
    match s.trim().trim_end_matches("ms").trim_end_matches('s') {
        "0" => Ok(Duration::ZERO),
        _ => duration_arg(s),
    }
}

/// [`parse_duration`] for clap's `value_parser`.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

pub fn read_clock(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// CLOCK_BOOTTIME in nanoseconds: one clock for every process on the host, running through
/// system suspend. The member and its guards exchange deadlines on it.
pub fn try_boottime_ns() -> Option<u64> {
    read_clock(libc::CLOCK_BOOTTIME)
}

/// [`try_boottime_ns`]; both processes check at start-up that the clock works, so a later
/// failure has no sound answer but stopping.
pub fn boottime_ns() -> u64 {
    try_boottime_ns().unwrap_or_else(|| {
        eprintln!("rebalanser: CLOCK_BOOTTIME stopped working; aborting");
        std::process::abort()
    })
}
