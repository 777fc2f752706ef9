//! `rebalanser chaos-member`: **test tooling**, hidden from `--help`.
//!
//! One group member in its own process, joined through the public API only, that records every
//! access it makes to a resource as one line in a shared log file. The multi-process chaos tests
//! (`crates/cli/tests/zk_chaos.rs` and `pg_chaos.rs` on `tests/common/chaos.rs`;
//! `scripts/chaos-zk`, `scripts/chaos-pg`) run several of these against a real ZooKeeper
//! ensemble or PostgreSQL server, kill, pause and restart them and the servers, and then check
//! from the log alone that no resource was ever accessed by two members at once.
//!
//! Log format, one line per access ("tick"), about every 10 ms per lease:
//!
//! ```text
//! RESOURCE MEMBER TOKEN BOOTTIME_NS
//! ```
//!
//! `BOOTTIME_NS` is CLOCK_BOOTTIME read just before the write (one clock for every process on
//! the host), and the line is written only if the lease is still valid *after* that reading, so
//! every line is an access the lease allowed at that instant. The file is opened with
//! `O_APPEND` and each line is one `write(2)`, so lines of concurrent processes never interleave.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::util::boottime_ns;

use rebalanser::{Error, Lease, Member, StopPolicy};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

/// Time between two accesses of one lease.
const TICK: Duration = Duration::from_millis(10);
/// How long a member keeps retrying `join` while the store is unreachable at start-up (a
/// restarted member may come up while a ZooKeeper node is down or an election runs).
const JOIN_RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Store URL, e.g. zk://127.0.0.1:2181,127.0.0.1:2182/chaos.
    #[arg(long)]
    store: String,
    /// Group to join (it must exist).
    #[arg(long)]
    group: String,
    /// Member name (a restarted process reuses it).
    #[arg(long)]
    name: String,
    /// The shared access log to append to.
    #[arg(long)]
    log: PathBuf,
    /// Session TTL; the other timings are derived from it. `2s`, `1500ms` or seconds.
    #[arg(long, default_value = "2s", value_parser = crate::util::duration_arg)]
    ttl: Duration,
    /// What the library does when a lease is held past its deadline (e.g. after SIGSTOP).
    #[arg(long, value_enum, default_value_t = PolicyArg::Abort)]
    stop_policy: PolicyArg,
    /// DELIBERATELY UNSAFE, to prove the checker catches a double access: after a lease is
    /// revoked or turns invalid, drop it (so the resource moves) but keep accessing the
    /// resource for this many milliseconds.
    #[arg(long, default_value_t = 0)]
    unsafe_linger_ms: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyArg {
    Abort,
    Log,
}

/// One line, one `write(2)` on an `O_APPEND` file: atomic with respect to other appenders.
pub(crate) fn append(log: &File, line: &str) -> std::io::Result<()> {
    let n = (&*log).write(line.as_bytes())?;
    if n != line.len() {
        return Err(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            line.len()
        )));
    }
    Ok(())
}

pub fn run(a: ChaosArgs) -> ExitCode {
    run_tool("chaos-member", main_loop(a))
}

