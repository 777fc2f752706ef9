//! `rebalanser bench`: how long a group takes to become stable after a change, what moved,
//! and what it cost the store. Members run in this process on `memory://` (the multi-process
//! `sqlite://` and `zk://` runs are not built yet). Every number is a measurement of this run
//! on this machine; BENCHMARKS.md records them with the machine and the command.
//!
//! "Stable" is judged from what the application holds, not from the members' own state:
//! every resource leased by exactly one member, the members balanced within one, and no
//! grant or revoke for a quiet window. A resource granted while another member still held it
//! is counted as a violation and fails the run.

mod counting;
mod fleet;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rebalanser::{Admin, MemoryStore, Store};
use serde_json::json;

use counting::{CountingStore, Counts};
use fleet::Fleet;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Members at the start.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Resources in the group.
    #[arg(long, default_value_t = 1000)]
    resources: usize,
    /// Session TTL of every member; the other timings are scaled to it.
    #[arg(long, default_value = "10s", value_parser = crate::util::duration_arg)]
    ttl: Duration,
    /// Runs of every scenario (each on a fresh group); the report gives median and range.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Scenarios, in order, on one group per run: start (0 → N at once), steady (store
    /// traffic at rest), join (N → N+1), leave (the newest member leaves gracefully), crash
    /// (a member dies; its resources move after its session expires).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "start,steady,join,leave,crash"
    )]
    scenarios: Vec<Scenario>,
    /// How long "nothing moving" must last to count as stable.
    #[arg(long, default_value = "200ms", value_parser = crate::util::duration_arg)]
    quiet: Duration,
    /// Give up on a scenario after this long.
    #[arg(long, default_value = "120s", value_parser = crate::util::duration_arg)]
    limit: Duration,
    /// Print the results as JSON (one object per run and scenario) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Start,
    Steady,
    Join,
    Leave,
    Crash,
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
        })
    }
}

pub fn run(a: BenchArgs) -> ExitCode {
    if a.members == 0 || a.resources == 0 || a.reps == 0 {
        eprintln!("rebalanser bench: --members, --resources and --reps must be at least 1");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebalanser bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut outcomes = Vec::new();
    for run in 0..a.reps {
        match rt.block_on(one_run(&a, run)) {
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
            "store": "memory",
            "members": a.members,
            "resources": a.resources,
            "ttl_ms": a.ttl.as_millis() as u64,
            "reps": a.reps,
            "peak_rss_kib": peak_rss_kib,
            "results": outcomes.iter().map(Outcome::to_json).collect::<Vec<_>>(),
        });
        println!("{out:#}");
    } else {
        print!("{}", table(&a, &outcomes, peak_rss_kib));
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

/// One group through the scenarios, in order.
async fn one_run(a: &BenchArgs, run: usize) -> anyhow::Result<Vec<Outcome>> {
    let name = format!("memory://bench-{}-{run}", std::process::id());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::named(&name));
    let (store, counters) = CountingStore::new(memory);
    let store: Arc<dyn Store> = store;
    let admin = Admin::new(store.clone(), "bench")?;
    admin.create_group().await?;
    let ids: Vec<String> = (0..a.resources).map(|i| format!("r{i}")).collect();
    for chunk in ids.chunks(5000) {
        admin.add_resources(chunk).await?;
    }
    let mut fleet = Fleet::new(store, "bench", a.ttl);
    let mut out = Vec::new();
    for &scenario in &a.scenarios {
        let before_owners = fleet.seen().owners();
        let (g0, r0, d0) = {
            let s = fleet.seen();
            (s.grants, s.revokes, s.doubles)
        };
        let c0 = counters.snapshot();
        let start = Instant::now();
        let mut minimum = 0;
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
                tokio::time::sleep(Duration::from_secs(2)).await;
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
        };
        let c1 = counters.snapshot();
        let s = fleet.seen();
        let after = s.owners();
        let moved = after
            .iter()
            .filter(|(r, m)| before_owners.get(*r) != Some(*m))
            .count();
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
        });
        drop(s);
        if stable.is_none() && scenario != Scenario::Steady {
            break;
        }
    }
    fleet.shutdown().await;
    Ok(out)
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

fn table(a: &BenchArgs, outcomes: &[Outcome], rss: Option<u64>) -> String {
    let mut s = format!(
        "memory://, {} members, {} resources, TTL {:?}, {} run(s): median (min–max)\n\n",
        a.members, a.resources, a.ttl, a.reps
    );
    s.push_str(
        "| scenario | time to stable | moved / minimum | revoked | store reads (entries) | store writes | keepalives | bytes read | bytes written |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
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
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |\n",
            format!("{sc:?}").to_lowercase(),
            time,
            moved,
            col(&|o| o.revokes as f64, ""),
            col(&|o| o.store.reads as f64, ""),
            col(&|o| o.store.read_entries as f64, ""),
            col(&|o| o.store.writes as f64, ""),
            col(&|o| o.store.keepalives as f64, ""),
            col(&|o| o.store.bytes_read as f64, ""),
            col(&|o| o.store.bytes_written as f64, ""),
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
