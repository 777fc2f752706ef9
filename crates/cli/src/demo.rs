//! `rebalanser demo`: the zero-setup demo. A group on the embedded store in a fresh temp dir,
//! member processes of this very binary (`member run -- CMD ARG...`), and five changes, each
//! timed from the action until the group is balanced again:
//!
//! 1. N members start;  2. one is SIGKILLed (its claims wait for the session TTL);
//! 3. a new member joins;  4. 2 resources are removed and 3 added;  5. one leaves gracefully.
//!
//! Everything it shows and checks comes from `Admin::status` snapshots, polled every 20 ms while
//! a step settles and every 50 ms between steps: the
//! ownership table, the handover times, the moves, and that no resource was ever claimed by two
//! members (`check::Safety`). Members die with the demo however it ends (a drop guard, and
//! PR_SET_PDEATHSIG), and so does anything they start (the demo is their subreaper).

mod check;
mod procs;
mod timeline;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use rebalanser::{Admin, GroupStatus};
use tokio::signal::unix::{signal, SignalKind};

use check::{claims_by_name, moves, owners, progress, unsettled, Moves, Safety, Target};
use procs::{Members, TempDir};
use view::{Screen, Style};

/// How often the group's status is read between steps.
const POLL: Duration = Duration::from_millis(50);
/// ... and while a step is settling (this bounds the precision of the handover times).
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Steps must settle within this (or 4 × TTL + 10 s, if longer).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// What each member runs for every resource it holds, as `sh -c WORK sh RESOURCE LOG`: a
/// harmless loop that appends a line a second to the demo's work log: time, resource, member
/// and fencing token (from the environment `member run` sets). The id and the path come in as
/// arguments, never spliced into the script, so neither is ever shell code.
const WORK: &str = "while sleep 1; do echo \"$(date +%T)\" \"$1\" \"$REBALANSER_MEMBER\" \
                    \"$REBALANSER_TOKEN\" >> \"$2\"; done";

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  rebalanser demo                                # 3 members, 12 resources, about 30 s
  rebalanser demo --members 4 --resources 20 --duration 2s --keep

Each member is a process running `rebalanser member run -- CMD ARG...`, one CMD per resource
it holds. Handover time: from the change until every resource is claimed by the member it is
assigned to and the members' counts are within one of each other.")]
pub struct DemoArgs {
    /// Members to start with (one is killed, one joins, one leaves).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=32))]
    members: u16,
    /// Resources to start with (2 are removed and 3 added later).
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u16).range(2..=1000))]
    resources: u16,
    /// Session TTL of the members: how long a killed member's resources wait before moving.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_ttl)]
    ttl: Duration,
    /// How long the table is shown between steps: the pace of the demo.
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = parse_pause)]
    duration: Duration,
    /// Keep the temp dir (database, member logs, work log) and print its path.
    #[arg(long)]
    keep: bool,
    /// Use this store instead of a new embedded one, e.g. zk://127.0.0.1:2181/demo (the demo
    /// then uses a group of its own, deleted at the end).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Write the ownership timeline of the run (HTML, from the members' logs) here; by
    /// default `timeline.html` in the kept temp dir (--keep), else the temp dir's name + .html.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
}

/// A demo duration: `0` (no pause) or anything [`crate::util::parse_duration`] takes.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    crate::util::duration_arg(s)
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(500) || d > Duration::from_secs(60) {
        return Err(format!("{s:?}: the TTL must be between 500ms and 60s"));
    }
    Ok(d)
}

