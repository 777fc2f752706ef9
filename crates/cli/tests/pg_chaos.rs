//! Multi-process chaos against a real PostgreSQL server, checked from an access log.
//!
//! The harness and the checker are `common::chaos` (see its module doc): four
//! `rebalanser chaos-member` processes share one group of 30 resources on a private server
//! (`Postgres::start()`, schema `chaos_<pid>`) and log every access; members are SIGKILLed
//! (restarted under the same name after a delay shorter or longer than their session TTL) and
//! SIGSTOPped for 1–3 × TTL. The PostgreSQL faults here ([`PgFaults`]), never overlapping:
//! - SIGKILL of the server (the postmaster; its backends exit when they notice), restarted on
//!   the same data 0.2–4 s later (`Postgres::restart` on a thread: crash recovery, then it
//!   serves);
//! - SIGSTOP of the whole server for 1–3 s: the postmaster first (no new backend), then every
//!   process it started (backends, the WAL writer, ...), so open connections stall too, not only
//!   new ones;
//! - `pg_terminate_backend` of every backend whose `application_name` is `rebalanser/%` (every
//!   connection of every member and of the test's admin), or of one of them drawn at random.
//!
//! Out of every 10 fault picks: member kill 3, member pause 2, server kill 2, server pause 1,
//! terminate all 1, terminate one 1. Then the faults stop, the server must answer, the group
//! must converge (every resource claimed, 7–8 per member) within 4 × TTL + 2 s, stay live for
//! a window, and the members leave on SIGTERM; the access log must show no double access.
//!
//! Environment: `CHAOS_SECS` (fault phase, default 30), `CHAOS_SEED` (fault order, default
//! random and printed), `CHAOS_DIR` (keep the log, member output, server log and timeline
//! there), `CHAOS_MEMBERS` (4), `CHAOS_RESOURCES` (30), `CHAOS_TTL_MS` (2000).
//! `scripts/chaos-pg SECONDS SEED` runs the long version.
//! `pg_chaos_catches_a_member_that_lingers` runs a short chaos with members that keep accessing
//! a resource after giving up its lease, and requires the checker to find the double access.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser_testkit::Postgres;

mod common;
use common::chaos::{chaos_catches_lingering_members, chaos_test, ms_, StoreFaults, Timeline};
use common::Rng;

/// The backends of the store's connections (`rebalanser/<lane>`), not `psql`'s.
const OURS: &str = "application_name like 'rebalanser/%'";

enum PgFault {
    None,
    Killed {
        restart_at: Instant,
    },
    /// `Postgres::restart` on its own thread (it waits until the server serves); its result is
    /// the number of attempts it took.
    Restarting(JoinHandle<Result<u32>>),
    /// The postmaster and the processes it had started, SIGSTOPped until `resume_at`.
    Paused {
        children: Vec<i32>,
        resume_at: Instant,
    },
}

/// A private PostgreSQL server and its faults (see the module doc).
struct PgFaults {
    pg: Arc<Postgres>,
    fault: PgFault,
}

impl PgFaults {
    fn start() -> Result<PgFaults> {
        Ok(PgFaults {
            pg: Arc::new(Postgres::start()?),
            fault: PgFault::None,
        })
    }

    /// SIGSTOPs the postmaster, then every process it started; returns those.
    fn freeze(&self) -> Result<Vec<i32>> {
        let pm = self.pg.pid().context("the server is not running")? as i32;
        self.pg.pause()?;
        let children = children_of(pm);
        for &c in &children {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c, libc::SIGSTOP) };
        }
        Ok(children)
    }

    fn thaw(&self, children: &[i32]) -> Result<()> {
        for &c in children {
            // SAFETY: as above.
            unsafe { libc::kill(c, libc::SIGCONT) };
        }
        self.pg.resume()
    }

    /// (pid, application_name) of the store's backends.
    fn backends(&self) -> Result<Vec<(i32, String)>> {
        let out = self.pg.psql(&format!(
            "select pid, application_name from pg_stat_activity where {OURS} order by pid"
        ))?;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (pid, app) = l.split_once('|').context("pid|application_name")?;
                Ok((pid.parse()?, app.to_string()))
            })
            .collect()
    }
}

impl Drop for PgFaults {
    /// Never leaves stopped processes behind (a backend SIGSTOPped when its postmaster is
    /// killed would hold the shared memory forever).
    fn drop(&mut self) {
        if let PgFault::Paused { children, .. } = &self.fault {
            let _ = self.thaw(children);
        }
    }
}

