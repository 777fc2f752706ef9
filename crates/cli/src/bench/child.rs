//! `rebalanser bench-member`: **bench tooling**, hidden from `--help`. One member of a bench
//! group in its own process, started by `rebalanser bench` on a store other than
//! `memory://`. It holds every lease until it is revoked and tells the bench on stdout, one
//! line per event:
//!
//! ```text
//! joined                 the member has joined
//! + RESOURCE BOOTTIME_NS granted (the application starts accessing)
//! - RESOURCE BOOTTIME_NS revoked (the application stopped accessing; the lease drops next)
//! c N N N N N N N N      its store counts so far (see counting.rs), when they change
//! ```
//!
//! SIGTERM makes it leave gracefully; the bench's `kill -9` is its crash. It dies with the
//! bench (PR_SET_PDEATHSIG), so an interrupted bench leaves no members behind.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use super::counting::CountingStore;
use super::fleet::{builder, serve, Exit, Sink};
use crate::admin_cmds::ModeArg;

/// How often the store counts are reported (when they changed).
const COUNTS_EVERY: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct BenchMemberArgs {
    /// Store URL (not memory://: that store lives in one process).
    #[arg(long)]
    store: String,
    /// Group to join (the bench creates it).
    #[arg(long)]
    group: String,
    /// Member name.
    #[arg(long)]
    name: String,
    /// Session TTL; the other timings are scaled to it as the bench's own members do.
    #[arg(long, value_parser = crate::util::duration_arg)]
    ttl: Duration,
    /// The members' initial settle delay (default: the library's).
    #[arg(long, value_parser = crate::util::duration_or_zero_arg)]
    initial_rebalance_delay: Option<Duration>,
    /// The group's mode (the bench created the group with it).
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
}

pub fn run(a: BenchMemberArgs) -> ExitCode {
    // SAFETY: prctl with these arguments has no memory-safety preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebalanser bench-member {}: no runtime: {e}", a.name);
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(member(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rebalanser bench-member {}: {e:#}", a.name);
            ExitCode::FAILURE
        }
    }
}

async fn member(a: &BenchMemberArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let store = rebalanser::open_store(&a.store)?;
    let (store, counters) = CountingStore::new(store);
    let handle = builder(&a.group, &a.name, a.ttl, a.initial_rebalance_delay, a.mode)
        .store(store)
        .join()
        .await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // One writer, many lines per write: a member granted 10,000 leases at once must not
    // make 10,000 system calls to say so.
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(first) = rx.recv().await {
            let mut buf = first;
            buf.push('\n');
            while let Ok(more) = rx.try_recv() {
                buf.push_str(&more);
                buf.push('\n');
            }
            if out.write_all(buf.as_bytes()).await.is_err() || out.flush().await.is_err() {
                return; // The bench is gone; PDEATHSIG follows.
            }
        }
    });
    let _ = tx.send("joined".into());
    let reporter = {
        let tx = tx.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(COUNTS_EVERY).await;
                let now = counters.snapshot();
                if last != Some(now) && tx.send(now.to_line()).is_err() {
                    return;
                }
                last = Some(now);
            }
        })
    };
    let (exit_tx, exit_rx) = oneshot::channel();
    tokio::spawn(async move {
        term.recv().await;
        let _ = exit_tx.send(Exit::Leave);
    });
    serve(handle, exit_rx, Sink::Lines(tx.clone())).await;
    reporter.abort();
    let _ = tx.send(counters.snapshot().to_line());
    drop(tx);
    // Every lease is released after a leave, so their tasks (holding the other senders)
    // are done; the bound is for a bug, not for waiting.
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    Ok(())
}
