//! What the member and a guard say to each other over the guard's control socket, the clocks
//! they agree on, and shell quoting.
//!
//! One `SOCK_STREAM` Unix socket pair per guard; the member keeps one end, the guard gets the
//! other as an inherited descriptor (`guard --fd N`). Text lines, one message per line:
//!
//! ```text
//! member → guard   D <ns>     the lease deadline: an absolute CLOCK_BOOTTIME instant (ns).
//!                             Sent at once, then every TICK while the lease lives; the newest
//!                             one counts (it may be earlier than the previous one).
//!                  S          stop (the lease was revoked): SIGTERM, SIGKILL after the grace.
//!                  (EOF)      the member is gone: SIGKILL at once.
//! guard → member   P <pid>    the child started; pid = its process group id.
//!                  E <cause> <status>
//!                             the child is reaped and its process group and every adopted
//!                             descendant are gone. The last message; the guard then exits.
//! ```

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};

pub use crate::util::{boottime_ns, read_clock, try_boottime_ns};

/// A message from the member to a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToGuard {
    /// The lease deadline, absolute, on CLOCK_BOOTTIME in nanoseconds.
    Deadline(u64),
    /// The lease was revoked: stop the child.
    Stop,
}

impl ToGuard {
    pub fn encode(self) -> String {
        match self {
            ToGuard::Deadline(ns) => format!("D {ns}\n"),
            ToGuard::Stop => "S\n".to_string(),
        }
    }

    pub fn parse(line: &str) -> Option<ToGuard> {
        let mut it = line.split(' ');
        let msg = match (it.next()?, it.next()) {
            ("D", Some(ns)) => ToGuard::Deadline(ns.parse().ok()?),
            ("S", None) => return Some(ToGuard::Stop),
            _ => return None,
        };
        it.next().is_none().then_some(msg)
    }
}

/// Why a guard's child stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The child exited by itself.
    Exit,
    /// The member asked (the lease was revoked).
    Stop,
    /// The lease deadline came (or came near) without a later one from the member.
    Deadline,
    /// The control socket reached EOF: the member died.
    MemberGone,
    /// The guard itself got SIGTERM, SIGINT or SIGHUP.
    Signal,
    /// The child could not be started.
    SpawnFailed,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Exit => "exit",
            Cause::Stop => "stop",
            Cause::Deadline => "deadline",
            Cause::MemberGone => "member-gone",
            Cause::Signal => "guard-signal",
            Cause::SpawnFailed => "spawn-failed",
        }
    }

    fn parse(s: &str) -> Option<Cause> {
        [
            Cause::Exit,
            Cause::Stop,
            Cause::Deadline,
            Cause::MemberGone,
            Cause::Signal,
            Cause::SpawnFailed,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// How the child ended, as `waitpid` told the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    Exited(i32),
    Signaled(i32),
    /// The child never ran.
    NotStarted,
}

impl ChildStatus {
    /// From a raw `waitpid` status (exit or signal; the guard never asks for stops).
    pub fn from_wait(status: libc::c_int) -> ChildStatus {
        if libc::WIFSIGNALED(status) {
            ChildStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ChildStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    fn encode(self) -> String {
        match self {
            ChildStatus::Exited(c) => format!("exit:{c}"),
            ChildStatus::Signaled(s) => format!("signal:{s}"),
            ChildStatus::NotStarted => "none".to_string(),
        }
    }

    fn parse(s: &str) -> Option<ChildStatus> {
        if s == "none" {
            return Some(ChildStatus::NotStarted);
        }
        let (kind, n) = s.split_once(':')?;
        let n: i32 = n.parse().ok()?;
        match kind {
            "exit" => Some(ChildStatus::Exited(n)),
            "signal" => Some(ChildStatus::Signaled(n)),
            _ => None,
        }
    }
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChildStatus::Exited(c) => write!(f, "exit code {c}"),
            ChildStatus::Signaled(s) => write!(f, "killed by signal {s} ({})", signal_name(s)),
            ChildStatus::NotStarted => write!(f, "not started"),
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "other",
    }
}

/// A message from a guard to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromGuard {
    Started { pid: i32 },
    Empty { cause: Cause, status: ChildStatus },
}

impl FromGuard {
    pub fn encode(self) -> String {
        match self {
            FromGuard::Started { pid } => format!("P {pid}\n"),
            FromGuard::Empty { cause, status } => {
                format!("E {} {}\n", cause.as_str(), status.encode())
            }
        }
    }

    pub fn parse(line: &str) -> Option<FromGuard> {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["P", pid] => Some(FromGuard::Started {
                pid: pid.parse().ok().filter(|&p: &i32| p > 0)?,
            }),
            ["E", cause, status] => Some(FromGuard::Empty {
                cause: Cause::parse(cause)?,
                status: ChildStatus::parse(status)?,
            }),
            _ => None,
        }
    }
}

