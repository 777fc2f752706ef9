//! The clock session expiry runs on: CLOCK_BOOTTIME of this host, tagged with the kernel's boot
//! id (PITFALLS 4, 7).
//!
//! Every process on the host reads the same CLOCK_BOOTTIME: it is monotonic, counts time spent
//! in suspend, and no wall-clock step (NTP, `date -s`, VM resume) moves it. An expiry stored as
//! a BOOTTIME instant is therefore reached at the same moment for every process, and a wall
//! step can neither shorten nor lengthen a session. BOOTTIME restarts at each boot, so every
//! stored instant is tagged with the boot id (`/proc/sys/kernel/random/boot_id`): an instant of
//! another boot is meaningless, and a session stamped with one is expired.
//!
//! A process inside a Linux time namespace sees BOOTTIME shifted by a constant offset
//! (`/proc/self/timens_offsets`); the offset is subtracted so that every process stores and
//! compares the host's clock.

use std::path::Path;

/// CLOCK_BOOTTIME of the host, in nanoseconds, with the boot it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct HostClock {
    boot_id: String,
    /// This process's time-namespace offset of BOOTTIME, subtracted from every reading.
    offset_ns: i64,
}

impl HostClock {
    /// The clock of this host, or why it cannot be read (not Linux, no `/proc`).
    pub(crate) fn new() -> Result<HostClock, String> {
        let boot_id = read_boot_id(Path::new("/proc/sys/kernel/random/boot_id"))?;
        let offset_ns = match std::fs::read_to_string("/proc/self/timens_offsets") {
            Ok(text) => boottime_offset_ns(&text)?,
            // Kernels before 5.6 have no time namespaces: no offset.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read /proc/self/timens_offsets: {e}")),
        };
        // Fail here, not at the first operation, if the clock cannot be read.
        raw_boottime_ns()?;
        Ok(HostClock { boot_id, offset_ns })
    }

    pub(crate) fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Now, on the host's CLOCK_BOOTTIME (nanoseconds since this boot).
    pub(crate) fn now_ns(&self) -> i64 {
        // `new` proved the clock readable; clock_gettime cannot fail later for a valid clock
        // and buffer. Should it anyway, no value is safe to go on with (a large one expires
        // every session early): panic, which fails the one operation (`Indeterminate`).
        raw_boottime_ns().expect("CLOCK_BOOTTIME became unreadable") - self.offset_ns
    }
}

fn read_boot_id(path: &Path) -> Result<String, String> {
    let id = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the boot id from {}: {e}", path.display()))?;
    let id = id.trim();
    if id.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(id.to_string())
}

/// The BOOTTIME offset of `/proc/self/timens_offsets` (`boottime <secs> <nanos>` line).
fn boottime_offset_ns(text: &str) -> Result<i64, String> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("boottime") {
            continue;
        }
        let parse = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok());
        let (Some(secs), Some(nanos)) = (parse(it.next()), parse(it.next())) else {
            return Err(format!("malformed timens_offsets line {line:?}"));
        };
        return Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos));
    }
    Ok(0)
}

fn raw_boottime_ns() -> Result<i64, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return Err(format!(
            "clock_gettime(CLOCK_BOOTTIME): {}",
            std::io::Error::last_os_error()
        ));
    }
    // `time_t` and `c_long` are i64 on 64-bit Linux, narrower on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let ns = i64::from(ts.tv_sec) * 1_000_000_000 + i64::from(ts.tv_nsec);
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_boottime_offset() {
        let text = "monotonic           0         0\nboottime       100000         5\n";
        assert_eq!(boottime_offset_ns(text), Ok(100_000_000_000_005));
        assert_eq!(boottime_offset_ns("monotonic 3 0\n"), Ok(0));
        assert_eq!(boottime_offset_ns("boottime -7 0\n"), Ok(-7_000_000_000));
        assert!(boottime_offset_ns("boottime x 0\n").is_err());
    }

    #[test]
    fn is_the_hosts_boottime_and_monotonic() {
        let c = HostClock::new().expect("clock");
        assert_eq!(c.boot_id().len(), 36, "a UUID: {}", c.boot_id());
        let a = c.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = c.now_ns();
        assert!(b - a >= 5_000_000, "{a} then {b}");
        // Uptime (BOOTTIME) agrees with /proc/uptime to within a second.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ours = c.now_ns() as f64 / 1e9 + c.offset_ns as f64 / 1e9;
        assert!((ours - uptime).abs() < 1.0, "{ours} vs uptime {uptime}");
    }
}
