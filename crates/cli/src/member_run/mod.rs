//! `rebalanser member run -- CMD ARG...` (or `--exec 'SHELL CMD'`): a group member that runs
//! one child process per leased resource, each under a guard process (DESIGN §8 rule 17,
//! PITFALLS 30), and the hidden `rebalanser guard` itself (`guard.rs`).
//!
//! Per lease, the member:
//! 1. starts `rebalanser guard` (this binary, `setsid`, one end of a socket pair inherited as
//!    `--fd`) with the command: the argv after `--`, `{resource}` replaced by the id (no
//!    shell anywhere), or the `--exec` string for `/bin/sh -c`, `{resource}` replaced by the
//!    shell-quoted id; every value passed as `--opt=VALUE` (an id may begin with `-`);
//! 2. sends it the lease deadline at once and then every [`TICK`] — an absolute CLOCK_BOOTTIME
//!    instant, `now + lease.remaining()` with `now` read first, so never later than the lease
//!    allows; if no later one comes (the member may be SIGSTOPped, starved or dead: the guard
//!    does not depend on it), the guard sends the child's process group SIGTERM one stop
//!    timeout ahead of the deadline and SIGKILL 3/4 of a stop timeout later, or just before
//!    the deadline, whichever is first;
//! 3. on a revoke, sends `S`: the guard sends SIGTERM, then SIGKILL after 3/4 of the stop
//!    timeout or at the deadline, whichever is first;
//! 4. waits for the guard's report that the child is reaped and its process group is empty,
//!    and only then releases the lease, so the resource moves only after the old child is gone;
//! 5. restarts a child that exited by itself while the lease is still valid and not revoked,
//!    with exponential backoff ([`RESTART_MIN`] doubling to [`RESTART_MAX`]), keeping the
//!    lease meanwhile.
//!
//! If the member dies (even by SIGKILL), every guard reads EOF and kills its child at once.
//! SIGINT/SIGTERM = graceful leave (every lease is revoked and handed over, then the member
//! leaves, bounded by the leave timeout); a second signal exits at once (the guards kill).
//!
//! The member runs with [`StopPolicy::Log`]: the library's in-process abort (a lease held past
//! its deadline) would only kill the member, while the guards are what stop the children — and a
//! member paused past its deadline must be able to wake up, find its children stopped, and
//! rejoin.
//!
//! Wire format and clocks: `proto.rs`. The guard: `guard.rs`.

mod guard;
mod proto;

use std::ffi::OsString;
use std::os::fd::AsRawFd as _;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rebalanser::{Error, Lease, Member, StopPolicy};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use guard::{guard, GuardArgs};

use crate::logging::LogFormat;
use proto::{
    boottime_ns, render_argv, render_command, try_boottime_ns, Cause, ChildStatus, FromGuard,
    ToGuard,
};

/// How often the member sends each guard the current lease deadline.
pub const TICK: Duration = Duration::from_millis(50);
/// First delay before restarting a child that exited by itself; doubles per restart.
pub const RESTART_MIN: Duration = Duration::from_millis(250);
/// Longest delay between two restarts.
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A child that ran at least this long restarts after [`RESTART_MIN`] again.
const RESTART_RESET: Duration = Duration::from_secs(30);
/// Longest wait for a process group to empty after the member killed it itself (its guard
/// died) before it says so again in the log.
const ORPHAN_WAIT: Duration = Duration::from_secs(5);

const EXAMPLE: &str = "\
Example:
  rebalanser resource add --store sqlite:///var/lib/rb.db -g jobs q1 q2 q3
  rebalanser member run --store sqlite:///var/lib/rb.db -g jobs -- consume --queue {resource}
  # Shell syntax: a shell script that takes the id as an argument, never inside the script.
  rebalanser member run --store sqlite:///var/lib/rb.db -g jobs -- \\
      sh -c 'exec consume --queue \"$1\" --fence \"$REBALANSER_TOKEN\"' sh {resource}

