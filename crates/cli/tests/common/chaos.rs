//! The multi-process chaos harness shared by the store chaos tests (`zk_chaos`, `pg_chaos`),
//! and the access-log checker that judges a run.
//!
//! `CHAOS_MEMBERS` `rebalanser chaos-member` processes (the hidden test subcommand) share one
//! group of `CHAOS_RESOURCES` resources and append one line per resource access to one log
//! file: `RESOURCE MEMBER TOKEN BOOTTIME_NS`, written only while the lease is valid. For
//! `CHAOS_SECS` the harness injects, in an order drawn from a seed: SIGKILL of a member
//! (restarted under the same name after a delay shorter or longer than its session TTL),
//! SIGSTOP of a member for 1–3 × TTL, and the faults of the store under test ([`StoreFaults`]:
//! one at a time, never overlapping; a blocking recovery runs on a thread of its own so member
//! faults keep flowing). At most two members are down at once. Then the faults stop, the store
//! must serve again, the group must converge (every resource claimed, balanced ±1) within
//! 4 × TTL + 2 s, stay settled through a final live window of 3 s, and the members leave on
//! SIGTERM.
//!
//! The log alone is then checked ([`check`]): per resource, the ticks of each (member, token)
//! form an interval [first, last]; two intervals of different (member, token) must not overlap
//! (that is a double access), tokens must grow in time order, and in the final window every
//! resource must have been accessed. The report gives ticks, handovers, the longest gap per
//! resource, and every overlap with both intervals named.
//!
//! Environment ([`ChaosConfig::from_env`]): `CHAOS_SECS` (fault phase, default 30),
//! `CHAOS_SEED` (fault order, default random and printed), `CHAOS_DIR` (keep the log, member
//! output, server logs and timeline there), `CHAOS_MEMBERS` (4), `CHAOS_RESOURCES` (30),
//! `CHAOS_TTL_MS` (2000), `CHAOS_RUST_LOG` (the members' `RUST_LOG`, default info).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rebalanser::Admin;

use super::{boottime_ns, env_or, tie_to_test, Rng, BIN};

// ---------------------------------------------------------------------------------------------
// The checker.
// ---------------------------------------------------------------------------------------------

/// A fencing token as the member passes it to its child: one decimal integer.
type Tok = u128;

fn parse_token(s: &str) -> Option<Tok> {
    s.parse().ok()
}

/// The ticks of one (member, token) on one resource.
#[derive(Debug, Clone)]
struct Interval {
    member: String,
    token: Tok,
    first: u64,
    last: u64,
    ticks: u64,
}

/// What the checker needs besides the log.
#[derive(Debug, Clone, Default)]
pub struct CheckOpts {
    /// Times are printed relative to this (boot-time ns), e.g. the start of the run.
    pub origin_ns: u64,
    /// Every resource must be accessed in this window (boot-time ns), if given.
    pub live_window: Option<(u64, u64)>,
    /// The resources the group had: liveness is required of each.
    pub resources: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: usize,
    pub bad_lines: Vec<String>,
    pub ticks_per_member: BTreeMap<String, u64>,
    pub intervals: usize,
    pub handovers: usize,
    /// Per resource: ticks, intervals, longest gap between two consecutive ticks (ns) and
    /// where it started (ns).
    pub per_resource: BTreeMap<String, ResourceStats>,
    pub overlaps: Vec<String>,
    pub token_errors: Vec<String>,
    pub liveness_errors: Vec<String>,
    /// Longest gap inside the liveness window, over all resources (ns).
    pub window_max_gap: u64,
    /// The longest handovers (gap ns, description), longest first.
    pub longest_handovers: Vec<(u64, String)>,
    origin: u64,
}

#[derive(Debug, Default, Clone)]
pub struct ResourceStats {
    pub ticks: u64,
    pub intervals: usize,
    pub max_gap: u64,
    pub max_gap_at: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.bad_lines.is_empty()
            && self.overlaps.is_empty()
            && self.token_errors.is_empty()
            && self.liveness_errors.is_empty()
    }

    pub fn ticks(&self) -> u64 {
        self.ticks_per_member.values().sum()
    }

    fn secs(&self, t: u64) -> String {
        format!("{:.3}s", (t as f64 - self.origin as f64) / 1e9)
    }
}