/// A CLOCK_BOOTTIME instant as Unix time (ns), for logs that are compared with wall-clock
/// timestamps (valid while nobody steps the wall clock).
pub fn boottime_to_unix_ns(boot_ns: u64) -> u64 {
    let real = read_clock(libc::CLOCK_REALTIME).unwrap_or(0);
    let boot = boottime_ns();
    (boot_ns as i128 + real as i128 - boot as i128).max(0) as u64
}

/// Quotes `s` for `/bin/sh`: one word, nothing expanded.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The command line for one resource: every `{resource}` replaced by the quoted id.
pub fn render_command(template: &str, resource: &str) -> String {
    template.replace("{resource}", &shell_quote(resource))
}

/// The argv for one resource: every `{resource}` in every element replaced by the id. Bytes,
/// not text (an argument need not be UTF-8); the result is not scanned again, so an id is
/// never interpreted, and never splits or adds an argument.
pub fn render_argv(template: &[OsString], resource: &str) -> Vec<OsString> {
    const PLACEHOLDER: &[u8] = b"{resource}";
    template
        .iter()
        .map(|arg| {
            let mut rest = arg.as_bytes();
            let mut out = Vec::with_capacity(rest.len());
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix(PLACEHOLDER) {
                    out.extend_from_slice(resource.as_bytes());
                    rest = after;
                } else {
                    out.push(rest[0]);
                    rest = &rest[1..];
                }
            }
            OsString::from_vec(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            ToGuard::Deadline(0),
            ToGuard::Deadline(u64::MAX),
            ToGuard::Stop,
        ] {
            let line = m.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(ToGuard::parse(line.trim_end()), Some(m), "{line}");
        }
        for m in [
            FromGuard::Started { pid: 42 },
            FromGuard::Empty {
                cause: Cause::Exit,
                status: ChildStatus::Exited(3),
            },
            FromGuard::Empty {
                cause: Cause::MemberGone,
                status: ChildStatus::Signaled(9),
            },
            FromGuard::Empty {
                cause: Cause::SpawnFailed,
                status: ChildStatus::NotStarted,
            },
        ] {
            let line = m.encode();
            assert_eq!(FromGuard::parse(line.trim_end()), Some(m), "{line}");
        }
        for bad in [
            "", "D", "D x", "D 1 2", "S 1", "X", "P 0", "P -1", "E exit", "E x none",
        ] {
            assert_eq!(ToGuard::parse(bad), None, "{bad}");
            assert_eq!(FromGuard::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn resources_are_quoted_for_the_shell() {
        let cases = [
            "q1",
            "a b",
            "it's",
            "$(touch /tmp/pwned)",
            "`x`",
            "a;b|c&d>e<f",
            "\"dq\" \\ *?[]~",
            "''",
            "é/ü",
        ];
        for r in cases {
            let cmd = render_command("printf '%s' {resource}", r);
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), r, "{cmd}");
        }
        assert_eq!(render_command("x {resource} {resource}", "r"), "x 'r' 'r'");
        assert_eq!(render_command("no placeholder", "r"), "no placeholder");
    }

    #[test]
    fn argv_elements_get_the_id_verbatim() {
        let t: Vec<OsString> = [
            "cmd",
            "{resource}",
            "--q={resource}.{resource}",
            "{resourc",
            "x",
        ]
        .map(OsString::from)
        .to_vec();
        let id = "$(x) '{resource}' -y";
        let got = render_argv(&t, id);
        let want: Vec<OsString> = [
            "cmd".to_string(),
            id.to_string(),
            format!("--q={id}.{id}"),
            "{resourc".to_string(),
            "x".to_string(),
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(got, want);
        let bytes = [OsString::from_vec(b"\xff{resource}\xfe".to_vec())];
        assert_eq!(
            render_argv(&bytes, "r")[0].as_bytes(),
            b"\xffr\xfe".as_slice()
        );
    }

    #[test]
    fn boottime_converts_to_unix_time() {
        let boot = boottime_ns();
        let unix = boottime_to_unix_ns(boot);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        assert!(unix.abs_diff(now) < 50_000_000, "{unix} vs {now}");
    }
}