fn parse_pause(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(600) {
        return Err(format!("{s:?}: at most 10m"));
    }
    Ok(d)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One finished step, for the summary.
struct Done {
    what: String,
    took: Duration,
    moves: Moves,
}

/// A failure that ends the demo with a message (and exit status 1).
type Res<T> = Result<T, String>;

pub fn run(a: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebalanser demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut tmp = match TempDir::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "rebalanser demo: cannot create a temp dir under {}: {e}",
                std::env::temp_dir().display()
            );
            return ExitCode::FAILURE;
        }
    };
    tmp.keep = a.keep;
    procs::become_subreaper();
    let started = Instant::now();
    let mut screen = Screen::new();
    // Everything runs on this (the main) thread: the members' PR_SET_PDEATHSIG is tied to the
    // thread that spawned them. Dropping the story on a signal kills the members.
    let outcome = rt.block_on(async {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => return Err(format!("cannot handle signals: {e}")),
        };
        tokio::select! {
            r = story(&a, tmp.path(), &mut screen) => r,
            _ = int.recv() => Err("interrupted (SIGINT): members stopped".to_string()),
            _ = term.recv() => Err("terminated (SIGTERM): members stopped".to_string()),
        }
    });
    drop(rt);
    // Drawn whatever the outcome: after a failure it shows what went wrong, lease by lease.
    let page = timeline::path(a.timeline.as_deref(), tmp.path(), a.keep);
    let drawn = timeline::write(tmp.path(), &page);
    match outcome {
        Ok(()) => {
            match &drawn {
                Ok(line) => screen.say(line),
                Err(e) => screen.say(format!("(no ownership timeline: {e})")),
            }
            if a.keep {
                let db = if a.store.is_none() { "demo.db, " } else { "" };
                screen.say(format!(
                    "Kept {} ({db}one log per member, work.log).",
                    tmp.path().display()
                ));
            } else {
                screen.say(format!("Removed {}.", tmp.path().display()));
            }
            screen.say(format!(
                "Demo finished in {:.1} s.",
                started.elapsed().as_secs_f64()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            screen.say("");
            eprintln!("rebalanser demo: {e}");
            match &drawn {
                Ok(line) => eprintln!("{line}"),
                Err(e) => eprintln!("(no ownership timeline: {e})"),
            }
            if let Some(url) = &a.store {
                eprintln!(
                    "the demo's group (demo-...) stays in {url}; its members are stopped and \
                     their sessions expire by themselves"
                );
            }
            if a.keep {
                eprintln!("kept {} for a look", tmp.path().display());
            } else {
                eprintln!("(run with --keep to keep the member logs and the database)");
            }
            ExitCode::FAILURE
        }
    }
}

/// The demo's state while it runs. Dropping it kills every member (see `Members`).
struct Demo<'a> {
    a: &'a DemoArgs,
    screen: &'a mut Screen,
    dir: &'a Path,
    exe: PathBuf,
    store: String,
    group: String,
    admin: Admin,
    members: Members,
    target: Target,
    safety: Safety,
    settle_limit: Duration,
    done: Vec<Done>,
    next_member: u16,
}

async fn story(a: &DemoArgs, dir: &Path, screen: &mut Screen) -> Res<()> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path to start members: {e}"))?;
    let (store, group) = match &a.store {
        Some(url) if url.to_ascii_lowercase().starts_with("memory:") => {
            return Err(
                "--store memory://... lives inside one process; the demo's members \
                        are separate processes: use sqlite:// or zk://"
                    .to_string(),
            )
        }
        // A group of its own, so that nothing left in a shared store can get in the way.
        Some(url) => (url.clone(), unique_group()),
        None => (
            format!("sqlite://{}", dir.join("demo.db").display()),
            "demo".to_string(),
        ),
    };
    let admin = Admin::connect(&store, &group).map_err(|e| format!("store {store}: {e}"))?;
    let mut d = Demo {
        a,
        screen,
        dir,
        exe,
        store,
        group,
        admin,
        members: Members::default(),
        target: Target::default(),
        safety: Safety::default(),
        settle_limit: SETTLE_LIMIT.max(a.ttl * 4 + Duration::from_secs(10)),
        done: Vec::new(),
        next_member: 1,
    };
    let r = match d.steps().await {
        Ok(()) => d.finish().await,
        Err(e) => Err(e),
    };
    if r.is_err() {
        d.show_logs();
    }
    r
}

