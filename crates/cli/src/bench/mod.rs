//! `rebalanser bench`: how long a group takes to become stable after a change, what moved,
//! and what it cost the store. On `memory://` the members run in this process; on any other
//! store (`sqlite://`, `zk://`, `postgres://`, `etcd://`, or a ZooKeeper the bench starts itself
//! with `--zk-start`) each member is a process of its own (`rebalanser bench-member`,
//! child.rs), so a crash is a real `kill -9`. Every number is a measurement of this run on this machine; BENCHMARKS.md records
//! them with the machine and the command.
//!
//! "Stable" is judged from what the application holds, not from the members' own state:
//! every resource leased by exactly one member, the members balanced within one, and no
//! grant or revoke for a quiet window. A resource granted before another member's release of
//! it (by the times both stamped) is counted as a violation and fails the run.

mod child;
mod counting;
mod fleet;
mod seen;

pub use child::{run as member, BenchMemberArgs};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rebalanser::{Admin, MemoryStore, Store};

use crate::admin_cmds::ModeArg;
use serde_json::json;

use counting::{CountingStore, Counts};
use fleet::{Fleet, Launch};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The store: memory:// (members in this process), or sqlite:///PATH.db,
    /// zk://HOST:PORT[/chroot], postgres://USER@HOST:PORT/DB[?schema=NAME] or
    /// etcd://HOST:PORT[/prefix] (each member a process of its own).
    #[arg(long, default_value = "memory://", conflicts_with = "zk_start")]
    store: String,
    /// Start a ZooKeeper server for the bench (tickTime 200 ms, on a free loopback port, its
    /// data in a temporary directory) and run the members as processes on it; it is stopped
    /// at the end. Needs the Debian `zookeeper` package.
    #[arg(long)]
    zk_start: bool,
    /// Members at the start.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Resources in the group.
    #[arg(long, default_value_t = 1000)]
    resources: usize,
    /// Session TTL of every member; the other timings are scaled to it.
    #[arg(long, default_value = "10s", value_parser = crate::util::duration_arg)]
    ttl: Duration,
    /// The members' initial settle delay: how long a coordinator of a group without
    /// assignments waits for members starting together (0: none) [default: the library's,
    /// TTL/10]. Shows in the start scenario's time and its revokes.
    #[arg(long, value_name = "DURATION", value_parser = crate::util::duration_or_zero_arg)]
    initial_rebalance_delay: Option<Duration>,
    /// The group's rebalancing mode: `barrier` stops every member on every change before
    /// anyone starts the new assignment (shows in every scenario's time and revokes).
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
    /// Runs of every scenario (each on a fresh group); the report gives median and range.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Scenarios, in order, on one group per run: start (0 → N at once), steady (store
    /// traffic at rest), join (N → N+1), leave (the newest member leaves gracefully), crash
    /// (a member dies; its resources move after its session expires), handover (repeated
    /// graceful leaves that each move exactly one resource; needs --resources ≤ --members).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "start,steady,join,leave,crash"
    )]
    scenarios: Vec<Scenario>,
    /// Handovers per run of the handover scenario.
    #[arg(long, default_value_t = 200)]
    handovers: usize,
    /// How long the steady scenario watches the group at rest (longer than the members'
    /// resync interval, 10 s, to count its reads too).
    #[arg(long, default_value = "2s", value_parser = crate::util::duration_arg)]
    steady_for: Duration,
    /// How long "nothing moving" must last to count as stable.
    #[arg(long, default_value = "200ms", value_parser = crate::util::duration_arg)]
    quiet: Duration,
    /// Give up on a scenario after this long.
    #[arg(long, default_value = "120s", value_parser = crate::util::duration_arg)]
    limit: Duration,
    /// Print the results as JSON (one object per run and scenario) instead of a table.
    #[arg(long)]
    json: bool,
    // `--metrics-addr`, memory:// only: the metrics of every member this process runs, for
    // the whole bench. Refused on the other stores, whose members are processes of their own.
    #[command(flatten)]
    metrics: crate::metrics_http::MetricsArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Start,
    Steady,
    Join,
    Leave,
    Crash,
    Handover,
}

