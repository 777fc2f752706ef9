//! `rebalanser rabbitmq-consumer`: **test tooling**, hidden from `--help`.
//!
//! One RabbitMQ consumer process of a queue group ([`rebalanser_rabbitmq::QueueGroup`]), joined
//! through the public API only, that appends one JSON line per processed message
//! ([`rebalanser_rabbitmq::verify::Processed`]) to a shared file. The multi-process chaos test
//! (`crates/cli/tests/rabbitmq_chaos.rs`, `scripts/chaos-rabbitmq`) runs several of these,
//! kills, pauses and restarts them and the broker, and checks the file with the ordering
//! verifier. A line is written only while the lease is valid *after* the handler's work (the
//! side effect a real application would fence), with one `write(2)` on an `O_APPEND` file.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rebalanser::{Member, StopPolicy};
use rebalanser_rabbitmq::verify::{Body, Processed};
use rebalanser_rabbitmq::{HandlerError, Message, QueueGroup};
use tokio::signal::unix::{signal, SignalKind};

use crate::admin_cmds::ModeArg;
use crate::chaos::{append, join_retrying, run_tool, say};
use crate::util::boottime_ns;

#[derive(clap::Args, Debug)]
pub struct RabbitConsumerArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    name: String,
    /// The broker (through the test's fault proxy, usually).
    #[arg(long)]
    amqp: String,
    #[arg(long, value_parser = crate::util::duration_arg)]
    ttl: Duration,
    /// The shared file of processed messages (JSON lines).
    #[arg(long)]
    record: PathBuf,
    /// Time the handler spends on each message.
    #[arg(long, default_value_t = 2)]
    work_ms: u64,
    #[arg(long, default_value_t = 20)]
    prefetch: u16,
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
}

pub fn run(a: RabbitConsumerArgs) -> ExitCode {
    run_tool("rabbitmq-consumer", consume(a))
}

async fn consume(a: RabbitConsumerArgs) -> ExitCode {
    let name = a.name.clone();
    let record = match OpenOptions::new().append(true).create(true).open(&a.record) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            say(
                &name,
                format_args!("cannot open {}: {e}", a.record.display()),
            );
            return ExitCode::FAILURE;
        }
    };
    let group = match QueueGroup::new(&a.amqp) {
        Ok(g) => g.prefetch(a.prefetch),
        Err(e) => {
            say(&name, e);
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            say(&name, format_args!("cannot handle signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let builder = || {
        Member::builder(&a.group)
            .name(&a.name)
            .store_url(&a.store)
            .mode(a.mode.into())
            .on_stop_deadline_missed(StopPolicy::Abort)
    };
    let member = tokio::select! {
        m = join_retrying(builder, &name, a.ttl) => match m {
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
    let work = Duration::from_millis(a.work_ms);
    let who = name.clone();
    let handler = move |m: Message| {
        let (record, who) = (record.clone(), who.clone());
        async move { handle(m, &record, &who, work).await }
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    match group.run(member, handler, shutdown).await {
        Ok(()) => {
            say(&name, "left");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&name, format_args!("stopped: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn handle(m: Message, record: &File, who: &str, work: Duration) -> Result<(), HandlerError> {
    let start_ns = boottime_ns();
    let body: Body = serde_json::from_slice(&m.payload)?;
    tokio::time::sleep(work).await;
    let end_ns = boottime_ns();
    // The side effect happens only under a lease valid after the work: a paused process that
    // resumes past its deadline records nothing, and the broker redelivers the message.
    if !m.lease.is_valid() {
        return Err("the lease ended during the work".into());
    }
    let p = Processed {
        key: body.key,
        seq: body.seq,
        queue: m.queue,
        member: who.to_string(),
        token: m.token.to_string(),
        redelivered: m.redelivered,
        sent_ns: body.sent_ns,
        start_ns,
        end_ns,
    };
    let mut line = serde_json::to_string(&p)?;
    line.push('\n');
    append(record, &line)?;
    Ok(())
}