/// A test tool's process: logs on stderr (`RUST_LOG`, default warn), a two-worker runtime.
pub(crate) fn run_tool(tool: &str, main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{tool}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(main);
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

pub(crate) fn say(name: &str, msg: impl std::fmt::Display) {
    eprintln!("{} {name} {msg}", boottime_ns());
}

async fn join(a: &ChaosArgs) -> Result<Member, Error> {
    let policy = match a.stop_policy {
        PolicyArg::Abort => StopPolicy::Abort,
        PolicyArg::Log => StopPolicy::Log,
    };
    let b = || {
        Member::builder(&a.group)
            .name(&a.name)
            .store_url(&a.store)
            .on_stop_deadline_missed(policy)
    };
    join_retrying(b, &a.name, a.ttl).await
}

/// Joins with timings derived from `ttl`, retrying while the store is unreachable (a
/// restarted member may come up while a ZooKeeper node is down or an election runs).
pub(crate) async fn join_retrying(
    b: impl Fn() -> rebalanser::MemberBuilder,
    name: &str,
    ttl: Duration,
) -> Result<Member, Error> {
    let start = tokio::time::Instant::now();
    loop {
        // Timings derived from the TTL; they fit the budget even where a keepalive proves
        // only the previous one (ZooKeeper): 3 × ttl/10 + ttl/4 + ttl/5 + ttl/8 = 0.875 ttl.
        let b = b()
            .session_ttl(ttl)
            .keepalive_interval(ttl / 10)
            .op_timeout(ttl / 4)
            .stop_timeout(ttl / 5)
            .safety_margin(ttl / 8)
            .min_rebalance_interval(Duration::from_millis(50).min(ttl / 10))
            .leave_timeout(ttl * 3);
        match b.join().await {
            Ok(m) => return Ok(m),
            // The store may be down for a moment (election, killed node): retry that only.
            Err(e @ Error::Store { .. }) if start.elapsed() < JOIN_RETRY_FOR => {
                say(name, format_args!("join failed, retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn main_loop(a: ChaosArgs) -> ExitCode {
    let name = a.name.clone();
    let log = match OpenOptions::new().append(true).create(true).open(&a.log) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("chaos-member: cannot open {}: {e}", a.log.display());
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("chaos-member: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut member = tokio::select! {
        m = join(&a) => match m {
            Ok(m) => m,
            Err(e) => {
                say(&name, format_args!("join failed: {e}"));
                return ExitCode::FAILURE;
            }
        },
        _ = term.recv() => return ExitCode::SUCCESS,
        _ = int.recv() => return ExitCode::SUCCESS,
    };
    say(&name, format_args!("started pid {}", std::process::id()));
    let mut events = member.events();
    let ev_name = name.clone();
    let events_task = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            say(&ev_name, format_args!("event: {ev}"));
        }
    });
    let linger = Duration::from_millis(a.unsafe_linger_ms);
    let mut tasks = JoinSet::new();
    let mut failed = false;
    loop {
        tokio::select! {
            lease = member.next_lease() => match lease {
                Some(lease) => {
                    tasks.spawn(serve(lease, name.clone(), log.clone(), linger));
                }
                None => {
                    say(&name, "lease stream ended: the member stopped by itself");
                    failed = true;
                    break;
                }
            },
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
                    say(&name, format_args!("lease task failed: {e}"));
                    failed = true;
                }
            }
            _ = term.recv() => { say(&name, "SIGTERM: leaving"); break; }
            _ = int.recv() => { say(&name, "SIGINT: leaving"); break; }
        }
    }
    // Graceful leave: the coordinator moves our resources; the lease tasks see the revokes and
    // drop their leases, which is what lets the handovers complete.
    match member.leave().await {
        Ok(()) => say(&name, "left"),
        Err(e) => {
            say(&name, format_args!("leave failed: {e}"));
            failed = true;
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
            say(&name, format_args!("lease task failed: {e}"));
            failed = true;
        }
    }
    events_task.abort();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Accesses the lease's resource every [`TICK`] while the lease is valid and not revoked.
async fn serve(lease: Lease, name: String, log: Arc<File>, linger: Duration) -> Result<(), String> {
    let resource = lease.resource().to_string();
    let token = lease.token();
    let mut ticks = 0u64;
    loop {
        if lease.is_revoked() || !lease.is_valid() {
            break;
        }
        let t = boottime_ns();
        // Valid *after* the timestamp: the access at `t` was allowed.
        if !lease.is_valid() {
            break;
        }
        append(&log, &format!("{resource} {name} {token} {t}\n"))
            .map_err(|e| format!("writing the log: {e}"))?;
        ticks += 1;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = lease.revoked() => break,
        }
    }
    let why = match lease.revoke_reason() {
        Some(r) => format!("revoked ({})", r.as_str()),
        None if !lease.is_valid() => "invalid".to_string(),
        None => "driver gone".to_string(),
    };
    drop(lease);
    say(
        &name,
        format_args!("stopped {resource} token {token} after {ticks} ticks: {why}"),
    );
    if !linger.is_zero() {
        // The deliberately broken application: the lease is gone, the access goes on.
        let end = tokio::time::Instant::now() + linger;
        while tokio::time::Instant::now() < end {
            let t = boottime_ns();
            append(&log, &format!("{resource} {name} {token} {t}\n"))
                .map_err(|e| format!("writing the log: {e}"))?;
            tokio::time::sleep(TICK).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(b >= a && a > 0);
    }
}