fn ms(ns: u64) -> String {
    format!("{:.0}ms", ns as f64 / 1e6)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== access log check")?;
        writeln!(
            f,
            "lines {}  ticks {}  intervals (member, token) {}  handovers {}",
            self.lines,
            self.ticks(),
            self.intervals,
            self.handovers
        )?;
        let per: Vec<String> = self
            .ticks_per_member
            .iter()
            .map(|(m, n)| format!("{m}={n}"))
            .collect();
        writeln!(f, "ticks per member: {}", per.join(" "))?;
        writeln!(
            f,
            "per resource: ticks / intervals / longest gap between ticks (at)"
        )?;
        for (r, s) in &self.per_resource {
            writeln!(
                f,
                "  {r:<8} {:>7} / {:>3} / {:>7} (at {})",
                s.ticks,
                s.intervals,
                ms(s.max_gap),
                self.secs(s.max_gap_at)
            )?;
        }
        if let Some((r, s)) = self.per_resource.iter().max_by_key(|(_, s)| s.max_gap) {
            writeln!(
                f,
                "longest unavailability: {} on {r} at {}",
                ms(s.max_gap),
                self.secs(s.max_gap_at)
            )?;
        }
        if !self.longest_handovers.is_empty() {
            writeln!(
                f,
                "longest handovers (last tick of one owner to first of the next):"
            )?;
            for (gap, what) in &self.longest_handovers {
                writeln!(f, "  {:>7}  {what}", ms(*gap))?;
            }
        }
        writeln!(
            f,
            "liveness window: longest gap {}; {} problem(s)",
            ms(self.window_max_gap),
            self.liveness_errors.len()
        )?;
        for (title, list) in [
            ("MALFORMED LINES", &self.bad_lines),
            ("OVERLAPS (double access)", &self.overlaps),
            ("TOKEN ORDER", &self.token_errors),
            ("LIVENESS", &self.liveness_errors),
        ] {
            if !list.is_empty() {
                writeln!(f, "{title}: {}", list.len())?;
                for e in list.iter().take(50) {
                    writeln!(f, "  {e}")?;
                }
            }
        }
        write!(
            f,
            "result: overlaps={} token_errors={} bad_lines={} liveness_errors={} => {}",
            self.overlaps.len(),
            self.token_errors.len(),
            self.bad_lines.len(),
            self.liveness_errors.len(),
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}

/// Checks an access log (see the module doc) for double access, token order and liveness.
pub fn check(log: &str, opts: &CheckOpts) -> Report {
    let mut rep = Report {
        origin: opts.origin_ns,
        ..Report::default()
    };
    // resource -> (member, token) -> interval; resource -> all tick times.
    let mut by_res: BTreeMap<String, BTreeMap<(String, Tok), Interval>> = BTreeMap::new();
    let mut times: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (n, line) in log.lines().enumerate() {
        rep.lines += 1;
        let f: Vec<&str> = line.split(' ').collect();
        let parsed = match f[..] {
            [r, m, tok, t] if !r.is_empty() && !m.is_empty() => parse_token(tok)
                .zip(t.parse::<u64>().ok())
                .map(|(tok, t)| (r, m, tok, t)),
            _ => None,
        };
        let Some((r, m, tok, t)) = parsed else {
            rep.bad_lines.push(format!("line {}: {line:?}", n + 1));
            continue;
        };
        *rep.ticks_per_member.entry(m.to_string()).or_default() += 1;
        times.entry(r.to_string()).or_default().push(t);
        let iv = by_res
            .entry(r.to_string())
            .or_default()
            .entry((m.to_string(), tok))
            .or_insert(Interval {
                member: m.to_string(),
                token: tok,
                first: t,
                last: t,
                ticks: 0,
            });
        iv.first = iv.first.min(t);
        iv.last = iv.last.max(t);
        iv.ticks += 1;
    }
    let name = |rep: &Report, iv: &Interval| {
        format!(
            "{} token {} [{} .. {}] ({} ticks)",
            iv.member,
            iv.token,
            rep.secs(iv.first),
            rep.secs(iv.last),
            iv.ticks
        )
    };
    for (r, ivs) in &by_res {
        let mut ivs: Vec<&Interval> = ivs.values().collect();
        ivs.sort_by_key(|iv| (iv.first, iv.last));
        rep.intervals += ivs.len();
        rep.handovers += ivs.len().saturating_sub(1);
        // Overlaps: every pair, so each is named (a resource has at most a few hundred).
        for (j, b) in ivs.iter().enumerate() {
            for a in &ivs[..j] {
                if b.first <= a.last {
                    rep.overlaps.push(format!(
                        "{r}: {} overlaps {} by {}",
                        name(&rep, a),
                        name(&rep, b),
                        ms(a.last.min(b.last) - b.first)
                    ));
                }
            }
        }
        for w in ivs.windows(2) {
            if w[1].first > w[0].last {
                rep.longest_handovers.push((
                    w[1].first - w[0].last,
                    format!("{r}: {} -> {}", name(&rep, w[0]), name(&rep, w[1])),
                ));
            }
            if w[1].token <= w[0].token {
                rep.token_errors.push(format!(
                    "{r}: {} follows {} without a greater token",
                    name(&rep, w[1]),
                    name(&rep, w[0])
                ));
            }
        }
        let ts = times.get_mut(r).expect("times of every resource");
        ts.sort_unstable();
        let mut st = ResourceStats {
            ticks: ts.len() as u64,
            intervals: ivs.len(),
            ..ResourceStats::default()
        };
        for w in ts.windows(2) {
            if w[1] - w[0] > st.max_gap {
                st.max_gap = w[1] - w[0];
                st.max_gap_at = w[0];
            }
        }
        rep.per_resource.insert(r.clone(), st);
    }
    rep.longest_handovers
        .sort_by_key(|h| std::cmp::Reverse(h.0));
    rep.longest_handovers.truncate(10);
    if let Some((a, b)) = opts.live_window {
        let mut all: BTreeSet<&String> = opts.resources.iter().collect();
        all.extend(times.keys());
        for r in all {
            let inside: Vec<u64> = times
                .get(r)
                .map(|ts| ts.iter().copied().filter(|t| (a..=b).contains(t)).collect())
                .unwrap_or_default();
            if inside.is_empty() {
                rep.liveness_errors.push(format!(
                    "{r}: no access in the final window [{} .. {}]",
                    rep.secs(a),
                    rep.secs(b)
                ));
                rep.window_max_gap = rep.window_max_gap.max(b - a);
                continue;
            }
            let mut gap = inside[0] - a;
            gap = gap.max(b - inside[inside.len() - 1]);
            for w in inside.windows(2) {
                gap = gap.max(w[1] - w[0]);
            }
            rep.window_max_gap = rep.window_max_gap.max(gap);
        }
    }
    rep
}

/// A synthetic log with times in milliseconds, as the members write it (nanoseconds).
fn ms_log(text: &str) -> String {
    text.lines()
        .map(|l| match l.rsplit_once(' ') {
            Some((head, t)) => match t.parse::<u64>() {
                Ok(t) => format!("{head} {}\n", t * 1_000_000),
                Err(_) => format!("{l}\n"),
            },
            None => format!("{l}\n"),
        })
        .collect()
}

const MS: u64 = 1_000_000;

#[test]
fn checker_passes_a_clean_log_with_handovers() {
    // r1: a (token 5) then b (9) then a again (12); r2: b only. Gaps between owners.
    let log = "\
r1 a 5 1000
r2 b 7 1005
r1 a 5 1010
r1 a 5 1020
r2 b 7 1015
r1 b 9 1100
r1 b 9 1110
r2 b 7 1200
r1 a 12 1300
r1 a 12 1310
";
    let rep = check(
        &ms_log(log),
        &CheckOpts {
            origin_ns: 1000 * MS,
            live_window: Some((1150 * MS, 1320 * MS)),
            resources: vec!["r1".into(), "r2".into()],
        },
    );
    println!("{rep}");
    assert!(rep.ok(), "{rep}");
    assert_eq!(rep.ticks(), 10);
    assert_eq!(rep.handovers, 2);
    assert_eq!(rep.intervals, 4);
    assert_eq!(rep.per_resource["r1"].max_gap, 190 * MS);
    assert!(rep.to_string().contains("overlaps=0"));
}

#[test]
fn checker_reports_an_overlap_naming_both_intervals() {
    // b's first tick (1015) falls inside a's interval [1000, 1020]; lines out of time order,
    // as a paused process writes them, must not matter.
    let log = "\
r1 a 5 1000
r1 b 9 1015
r1 a 5 1020
r1 b 9 1030
r2 a 6 1000
";
    let rep = check(&ms_log(log), &CheckOpts::default());
    println!("{rep}");
    assert!(!rep.ok());
    assert_eq!(rep.overlaps.len(), 1, "{rep}");
    let o = &rep.overlaps[0];
    assert!(o.contains("a token 5") && o.contains("b token 9"), "{o}");
    assert!(rep.to_string().contains("FAILED"));
}

#[test]
fn checker_reports_tokens_going_back_torn_lines_and_silent_resources() {
    // b holds r1 after a, without overlap, but with an older token; a line is torn; r3 is
    // never accessed in the window and r2 not after 1010.
    let log = "\
r1 a 9 1000
r1 a 9 1010
r1 b 5 1100
r2 a 6 1010
r2 a 1.6r1 b 5 1110
";
    let rep = check(
        &ms_log(log),
        &CheckOpts {
            origin_ns: 0,
            live_window: Some((1050 * MS, 1200 * MS)),
            resources: vec!["r1".into(), "r2".into(), "r3".into()],
        },
    );
    println!("{rep}");
    assert!(rep.overlaps.is_empty(), "{rep}");
    assert_eq!(rep.token_errors.len(), 1, "{rep}");
    assert_eq!(rep.bad_lines.len(), 1, "{rep}");
    assert_eq!(rep.liveness_errors.len(), 2, "{rep}");
    assert!(!rep.ok());
}

// ---------------------------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub secs: u64,
    pub seed: u64,
    pub members: usize,
    pub resources: usize,
    pub ttl: Duration,
    /// Passed to every member as `--unsafe-linger-ms` (0: a correct member).
    pub linger_ms: u64,
    /// Start the members one after another, `stagger` apart, instead of all at once: every
    /// later join then moves resources away from members already holding them.
    pub stagger: Duration,
    pub dir: Option<PathBuf>,
}