Each leased resource gets one child: CMD run directly with its ARGs, no shell, every
{resource} in them replaced by the resource id (which stays inside the one argument it was
in, whatever it contains), and the environment REBALANSER_GROUP, REBALANSER_MEMBER,
REBALANSER_RESOURCE, REBALANSER_TOKEN (the fencing token). `--exec 'CMD'` instead runs a shell
string (see --exec for when that is unsafe). Each child runs in its own process
group under a guard process that kills the whole group at the lease deadline, or at once if
the member dies, even if this process is paused or killed; the resource moves on only after
the group is gone. When a lease is revoked the child gets SIGTERM, and SIGKILL 3/4 of the stop
timeout later. A child that exits by itself is restarted (backoff 250ms doubling to 30s); one
that fails --unhealthy-after times within --unhealthy-window gives its resource back, and the
coordinator moves it to another member (`status` lists it under UNHEALTHY).
SIGINT/SIGTERM: leave the group gracefully (a second one exits at once); with --static, stop
for a restart instead: children stopped and claims given up, but the member's resources wait
one TTL for the next process started under the same --name.";

/// `rebalanser member ...`
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLE)]
pub struct MemberArgs {
    #[command(subcommand)]
    cmd: MemberCmd,
}

#[derive(clap::Subcommand, Debug)]
enum MemberCmd {
    /// Join a group and run a command for every resource leased to this member.
    #[command(after_help = EXAMPLE)]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("program").required(true).multiple(false)),
    override_usage = "rebalanser member run [OPTIONS] --store <URL> --group <GROUP> -- <CMD> [ARG]...\n       \
                      rebalanser member run [OPTIONS] --store <URL> --group <GROUP> --exec <CMD>"
)]
struct RunArgs {
    /// Store URL: sqlite:///PATH.db or zk://HOST:PORT[,HOST:PORT...]/CHROOT (a sqlite file
    /// must exist: a member never creates one)
    #[arg(long, value_name = "URL", env = "REBALANSER_STORE")]
    store: String,
    /// The group to join (it must exist).
    #[arg(long, short = 'g', value_name = "GROUP", env = "REBALANSER_GROUP")]
    group: String,
    /// Member name, unique among live members [default: HOSTNAME-PID-RANDOM].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Static membership: --name is this process's stable identity (required). A restart
    /// under the same name within the session TTL takes the previous process's place at once
    /// and gets its resources back, with nothing moved to other members; SIGTERM/SIGINT stop
    /// for such a restart rather than leave (the resources move only if no process comes
    /// back within the TTL). A previous process still running under the name is told to go.
    #[arg(long = "static", requires = "name")]
    static_membership: bool,
    /// The group's rebalancing mode (`group create --mode`); joining a group of the other
    /// mode fails.
    #[arg(long, value_enum, default_value_t = crate::admin_cmds::ModeArg::Resource)]
    mode: crate::admin_cmds::ModeArg,
    /// Relative share of the resources.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    weight: u32,
    /// Session TTL: how long after a crash the resources move (e.g. 10s, 2s, 1500ms). The
    /// keepalive interval (TTL/10), store op timeout (TTL/4) and safety margin (TTL/8) follow.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::util::duration_arg)]
    session_ttl: Duration,
    /// While this member coordinates a group nobody has an assignment in yet (a fleet
    /// starting), how long it waits for members arriving together before the first
    /// assignment: until none joined for this long, at most 4 times it [default: TTL/10].
    /// 0 assigns at once.
    #[arg(long, value_name = "DURATION", value_parser = crate::util::duration_or_zero_arg)]
    initial_rebalance_delay: Option<Duration>,
    /// Give a resource back when its child fails (exits non-zero, is killed by a signal, or
    /// cannot be started) this many times within --unhealthy-window: the coordinator moves it
    /// to another member and avoids this one for it for --unhealthy-backoff; a resource
    /// failing on every member is assigned to nobody, and `status` shows it. 0: never.
    #[arg(long, value_name = "N", default_value_t = 5)]
    unhealthy_after: u32,
    /// See --unhealthy-after.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::util::duration_arg)]
    unhealthy_window: Duration,
    /// How long this member avoids a resource it gave back as unhealthy.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::util::duration_arg)]
    unhealthy_backoff: Duration,
    /// How long a child gets to stop after a revoke [default: TTL/5]. SIGTERM first, SIGKILL
    /// after 3/4 of it.
    #[arg(long, value_name = "DURATION", value_parser = crate::util::duration_arg)]
    stop_timeout: Option<Duration>,
    /// A shell string instead of `-- CMD ARG...`: `/bin/sh -c CMD`, {resource} single-quoted.
    /// Inside double quotes or a second shell, the id is shell code (see --help).
    ///
    /// CMD is not split or parsed by rebalanser: the whole string goes to `/bin/sh -c`, after
    /// every {resource} in it is replaced by the id in single quotes (a `'` in the id becomes
    /// `'\''`).
    ///
    /// Safe: {resource} as a plain word of CMD (`--exec 'worker --queue {resource}'`): the
    /// quotes make it one argument with nothing in it expanded.
    ///
    /// NOT safe: {resource} inside double quotes or any second level of shell
    /// (`"q-{resource}"`, `sh -c "work {resource}"`, `bash -c`, `eval`, `ssh host ...`,
    /// `su -c`, `xargs sh`): there the single quotes are plain characters and the id is shell
    /// code, so a resource named `$(rm -rf ~)` runs it. Anyone who can add a resource can then
    /// run commands as this member. The argv form has no such case.
    #[arg(long, value_name = "CMD", group = "program")]
    exec: Option<String>,
    /// The command to run per resource and its arguments, after `--`: run directly, no shell;
    /// every {resource} in them is replaced by the resource id, inside the same argument.
    #[arg(last = true, value_name = "CMD ARG", value_parser = clap::value_parser!(OsString),
          group = "program")]
    argv: Vec<OsString>,
    #[command(flatten)]
    metrics: crate::metrics_http::MetricsArgs,
}