/// The processes whose parent is `ppid` (from `/proc/*/stat`).
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Restarts the server, up to 3 times (an orphaned backend of the killed postmaster that is
/// slow to exit can keep the new one from starting); the attempts it took.
fn restart(pg: &Postgres) -> Result<u32> {
    let mut last = None;
    for attempt in 1..=3 {
        match pg.restart() {
            Ok(()) => return Ok(attempt),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(ms_(500));
    }
    Err(last.expect("an error after three attempts")).context("the server did not restart")
}

fn joined(h: JoinHandle<Result<u32>>, tl: &mut Timeline) -> Result<()> {
    match h.join() {
        Ok(Ok(1)) => tl.note("pg server serves again"),
        Ok(Ok(n)) => tl.note(format_args!("pg server serves again (restart attempt {n})")),
        Ok(Err(e)) => bail!("the PostgreSQL server did not come back; see its log: {e:#}"),
        Err(_) => bail!("the PostgreSQL server did not come back; see its log"),
    }
    Ok(())
}

impl StoreFaults for PgFaults {
    fn url(&self) -> String {
        format!("{}?schema=chaos_{}", self.pg.url(), std::process::id())
    }

    /// Server kill 2, server pause 1, terminate all 1, terminate one 1.
    fn weight(&self) -> u64 {
        5
    }

    fn busy(&self) -> bool {
        !matches!(self.fault, PgFault::None)
    }

    fn inject(&mut self, pick: u64, rng: &mut Rng, tl: &mut Timeline) -> Result<()> {
        match pick {
            0 | 1 => {
                self.pg.kill()?;
                let d = rng.between(ms_(200), ms_(4000));
                tl.fault(
                    "pg SIGKILL",
                    format_args!("server, restart in {:.1}s", d.as_secs_f64()),
                );
                self.fault = PgFault::Killed {
                    restart_at: Instant::now() + d,
                };
            }
            2 => {
                let d = rng.between(ms_(1000), ms_(3000));
                let children = self.freeze()?;
                tl.fault(
                    "pg SIGSTOP",
                    format_args!(
                        "server (postmaster and {} processes) for {:.1}s",
                        children.len(),
                        d.as_secs_f64()
                    ),
                );
                self.fault = PgFault::Paused {
                    children,
                    resume_at: Instant::now() + d,
                };
            }
            3 => {
                // Materialized first: the filter must run before any termination.
                let out = self.pg.psql(&format!(
                    "with b as materialized (select pid, application_name from \
                     pg_stat_activity where {OURS}) select application_name from b where \
                     pg_terminate_backend(pid)"
                ))?;
                let mut lanes: BTreeMap<&str, u32> = BTreeMap::new();
                for app in out.lines().filter(|l| !l.is_empty()) {
                    *lanes.entry(app).or_default() += 1;
                }
                tl.fault(
                    "pg terminate all backends",
                    format_args!(
                        "{} backends ({})",
                        lanes.values().sum::<u32>(),
                        lanes
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            _ => {
                let backends = self.backends()?;
                if backends.is_empty() {
                    tl.note("no rebalanser backend right now: fault skipped");
                    return Ok(());
                }
                let (pid, app) = &backends[rng.below(backends.len() as u64) as usize];
                let done = self
                    .pg
                    .psql(&format!("select pg_terminate_backend({pid})"))?;
                tl.fault(
                    "pg terminate one backend",
                    format_args!(
                        "pid {pid} ({app}) of {}{}",
                        backends.len(),
                        if done == "t" { "" } else { ": it was gone" }
                    ),
                );
            }
        }
        Ok(())
    }

    fn step(&mut self, now: Instant, ending: bool, tl: &mut Timeline) -> Result<()> {
        self.fault = match std::mem::replace(&mut self.fault, PgFault::None) {
            PgFault::Killed { restart_at } if ending || now >= restart_at => {
                tl.note("restarting pg server");
                let pg = Arc::clone(&self.pg);
                PgFault::Restarting(std::thread::spawn(move || restart(&pg)))
            }
            PgFault::Restarting(h) if h.is_finished() => {
                joined(h, tl)?;
                PgFault::None
            }
            PgFault::Paused {
                children,
                resume_at,
            } if ending || now >= resume_at => {
                self.thaw(&children)?;
                tl.note("SIGCONT pg server");
                PgFault::None
            }
            other => other,
        };
        if ending {
            if let PgFault::Restarting(h) = std::mem::replace(&mut self.fault, PgFault::None) {
                joined(h, tl)?;
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match self.pg.psql("select 1") {
                Ok(s) if s == "1" => return Ok(()),
                r if Instant::now() > end => {
                    bail!("the PostgreSQL server does not answer after the faults: {r:?}")
                }
                _ => std::thread::sleep(ms_(100)),
            }
        }
    }

    fn save_logs(&self, dir: &Path) {
        let _ = fs::copy(self.pg.log_path(), dir.join("pg.log"));
    }
}

#[test]
fn pg_chaos() {
    chaos_test(PgFaults::start);
}

/// The checker catches the double access of members that linger after their leases, on this
/// store too.
#[test]
fn pg_chaos_catches_a_member_that_lingers() {
    chaos_catches_lingering_members(PgFaults::start);
}