impl ChaosConfig {
    /// The configuration the environment gives (see the module doc).
    pub fn from_env() -> ChaosConfig {
        let random_seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(boottime_ns());
            h.finish() % 1_000_000
        };
        ChaosConfig {
            secs: env_or("CHAOS_SECS", 30),
            seed: env_or("CHAOS_SEED", random_seed),
            members: env_or("CHAOS_MEMBERS", 4),
            resources: env_or("CHAOS_RESOURCES", 30),
            ttl: Duration::from_millis(env_or("CHAOS_TTL_MS", 2000)),
            linger_ms: 0,
            stagger: Duration::ZERO,
            dir: std::env::var_os("CHAOS_DIR").map(PathBuf::from),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Running,
    /// SIGSTOPped until the instant.
    Paused(Instant),
    /// Killed (by the test) or exited; restarted at the instant.
    Down(Instant),
}

struct Slot {
    name: String,
    abort_policy: bool,
    child: Option<Child>,
    state: MState,
    /// When it was last SIGCONTed: an abort-policy member that aborts right after a pause
    /// longer than its lease did what `StopPolicy::Abort` promises.
    resumed_at: Option<Instant>,
    starts: u32,
}

/// The member processes; kills every one of them on drop, even when the test panics.
struct Members {
    bin: PathBuf,
    url: String,
    group: String,
    log: PathBuf,
    dir: PathBuf,
    ttl: Duration,
    linger_ms: u64,
    slots: Vec<Slot>,
}

impl Members {
    fn spawn(&mut self, i: usize) -> Result<()> {
        let slot = &self.slots[i];
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.stderr", slot.name)))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["chaos-member", "--store", &self.url, "--group", &self.group])
            .args(["--name", &slot.name])
            .arg("--log")
            .arg(&self.log)
            .args(["--ttl", &format!("{}ms", self.ttl.as_millis())])
            .args([
                "--stop-policy",
                if slot.abort_policy { "abort" } else { "log" },
            ])
            .args(["--unsafe-linger-ms", &self.linger_ms.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        tie_to_test(&mut cmd);
        let child = cmd.spawn().context("spawn chaos-member")?;
        let slot = &mut self.slots[i];
        slot.child = Some(child);
        slot.state = MState::Running;
        slot.resumed_at = None;
        slot.starts += 1;
        Ok(())
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(c) = &self.slots[i].child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        if let Some(mut c) = self.slots[i].child.take() {
            let _ = c.wait();
        }
    }

    /// Members that exited by themselves: (index, status).
    fn reap_exited(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(c) = &mut s.child {
                if let Ok(Some(st)) = c.try_wait() {
                    s.child = None;
                    out.push((i, st));
                }
            }
        }
        out
    }

    fn stderr_tail(&self, i: usize, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{}.stderr", self.slots[i].name)))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.signal(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{st}"),
    }
}

/// What happened, with the time since the start of the run.
pub struct Timeline {
    start: Instant,
    lines: Vec<String>,
    counts: BTreeMap<&'static str, u32>,
}

impl Timeline {
    /// Prints and records one line.
    pub fn note(&mut self, msg: impl fmt::Display) {
        let line = format!("{:8.3}s {msg}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        self.lines.push(line);
    }
    /// Notes a fault and counts it under `kind` (the summary's fault counts).
    pub fn fault(&mut self, kind: &'static str, msg: impl fmt::Display) {
        *self.counts.entry(kind).or_default() += 1;
        self.note(format_args!("FAULT {kind}: {msg}"));
    }
}

/// The outcome of one chaos run.
pub struct Outcome {
    pub report: Report,
    pub problems: Vec<String>,
    pub dir: PathBuf,
    pub summary: String,
}

/// The store under test and its faults, as [`run_chaos`] drives them.
///
/// The harness draws one fault every 0.3–2 s from `5 + weight()` equally likely picks: 0–2 a
/// member SIGKILL, 3–4 a member SIGSTOP, and `5 + i` the store's fault `i` ([`inject`] with
/// `pick = i`), which it asks for only while no store fault is in progress ([`busy`]), so store
/// faults never overlap. Every 20 ms it calls [`step`], which recovers what is due; a recovery
/// that blocks (a server restart waits until the server serves) must run on a thread of its
/// own, so that member faults keep flowing meanwhile.
///
/// [`inject`]: StoreFaults::inject
/// [`busy`]: StoreFaults::busy
/// [`step`]: StoreFaults::step
pub trait StoreFaults {
    /// The store URL the members and the test's admin open.
    fn url(&self) -> String;
    /// How many of the harness's picks are store faults (the members' faults have 5).
    fn weight(&self) -> u64;
    /// Whether a store fault is in progress (injected and not yet recovered).
    fn busy(&self) -> bool;
    /// Injects the store's fault number `pick` (in `0..weight()`); called only when not
    /// [`busy`](StoreFaults::busy). A fault whose precondition does not hold is skipped with a
    /// note.
    fn inject(&mut self, pick: u64, rng: &mut Rng, tl: &mut Timeline) -> Result<()>;
    /// Recovers what is due at `now`. `ending`: the fault phase is over, so recover everything
    /// at once and return only when the recovery is done.
    fn step(&mut self, now: Instant, ending: bool, tl: &mut Timeline) -> Result<()>;
    /// Returns once the store serves normally after the faults (an error after a minute).
    fn wait_healthy(&mut self) -> Result<()>;
    /// Copies the servers' logs into the run's output directory `dir`.
    fn save_logs(&self, dir: &Path);
}

/// One chaos run (see the module doc) on the store `start` starts; the store is stopped (its
/// logs saved) before the access log is checked.
pub fn run_chaos<S: StoreFaults>(
    cfg: &ChaosConfig,
    start: impl FnOnce() -> Result<S>,
) -> Result<Outcome> {
    let run_start = Instant::now();
    let bin = PathBuf::from(BIN);
    let dir = match &cfg.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "rebalanser-chaos-{}-{}",
            std::process::id(),
            cfg.seed
        )),
    };
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let log = dir.join("access.log");
    File::create(&log)?;
    println!(
        "chaos: seed {} for {} s, {} members, {} resources, ttl {:?}, linger {} ms; output in {}",
        cfg.seed,
        cfg.secs,
        cfg.members,
        cfg.resources,
        cfg.ttl,
        cfg.linger_ms,
        dir.display()
    );

    let mut store = start()?;
    let url = store.url();
    let group = "chaos";
    // A worker thread of its own: the admin's store connection must be driven (pings,
    // reconnects) between the calls too, not only inside `block_on`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let admin = Admin::connect(&url, group)?.with_op_timeout(Duration::from_secs(3));
    let resources: Vec<String> = (0..cfg.resources).map(|i| format!("r{i:02}")).collect();
    rt.block_on(async {
        admin.create_group().await?;
        admin.add_resources(&resources).await
    })?;

    let mut members = Members {
        bin,
        url: url.clone(),
        group: group.into(),
        log: log.clone(),
        dir: dir.clone(),
        ttl: cfg.ttl,
        linger_ms: cfg.linger_ms,
        slots: (0..cfg.members)
            .map(|i| Slot {
                name: format!("m{i}"),
                // Half the members abort when a lease outlives a pause (the default policy),
                // half only log it, so both paths run.
                abort_policy: i % 2 == 0,
                child: None,
                state: MState::Down(Instant::now()),
                resumed_at: None,
                starts: 0,
            })
            .collect(),
    };
    for i in 0..cfg.members {
        if i > 0 {
            std::thread::sleep(cfg.stagger);
        }
        members.spawn(i)?;
    }
    let mut tl = Timeline {
        start: Instant::now(),
        lines: Vec::new(),
        counts: BTreeMap::new(),
    };
    let origin = boottime_ns();
    tl.note(format_args!(
        "origin: CLOCK_BOOTTIME {origin} ns (member stderr lines start with boot-time ns)"
    ));
    let mut problems: Vec<String> = Vec::new();

    // Settle first, so the faults hit a working group.
    let t = Instant::now();
    let settled = wait_converged(&rt, &admin, cfg, &mut members, &mut tl, &mut problems, 60)?;
    tl.note(format_args!(
        "initial convergence: {} after {:.1}s",
        if settled { "ok" } else { "NOT REACHED" },
        t.elapsed().as_secs_f64()
    ));
    if !settled {
        problems.push("the group did not converge at start-up".into());
    }

    let mut rng = Rng(cfg.seed);
    let ttl = cfg.ttl;
    let fault_end = Instant::now() + Duration::from_secs(cfg.secs);
    let mut next_fault = Instant::now() + rng.between(ms_(300), ms_(1000));
    loop {
        let now = Instant::now();
        let faulting = now < fault_end;
        // Members that exited by themselves.
        for (i, st) in members.reap_exited() {
            let s = &members.slots[i];
            let after_pause = s.abort_policy
                && st.signal() == Some(libc::SIGABRT)
                && s.resumed_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(3));
            let msg = format!("{} exited by itself: {}", s.name, describe(st));
            if after_pause {
                tl.note(format_args!(
                    "{msg} (expected: StopPolicy::Abort after a pause past the lease deadline)"
                ));
                *tl.counts.entry("watchdog abort after pause").or_default() += 1;
            } else {
                tl.note(format_args!("UNEXPECTED {msg}"));
                problems.push(format!(
                    "{msg} at {:.1}s; stderr tail:\n{}",
                    tl.start.elapsed().as_secs_f64(),
                    members.stderr_tail(i, 30)
                ));
            }
            members.slots[i].state = MState::Down(now + ms_(500));
        }
        // Due recoveries (all at once when the fault phase is over).
        for i in 0..members.slots.len() {
            match members.slots[i].state {
                MState::Paused(until) if !faulting || now >= until => {
                    members.signal(i, libc::SIGCONT);
                    members.slots[i].state = MState::Running;
                    members.slots[i].resumed_at = Some(Instant::now());
                    tl.note(format_args!("SIGCONT {}", members.slots[i].name));
                }
                MState::Down(at) if !faulting || now >= at => {
                    members.spawn(i)?;
                    tl.note(format_args!(
                        "started {} again (start #{})",
                        members.slots[i].name, members.slots[i].starts
                    ));
                }
                _ => {}
            }
        }
        store.step(now, !faulting, &mut tl)?;
        if !faulting {
            break;
        }
        if now >= next_fault {
            next_fault = now + rng.between(ms_(300), ms_(2000));
            let running: Vec<usize> = (0..members.slots.len())
                .filter(|&i| members.slots[i].state == MState::Running)
                .collect();
            let members_down = members.slots.len() - running.len();
            // Weights: member kill 3, member pause 2, the store's faults `weight()`.
            let roll = rng.below(5 + store.weight());
            match roll {
                0..=4 if members_down < 2 && !running.is_empty() => {
                    let i = running[rng.below(running.len() as u64) as usize];
                    let name = members.slots[i].name.clone();
                    if roll <= 2 {
                        members.kill(i);
                        // Shorter than the TTL half the time: the new process then finds its
                        // predecessor's session still alive.
                        let delay = rng.between(ms_(100), ttl * 2);
                        members.slots[i].state = MState::Down(Instant::now() + delay);
                        tl.fault(
                            "member SIGKILL",
                            format_args!("{name}, restart in {:.1}s", delay.as_secs_f64()),
                        );
                    } else {
                        let d = rng.between(ttl, ttl * 3);
                        members.signal(i, libc::SIGSTOP);
                        members.slots[i].state = MState::Paused(Instant::now() + d);
                        tl.fault(
                            "member SIGSTOP",
                            format_args!("{name} for {:.1}s", d.as_secs_f64()),
                        );
                    }
                }
                5.. if !store.busy() => store.inject(roll - 5, &mut rng, &mut tl)?,
                _ => {} // its precondition does not hold: skip this turn
            }
        }
        std::thread::sleep(ms_(20));
    }
    tl.note("faults stopped");

    // The store back, then the group must converge and stay live.
    store.wait_healthy()?;
    let t = Instant::now();
    let converged = wait_converged(&rt, &admin, cfg, &mut members, &mut tl, &mut problems, 60)?;
    let convergence = t.elapsed();
    tl.note(format_args!(
        "convergence after faults: {} after {:.1}s",
        if converged { "ok" } else { "NOT REACHED" },
        convergence.as_secs_f64()
    ));
    // The contract's bound (README, and the simulator's check): after faults stop, every
    // resource is leased, balanced, within 4 × TTL + 2 s.
    let bound = cfg.ttl * 4 + Duration::from_secs(2);
    if converged && convergence > bound {
        problems.push(format!(
            "convergence after the faults took {:.1}s, more than 4 x TTL + 2 s = {:.1}s",
            convergence.as_secs_f64(),
            bound.as_secs_f64()
        ));
    }
    if !converged {
        let status = rt.block_on(admin.status());
        problems.push(format!(
            "STUCK: the group did not converge within 60 s after the faults stopped; status: \
             {status:#?}\nmember stderr tails:\n{}",
            (0..members.slots.len())
                .map(|i| format!(
                    "--- {}\n{}",
                    members.slots[i].name,
                    members.stderr_tail(i, 15)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    let window = Duration::from_secs(3);
    let w_start = boottime_ns();
    std::thread::sleep(window);
    let w_end = boottime_ns();
    if converged {
        match rt.block_on(admin.status()) {
            Ok(status) if balanced(&status, cfg) => {}
            Ok(status) => problems.push(format!(
                "the group did not stay settled through the final window: {:?}",
                status.claims_per_member()
            )),
            Err(e) => problems.push(format!("status after the final window failed: {e}")),
        }
    }

    // Graceful shutdown.
    tl.note("SIGTERM to every member");
    for i in 0..members.slots.len() {
        members.signal(i, libc::SIGTERM);
    }
    let t = Instant::now();
    for i in 0..members.slots.len() {
        let name = members.slots[i].name.clone();
        let Some(child) = members.slots[i].child.as_mut() else {
            continue;
        };
        let st = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(30) {
                break None;
            }
            std::thread::sleep(ms_(20));
        };
        members.slots[i].child = None;
        match st {
            Some(st) if st.success() => {}
            Some(st) => problems.push(format!(
                "{name} did not leave cleanly on SIGTERM: {}; stderr tail:\n{}",
                describe(st),
                members.stderr_tail(i, 20)
            )),
            None => problems.push(format!("{name} did not exit within 30 s of SIGTERM")),
        }
    }
    tl.note(format_args!(
        "members gone after {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    drop(members);
    store.save_logs(&dir);
    drop(store);

    let text = fs::read_to_string(&log)?;
    let report = check(
        &text,
        &CheckOpts {
            origin_ns: origin,
            live_window: Some((w_start, w_end)),
            resources: resources.clone(),
        },
    );
    let mut summary = String::new();
    let _ = writeln!(summary, "== chaos summary (seed {})", cfg.seed);
    let _ = writeln!(
        summary,
        "faults: {}",
        tl.counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        summary,
        "convergence after faults stopped: {:.1}s; total run {:.1}s",
        convergence.as_secs_f64(),
        run_start.elapsed().as_secs_f64()
    );
    let _ = write!(
        summary,
        "problems besides the log check: {}",
        problems.len()
    );
    let _ = fs::write(dir.join("timeline.txt"), tl.lines.join("\n") + "\n");
    Ok(Outcome {
        report,
        problems,
        dir,
        summary,
    })
}

/// `n` milliseconds.
pub fn ms_(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn balanced(status: &rebalanser::GroupStatus, cfg: &ChaosConfig) -> bool {
    let per = status.claims_per_member();
    let lo = cfg.resources / cfg.members;
    let hi = cfg.resources.div_ceil(cfg.members);
    status.is_settled()
        && status.coordinator.is_some()
        && per.len() == cfg.members
        && per.values().all(|&n| (lo..=hi).contains(&n))
        && status.members.iter().all(|m| !m.draining)
}

/// Waits until every resource is claimed and balanced over all members, restarting members
/// that exit meanwhile (an abort-policy member aborts on SIGCONT after a long pause).
#[allow(clippy::too_many_arguments)]
fn wait_converged(
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    cfg: &ChaosConfig,
    members: &mut Members,
    tl: &mut Timeline,
    problems: &mut Vec<String>,
    secs: u64,
) -> Result<bool> {
    let t = Instant::now();
    let mut stable_since: Option<Instant> = None;
    while t.elapsed() < Duration::from_secs(secs) {
        for (i, st) in members.reap_exited() {
            let s = &members.slots[i];
            let after_pause = s.abort_policy
                && st.signal() == Some(libc::SIGABRT)
                && s.resumed_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(3));
            let msg = format!("{} exited by itself: {}", s.name, describe(st));
            if after_pause {
                tl.note(format_args!("{msg} (expected after a pause; restarting)"));
                *tl.counts.entry("watchdog abort after pause").or_default() += 1;
            } else {
                tl.note(format_args!("UNEXPECTED {msg}"));
                problems.push(format!(
                    "{msg}; stderr tail:\n{}",
                    members.stderr_tail(i, 30)
                ));
            }
            members.spawn(i)?;
        }
        let ok = match rt.block_on(admin.status()) {
            Ok(s) => balanced(&s, cfg),
            Err(_) => false,
        };
        // Settled twice, 300 ms apart: not a snapshot between two moves.
        if ok {
            match stable_since {
                Some(s) if s.elapsed() >= ms_(300) => return Ok(true),
                Some(_) => {}
                None => stable_since = Some(Instant::now()),
            }
        } else {
            stable_since = None;
        }
        std::thread::sleep(ms_(100));
    }
    Ok(false)
}

/// Prints the report, the summary and the problems; removes the output directory of a run
/// that passed unless `keep_anyway`. Whether the run passed.
pub fn finish(out: &Outcome, keep_anyway: bool) -> bool {
    println!("{}", out.report);
    println!("{}", out.summary);
    for p in &out.problems {
        println!("PROBLEM: {p}");
    }
    let ok = out.report.ok() && out.problems.is_empty();
    if ok && !keep_anyway {
        let _ = fs::remove_dir_all(&out.dir);
    } else {
        println!("log and member output kept in {}", out.dir.display());
    }
    ok
}

/// The chaos runs of one test binary each start servers and several members: one at a time
/// on 2 cores.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A chaos test: one run of `start`'s store with the settings of the environment (one run at a
/// time in the process), failing the test on any finding, naming the seed to replay it.
pub fn chaos_test<S: StoreFaults>(start: impl FnOnce() -> Result<S>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = ChaosConfig::from_env();
    let out = run_chaos(&cfg, start).expect("the chaos harness itself failed");
    let keep = cfg.dir.is_some();
    let ok = finish(&out, keep);
    assert!(
        ok,
        "chaos run failed (seed {}; replay the fault order with CHAOS_SEED={} CHAOS_SECS={})",
        cfg.seed, cfg.seed, cfg.secs
    );
}

/// The checker must catch a real double access in the real harness: members that keep
/// accessing a resource for a second after giving its lease up (the core's broken variants
/// cannot be selected through the public API the members use; this breaks the application
/// side instead, which the checker cannot tell apart). A short run: overlaps come with the
/// first handovers between members, which the staggered start guarantees (random faults alone
/// may move nothing in 8 s: a killed member restarted under its name takes its resources back).
pub fn chaos_catches_lingering_members<S: StoreFaults>(start: impl FnOnce() -> Result<S>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut cfg = ChaosConfig::from_env();
    cfg.secs = 8;
    cfg.linger_ms = 1000;
    cfg.stagger = Duration::from_millis(1500);
    let out = run_chaos(&cfg, start).expect("the chaos harness itself failed");
    let _ = finish(&out, true);
    assert!(
        !out.report.overlaps.is_empty(),
        "the checker missed the double access of lingering members"
    );
}