impl Demo<'_> {
    fn resource(&self, i: usize) -> String {
        let width = (usize::from(self.a.resources) + 3).to_string().len().max(2);
        format!("queue-{i:0width$}")
    }

    /// The command line that runs one member. The only place that knows how.
    fn member_command(&self, name: &str) -> Command {
        let mut c = Command::new(&self.exe);
        c.args([
            "member",
            "run",
            "--store",
            &self.store,
            "--group",
            &self.group,
        ])
        .args(["--name", name])
        // JSON lines: the ownership timeline is drawn from them at the end.
        .args(["--log-format", "json"])
        .arg("--session-ttl")
        .arg(format!("{}ms", self.a.ttl.as_millis()))
        // The argv form: `member run` substitutes {resource} with no shell in between.
        .args(["--", "sh", "-c", WORK, "sh", "{resource}"])
        .arg(self.dir.join("work.log"))
        // Their logs go to files: no color codes there.
        .env("NO_COLOR", "1");
        c
    }

    /// The member command line as a reader could type it.
    fn member_command_line(&self) -> String {
        let c = self.member_command("mN");
        let mut s = "rebalanser".to_string();
        for arg in c.get_args() {
            let arg = arg.to_string_lossy();
            let plain = arg
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_./:={}".contains(ch));
            s.push(' ');
            if plain {
                s.push_str(&arg);
            } else {
                s.push_str(&shell_quote(&arg));
            }
        }
        s
    }

    fn start_member(&mut self) -> Res<(String, u32)> {
        let name = format!("m{}", self.next_member);
        self.next_member += 1;
        let log = self.dir.join(format!("{name}.log"));
        let cmd = self.member_command(&name);
        let pid = self
            .members
            .spawn(&name, cmd, log)
            .map_err(|e| format!("cannot start member {name}: {e}"))?;
        self.target.members.insert(name.clone());
        Ok((name, pid))
    }

    /// One status read, checked for safety.
    async fn sample(&mut self) -> Res<(Instant, Instant, GroupStatus)> {
        let mut failing_since = None;
        loop {
            let asked = Instant::now();
            match self.admin.status().await {
                Ok(s) => {
                    self.safety.observe(&s);
                    return Ok((asked, Instant::now(), s));
                }
                // A store that is down for a moment (ZooKeeper election) is not the end.
                Err(e) => {
                    let since = *failing_since.get_or_insert(asked);
                    if since.elapsed() > Duration::from_secs(10) {
                        return Err(format!("cannot read the group's status: {e}"));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Fails if a member process stopped by itself.
    fn check_members(&mut self) -> Res<()> {
        if let Some((name, status)) = self.members.exited() {
            let mut msg = format!("member {name} exited unexpectedly ({status})");
            for l in self.members.log_tail(&name, 15) {
                let _ = write!(msg, "\n  {name}| {l}");
            }
            self.members.forget(&name);
            return Err(msg);
        }
        procs::reap_orphans_except(&self.members.pids());
        Ok(())
    }

    fn table(&self, s: &GroupStatus, before: &BTreeMap<String, Option<String>>) -> Vec<String> {
        self.screen.table(s, before)
    }

    /// Polls until the group matches the target, balanced; returns the settled status and the
    /// time from `t0` to the reply that showed it.
    async fn settle(
        &mut self,
        t0: Instant,
        before: &BTreeMap<String, Option<String>>,
    ) -> Res<(GroupStatus, Duration)> {
        loop {
            let (asked, got, s) = self.sample().await?;
            let why = unsettled(&s, &self.target);
            if asked >= t0 && why.is_empty() {
                return Ok((s, got - t0));
            }
            self.check_members()?;
            if t0.elapsed() > self.settle_limit {
                let mut msg = format!(
                    "the group did not settle within {} of the change; what was missing:",
                    secs(self.settle_limit)
                );
                for w in why.iter().take(20) {
                    let _ = write!(msg, "\n  {w}");
                }
                self.screen.lines(&self.table(&s, before));
                return Err(msg);
            }
            if self.screen.tty() {
                let mut lines = self.table(&s, before);
                let line = format!(
                    "  {:.1} s after the change: {}",
                    t0.elapsed().as_secs_f64(),
                    progress(&s, &self.target)
                );
                lines.push(self.screen.paint(&line, Style::Dim));
                self.screen.live(&lines);
            }
            tokio::time::sleep_until((asked + SETTLE_POLL).into()).await;
        }
    }

    /// Lets the group run for the `--duration`, still polling (safety, members' health).
    async fn pause(&mut self, next: &str) -> Res<()> {
        let end = Instant::now() + self.a.duration;
        let mut last_drawn = None;
        loop {
            let (asked, _, s) = self.sample().await?;
            self.check_members()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            // A terminal shows a countdown under the table (the table is already printed).
            let shown = left.as_secs() + 1;
            if self.screen.tty() && last_drawn != Some(shown) {
                last_drawn = Some(shown);
                let mut msg = format!("  {next} in {shown} s");
                if !unsettled(&s, &self.target).is_empty() {
                    msg.push_str(" (the group is moving again!)");
                }
                self.screen.live(&[self.screen.paint(&msg, Style::Dim)]);
            }
            tokio::time::sleep_until((asked + POLL).min(end).into()).await;
        }
    }

    /// Finishes one change made at `t0`: waits until the group is balanced on the target,
    /// prints the table and the result line, and records it for the summary.
    async fn step(
        &mut self,
        n: usize,
        what: &str,
        before: &GroupStatus,
        t0: Instant,
    ) -> Res<GroupStatus> {
        let mut prev: BTreeMap<String, Option<String>> = before
            .resources
            .iter()
            .map(|r| (r.id.to_string(), None))
            .collect();
        for (r, o) in owners(before) {
            prev.insert(r, Some(o));
        }
        let (s, took) = self
            .settle(t0, &prev)
            .await
            .map_err(|e| format!("step {n} ({what}): {e}"))?;
        let after = owners(&s);
        let m = moves(&prev, &after, &self.target.members);
        let mut line = format!("  => step {n} settled in {}: {} moved", secs(took), m.moved);
        if m.moved > 0 && m.moved == m.min {
            line.push_str(" (the minimum)");
        } else if m.moved != m.min {
            let _ = write!(line, " (minimum {})", m.min);
        }
        if !m.flows.is_empty() {
            let flows: Vec<String> = m
                .flows
                .iter()
                .map(|((a, b), k)| format!("{a}->{b} {k}"))
                .collect();
            let _ = write!(line, ": {}", flows.join(", "));
        }
        if m.placed > 0 {
            let _ = write!(line, ", {} placed", m.placed);
        }
        if m.removed > 0 {
            let _ = write!(line, ", {} removed", m.removed);
        }
        let mut lines = self.table(&s, &prev);
        lines.push(String::new());
        lines.push(self.screen.paint(&line, Style::Good));
        self.screen.lines(&lines);
        self.done.push(Done {
            what: what.to_string(),
            took,
            moves: m,
        });
        Ok(s)
    }

    fn headline(&mut self, n: usize, text: &str, detail: &str) {
        self.screen.say("");
        let h = format!("Step {n}/5: {text}");
        let h = self.screen.paint(&h, Style::Bold);
        self.screen.say(h);
        for l in detail.lines() {
            self.screen.say(format!("  {l}"));
        }
    }

    async fn steps(&mut self) -> Res<()> {
        let a = self.a;
        let first: Vec<String> = (1..=usize::from(a.resources))
            .map(|i| self.resource(i))
            .collect();
        let mut lines = vec![
            format!(
                "Rebalanser demo: {} member processes share {} resources ({} ... {}).",
                a.members,
                a.resources,
                first[0],
                first[first.len() - 1]
            ),
            "The coordinator (one of the members) deals the resources out evenly; each member \
             runs a command"
                .to_string(),
            "for every resource it holds, and no resource is ever held by two members at once."
                .to_string(),
            "Five changes follow. Each is timed from the action until the group is balanced \
             again: every"
                .to_string(),
            "resource held by the member it is assigned to, counts within one (the handover \
             time)."
                .to_string(),
            String::new(),
        ];
        if a.store.is_none() {
            lines.push(format!(
                "  store:   {} (embedded SQLite, in a temp dir{})",
                self.store,
                if a.keep { "" } else { " removed at the end" }
            ));
        } else {
            lines.push(format!("  store:   {} (group {})", self.store, self.group));
        }
        lines.push(format!("  members: {}", self.member_command_line()));
        self.screen.lines(&lines);

        self.admin
            .create_group()
            .await
            .map_err(|e| format!("cannot create group {}: {e}", self.group))?;
        self.admin
            .add_resources(&first)
            .await
            .map_err(|e| format!("cannot add the resources: {e}"))?;
        self.target.resources = first.iter().cloned().collect();
        let (_, _, mut status) = self.sample().await?;

        // 1. Start.
        let names: Vec<String> = (1..=a.members).map(|i| format!("m{i}")).collect();
        self.headline(
            1,
            &format!("start {}", names.join(", ")),
            "The first to register becomes the coordinator and deals out the resources.",
        );
        let t0 = Instant::now();
        let mut started = Vec::new();
        for _ in 0..a.members {
            let (name, pid) = self.start_member()?;
            started.push(format!("{name} (pid {pid})"));
        }
        self.screen.say(format!("  started {}", started.join(", ")));
        status = self
            .step(1, &format!("start {}", names.join(", ")), &status, t0)
            .await?;
        self.say_coordinator(&status);
        self.pause("step 2 (a member is killed)").await?;

        // 2. SIGKILL the coordinator.
        let victim = status
            .coordinator
            .as_ref()
            .map(|c| c.member.to_string())
            .filter(|m| self.members.procs.contains_key(m))
            .or_else(|| self.members.procs.keys().next().cloned())
            .ok_or("no member to kill")?;
        let held = claims_by_name(&status).get(&victim).copied();
        let pid = self.members.pid(&victim).unwrap_or(0);
        let is_coordinator =
            status.coordinator.as_ref().map(|c| c.member.as_str()) == Some(victim.as_str());
        let role = if is_coordinator {
            "the coordinator, "
        } else {
            ""
        };
        self.headline(
            2,
            &format!("SIGKILL {victim} ({role}pid {pid}): no goodbye"),
            &format!(
                "Its {} resources stay claimed until its session expires (TTL {}, counted from \
                 its last keepalive);\nthen {} hands them out. Until then nobody may touch them.",
                held.unwrap_or(0),
                secs(a.ttl),
                if is_coordinator {
                    "the others elect a new coordinator, which"
                } else {
                    "the coordinator"
                }
            ),
        );
        self.members
            .signal(&victim, libc::SIGKILL)
            .map_err(|e| format!("cannot kill {victim}: {e}"))?;
        let t0 = Instant::now();
        self.members
            .wait_exit(&victim, Duration::from_secs(5))
            .await;
        self.members.forget(&victim);
        self.target.members.remove(&victim);
        status = self
            .step(
                2,
                &format!(
                    "SIGKILL {victim}{}",
                    if is_coordinator { " (coordinator)" } else { "" }
                ),
                &status,
                t0,
            )
            .await?;
        self.say_coordinator(&status);
        self.pause("step 3 (a member joins)").await?;

        // 3. A new member.
        let newcomer = format!("m{}", self.next_member);
        self.headline(
            3,
            &format!("start {newcomer}"),
            "The coordinator moves a fair share to it, and nothing else.",
        );
        let t0 = Instant::now();
        let (name, pid) = self.start_member()?;
        self.screen.say(format!("  started {name} (pid {pid})"));
        status = self
            .step(3, &format!("start {newcomer}"), &status, t0)
            .await?;
        self.pause("step 4 (the resources change)").await?;

        // 4. Resource changes: remove two (of different owners if possible), add three.
        let removed = pick_two(&status);
        let n0 = usize::from(a.resources);
        let added: Vec<String> = (n0 + 1..=n0 + 3).map(|i| self.resource(i)).collect();
        self.headline(
            4,
            &format!("remove {}, add {}", removed.join(" and "), added.join(", ")),
            "Through the admin API (what `rebalanser resource` does): the owners of removed \
             resources stop them,\nnew ones go where there is room.",
        );
        let t0 = Instant::now();
        self.admin
            .remove_resources(&removed)
            .await
            .map_err(|e| format!("cannot remove resources: {e}"))?;
        self.admin
            .add_resources(&added)
            .await
            .map_err(|e| format!("cannot add resources: {e}"))?;
        for r in &removed {
            self.target.resources.remove(r);
        }
        self.target.resources.extend(added.iter().cloned());
        status = self
            .step(4, "remove 2 resources, add 3", &status, t0)
            .await?;
        self.pause("step 5 (a member leaves)").await?;

        // 5. Graceful leave of a member that is not the coordinator.
        let coordinator = status.coordinator.as_ref().map(|c| c.member.to_string());
        let counts = claims_by_name(&status);
        let leaver = self
            .members
            .procs
            .keys()
            .filter(|m| Some(*m) != coordinator.as_ref())
            .max_by_key(|m| (counts.get(*m).copied().unwrap_or(0), std::cmp::Reverse(*m)))
            .or_else(|| self.members.procs.keys().next())
            .cloned()
            .ok_or("no member to stop")?;
        self.headline(
            5,
            &format!("SIGTERM {leaver}: a graceful leave"),
            "It asks to leave; the coordinator moves its resources off through normal \
             handovers, it stops each\ncommand and releases the claim; no timeout is waited for.",
        );
        self.members
            .signal(&leaver, libc::SIGTERM)
            .map_err(|e| format!("cannot stop {leaver}: {e}"))?;
        let t0 = Instant::now();
        self.target.members.remove(&leaver);
        // Its exit is expected now: watch it separately from the others (but it is still
        // ours to reap: see `Members::set_leaving`).
        self.members.set_leaving(&leaver);
        let r = self
            .step(5, &format!("SIGTERM {leaver} (leave)"), &status, t0)
            .await;
        let limit = a.ttl * 3 + Duration::from_secs(5);
        match self.members.wait_leaving(&leaver, limit).await {
            Ok(Some(st)) if st.success() => {
                self.screen.say(format!("  {leaver} exited ({st})"));
            }
            Ok(Some(st)) => {
                let log = self.dir.join(format!("{leaver}.log"));
                self.screen.say(format!(
                    "  {leaver} exited with {st} (see {})",
                    log.display()
                ));
            }
            Ok(None) => {
                let (pid, log) = match self.members.leaving(&leaver) {
                    Some(p) => (p.child.id(), p.log.clone()),
                    None => return Err(format!("{leaver} vanished from the demo's members")),
                };
                let under = procs::descendants_of(pid);
                let mut msg = format!(
                    "{leaver} did not exit within {} of SIGTERM; {} process(es) still \
                     under it, the end of its log:",
                    secs(limit),
                    under.len()
                );
                for d in under {
                    let _ = write!(msg, "\n  pid {}: {}", d.pid, d.cmdline);
                }
                for l in procs::tail(&log, 15) {
                    let _ = write!(msg, "\n  {leaver}| {l}");
                }
                return Err(msg);
            }
            Err(e) => return Err(format!("cannot wait for {leaver} to exit: {e}")),
        }
        r?;
        Ok(())
    }

    fn say_coordinator(&mut self, s: &GroupStatus) {
        if let Some(c) = &s.coordinator {
            self.screen.say(format!(
                "  {} is the coordinator (epoch {}).",
                c.member, c.epoch
            ));
        }
    }

    /// Stops the remaining members gracefully, checks nothing is left behind, and prints the
    /// summary.
    async fn finish(&mut self) -> Res<()> {
        let names: Vec<String> = self.members.procs.keys().cloned().collect();
        self.screen.say("");
        self.screen.say(format!(
            "Stopping {} (SIGTERM: each leaves gracefully)...",
            names.join(", ")
        ));
        let t0 = Instant::now();
        for n in &names {
            let _ = self.members.signal(n, libc::SIGTERM);
        }
        let limit = self.a.ttl * 3 + Duration::from_secs(5);
        let mut running: BTreeSet<String> = names.iter().cloned().collect();
        let mut failed = Vec::new();
        while !running.is_empty() && t0.elapsed() < limit {
            // Polling goes on meanwhile, for the safety check.
            let _ = self.sample().await;
            running.retain(|n| match self.members.try_exit(n) {
                Some(st) => {
                    if !st.success() {
                        failed.push(format!("{n} exited with {st}"));
                    }
                    false
                }
                None => true,
            });
            tokio::time::sleep(POLL).await;
        }
        for f in failed {
            self.screen.say(format!("  {f}"));
        }
        let stuck: Vec<String> = running.into_iter().collect();
        if !stuck.is_empty() {
            return Err(format!(
                "{} did not exit within {} of SIGTERM",
                stuck.join(", "),
                secs(limit)
            ));
        }
        // The members' commands and guards must be gone too.
        let end = Instant::now() + Duration::from_secs(5);
        let left = loop {
            procs::reap_orphans_except(&[]);
            let left = procs::descendants();
            if left.is_empty() || Instant::now() >= end {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !left.is_empty() {
            let mut msg =
                "processes left behind after the members exited (now killed):".to_string();
            for d in &left {
                let _ = write!(msg, "\n  pid {}: {}", d.pid, d.cmdline);
                let _ = procs::signal(d.pid, libc::SIGKILL);
            }
            return Err(msg);
        }
        self.screen.say(format!(
            "  all members exited after {}; no process left behind.",
            secs(t0.elapsed())
        ));
        if self.a.store.is_some() {
            match self.admin.delete_group().await {
                Ok(()) => self.screen.say(format!("  deleted group {}.", self.group)),
                Err(e) => self
                    .screen
                    .say(format!("  (could not delete group {}: {e})", self.group)),
            }
        }
        self.summary()
    }

    fn summary(&mut self) -> Res<()> {
        let w = self
            .done
            .iter()
            .map(|d| d.what.len())
            .max()
            .unwrap_or(10)
            .max(10);
        let mut lines = vec![
            String::new(),
            self.screen.paint("Summary", Style::Bold),
            format!(
                "  {:<w$}   {:>9}   {:>5}",
                "step",
                "handover",
                "moved",
                w = w + 3
            ),
        ];
        for (i, d) in self.done.iter().enumerate() {
            let mut extra = Vec::new();
            if d.moves.placed > 0 {
                extra.push(format!("{} placed", d.moves.placed));
            }
            if d.moves.removed > 0 {
                extra.push(format!("{} removed", d.moves.removed));
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!("   ({})", extra.join(", "))
            };
            lines.push(format!(
                "  {}. {:<w$}   {:>9}   {:>5}{extra}",
                i + 1,
                d.what,
                secs(d.took),
                d.moves.moved,
            ));
        }
        lines.push(String::new());
        let s = &self.safety;
        if s.violations.is_empty() {
            lines.push(self.screen.paint(
                &format!(
                    "No resource was ever claimed by two members: checked in {} status \
                     snapshots ({} claims seen; each new claim on a resource carried a larger \
                     fencing token than the one before).",
                    s.snapshots, s.claims
                ),
                Style::Good,
            ));
            self.screen.lines(&lines);
            Ok(())
        } else {
            self.screen.lines(&lines);
            let mut msg = format!(
                "SAFETY VIOLATION: {} problem(s) in {} snapshots:",
                s.violations.len(),
                s.snapshots
            );
            for v in s.violations.iter().take(20) {
                let _ = write!(msg, "\n  {v}");
            }
            Err(msg)
        }
    }

    /// After a failure: the last lines of every member's log, on stderr.
    fn show_logs(&self) {
        for name in self.members.procs.keys() {
            let tail = self.members.log_tail(name, 10);
            if tail.is_empty() {
                continue;
            }
            eprintln!("--- last lines of {name}'s log:");
            for l in tail {
                eprintln!("  {l}");
            }
        }
    }
}

/// `demo-PID-RANDOM`.
fn unique_group() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("demo-{}-{nanos:x}", std::process::id())
}

/// Two resources to remove, held by different members where possible.
fn pick_two(s: &GroupStatus) -> Vec<String> {
    let mut by_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, o) in owners(s) {
        by_owner.entry(o).or_default().push(r);
    }
    let mut picked: Vec<String> = by_owner
        .values()
        .filter_map(|rs| rs.first().cloned())
        .take(2)
        .collect();
    let all: BTreeSet<String> = s.resources.iter().map(|r| r.id.to_string()).collect();
    for r in all {
        if picked.len() >= 2 {
            break;
        }
        if !picked.contains(&r) {
            picked.push(r);
        }
    }
    picked.sort();
    picked
}

/// Quotes `s` for `/bin/sh`: one word, nothing expanded.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("x").is_err());
        assert!(parse_ttl("100ms").is_err());
        assert!(parse_pause("11m").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
