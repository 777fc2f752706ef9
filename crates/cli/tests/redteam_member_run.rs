//! Red-team tests for `rebalanser member run --exec` and its hidden `guard` (DESIGN §8 rule 17,
//! PITFALLS 25 and 30).
//!
//! Tests named `redteam_finding_*` FAIL on the code they were written against: each one is a
//! way a process of a child's group keeps running although the member no longer holds (or
//! never again will hold) the lease. Each carries its scenario, severity and suggested fix.
//! Tests named `redteam_pin_*` pass: they pin behaviour that was probed and found sound.
//!
//! Run: `cargo test -p rebalanser-cli --test redteam_member_run -- --nocapture --test-threads 1`

use std::fs;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

mod common;
use common::{boottime_ns, group_alive, proc_running, GuardProc, MemberProc, MemberSpec};

/// Session TTL of every member here; `member run` derives margin TTL/8 and stop TTL/5.
const TTL: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

/// Direct children of `parent` whose command line contains `word` as one argument.
fn children_with_arg(parent: i32, word: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if ppid_of(pid) != Some(parent) || !proc_running(pid) {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if word.is_empty() || cmdline.split(|&b| b == 0).any(|a| a == word.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// [`common::wait_until`], polling every 10 ms.
fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> Result<bool>) -> Result<()> {
    common::wait_until(what, timeout, Duration::from_millis(10), f)
}

/// SIGKILLs every pid listed in the file on drop (processes the tests let escape).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in read_pids(&self.0) {
            // SAFETY: plain kill(2) on processes this test started (via the member).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn read_pids(p: &Path) -> Vec<i32> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits (at most `timeout`) for a pid in `file`; returns the first one.
fn first_pid(what: &str, file: &Path, timeout: Duration) -> Result<i32> {
    wait_until(what, timeout, || Ok(!read_pids(file).is_empty()))?;
    Ok(read_pids(file)[0])
}

struct Env {
    dir: PathBuf,
    db: PathBuf,
    store: String,
    group: String,
}

async fn setup(name: &str, resources: &[&str]) -> Result<Env> {
    let dir = common::temp_dir("rb-redteam", name)?;
    let db = dir.join("rb.db");
    let store = format!("sqlite://{}", db.display());
    let group = format!("rt-{name}");
    common::create_group(&store, &group, resources).await?;
    Ok(Env {
        dir,
        db,
        store,
        group,
    })
}

fn start_member(env: &Env, name: &str, exec: &str) -> Result<MemberProc> {
    let spec = MemberSpec::new(&env.dir, &env.store, &env.group, name, TTL);
    common::spawn_member(&spec, &["--exec", exec], |_| {})
}

/// The member's guard processes (children of the member running `rebalanser guard`).
fn guards_of(m: &MemberProc) -> Vec<i32> {
    children_with_arg(m.pid(), "guard")
}

/// A command whose child starts a descendant that leaves its process group with `setsid`,
/// appends its pid to `escapees` and runs on; the child itself runs on too.
fn setsid_escapee_cmd(escapees: &Path) -> String {
    format!(
        "setsid sh -c 'echo $$ >> \"$1\"; exec sleep 1000' sh '{}' & exec sleep 1000",
        escapees.display()
    )
}

/// A command that records its own pid on start and then just runs (the "resource access").
fn marker_cmd(dir: &Path) -> (String, PathBuf) {
    let pids = dir.join("started");
    (
        format!("echo $$ >> '{}'; exec sleep 1000", pids.display()),
        pids,
    )
}

// ---------------------------------------------------------------------------------------------
// Findings (fail on the current code).
// ---------------------------------------------------------------------------------------------

/// FINDING 1 — severity: SAFETY (a process of the child's group outlives the lease; inside
/// one member, two processes for one resource).
///
/// Scenario: the child starts a descendant that leaves its process group with `setsid`
/// (daemonising helpers, `setsid`, `nohup setsid`, `start-stop-daemon`, any `daemon(3)`
/// caller). The guard then dies by SIGKILL (an operator's `kill -9`, the OOM killer, a
/// `pkill -9 rebalanser` meant for the member). PDEATHSIG kills the direct child; the member's
/// `guard_lost` kills only the process group it was told about (`kill(-pgid)`); the setsid'ed
/// descendant is re-parented to init (the member is not a subreaper), so nobody ever kills
/// it. The member then reports the group empty, and because the lease is still valid it
/// *restarts* the child under a new guard: two processes for r inside one member; on a later
/// revoke the claim is released while the first one still runs, and another member starts r.
/// The guard's module docs list "a guard that is itself SIGKILLed takes only its direct child
/// down" as not covered; DESIGN §8 rule 17 (the stop kills every process the child started,
/// and only then is the claim released) has no such exception.
///
/// Suggested fix: make the member itself a child subreaper (`PR_SET_CHILD_SUBREAPER` at
/// start-up: a dead guard's orphans are then re-parented to the member, which kills and reaps
/// them in `guard_lost` before releasing or restarting), or better, put each guard + child
/// in its own cgroup v2 leaf and `cgroup.kill` it / wait for `cgroup.events populated 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_finding_guard_sigkilled_setsid_descendant_survives_and_child_restarts(
) -> Result<()> {
    let env = setup("guardkill", &["r1"]).await?;
    let escapees = env.dir.join("escapees");
    let _reaper = Reaper(escapees.clone());
    let m = start_member(&env, "a", &setsid_escapee_cmd(&escapees))?;
    let first = first_pid("the first escapee", &escapees, Duration::from_secs(15))?;
    let guards = guards_of(&m);
    assert_eq!(guards.len(), 1, "one guard: {guards:?}");
    // SAFETY: kill(2) on the guard this test's member started.
    unsafe { libc::kill(guards[0], libc::SIGKILL) };
    let t = Instant::now();
    // Give the member every chance: it has the whole TTL to clean up.
    let mut restarted_while_alive = false;
    while t.elapsed() < TTL {
        let all = read_pids(&escapees);
        if all.len() > 1 && proc_running(first) {
            restarted_while_alive = true;
        }
        if !proc_running(first) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = proc_running(first);
    let all = read_pids(&escapees);
    println!(
        "guard SIGKILLed: first escapee {first} alive after {:?}: {alive}; escapees started: \
         {all:?}; a new child started while the first escapee ran: {restarted_while_alive}",
        t.elapsed()
    );
    drop(m);
    assert!(
        !alive,
        "a setsid'ed descendant of the child outlived its SIGKILLed guard for {:?} \
         (still running; member restarted the child meanwhile: {restarted_while_alive})",
        t.elapsed()
    );
    let _ = fs::remove_dir_all(&env.dir);
    Ok(())
}

/// FINDING 2 — severity: SAFETY (needs the guard stopped while the member lives; lower
/// likelihood: a debugger/ptrace, `kill -STOP` of the wrong pid, a cgroup freeze of the
/// guard alone).
///
/// Scenario: the guard is SIGSTOPped. The member's store then becomes unavailable (here: a
/// writer holds the SQLite write lock), so keepalives fail and the member's lease deadline
/// passes. The library revokes; the member sends `S` to the stopped guard and then waits for
/// its report forever. Nothing enforces the deadline: the child keeps running past the
/// member's lease deadline, the store expires the session at T, and another member takes r.
/// The member knows the child's process group (the `P` message) and knows its deadline, but
/// only the guard acts on it: the member is a live, unused second line of defence.
///
/// Suggested fix: in `run_child`, also arm a timer at the lease deadline (`lease.remaining()`
/// minus `KILL_LEAD`); if the guard has not reported `E` by then, `kill(-pgid, SIGKILL)` from
/// the member (and SIGKILL the guard, whose PDEATHSIG then also fires), then treat it like
/// `guard_lost`. Optionally send SIGCONT to the guard with every `S`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_finding_stopped_guard_lets_child_run_past_member_deadline() -> Result<()> {
    let env = setup("guardstop", &["r1"]).await?;
    let (exec, started) = marker_cmd(&env.dir);
    let _reaper = Reaper(started.clone());
    let m = start_member(&env, "a", &exec)?;
    let child = first_pid("the child", &started, Duration::from_secs(15))?;
    let guards = guards_of(&m);
    assert_eq!(guards.len(), 1, "one guard: {guards:?}");
    let guard = guards[0];
    // SAFETY: kill(2) on the guard this test's member started.
    unsafe { libc::kill(guard, libc::SIGSTOP) };
    // Take the write lock and hold it for 3 × TTL: the member's keepalives cannot commit.
    let mut locker = Command::new("sqlite3")
        .arg(&env.db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("sqlite3")?;
    {
        use std::io::Write as _;
        let mut w = locker.stdin.take().unwrap();
        writeln!(
            w,
            ".timeout 5000\nBEGIN IMMEDIATE;\n.print LOCKED\n.shell sleep {}\nCOMMIT;",
            (TTL * 3).as_secs()
        )?;
    }
    let mut out = std::io::BufReader::new(locker.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l)?;
    assert_eq!(l.trim(), "LOCKED");
    let t_lock = Instant::now();
    // The member's deadline is at most (the send time of its last successful keepalive,
    // which is before t_lock) + TTL − margin. Check well after it.
    let check_at = TTL - MARGIN + Duration::from_millis(500);
    std::thread::sleep(check_at);
    let alive = group_alive(child) && proc_running(child);
    println!(
        "guard stopped, store locked: child {child} alive {:?} after the lock (member deadline \
         ≤ lock + {:?}): {alive}",
        t_lock.elapsed(),
        TTL - MARGIN
    );
    // SAFETY: resume the guard so everything can be cleaned up.
    unsafe { libc::kill(guard, libc::SIGCONT) };
    let _ = locker.kill();
    let _ = locker.wait();
    drop(m);
    assert!(
        !alive,
        "the child ran {:?} past the member's lease deadline: only the (stopped) guard \
         enforces it",
        check_at - (TTL - MARGIN)
    );
    let _ = fs::remove_dir_all(&env.dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pinned behaviour (passes).
// ---------------------------------------------------------------------------------------------

/// A deadline already past (or closer than the SIGTERM lead) when the guard starts — a guard
/// slow to start, a member paused between sending and the guard reading — never starts a
/// child: the report is `E deadline none` and no `P` comes first.
#[test]
fn redteam_pin_guard_never_starts_a_child_at_or_past_the_deadline() -> Result<()> {
    let dir = common::temp_dir("rb-redteam-g", "late")?;
    let (cmd, started) = marker_cmd(&dir);
    for (name, offset_ms, term_before) in [
        ("past", -1_000i64, 0u64),
        ("now", 0, 0),
        ("inside the TERM lead", 300, 400),
    ] {
        let mut g = GuardProc::start(&cmd, term_before, 100, &[])?;
        let at = (boottime_ns() as i64 + offset_ms * 1_000_000) as u64;
        g.deadline_at(at)?;
        let r = g.recv(Duration::from_secs(5))?;
        assert_eq!(r.as_deref(), Some("E deadline none"), "{name}");
        assert!(read_pids(&started).is_empty(), "{name}: a child started");
        assert!(g.child.wait()?.success());
    }
    let _ = fs::remove_dir_all(dir);
    Ok(())
}

/// The newest deadline counts even when it is *earlier* (a lowered TTL in force moves the
/// lease deadline back, PITFALLS 2): the child is killed by the new, earlier deadline.
#[test]
fn redteam_pin_guard_obeys_a_deadline_moved_back() -> Result<()> {
    let dir = common::temp_dir("rb-redteam-g", "moveback")?;
    let (cmd, _) = marker_cmd(&dir);
    let mut g = GuardProc::start(&cmd, 0, 60_000, &[])?;
    g.deadline_at(boottime_ns() + 60_000_000_000)?;
    let pid = g.started()?;
    std::thread::sleep(Duration::from_millis(100));
    let earlier = boottime_ns() + 300_000_000;
    g.deadline_at(earlier)?;
    // A stale later one must not arrive *after* it; but a later *newer* extension is fine:
    // not sent here.
    let r = g.recv(Duration::from_secs(5))?;
    let at = boottime_ns();
    assert_eq!(r.as_deref(), Some("E deadline signal:9"));
    assert!(!group_alive(pid));
    assert!(
        at < earlier + 200_000_000,
        "reported {} ms after the earlier deadline",
        (at as i64 - earlier as i64) / 1_000_000
    );
    let _ = fs::remove_dir_all(dir);
    Ok(())
}

/// A child that ignores SIGTERM and SIGHUP, stops itself (SIGSTOP), and leaves a setsid'ed
/// grandchild: on `S` the whole tree is gone before `E`, within the kill grace.
#[test]
fn redteam_pin_guard_stop_kills_stubborn_stopped_tree() -> Result<()> {
    let dir = common::temp_dir("rb-redteam-g", "stubborn")?;
    let esc = dir.join("esc");
    let _reaper = Reaper(esc.clone());
    let cmd = format!(
        "trap '' TERM HUP INT; setsid sh -c 'trap \"\" TERM HUP; echo $$ >> \"$1\"; \
         while :; do sleep 0.05; done' sh '{}' & sleep 0.2; kill -STOP $$; wait",
        esc.display()
    );
    let mut g = GuardProc::start(&cmd, 100, 300, &[])?;
    g.deadline_at(boottime_ns() + 60_000_000_000)?;
    let pid = g.started()?;
    let gc = first_pid("the grandchild", &esc, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    g.send("S")?;
    let r = g.recv(Duration::from_secs(5))?;
    println!("stubborn tree: report {r:?} after {:?}", t.elapsed());
    assert_eq!(r.as_deref(), Some("E stop signal:9"));
    assert!(!group_alive(pid));
    assert!(
        !proc_running(gc),
        "the setsid'ed grandchild outlived the report"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let _ = fs::remove_dir_all(dir);
    Ok(())
}

/// The member SIGKILLed: the guard (alive) kills the child's group *and* a setsid'ed
/// descendant (adopted by the guard, a subreaper) at once — contrast with finding 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pin_member_sigkill_takes_setsid_descendants_down() -> Result<()> {
    let env = setup("memberkill", &["r1"]).await?;
    let escapees = env.dir.join("escapees");
    let _reaper = Reaper(escapees.clone());
    let mut m = start_member(&env, "a", &setsid_escapee_cmd(&escapees))?;
    let first = first_pid("the escapee", &escapees, Duration::from_secs(15))?;
    let t = Instant::now();
    m.signal(libc::SIGKILL);
    let _ = m.child.wait();
    wait_until("the escapee's death", Duration::from_secs(2), || {
        Ok(!proc_running(first))
    })?;
    println!("member SIGKILLed: escapee gone after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let _ = fs::remove_dir_all(&env.dir);
    let _ = m.log;
    Ok(())
}

/// The member SIGSTOPped: the child is gone before the member's lease deadline (bounded by
/// stop time + TTL − margin), although the member sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pin_member_sigstop_child_dies_before_deadline() -> Result<()> {
    let env = setup("memberstop", &["r1"]).await?;
    let (exec, started) = marker_cmd(&env.dir);
    let _reaper = Reaper(started.clone());
    let m = start_member(&env, "a", &exec)?;
    let child = first_pid("the child", &started, Duration::from_secs(15))?;
    // Wait for a couple of ticks so the guard holds a recent deadline.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    m.signal(libc::SIGSTOP);
    let bound = TTL - MARGIN;
    while proc_running(child) && t.elapsed() < bound + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let gone_after = t.elapsed();
    m.signal(libc::SIGCONT);
    println!("member SIGSTOPped: child gone {gone_after:?} after (bound {bound:?})");
    assert!(!proc_running(child));
    assert!(gone_after < bound, "{gone_after:?} ≥ {bound:?}");
    drop(m);
    let _ = fs::remove_dir_all(&env.dir);
    Ok(())
}