/// What a child runs.
#[derive(Debug)]
enum Program {
    /// `--exec`: `/bin/sh -c` this, {resource} shell-quoted.
    Shell(String),
    /// After `--`: this argv as is, {resource} substituted.
    Argv(Vec<OsString>),
}

/// `rebalanser member ...`: the entry point.
pub fn member(a: MemberArgs, log_format: LogFormat) -> ExitCode {
    match a.cmd {
        MemberCmd::Run(r) => run(r, log_format),
    }
}

/// Everything a lease task needs.
struct Ctx {
    group: String,
    member: String,
    program: Program,
    /// For the guards.
    log_format: LogFormat,
    stop_timeout: Duration,
    /// A child that fails this many times within `unhealthy_window` makes the member give its
    /// resource back (0: never).
    unhealthy_after: u32,
    unhealthy_window: Duration,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rebalanser member run: {msg}");
    ExitCode::from(2)
}

fn run(a: RunArgs, log_format: LogFormat) -> ExitCode {
    match (&a.exec, a.argv.first()) {
        (Some(e), _) if e.trim().is_empty() => return fail("--exec is empty"),
        (None, Some(cmd)) if cmd.is_empty() => return fail("the command after -- is empty"),
        _ => {}
    }
    if try_boottime_ns().is_none() {
        return fail("CLOCK_BOOTTIME is unavailable; lease deadlines cannot be kept");
    }
    // A child subreaper: the descendants of a guard that is killed (and escaped its child's
    // process group) come to this process instead of init, so `guard_lost` can kill them
    // before the lease is released or the child restarted.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return fail(format_args!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
    let code = rt.block_on(run_member(a, log_format));
    // Dropping a runtime waits for every blocking task (a store call stuck on a lock, say):
    // once the member has left, bound that wait so the process always exits.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

async fn join(a: &RunArgs, stop: Duration) -> Result<Member, Error> {
    let ttl = a.session_ttl;
    let mut b = Member::builder(&a.group)
        .store_url(&a.store)
        .weight(a.weight)
        .session_ttl(ttl)
        .keepalive_interval(ttl / 10)
        .op_timeout(ttl / 4)
        .safety_margin(ttl / 8)
        .stop_timeout(stop)
        .min_rebalance_interval(Duration::from_millis(100).min(ttl / 10))
        .leave_timeout(ttl * 3)
        .on_stop_deadline_missed(StopPolicy::Log);
    if let Some(n) = &a.name {
        b = b.name(n);
    }
    if let Some(d) = a.initial_rebalance_delay {
        b = b.initial_rebalance_delay(d);
    }
    b = b
        .mode(a.mode.into())
        .static_membership(a.static_membership)
        .unhealthy_backoff(a.unhealthy_backoff);
    b.join().await
}

async fn run_member(a: RunArgs, log_format: LogFormat) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return fail(format_args!("cannot handle signals: {e}")),
    };
    // Before the join: the member takes its metric handles when it joins.
    if let Some(addr) = a.metrics.metrics_addr {
        if let Err(e) = crate::metrics_http::serve(addr) {
            return fail(e);
        }
        info!(addr = %addr, "serving metrics at http://{addr}/metrics");
    }
    let stop = a.stop_timeout.unwrap_or(a.session_ttl / 5);
    let mut member = tokio::select! {
        m = join(&a, stop) => match m {
            Ok(m) => m,
            Err(Error::UnknownGroup { group }) => {
                return fail(format_args!(
                    "group {group} does not exist: create it first \
                     (rebalanser resource add --store URL -g {group} IDS...)"
                ))
            }
            Err(Error::NoStoreFile { path, .. }) => {
                return fail(format_args!(
                    "no such store file {path}; nothing was created (a member never creates \
                     one): check the path, or create the group first (rebalanser group create \
                     --store URL -g {})",
                    a.group
                ))
            }
            Err(e) => return fail(e),
        },
        _ = term.recv() => return ExitCode::from(143),
        _ = int.recv() => return ExitCode::from(130),
    };
    let ctx = Arc::new(Ctx {
        group: a.group.clone(),
        member: member.name().to_string(),
        program: match &a.exec {
            Some(e) => Program::Shell(e.clone()),
            None => Program::Argv(a.argv.clone()),
        },
        log_format,
        stop_timeout: stop,
        unhealthy_after: a.unhealthy_after,
        unhealthy_window: a.unhealthy_window,
    });
    info!(
        group = %ctx.group, member = %ctx.member, pid = std::process::id(),
        store = %a.store, "member started"
    );
    let stop_msg = if a.static_membership {
        "stopping for a restart under the same name"
    } else {
        "leaving the group"
    };
    let mut tasks = JoinSet::new();
    let mut failed = false;
    loop {
        tokio::select! {
            lease = member.next_lease() => match lease {
                Some(lease) => {
                    tasks.spawn(serve(lease, ctx.clone()));
                }
                None => {
                    error!(group = %ctx.group, member = %ctx.member,
                           "the member stopped by itself (see the lines above)");
                    failed = true;
                    break;
                }
            },
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = r {
                    error!(group = %ctx.group, member = %ctx.member, error = %e, "lease task failed");
                }
            }
            _ = term.recv() => {
                info!(group = %ctx.group, member = %ctx.member, reason = "SIGTERM", "{stop_msg}");
                break;
            }
            _ = int.recv() => {
                info!(group = %ctx.group, member = %ctx.member, reason = "SIGINT", "{stop_msg}");
                break;
            }
        }
    }
    // Graceful leave: every lease is revoked in turn, its child stopped through its guard,
    // and released once the guard reports the process group empty. Bounded by the leave
    // timeout inside `leave`; a second signal exits at once (the guards see EOF and kill).
    let stopping: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>>>> =
        if a.static_membership {
            Box::pin(member.stop_for_restart())
        } else {
            Box::pin(member.leave())
        };
    let left = tokio::select! {
        r = stopping => r,
        _ = term.recv() => hard_exit(&ctx, "SIGTERM"),
        _ = int.recv() => hard_exit(&ctx, "SIGINT"),
    };
    match left {
        Ok(()) if a.static_membership => info!(group = %ctx.group, member = %ctx.member,
            "stopped; the resources wait one TTL for a restart under this name"),
        Ok(()) => info!(group = %ctx.group, member = %ctx.member, "left the group"),
        Err(e) => {
            error!(group = %ctx.group, member = %ctx.member, error = %e,
                   "graceful leave failed; exiting (the guards kill what still runs)");
            failed = true;
        }
    }
    // Every lease was released before the session closed; the tasks end at once.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(stop + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        warn!(group = %ctx.group, member = %ctx.member,
              "children still stopping at exit; their guards kill them");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn hard_exit(ctx: &Ctx, sig: &str) -> ! {
    warn!(group = %ctx.group, member = %ctx.member, reason = sig,
          "second signal: exiting now; the guards kill the children");
    std::process::exit(if sig == "SIGINT" { 130 } else { 143 })
}

