//! `rebalanser guard` (hidden): the process `member run` puts around each child (DESIGN §8
//! rule 17, PITFALLS 30).
//!
//! The member starts it with `setsid` (its own session and process group, so signals meant for
//! the member's terminal never reach it) and hands it one end of a socket pair as `--fd`. The
//! guard is single-threaded and blocks in `poll(2)` on three descriptors: the control socket,
//! a `signalfd` (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and a `timerfd` on CLOCK_BOOTTIME armed at
//! the next instant something must happen, so the deadline is kept even across a system
//! suspend and whatever state the member is in. It:
//!
//! 1. waits for the first deadline (`D`), then starts the child (the argv after `--`, or
//!    `/bin/sh -c COMMAND`) as the leader of a new process group, with
//!    `PR_SET_PDEATHSIG(SIGKILL)` towards the guard, and reports `P <pid>`; the guard is a
//!    child subreaper, so descendants orphaned inside the tree are re-parented to it instead
//!    of to init and stay under its control even if they leave the process group;
//! 2. with no later deadline from the member: SIGTERM to the group `term_before` ahead of the
//!    deadline, SIGKILL after `kill_after` or [`KILL_LEAD`] ahead of the deadline, whichever is
//!    first (a SIGSTOPped or starved member sends nothing);
//! 3. on `S` (the lease was revoked): SIGTERM (+ SIGCONT), SIGKILL after `kill_after` or at the
//!    deadline, whichever comes first;
//! 4. on EOF of the socket (the member died, even by SIGKILL): SIGKILL at once;
//! 5. when the child exits by itself: SIGTERM to what it left behind, SIGKILL after `kill_after`;
//! 6. once the child is reaped, its process group is empty (`kill(-pgid, 0)` = ESRCH) and no
//!    adopted descendant is left (`waitpid` = ECHILD), reports `E <cause> <status>` and exits.
//!    Only then does the member release the lease.
//!
//! A guard that is itself SIGKILLed takes only its direct child down (PDEATHSIG); the member,
//! a child subreaper, then kills the process group it was told about and every descendant that
//! escaped it (they are re-parented to the member), and a guard that is stopped is killed by
//! the member at the lease deadline.
//!
//! Not covered: a descendant that leaves the process group *and* whose parent stays alive
//! outside it is found only when that parent dies (a cgroup would find it at once); and if the
//! member and the guard are both SIGKILLed (`pkill -9 rebalanser`), the child's own background
//! descendants are orphaned to init: run `member run` under a supervisor that kills the whole
//! process tree (systemd `KillMode=control-group`, a container) for that case.

use std::ffi::OsString;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::proto::{
    boottime_ns, boottime_to_unix_ns, signal_name, try_boottime_ns, Cause, ChildStatus, FromGuard,
    ToGuard,
};

/// The SIGKILL goes out this long before the deadline, so that the timer's wake-up latency
/// and the kill itself fall before it.
pub const KILL_LEAD: Duration = Duration::from_millis(2);
/// Longest `poll` while descendants may still be dying (their deaths do not always reach the
/// guard as SIGCHLD: a process whose parent is still alive is reaped by that parent).
const EMPTY_POLL: Duration = Duration::from_millis(10);
/// Longest `poll` otherwise (the timerfd wakes the guard for every deadline; this is a
/// backstop).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Longest wait for the member to take the final report.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// Arguments of the hidden `guard` subcommand; only `member run` starts it.
#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    /// The inherited control socket (one end of the member's socket pair).
    #[arg(long)]
    fd: RawFd,
    /// For the logs and the child's environment.
    #[arg(long)]
    group: String,
    #[arg(long)]
    member: String,
    #[arg(long)]
    resource: String,
    #[arg(long)]
    token: String,
    /// After a stop: SIGKILL this many ms after the SIGTERM (or at the deadline, if sooner).
    #[arg(long)]
    kill_after_ms: u64,
    /// Without a later deadline: SIGTERM this many ms before the deadline.
    #[arg(long)]
    term_before_ms: u64,
    /// What to run, by `/bin/sh -c`.
    #[arg(long, conflicts_with = "argv", required_unless_present = "argv")]
    command: Option<String>,
    /// What to run, as it is (no shell).
    #[arg(last = true, value_parser = clap::value_parser!(OsString),
          required_unless_present = "command")]
    argv: Vec<OsString>,
}

