//! `rebalanser`: the command-line tool, on the public API only: resources, status, a live
//! view, `member run -- CMD ARG...`, the zero-setup demo, the deterministic simulator (and,
//! hidden, the per-child `guard` of `member run` and `chaos-member`, the test tool of the
//! chaos test).

mod admin_cmds;
mod bench;
mod chaos;
mod demo;
mod logging;
mod member_run;
mod metrics_http;
mod rabbit_consumer;
mod timeline;
mod util;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use admin_cmds::ModeArg;
use clap::{Parser, Subcommand, ValueEnum};
use rebalanser_sim::{run, run_seeds, Scenario, SimConfig, Variant};

#[derive(Parser)]
#[command(
    name = "rebalanser",
    version,
    about = "Kafka-style consumer groups over any resources"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=rebalanser=debug).
    #[arg(long, value_enum, global = true, default_value_t = logging::LogFormat::Human)]
    log_format: logging::LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// List, create, describe or delete groups, or bump a group's token generation after a
    /// restore from backup.
    Group(admin_cmds::GroupArgs),
    /// Add, remove or list the resources of a group.
    Resource(admin_cmds::ResourceArgs),
    /// RabbitMQ consumer groups: declare (or delete) a consistent-hash exchange and its N
    /// queues, and make the queues a group's resources.
    ///
    /// Example: rebalanser rabbitmq setup --amqp amqp://guest:guest@127.0.0.1:5672/%2f
    ///   --exchange orders --queues 16 --store sqlite:///tmp/g.db --group orders
    Rabbitmq(admin_cmds::RabbitArgs),
    /// Show a group: members, coordinator and epoch, each resource's owner and token,
    /// handovers in progress.
    Status(admin_cmds::StatusArgs),
    /// The status, redrawn live, with ownership changes highlighted.
    Watch(admin_cmds::WatchArgs),
    /// Run a group member: one child per leased resource (`member run ... -- CMD {resource}`).
    Member(member_run::MemberArgs),
    /// The zero-setup demo: a group of member processes on the embedded store in a temp dir.
    Demo(demo::DemoArgs),
    /// Measure how fast a group becomes stable after a change (start, join, leave, crash,
    /// single-resource handover), what moved and what it cost the store; members in this
    /// process on memory://, a process each on sqlite://, zk://, postgres:// and etcd://.
    ///
    /// Example: rebalanser bench --members 10 --resources 10000 --reps 3
    ///
    /// On a ZooKeeper it starts itself: rebalanser bench --zk-start --ttl 2s
    Bench(bench::BenchArgs),
    /// Draw members' JSON logs as one HTML page: who held which resource when, handovers,
    /// membership changes, faults, and any overlap (two holders at once) in red.
    ///
    /// Example: rebalanser timeline --from m1.log m2.log -o timeline.html
    Timeline(timeline::TimelineArgs),
    /// Run the deterministic simulator: the real protocol core on the in-memory store model,
    /// with virtual time and seeded faults. Exits non-zero if any invariant was violated.
    ///
    /// Example: rebalanser sim --seeds 2000
    /// Replay one seed with its trace: rebalanser sim --seed 1234 --trace
    Sim(SimArgs),
    /// Test tooling, not for production: one member that logs every resource access to a
    /// shared file, for the multi-process chaos test (crates/cli/tests/zk_chaos.rs,
    /// scripts/chaos-zk). Leaves gracefully on SIGTERM/SIGINT.
    #[command(hide = true)]
    ChaosMember(chaos::ChaosArgs),
    /// Test tooling, not for production: one RabbitMQ queue-group consumer that records every
    /// processed message to a shared file, for the RabbitMQ chaos test
    /// (crates/cli/tests/rabbitmq_chaos.rs, scripts/chaos-rabbitmq). Leaves on SIGTERM.
    #[command(hide = true)]
    RabbitmqConsumer(rabbit_consumer::RabbitConsumerArgs),
    /// Bench tooling: one member of `rebalanser bench` in its own process, reporting what its
    /// application holds on stdout.
    #[command(hide = true)]
    BenchMember(bench::BenchMemberArgs),
    /// Internal: the guard process `member run` puts around each child (it holds the lease
    /// deadline and kills the child's process group at it, or when the member dies).
    #[command(hide = true)]
    Guard(member_run::GuardArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed (alone: run just this seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per seed while faults are injected.
    #[arg(long, default_value_t = 10000)]
    steps: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the one-line-per-event trace of every seed run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Run a deliberately broken protocol variant (to see the checks catch it).
    #[arg(long, value_enum, default_value_t = VariantArg::Correct)]
    variant: VariantArg,
    /// What the world does: random chaos, or a scripted fault that a class of broken builds
    /// cannot survive (trickle: a crash during a steady trickle of changes; cutoff: a link
    /// that degrades then fails under an application that ignores revokes).
    #[arg(long, value_enum, default_value_t = ScenarioArg::Chaos)]
    scenario: ScenarioArg,
    /// How the simulated group rebalances: per resource, or with a global barrier (every
    /// member stops everything on any change; checked: no lease of a new round while one of
    /// an older round is still accessed).
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Chaos,
    Trickle,
    Cutoff,
}

impl From<ScenarioArg> for Scenario {
    fn from(v: ScenarioArg) -> Scenario {
        match v {
            ScenarioArg::Chaos => Scenario::Chaos,
            ScenarioArg::Trickle => Scenario::Trickle,
            ScenarioArg::Cutoff => Scenario::Cutoff,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum VariantArg {
    Correct,
    GrantBeforeClaim,
    IgnoreDeadline,
    RemoveDeletesClaim,
    AcceptOlderViews,
    TrustLastKeepalive,
    DeadlineFromReply,
    NoSafetyMargin,
    LateAbort,
    DebounceRebalance,
    UnguardedRebalance,
    AdoptAnyClaim,
    GrantOnClaimSent,
    BarrierOlderAck,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Variant {
        match v {
            VariantArg::Correct => Variant::Correct,
            VariantArg::GrantBeforeClaim => Variant::GrantBeforeClaim,
            VariantArg::IgnoreDeadline => Variant::IgnoreDeadline,
            VariantArg::RemoveDeletesClaim => Variant::RemoveDeletesClaim,
            VariantArg::AcceptOlderViews => Variant::AcceptOlderViews,
            VariantArg::TrustLastKeepalive => Variant::TrustLastKeepalive,
            VariantArg::DeadlineFromReply => Variant::DeadlineFromReply,
            VariantArg::NoSafetyMargin => Variant::NoSafetyMargin,
            VariantArg::LateAbort => Variant::LateAbort,
            VariantArg::DebounceRebalance => Variant::DebounceRebalance,
            VariantArg::UnguardedRebalance => Variant::UnguardedRebalance,
            VariantArg::AdoptAnyClaim => Variant::AdoptAnyClaim,
            VariantArg::GrantOnClaimSent => Variant::GrantOnClaimSent,
            VariantArg::BarrierOlderAck => Variant::BarrierOlderAck,
        }
    }
}

fn sim(a: SimArgs, seeds_given: bool) -> ExitCode {
    let variant: Variant = a.variant.into();
    let (first, n) = match a.seed {
        Some(s) if !seeds_given => (s, 1),
        Some(s) => (s, a.seeds),
        None => (0, a.seeds),
    };
    if first.checked_add(n).is_none() {
        eprintln!(
            "error: --seed {first} with --seeds {n} runs past the last seed ({})",
            u64::MAX
        );
        return ExitCode::from(2);
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut template = SimConfig::new(first, a.steps);
    template.variant = variant;
    template.scenario = a.scenario.into();
    template.mode = a.mode.into();
    let reports = run_seeds(first, n, &template, threads);
    // A closed pipe (`| head`) ends the output quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    macro_rules! say {
        ($($t:tt)*) => {
            if writeln!(out, $($t)*).is_err() {
                return ExitCode::FAILURE;
            }
        };
    }
    let mut steps = 0;
    let mut violations = 0;
    let mut shown = 0;
    for r in &reports {
        steps += r.steps;
        violations += r.violations.len();
        if a.trace || (!r.violations.is_empty() && shown == 0) {
            // Replay with the trace on: the same seed gives the same run.
            let mut c = SimConfig {
                seed: r.seed,
                ..template.clone()
            };
            c.trace = true;
            let replay = run(&c);
            for line in &replay.trace {
                say!("{line}");
            }
        }
        if !r.violations.is_empty() {
            shown += 1;
            say!(
                "seed {} failed with {} violation(s); first: {}",
                r.seed,
                r.violations.len(),
                r.violations[0]
            );
            let variant = match a.variant {
                VariantArg::Correct => String::new(),
                v => format!(
                    " --variant {}",
                    v.to_possible_value()
                        .map(|p| p.get_name().to_string())
                        .unwrap_or_default()
                ),
            };
            let scenario = match a.scenario {
                ScenarioArg::Chaos => String::new(),
                v => format!(
                    " --scenario {}",
                    v.to_possible_value()
                        .map(|p| p.get_name().to_string())
                        .unwrap_or_default()
                ),
            };
            let mode = if a.mode == ModeArg::Barrier {
                " --mode barrier"
            } else {
                ""
            };
            say!(
                "replay: rebalanser sim --seed {} --steps {}{variant}{scenario}{mode} --trace",
                r.seed,
                a.steps
            );
        }
    }
    say!(
        "sim: seeds={} steps={} violations={}",
        reports.len(),
        steps,
        violations
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The one-line usage error for an argument that is not UTF-8, if there is one to blame: clap's
/// own message names none. Only arguments before the first `--` count unless `anywhere`:
/// after it, `member run` takes a child's argv, which may be any bytes.
fn non_utf8_error(args: &[OsString], anywhere: bool) -> Option<String> {
    let end = args
        .iter()
        .position(|a| a == "--")
        .filter(|_| !anywhere)
        .unwrap_or(args.len());
    let i = (1..end).find(|&i| args[i].to_str().is_none())?;
    let after = match args[i - 1].to_str() {
        Some(prev) if i > 1 && prev.starts_with('-') => format!(" (after {prev})"),
        _ => String::new(),
    };
    Some(format!(
        "error: argument {i} is not valid UTF-8: {:?}{after}",
        args[i]
    ))
}

/// For a missing `--store` or `--group`: a line naming the environment variable that could
/// have given it (clap's own message names only the flag).
fn env_note(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let notes: Vec<String> = [
        ("--store", "REBALANSER_STORE"),
        ("--group", "REBALANSER_GROUP"),
    ]
    .into_iter()
    .filter(|(flag, _)| missing.iter().any(|m| m.starts_with(flag)))
    .map(|(flag, var)| format!("note: give {flag} or set the environment variable {var}"))
    .collect();
    (!notes.is_empty()).then(|| notes.join("\n"))
}

fn main() -> ExitCode {
    // As bytes: `std::env::args()` panics on the first argument that is not UTF-8.
    let args: Vec<OsString> = std::env::args_os().collect();
    let seeds_given = args
        .iter()
        .any(|a| a == "--seeds" || a.to_str().is_some_and(|a| a.starts_with("--seeds=")));
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let utf8 = e.kind() == clap::error::ErrorKind::InvalidUtf8;
            if let Some(msg) = non_utf8_error(&args, utf8) {
                eprintln!("{msg}");
                // clap's exit code for usage errors.
                return ExitCode::from(2);
            }
            if let Some(note) = env_note(&e) {
                // clap's message (coloured as clap decides), then where else the missing
                // value may come from.
                let _ = e.print();
                eprintln!("{note}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    // `sim` prints its own report; `chaos-member` sets up its own logging.
    if !matches!(
        cli.cmd,
        Cmd::Sim(_) | Cmd::ChaosMember(_) | Cmd::RabbitmqConsumer(_)
    ) {
        // The demo and the bench speak for themselves on stdout; their members' log lines
        // would only interleave.
        let default = if matches!(cli.cmd, Cmd::Demo(_) | Cmd::Bench(_) | Cmd::BenchMember(_)) {
            "warn"
        } else {
            "info,zookeeper_client=warn"
        };
        logging::init(cli.log_format, default);
    }
    match cli.cmd {
        Cmd::Sim(a) => sim(a, seeds_given),
        Cmd::ChaosMember(a) => chaos::run(a),
        Cmd::RabbitmqConsumer(a) => rabbit_consumer::run(a),
        Cmd::Group(a) => admin_cmds::group(a),
        Cmd::Resource(a) => admin_cmds::resource(a),
        Cmd::Rabbitmq(a) => admin_cmds::rabbitmq(a),
        Cmd::Status(a) => admin_cmds::status(a),
        Cmd::Watch(a) => admin_cmds::watch(a),
        Cmd::Member(a) => member_run::member(a, cli.log_format),
        Cmd::Guard(a) => member_run::guard(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::BenchMember(a) => bench::member(a),
        Cmd::Timeline(a) => timeline::run(a),
    }
}