/// Logs one line with the lease's fixed fields.
macro_rules! lease_log {
    ($lvl:ident, $ids:expr, $reason:expr, $($rest:tt)*) => {
        tracing::$lvl!(
            group = %$ids.ctx.group, member = %$ids.ctx.member,
            resource = %$ids.resource, token = %$ids.token, reason = $reason,
            $($rest)*
        )
    };
}

struct Ids {
    ctx: Arc<Ctx>,
    resource: String,
    token: String,
}

/// How one guarded child ended.
enum Outcome {
    /// The guard reported the process group empty.
    Gone { cause: Cause, status: ChildStatus },
    /// The guard could not be started.
    NoGuard(String),
    /// The guard vanished without its report; the member emptied the process group itself.
    GuardLost,
}

/// Serves one lease: a guarded child, restarted while the lease lasts; released after the
/// last child's process group is gone.
async fn serve(lease: Lease, ctx: Arc<Ctx>) {
    let ids = Ids {
        ctx,
        resource: lease.resource().to_string(),
        token: lease.token().to_string(),
    };
    lease_log!(
        info,
        ids,
        "granted",
        remaining_ms = lease.remaining().as_millis() as u64,
        "lease granted"
    );
    let mut backoff = RESTART_MIN;
    let mut failures: std::collections::VecDeque<tokio::time::Instant> = Default::default();
    let why = loop {
        if lease.is_revoked() {
            break "revoked";
        }
        if !lease.is_valid() {
            break "expired";
        }
        let started = tokio::time::Instant::now();
        match run_child(&lease, &ids).await {
            Outcome::Gone { cause, status } => {
                let ran = started.elapsed();
                match cause {
                    Cause::Exit | Cause::SpawnFailed | Cause::Signal | Cause::Deadline => {
                        if lease.is_revoked() || !lease.is_valid() {
                            lease_log!(info, ids, cause.as_str(), %status,
                                       "child stopped; the lease ended meanwhile");
                            break "child stopped";
                        }
                        if ran >= RESTART_RESET {
                            backoff = RESTART_MIN;
                        }
                        if !matches!(status, ChildStatus::Exited(0))
                            && unhealthy(&mut failures, &ids.ctx)
                        {
                            lease_log!(warn, ids, "unhealthy", %status,
                                       failures = failures.len() as u64,
                                       "child keeps failing; giving the resource back");
                            lease.report_unhealthy();
                        }
                        lease_log!(warn, ids, cause.as_str(), %status,
                                   ran_ms = ran.as_millis() as u64,
                                   restart_in_ms = backoff.as_millis() as u64,
                                   "child stopped while the lease is valid; restarting it");
                    }
                    Cause::Stop | Cause::MemberGone => {
                        lease_log!(info, ids, cause.as_str(), %status, "child stopped");
                        break "child stopped";
                    }
                }
            }
            Outcome::NoGuard(e) => {
                lease_log!(error, ids, "spawn-failed", error = %e,
                           restart_in_ms = backoff.as_millis() as u64,
                           "cannot start the guard process; retrying");
            }
            Outcome::GuardLost => {
                if lease.is_revoked() || !lease.is_valid() {
                    break "guard lost";
                }
                lease_log!(
                    warn,
                    ids,
                    "guard-lost",
                    restart_in_ms = backoff.as_millis() as u64,
                    "restarting the child under a new guard"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = lease.revoked() => break "revoked",
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    };
    let reason = lease
        .revoke_reason()
        .map_or(why.to_string(), |r| r.as_str().to_string());
    lease_log!(info, ids, reason, "lease released");
    lease.release();
}

/// Counts one more failure of a child (now) and says whether the failures within the window
/// reached the threshold.
fn unhealthy(failures: &mut std::collections::VecDeque<tokio::time::Instant>, ctx: &Ctx) -> bool {
    let now = tokio::time::Instant::now();
    failures.push_back(now);
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > ctx.unhealthy_window)
    {
        failures.pop_front();
    }
    ctx.unhealthy_after > 0 && failures.len() >= ctx.unhealthy_after as usize
}

/// The outgoing side of a guard's socket: never blocks (a paused guard must not stall the
/// member), so deadlines queue up to a bound and are dropped beyond it — dropping one only
/// leaves the guard with an earlier deadline, which is safe.
struct Outbox {
    w: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Outbox {
    const MAX: usize = 4096;

    fn send(&mut self, m: ToGuard) {
        if matches!(m, ToGuard::Stop) || self.buf.len() < Self::MAX {
            self.buf.extend_from_slice(m.encode().as_bytes());
        }
        self.flush();
    }

    fn flush(&mut self) {
        while !self.buf.is_empty() {
            match self.w.try_write(&self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // WouldBlock: later. Other errors: the guard is gone; its EOF tells.
                Err(_) => return,
            }
        }
    }
}

/// The deadline to hand the guard: read the clock first, so `now + remaining` is never later
/// than the lease's deadline.
fn guard_deadline(lease: &Lease) -> u64 {
    let now = boottime_ns();
    let remaining = u64::try_from(lease.remaining().as_nanos()).unwrap_or(u64::MAX);
    now.saturating_add(remaining)
}

/// Runs one child under a new guard until the guard reports its process group empty.
async fn run_child(lease: &Lease, ids: &Ids) -> Outcome {
    let ctx = &ids.ctx;
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return Outcome::NoGuard(format!("socketpair: {e}")),
    };
    let fd = theirs.as_raw_fd();
    let kill_after = ctx.stop_timeout * 3 / 4;
    // This very binary, even if its file was replaced since; named as usual in `ps`.
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    // Every value as `--opt=VALUE`: a valid id may begin with `-` (`-x`, `--help`), which
    // as a separate argument the guard's parser would take for a flag of its own.
    cmd.arg0("rebalanser")
        .arg(format!("--log-format={}", ctx.log_format.as_arg()))
        .arg("guard")
        .arg(format!("--fd={fd}"))
        .arg(format!("--group={}", ctx.group))
        .arg(format!("--member={}", ctx.member))
        .arg(format!("--resource={}", ids.resource))
        .arg(format!("--token={}", ids.token))
        .arg(format!("--kill-after-ms={}", kill_after.as_millis()))
        .arg(format!("--term-before-ms={}", ctx.stop_timeout.as_millis()));
    match &ctx.program {
        Program::Shell(s) => {
            cmd.arg(format!("--command={}", render_command(s, &ids.resource)));
        }
        // After `--` the guard's parser takes every argument as it is.
        Program::Argv(argv) => {
            cmd.arg("--").args(render_argv(argv, &ids.resource));
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(false);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session and process group: terminal signals for the member miss it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The guard's end of the pair survives exec (it is close-on-exec in the member).
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Registered under the same lock as the spawn, so a concurrent orphan scan never takes
    // a new guard for an orphan.
    let spawned = {
        let mut guards = lock_guards();
        cmd.spawn().map(|c| {
            let pid = c.id().unwrap_or(0);
            guards.insert(pid);
            (c, pid)
        })
    };
    let (mut child, guard_pid) = match spawned {
        Ok(cp) => cp,
        Err(e) => return Outcome::NoGuard(e.to_string()),
    };
    drop(theirs);
    // Reap the guard whenever it exits.
    tokio::spawn(async move {
        let _ = child.wait().await;
        lock_guards().remove(&guard_pid);
    });
    let stream = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(s) => s,
        // Dropping our end is EOF for the guard: it exits without starting anything.
        Err(e) => return Outcome::NoGuard(format!("control socket: {e}")),
    };
    let (r, w) = stream.into_split();
    let mut out = Outbox { w, buf: Vec::new() };
    let mut lines = BufReader::new(r).lines();
    out.send(ToGuard::Deadline(guard_deadline(lease)));
    let mut stop_sent = false;
    if lease.is_revoked() {
        out.send(ToGuard::Stop);
        stop_sent = true;
    }
    let mut pgid: Option<i32> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                out.send(ToGuard::Deadline(guard_deadline(lease)));
            }
            _ = lease.revoked(), if !stop_sent => {
                let reason = lease.revoke_reason().map_or("driver-gone", |r| r.as_str());
                lease_log!(info, ids, reason, pid = pgid.unwrap_or(0),
                           "lease revoked: stopping the child");
                out.send(ToGuard::Stop);
                // A stopped guard cannot stop anything.
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(guard_pid as i32, libc::SIGCONT) };
                stop_sent = true;
            }
            // Backstop: the guard should have reported long before the deadline. If it has
            // not (stopped, starved), this process kills the guard and the group itself.
            _ = tokio::time::sleep(lease.remaining().saturating_sub(BACKSTOP_LEAD)) => {
                if lease.remaining() <= BACKSTOP_LEAD {
                    // A member paused past the deadline wakes to this timer and to the
                    // guard's report at once, and `select!` may pick either (issue 14: a
                    // correctly handled pause logged a dozen false ERRORs blaming the guard).
                    // The kill never waits for a report; a report already waiting, or read
                    // just after the kill (the guard, killed now, wrote it before), means the
                    // guard had stopped the child in time.
                    let mut waiting = report_waiting(&mut lines, Duration::ZERO).await;
                    if waiting.is_none() {
                        // SAFETY: plain kill(2) of our own child and of the child's group.
                        unsafe {
                            libc::kill(guard_pid as i32, libc::SIGKILL);
                            if let Some(p) = pgid {
                                libc::kill(-p, libc::SIGKILL);
                            }
                        }
                        waiting = report_waiting(&mut lines, REPORT_GRACE).await;
                    }
                    if let Some((cause, status)) = waiting {
                        lease_log!(warn, ids, cause.as_str(), pid = pgid.unwrap_or(0), %status,
                                   "this member was paused past the lease deadline; the guard \
                                    had stopped the child in time");
                        return Outcome::Gone { cause, status };
                    }
                    lease_log!(error, ids, "deadline", pid = pgid.unwrap_or(0), guard_pid,
                               "the guard did not stop the child by the lease deadline: \
                                killed it and the child's process group");
                    drop(out);
                    return guard_lost(ids, pgid).await;
                }
            }
            line = lines.next_line() => match line.ok().flatten().as_deref().map(FromGuard::parse) {
                Some(Some(FromGuard::Started { pid })) => {
                    pgid = Some(pid);
                    lease_log!(info, ids, "started", pid, guard_pid, "child started");
                }
                Some(Some(FromGuard::Empty { cause, status })) => {
                    lease_log!(info, ids, cause.as_str(), pid = pgid.unwrap_or(0), %status,
                               "child stopped; its process group is gone");
                    return Outcome::Gone { cause, status };
                }
                Some(None) => {
                    lease_log!(error, ids, "guard-lost", "bad message from the guard");
                    drop(out);
                    return guard_lost(ids, pgid).await;
                }
                None => return guard_lost(ids, pgid).await,
            },
        }
    }
}