/// One scenario of one run.
#[derive(Debug, Clone)]
struct Outcome {
    scenario: Scenario,
    run: usize,
    /// From the change to stable; for `steady`, the length of the window.
    stable: Option<Duration>,
    /// Resources whose holder changed.
    moved: usize,
    /// The fewest that had to move.
    minimum: usize,
    grants: u64,
    revokes: u64,
    doubles: u64,
    store: Counts,
    /// Entries read by each member during the scenario, most first: the coordinator lists
    /// the group, every other member should read only its share (issue 10).
    member_reads: Vec<u64>,
    /// Release → next grant of each resource that changed hands, in ms.
    gaps: Vec<f64>,
    /// Handover scenario: for each handover, leave → the new holder's grant, in ms.
    handovers: Vec<f64>,
}

impl Outcome {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "scenario": format!("{:?}", self.scenario).to_lowercase(),
            "run": self.run,
            "stable_ms": self.stable.map(|d| d.as_secs_f64() * 1000.0),
            "moved": self.moved,
            "minimum": self.minimum,
            "grants": self.grants,
            "revokes": self.revokes,
            "double_holds": self.doubles,
            "store": self.store.to_json(),
            "entries_read_per_member": self.member_reads,
            "unheld_ms": percentiles_json(&self.gaps),
            "handover_ms": percentiles_json(&self.handovers),
        })
    }
}