/// The guard's entry point (`rebalanser guard ...`).
pub fn guard(a: GuardArgs) -> ExitCode {
    match Guard::setup(a) {
        Ok(g) => g.run(),
        Err(e) => {
            eprintln!("rebalanser guard: {e}");
            ExitCode::from(2)
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cvt(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct Guard {
    a: GuardArgs,
    /// `None` once the member is gone.
    sock: Option<UnixStream>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    sigfd: OwnedFd,
    /// `None` when the kernel has no CLOCK_BOOTTIME timerfd: then `poll` timeouts alone.
    timerfd: Option<OwnedFd>,
    me: libc::pid_t,
    /// The newest deadline the member sent (CLOCK_BOOTTIME ns).
    deadline: Option<u64>,
    /// The child's pid, which is also its process group id.
    child: Option<libc::pid_t>,
    status: Option<ChildStatus>,
    /// Why the child is being stopped (the first reason wins).
    cause: Option<Cause>,
    termed: bool,
    killed: bool,
    kill_at: Option<u64>,
    /// The child's process group was seen empty after the child was reaped; its id may be
    /// reused from then on, so it is never signalled again.
    group_gone: bool,
    /// Whether the last `waitpid(-1)` saw children (the child or adopted descendants).
    has_children: bool,
    kill_after: u64,
    term_before: u64,
}

impl Guard {
    fn setup(a: GuardArgs) -> io::Result<Guard> {
        if try_boottime_ns().is_none() {
            return Err(io::Error::other("CLOCK_BOOTTIME is unavailable"));
        }
        let fd = a.fd;
        if fd < 3 {
            return Err(io::Error::other(format!(
                "--fd {fd}: not an inherited socket"
            )));
        }
        // SAFETY: fstat on any integer is safe; `st` is valid and writable.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstat(fd, &mut st) }, "--fd")?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::other(format!("--fd {fd} is not a socket")));
        }
        // SAFETY: the descriptor is open (fstat succeeded), inherited for us alone, and owned
        // from here on.
        let sock = unsafe { UnixStream::from_raw_fd(fd) };
        // The child must not inherit it: the member's death must reach us as EOF, and only us.
        cvt(
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
            "FD_CLOEXEC",
        )?;
        sock.set_nonblocking(true)?;
        // Orphaned descendants come to us, not to init.
        cvt(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            "PR_SET_CHILD_SUBREAPER",
        )?;
        // Signals as readable events. The child gets an empty mask back before exec.
        // SAFETY: plain signal-set manipulation on a local set.
        let sigfd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            cvt(
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                "sigprocmask",
            )?;
            let fd = cvt(
                libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK),
                "signalfd",
            )?;
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: timerfd_create has no memory arguments.
        let tfd = unsafe {
            libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        };
        // SAFETY: a fresh descriptor we own.
        let timerfd = (tfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(tfd) });
        let kill_after = ns(Duration::from_millis(a.kill_after_ms));
        let term_before = ns(Duration::from_millis(a.term_before_ms));
        Ok(Guard {
            a,
            sock: Some(sock),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            sigfd,
            timerfd,
            me: std::process::id() as libc::pid_t,
            deadline: None,
            child: None,
            status: None,
            cause: None,
            termed: false,
            killed: false,
            kill_at: None,
            group_gone: false,
            has_children: false,
            kill_after,
            term_before,
        })
    }

    fn run(mut self) -> ExitCode {
        loop {
            let now = boottime_ns();
            match self.child {
                None => {
                    if let Some(cause) = self.cause {
                        // Stopped (or the member died) before the child started.
                        return self.finish(cause, ChildStatus::NotStarted);
                    }
                    if let Some(d) = self.deadline {
                        if now.saturating_add(self.term_before) >= d {
                            // Too close to the deadline to start anything.
                            return self.finish(Cause::Deadline, ChildStatus::NotStarted);
                        }
                        if let Err(e) = self.spawn() {
                            error!(
                                group = %self.a.group, member = %self.a.member,
                                resource = %self.a.resource, token = %self.a.token,
                                reason = "spawn-failed", error = %e,
                                "cannot start the child"
                            );
                            return self.finish(Cause::SpawnFailed, ChildStatus::NotStarted);
                        }
                        continue;
                    }
                }
                Some(_) => {
                    self.reap();
                    self.enforce(now);
                    if self.status.is_some() && self.cause.is_none() {
                        // The child exited by itself: whatever it left behind goes too.
                        self.cause = Some(Cause::Exit);
                        if self.is_empty() {
                            return self.finish_reaped();
                        }
                        self.term_all();
                        self.kill_at = Some(now.saturating_add(self.kill_after));
                    }
                    if self.is_empty() {
                        return self.finish_reaped();
                    }
                }
            }
            if let Err(e) = self.wait(now) {
                // Nothing sound is left to do but take the child down.
                error!(resource = %self.a.resource, error = %e, "guard poll failed: killing");
                self.cause.get_or_insert(Cause::MemberGone);
                self.kill_all();
                std::thread::sleep(EMPTY_POLL);
            }
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let me = self.me;
        let mut cmd = match (&self.a.command, self.a.argv.split_first()) {
            (Some(sh), _) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(sh);
                c
            }
            (None, Some((program, args))) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            // clap requires one of the two.
            (None, None) => return Err(io::Error::other("nothing to run")),
        };
        cmd.env("REBALANSER_GROUP", &self.a.group)
            .env("REBALANSER_MEMBER", &self.a.member)
            .env("REBALANSER_RESOURCE", &self.a.resource)
            .env("REBALANSER_TOKEN", &self.a.token)
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, sigprocmask, signal, _exit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Dies with the guard, even by SIGKILL.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The guard may have died before the prctl took effect.
                if libc::getppid() != me {
                    libc::_exit(1);
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
                    libc::signal(s, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        // Reaped by `waitpid(-1)` below, not through `Child`.
        drop(child);
        self.child = Some(pid);
        self.has_children = true;
        debug!(resource = %self.a.resource, pid, "child started");
        self.send(FromGuard::Started { pid });
        Ok(())
    }

    /// Reaps every exited child and adopted descendant.
    fn reap(&mut self) {
        loop {
            let mut st: libc::c_int = 0;
            // SAFETY: `st` is valid and writable.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r > 0 {
                if Some(r) == self.child {
                    self.status = Some(ChildStatus::from_wait(st));
                }
                continue;
            }
            if r == 0 {
                self.has_children = true;
            } else if errno() == libc::EINTR {
                continue;
            } else {
                self.has_children = false;
            }
            return;
        }
    }

    /// Reaped child, empty process group, no adopted descendant.
    fn is_empty(&mut self) -> bool {
        if self.status.is_none() || self.has_children {
            return false;
        }
        if !self.group_gone {
            let Some(pgid) = self.child else { return true };
            // SAFETY: signal 0 only checks for existence.
            let r = unsafe { libc::kill(-pgid, 0) };
            if r == 0 || errno() != libc::ESRCH {
                return false;
            }
            self.group_gone = true;
        }
        true
    }

    /// Sends `sig` to the child's process group and to every adopted descendant (and to the
    /// process group each of those leads).
    fn signal_all(&mut self, sig: libc::c_int) {
        if let Some(pgid) = self.child {
            if !self.group_gone {
                // SAFETY: plain kill(2).
                let r = unsafe { libc::kill(-pgid, sig) };
                if r != 0 && errno() == libc::ESRCH && self.status.is_some() {
                    self.group_gone = true;
                }
            }
        }
        for pid in adopted_children(self.me) {
            if Some(pid) == self.child {
                continue;
            }
            // SAFETY: plain kill(2) on our own unreaped children (their ids cannot be reused).
            unsafe {
                libc::kill(-pid, sig);
                libc::kill(pid, sig);
            }
        }
    }

    fn term_all(&mut self) {
        self.signal_all(libc::SIGTERM);
        // A stopped process acts on SIGTERM only once continued.
        self.signal_all(libc::SIGCONT);
        self.termed = true;
    }

    fn kill_all(&mut self) {
        self.signal_all(libc::SIGKILL);
        self.termed = true;
        self.killed = true;
    }

    fn fields(&self) -> (libc::pid_t, u64, u64) {
        let d = self.deadline.unwrap_or(0);
        (self.child.unwrap_or(0), d, boottime_to_unix_ns(d))
    }

    /// The deadline and the stop grace.
    fn enforce(&mut self, now: u64) {
        if let Some(d) = self.deadline {
            if !self.killed && now.saturating_add(ns(KILL_LEAD)) >= d {
                let (pid, boot, unix) = self.fields();
                warn!(
                    group = %self.a.group, member = %self.a.member,
                    resource = %self.a.resource, token = %self.a.token,
                    reason = "deadline", pid, deadline_boottime_ns = boot,
                    deadline_unix_ns = unix,
                    "lease deadline reached without an extension from the member: \
                     SIGKILL to the child's process group"
                );
                self.cause.get_or_insert(Cause::Deadline);
                self.kill_all();
            } else if !self.termed && now.saturating_add(self.term_before) >= d {
                let (pid, boot, unix) = self.fields();
                warn!(
                    group = %self.a.group, member = %self.a.member,
                    resource = %self.a.resource, token = %self.a.token,
                    reason = "deadline", pid, deadline_boottime_ns = boot,
                    deadline_unix_ns = unix,
                    "lease deadline near without an extension from the member: \
                     SIGTERM to the child's process group"
                );
                self.cause.get_or_insert(Cause::Deadline);
                self.term_all();
                // SIGKILL after the grace, or at the deadline, whichever is first.
                let at = now.saturating_add(self.kill_after);
                self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
            }
        }
        if !self.killed && self.kill_at.is_some_and(|k| now >= k) {
            info!(
                group = %self.a.group, member = %self.a.member,
                resource = %self.a.resource, token = %self.a.token,
                reason = "stop-timeout", pid = self.child.unwrap_or(0),
                "the child's process group outlived the stop grace: SIGKILL"
            );
            self.kill_all();
        } else if self.killed && !self.is_empty() {
            // Descendants adopted since the last round.
            self.signal_all(libc::SIGKILL);
        }
    }

    fn stop(&mut self, cause: Cause, now: u64) {
        self.cause.get_or_insert(cause);
        if self.child.is_none() || self.killed {
            return;
        }
        if !self.termed {
            self.term_all();
        }
        let at = now.saturating_add(self.kill_after);
        self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
    }

    fn member_gone(&mut self) {
        self.sock = None;
        self.outbuf.clear();
        self.cause.get_or_insert(Cause::MemberGone);
        if self.child.is_some() && !self.killed {
            warn!(
                group = %self.a.group, member = %self.a.member,
                resource = %self.a.resource, token = %self.a.token,
                reason = "member-gone", pid = self.child.unwrap_or(0),
                "the member is gone: SIGKILL to the child's process group"
            );
            self.kill_all();
        }
    }

    /// Sleeps in `poll` until input, a signal, or the next instant something is due.
    fn wait(&mut self, now: u64) -> io::Result<()> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        if self.child.is_some() {
            if let Some(d) = self.deadline {
                if !self.killed {
                    at(d.saturating_sub(ns(KILL_LEAD)));
                }
                if !self.termed {
                    at(d.saturating_sub(self.term_before));
                }
            }
            if let (false, Some(k)) = (self.killed, self.kill_at) {
                at(k);
            }
        }
        let cap = if self.status.is_some() || self.termed {
            EMPTY_POLL
        } else {
            IDLE_POLL
        };
        let mut timeout = cap;
        if let Some(n) = next {
            // +1 ms: poll rounds down; the timerfd is the precise wake-up.
            timeout =
                timeout.min(Duration::from_nanos(n.saturating_sub(now)) + Duration::from_millis(1));
        }
        if let Some(tfd) = &self.timerfd {
            let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
            if let Some(n) = next {
                // A zero it_value disarms the timer: never arm at 0.
                let n = n.max(1);
                spec.it_value.tv_sec = (n / 1_000_000_000) as libc::time_t;
                spec.it_value.tv_nsec = (n % 1_000_000_000) as libc::c_long;
            }
            // SAFETY: valid descriptor and itimerspec.
            cvt(
                unsafe {
                    libc::timerfd_settime(
                        tfd.as_raw_fd(),
                        libc::TFD_TIMER_ABSTIME,
                        &spec,
                        std::ptr::null_mut(),
                    )
                },
                "timerfd_settime",
            )?;
        }
        let mut fds = Vec::with_capacity(3);
        fds.push(libc::pollfd {
            fd: self.sigfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        if let Some(t) = &self.timerfd {
            fds.push(libc::pollfd {
                fd: t.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(s) = &self.sock {
            let mut events = libc::POLLIN;
            if !self.outbuf.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid array of pollfd for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            if errno() == libc::EINTR {
                return Ok(());
            }
            return Err(io::Error::last_os_error());
        }
        let now = boottime_ns();
        self.read_signals(now);
        if let Some(t) = &self.timerfd {
            let mut buf = [0u8; 8];
            // SAFETY: reading into a local buffer; EAGAIN when the timer has not fired.
            unsafe { libc::read(t.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
        if self.sock.is_some() {
            self.read_sock(now);
            self.flush();
        }
        Ok(())
    }

    fn read_signals(&mut self, now: u64) {
        loop {
            // SAFETY: reading whole siginfo records into a properly sized local.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let r = unsafe {
                libc::read(
                    self.sigfd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if r != size as isize {
                return;
            }
            let sig = info.ssi_signo as libc::c_int;
            if sig != libc::SIGCHLD {
                info!(
                    group = %self.a.group, member = %self.a.member,
                    resource = %self.a.resource, token = %self.a.token,
                    reason = "guard-signal", signal = signal_name(sig),
                    "the guard was asked to stop: stopping the child"
                );
                self.stop(Cause::Signal, now);
            }
        }
    }

    fn read_sock(&mut self, now: u64) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            match sock.read(&mut buf) {
                Ok(0) => {
                    self.handle_lines(now);
                    self.member_gone();
                    return;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.handle_lines(now);
                    self.member_gone();
                    return;
                }
            }
        }
        self.handle_lines(now);
    }

    fn handle_lines(&mut self, now: u64) {
        while let Some(i) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match ToGuard::parse(&text) {
                Some(ToGuard::Deadline(d)) => self.deadline = Some(d),
                Some(ToGuard::Stop) => self.stop(Cause::Stop, now),
                None => {
                    // A member that says something else cannot be trusted with the deadline.
                    error!(resource = %self.a.resource, line = %text, "bad message from the member");
                    self.member_gone();
                    return;
                }
            }
        }
        if self.inbuf.len() > 64 * 1024 {
            error!(resource = %self.a.resource, "runaway message from the member");
            self.member_gone();
        }
    }

    fn send(&mut self, m: FromGuard) {
        if self.sock.is_some() {
            self.outbuf.extend_from_slice(m.encode().as_bytes());
            self.flush();
        }
    }

    fn flush(&mut self) {
        while !self.outbuf.is_empty() {
            let Some(sock) = self.sock.as_mut() else {
                self.outbuf.clear();
                return;
            };
            match sock.write(&self.outbuf) {
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The member is gone; EOF on the read side follows.
                    self.outbuf.clear();
                    return;
                }
            }
        }
    }

    fn finish_reaped(self) -> ExitCode {
        let cause = self.cause.unwrap_or(Cause::Exit);
        let status = self.status.unwrap_or(ChildStatus::NotStarted);
        self.finish(cause, status)
    }

    /// Reports the empty process group and exits.
    fn finish(mut self, cause: Cause, status: ChildStatus) -> ExitCode {
        debug!(resource = %self.a.resource, cause = cause.as_str(), %status, "child gone");
        self.send(FromGuard::Empty { cause, status });
        let give_up = boottime_ns().saturating_add(ns(REPORT_WAIT));
        while !self.outbuf.is_empty() && boottime_ns() < give_up {
            let Some(s) = &self.sock else { break };
            let mut p = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 50) };
            self.flush();
        }
        ExitCode::SUCCESS
    }
}

/// The direct children of `me` (a single-threaded process): from
/// `/proc/self/task/<pid>/children`, or by scanning `/proc` where that file does not exist.
fn adopted_children(me: libc::pid_t) -> Vec<libc::pid_t> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{me}/children")) {
        return s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}