/// The guard's "process group empty" report if it arrives within `wait` (zero: only if it is
/// already in the socket); any other line before it is skipped.
async fn report_waiting<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    wait: Duration,
) -> Option<(Cause, ChildStatus)> {
    use futures::FutureExt as _;
    let read = async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    if let Some(FromGuard::Empty { cause, status }) = FromGuard::parse(&l) {
                        return Some((cause, status));
                    }
                }
                _ => return None,
            }
        }
    };
    if wait.is_zero() {
        read.now_or_never().flatten()
    } else {
        tokio::time::timeout(wait, read).await.ok().flatten()
    }
}

/// How long the member reads for a report its guard may have sent before the backstop
/// killed it.
const REPORT_GRACE: Duration = Duration::from_millis(200);

/// The guard vanished without reporting (killed by someone): its direct child died with it
/// (PDEATHSIG), but the rest of the process group may live on. Kill the group and wait until
/// it is empty; the lease is not released before.
async fn guard_lost(ids: &Ids, pgid: Option<i32>) -> Outcome {
    let Some(pgid) = pgid else {
        lease_log!(
            warn,
            ids,
            "guard-lost",
            "the guard exited before starting the child"
        );
        return Outcome::GuardLost;
    };
    lease_log!(
        error,
        ids,
        "guard-lost",
        pid = pgid,
        "the guard vanished: killing the child's process group from the member"
    );
    let mut waited = Duration::ZERO;
    loop {
        // SAFETY: plain kill(2). The group id stays reserved while any member lives.
        let r = unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let group_gone =
            r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        // Descendants that left the group (setsid) were re-parented to this subreaper when
        // the guard died: anything that is our child but not a guard is one of them.
        let orphans = kill_orphans();
        if group_gone && orphans == 0 {
            return Outcome::GuardLost;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
        if waited >= ORPHAN_WAIT {
            lease_log!(
                error,
                ids,
                "guard-lost",
                pid = pgid,
                "the child's process group is still not empty; holding the lease"
            );
            waited = Duration::ZERO;
        }
    }
}

/// How long before the lease deadline the member kills a guard that has not reported.
const BACKSTOP_LEAD: Duration = Duration::from_millis(1);

/// Pids of the live guards this member started.
fn lock_guards() -> std::sync::MutexGuard<'static, std::collections::HashSet<u32>> {
    static GUARDS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> =
        std::sync::OnceLock::new();
    GUARDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs and reaps every child of this process that is not a live guard (orphans adopted
/// from a killed guard's subtree); returns how many it found.
fn kill_orphans() -> usize {
    let me = std::process::id();
    let guards = lock_guards().clone();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut found = 0;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Task threads of this process are not in /proc's top level; children are.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The field after the command (which may hold spaces and parentheses) ends at the
        // last ')': "state ppid ...".
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && !guards.contains(&pid) {
            found += 1;
            // SAFETY: kill(2) and a non-blocking waitpid(2) of our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }
    found
}