pub fn run(a: BenchArgs) -> ExitCode {
    if a.members == 0 || a.resources == 0 || a.reps == 0 {
        eprintln!("rebalanser bench: --members, --resources and --reps must be at least 1");
        return ExitCode::from(2);
    }
    if a.scenarios.contains(&Scenario::Handover) && (a.resources > a.members || a.handovers == 0) {
        eprintln!(
            "rebalanser bench: --scenarios handover needs --resources ≤ --members (each member \
             then holds at most one resource, so one leave moves exactly one) and --handovers ≥ 1"
        );
        return ExitCode::from(2);
    }
    if a.metrics.metrics_addr.is_some() && (a.zk_start || !a.store.starts_with("memory://")) {
        eprintln!(
            "rebalanser bench: --metrics-addr serves the members this process runs, which it \
             does on memory:// only; on {} each member is a process of its own (measure members \
             there with `rebalanser member run --metrics-addr`)",
            if a.zk_start {
                "zk"
            } else {
                store_kind(&a.store)
            }
        );
        return ExitCode::from(2);
    }
    let zk = if a.zk_start {
        let ticks = (a.ttl.as_millis() / 200) as u32 + 1;
        let opts = rebalanser_testkit::ZkOptions {
            max_session_ticks: Some(ticks.max(20)),
            ..Default::default()
        };
        match rebalanser_testkit::ZkEnsemble::start(opts) {
            Ok(zk) => Some(zk),
            Err(e) => {
                eprintln!("rebalanser bench: --zk-start: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let url = match &zk {
        Some(zk) => format!("zk://{}/rebalanser-bench", zk.connect_string()),
        None => a.store.clone(),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("rebalanser bench: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebalanser bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = a.metrics.metrics_addr {
        // Installed before any member joins (they take their handles when they join), on the
        // runtime the members run on; served until the bench ends.
        let _rt = rt.enter();
        if let Err(e) = crate::metrics_http::serve(addr) {
            eprintln!("rebalanser bench: {e}");
            return ExitCode::from(2);
        }
    }
    let mut outcomes = Vec::new();
    for run in 0..a.reps {
        match rt.block_on(one_run(&a, &url, &exe, run)) {
            Ok(mut o) => outcomes.append(&mut o),
            Err(e) => {
                eprintln!("rebalanser bench: run {run}: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let peak_rss_kib = peak_rss_kib();
    if a.json {
        let out = json!({
            "store": store_kind(&url),
            "members": a.members,
            "resources": a.resources,
            "ttl_ms": a.ttl.as_millis() as u64,
            "initial_rebalance_delay_ms": a.initial_rebalance_delay.unwrap_or(a.ttl / 10).as_millis() as u64,
            "reps": a.reps,
            "peak_rss_kib": peak_rss_kib,
            "results": outcomes.iter().map(Outcome::to_json).collect::<Vec<_>>(),
        });
        println!("{out:#}");
    } else {
        print!("{}", table(&a, &url, &outcomes, peak_rss_kib));
    }
    let failed = outcomes
        .iter()
        .any(|o| o.doubles > 0 || (o.scenario != Scenario::Steady && o.stable.is_none()));
    if failed {
        eprintln!(
            "rebalanser bench: a scenario did not become stable, or a resource was held twice"
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `memory`, `sqlite` or `zk`: the scheme of `url`.
fn store_kind(url: &str) -> &str {
    url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

/// One group through the scenarios, in order.
async fn one_run(
    a: &BenchArgs,
    url: &str,
    exe: &std::path::Path,
    run: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let group = format!("bench-{}-{run}", std::process::id());
    let in_process = store_kind(url) == "memory";
    let shared: Arc<dyn Store> = if in_process {
        Arc::new(MemoryStore::named(&format!("memory://{group}")))
    } else {
        rebalanser::open_store(url)?
    };
    // In this process the wrapper sees every member's operations; member processes count
    // their own and report them.
    let (store, counters) = CountingStore::new(shared.clone());
    let store: Arc<dyn Store> = store;
    let admin = Admin::new(shared, &group)?;
    admin.create_group_with(a.mode.into()).await?;
    let ids: Vec<String> = (0..a.resources).map(|i| format!("r{i}")).collect();
    for chunk in ids.chunks(5000) {
        admin.add_resources(chunk).await?;
    }
    let launch = if in_process {
        Launch::InProcess(store)
    } else {
        Launch::Processes {
            exe: exe.to_path_buf(),
            url: url.to_string(),
        }
    };
    let mut fleet = Fleet::new(launch, &group, a.ttl);
    fleet.initial_delay = a.initial_rebalance_delay;
    fleet.mode = a.mode;
    let counts = |fleet: &Fleet| counters.snapshot().plus(&fleet.child_counts());
    let mut out = Vec::new();
    for &scenario in &a.scenarios {
        let before_owners = fleet.seen().owners();
        let (g0, r0, d0, gaps0) = {
            let s = fleet.seen();
            (s.grants, s.revokes, s.doubles, s.gaps.len())
        };
        let c0 = counts(&fleet);
        let m0 = fleet.member_counts();
        let start = Instant::now();
        let mut minimum = 0;
        let mut handovers = Vec::new();
        let stable = match scenario {
            Scenario::Start => {
                fleet.join_many(a.members).await?;
                minimum = a.resources;
                fleet
                    .wait_stable(a.resources, start, a.quiet, a.limit)
                    .await
            }
            Scenario::Steady => {
                // At rest: only keepalives (and a periodic resync) should reach the store.
                tokio::time::sleep(a.steady_for).await;
                Some(start.elapsed())
            }
            Scenario::Join => {
                let i = fleet.join().await?;
                let r = fleet
                    .wait_stable(a.resources, start, a.quiet, a.limit)
                    .await;
                minimum = fleet.seen().per_member.get(&i).copied().unwrap_or(0);
                r
            }
            Scenario::Leave | Scenario::Crash => {
                let Some(&i) = fleet.live().last() else {
                    anyhow::bail!("no member left to stop");
                };
                minimum = fleet.seen().per_member.get(&i).copied().unwrap_or(0);
                if scenario == Scenario::Leave {
                    fleet.leave(i).await;
                } else {
                    fleet.crash(i).await;
                }
                fleet
                    .wait_stable(a.resources, start, a.quiet, a.limit)
                    .await
            }
            Scenario::Handover => {
                minimum = a.handovers;
                handover(a, &mut fleet, &mut handovers).await?
            }
        };
        if !in_process {
            // Member processes report their counts every 100 ms.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let c1 = counts(&fleet);
        let mut member_reads: Vec<u64> = fleet
            .member_counts()
            .iter()
            .map(|(i, c)| c.read_entries - m0.get(i).map_or(0, |c| c.read_entries))
            .collect();
        member_reads.sort_unstable_by(|a, b| b.cmp(a));
        let failed = {
            let s = fleet.seen();
            let after = s.owners();
            let moved = if scenario == Scenario::Handover {
                // Each one checked to move exactly its one resource.
                handovers.len()
            } else {
                after
                    .iter()
                    .filter(|(r, m)| before_owners.get(*r) != Some(*m))
                    .count()
            };
            out.push(Outcome {
                scenario,
                run,
                stable,
                moved,
                minimum,
                grants: s.grants - g0,
                revokes: s.revokes - r0,
                doubles: s.doubles - d0,
                store: c1.since(&c0),
                member_reads,
                gaps: s.gaps[gaps0..].iter().map(|&ns| ns as f64 / 1e6).collect(),
                handovers,
            });
            s.unexpected_exits.join("; ")
        };
        if !failed.is_empty() {
            fleet.shutdown().await;
            anyhow::bail!("{failed}");
        }
        if stable.is_none() && scenario != Scenario::Steady {
            break;
        }
    }
    fleet.shutdown().await;
    Ok(out)
}

/// Graceful single-resource handovers, `a.handovers` of them: with more members than
/// resources each member holds at most one, so the leave of a holder moves exactly that one
/// resource, to an idle member. Records leave → new holder's grant for each; returns the
/// time the last one took to become stable, or `None` if one did not.
async fn handover(
    a: &BenchArgs,
    fleet: &mut Fleet,
    latencies: &mut Vec<f64>,
) -> anyhow::Result<Option<Duration>> {
    let mut last = None;
    for _ in 0..a.handovers {
        while fleet.live().len() <= a.resources {
            fleet.join().await?;
        }
        let settled = Instant::now();
        if fleet
            .wait_stable(a.resources, settled, a.quiet, a.limit)
            .await
            .is_none()
        {
            return Ok(None);
        }
        // The oldest member that holds something.
        let Some((r, victim)) = fleet.seen().owners().into_iter().min_by_key(|(_, m)| *m) else {
            anyhow::bail!("no member holds a resource");
        };
        let before = fleet.seen().owners();
        let start = Instant::now();
        let t0 = crate::util::boottime_ns();
        fleet.leave(victim).await;
        last = fleet
            .wait_stable(a.resources, start, a.quiet, a.limit)
            .await;
        if last.is_none() {
            return Ok(None);
        }
        let s = fleet.seen();
        let after = s.owners();
        let moved: Vec<&String> = after
            .iter()
            .filter(|(r, m)| before.get(*r) != Some(*m))
            .map(|(r, _)| r)
            .collect();
        if moved != [&r] {
            anyhow::bail!("the leave of m{victim} (holding {r}) moved {moved:?}");
        }
        match s.holders.get(&r).map(|h| h[..].to_vec()).as_deref() {
            Some(&[(m, granted)]) if m != victim => {
                latencies.push(granted.saturating_sub(t0) as f64 / 1e6);
            }
            other => anyhow::bail!("{r} after the leave of m{victim}: held by {other:?}"),
        }
    }
    Ok(last)
}

/// The `i`th of `xs` (0 when there are fewer).
fn nth(xs: &[u64], i: usize) -> f64 {
    xs.get(i).copied().unwrap_or(0) as f64
}

/// The `p`-quantile (0 < p ≤ 1) of `xs` by the nearest-rank method.
fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn percentiles_json(xs: &[f64]) -> serde_json::Value {
    json!({
        "n": xs.len(),
        "p50": percentile(xs, 0.5),
        "p99": percentile(xs, 0.99),
        "max": percentile(xs, 1.0),
    })
}

/// The peak resident set of this process so far (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Median and range of `xs`, formatted.
fn spread(xs: &mut [f64], unit: &str) -> String {
    if xs.is_empty() {
        return "—".into();
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let med = xs[xs.len() / 2];
    if xs[0] == xs[xs.len() - 1] {
        format!("{med:.0}{unit}")
    } else {
        format!("{med:.0}{unit} ({:.0}–{:.0})", xs[0], xs[xs.len() - 1])
    }
}

fn table(a: &BenchArgs, url: &str, outcomes: &[Outcome], rss: Option<u64>) -> String {
    let mut s = format!(
        "{}://, {} members ({}), {} resources, TTL {:?}, {} run(s): median (min–max)\n\n",
        store_kind(url),
        a.members,
        if store_kind(url) == "memory" {
            "in this process"
        } else {
            "a process each"
        },
        a.resources,
        a.ttl,
        a.reps
    );
    s.push_str(concat!(
        "| scenario | time to stable | moved / minimum | revoked | unheld p50 / p99 ",
        "| store reads (entries) | entries read per member: most / next / median ",
        "| store writes | keepalives | bytes read | bytes written |\n"
    ));
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for &sc in &a.scenarios {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == sc).collect();
        if of.is_empty() {
            continue;
        }
        let col = |f: &dyn Fn(&Outcome) -> f64, unit: &str| {
            let mut xs: Vec<f64> = of.iter().map(|o| f(o)).collect();
            spread(&mut xs, unit)
        };
        let time = if of.iter().any(|o| o.stable.is_none()) {
            "not stable".to_string()
        } else {
            col(
                &|o| o.stable.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                " ms",
            )
        };
        let moved = format!(
            "{} / {}",
            col(&|o| o.moved as f64, ""),
            col(&|o| o.minimum as f64, "")
        );
        let gaps: Vec<f64> = of.iter().flat_map(|o| o.gaps.iter().copied()).collect();
        let unheld = match (percentile(&gaps, 0.5), percentile(&gaps, 0.99)) {
            (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1} ms"),
            _ => "—".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ({}) | {} / {} / {} | {} | {} | {} | {} |\n",
            format!("{sc:?}").to_lowercase(),
            time,
            moved,
            col(&|o| o.revokes as f64, ""),
            unheld,
            col(&|o| o.store.reads as f64, ""),
            col(&|o| o.store.read_entries as f64, ""),
            col(&|o| nth(&o.member_reads, 0), ""),
            col(&|o| nth(&o.member_reads, 1), ""),
            col(&|o| nth(&o.member_reads, o.member_reads.len() / 2), ""),
            col(&|o| o.store.writes as f64, ""),
            col(&|o| o.store.keepalives as f64, ""),
            col(&|o| o.store.bytes_read as f64, ""),
            col(&|o| o.store.bytes_written as f64, ""),
        ));
    }
    let handovers: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.handovers.iter().copied())
        .collect();
    if let (Some(p50), Some(p99), Some(max)) = (
        percentile(&handovers, 0.5),
        percentile(&handovers, 0.99),
        percentile(&handovers, 1.0),
    ) {
        s.push_str(&format!(
            "\nhandover (graceful leave → the new holder's grant), {} handovers: \
             p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms\n",
            handovers.len()
        ));
    }
    if let Some(kib) = rss {
        s.push_str(&format!(
            "\npeak RSS of the bench process: {} MiB\n",
            kib / 1024
        ));
    }
    if outcomes.iter().any(|o| o.doubles > 0) {
        s.push_str("\nVIOLATION: a resource was granted while another member held it\n");
    }
    s
}
