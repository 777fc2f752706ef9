//! The demo's processes and files: the temp dir, the member processes (killed and reaped when
//! the demo ends in any way), and everything they start.
//!
//! The demo makes itself a child subreaper, so any process a member leaves behind (a guard or
//! a `member run` child whose parent died) becomes the demo's child and cannot escape the final
//! check: when the demo ends, its descendants must be gone.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop unless kept.
pub struct TempDir {
    path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    pub fn new() -> io::Result<TempDir> {
        let base = std::env::temp_dir();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for i in 0..100u32 {
            let path = base.join(format!(
                "rebalanser-demo-{}-{:x}",
                std::process::id(),
                nanos.wrapping_add(i)
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path, keep: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free temp dir name"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One member process.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

/// The member processes, by name. Dropping it SIGKILLs every one still running, then every
/// process left under the demo, and reaps them all.
#[derive(Default)]
pub struct Members {
    pub procs: BTreeMap<String, Proc>,
    /// Members told to leave: their exit is expected (so `exited` does not report it), but
    /// they are still ours to reap through their `Child` — the orphan reaper must skip them,
    /// or it takes the exit status and the wait for the leave never sees the exit.
    leaving: BTreeMap<String, Proc>,
}

impl Members {
    /// Starts `cmd` as member `name`, its output going to `log`. The member gets SIGKILL if
    /// the demo dies (PR_SET_PDEATHSIG; the spawning thread is the main thread, which lives
    /// as long as the process).
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: PathBuf) -> io::Result<u32> {
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let parent = std::process::id();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The demo may have died before the prctl: then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the demo exited"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        self.procs.insert(name.to_string(), Proc { child, log });
        Ok(pid)
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(|p| p.child.id())
    }

    /// Sends `sig` to a running member.
    pub fn signal(&self, name: &str, sig: libc::c_int) -> io::Result<()> {
        let p = self
            .procs
            .get(name)
            .ok_or_else(|| io::Error::other(format!("no member {name}")))?;
        signal(p.child.id(), sig)
    }

    /// The first member that exited, with its status (a member must not stop by itself).
    pub fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.procs.iter_mut().find_map(|(name, p)| {
            p.child
                .try_wait()
                .ok()
                .flatten()
                .map(|st| (name.clone(), st))
        })
    }

    /// Waits until `name` exits, at most `limit`; removes it on exit.
    pub async fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<ExitStatus> {
        let p = self.procs.get_mut(name)?;
        let st = wait_child(&mut p.child, limit).await.ok().flatten()?;
        self.procs.remove(name);
        Some(st)
    }

    /// Moves `name` to the members expected to exit (a graceful leave).
    pub fn set_leaving(&mut self, name: &str) {
        if let Some(p) = self.procs.remove(name) {
            self.leaving.insert(name.to_string(), p);
        }
    }

    /// Waits until the leaving member `name` exits, at most `limit` (`Ok(None)` then); it is
    /// removed once it exited.
    pub async fn wait_leaving(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> io::Result<Option<ExitStatus>> {
        let p = self
            .leaving
            .get_mut(name)
            .ok_or_else(|| io::Error::other(format!("{name} is not leaving")))?;
        let st = wait_child(&mut p.child, limit).await?;
        if st.is_some() {
            self.leaving.remove(name);
        }
        Ok(st)
    }

    /// A leaving member's process, if it has not exited.
    pub fn leaving(&self, name: &str) -> Option<&Proc> {
        self.leaving.get(name)
    }

    /// The pid of every member process not yet reaped: the ones the orphan reaper must skip.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .values()
            .chain(self.leaving.values())
            .map(|p| p.child.id())
            .collect()
    }

    /// `name`'s exit status once it has exited (it is then removed); `None` while it runs.
    pub fn try_exit(&mut self, name: &str) -> Option<ExitStatus> {
        let st = self.procs.get_mut(name)?.child.try_wait().ok().flatten()?;
        self.procs.remove(name);
        Some(st)
    }

    /// Removes a member that is known to have exited or been killed, reaping it.
    pub fn forget(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// The last `n` lines of a member's log.
    pub fn log_tail(&self, name: &str, n: usize) -> Vec<String> {
        self.procs
            .get(name)
            .map(|p| tail(&p.log, n))
            .unwrap_or_default()
    }

    fn kill_all(&mut self) {
        let mut all = std::mem::take(&mut self.procs);
        all.append(&mut self.leaving);
        for p in all.values_mut() {
            let _ = p.child.kill();
        }
        for (_, mut p) in all {
            let _ = p.child.wait();
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.kill_all();
        // A killed member's guards kill its commands and exit by themselves, at once...
        let end = Instant::now() + Duration::from_secs(1);
        let left = loop {
            reap_orphans_except(&[]);
            let left = descendants();
            if left.is_empty() || Instant::now() >= end {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if left.is_empty() {
            return;
        }
        // ... and whatever is still there is ours (subreaper): kill it by pid.
        eprintln!(
            "rebalanser demo: killing {} process(es) the members left behind:",
            left.len()
        );
        for d in &left {
            eprintln!("  pid {}: {}", d.pid, d.cmdline);
        }
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            for d in descendants() {
                let _ = signal(d.pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
            reap_orphans_except(&[]);
            if descendants().is_empty() || Instant::now() >= end {
                break;
            }
        }
    }
}

pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) with a pid of a child we started; no memory is passed.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes orphaned descendants (children of a member that died) children of the demo, so they
/// can be found and must be accounted for.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// A live (non-zombie) descendant of the demo.
#[derive(Clone, Debug)]
pub struct Descendant {
    pub pid: u32,
    pub cmdline: String,
}

struct Stat {
    ppid: u32,
    zombie: bool,
}

fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    Some(Stat {
        ppid,
        zombie: state == "Z" || state == "X",
    })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Every live process under the demo (children, grandchildren, ...), zombies excepted.
pub fn descendants() -> Vec<Descendant> {
    descendants_of(std::process::id())
}

/// Every live process under `root`, zombies excepted.
pub fn descendants_of(root: u32) -> Vec<Descendant> {
    let stats: Vec<(u32, Stat)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect();
    let mut under = std::collections::BTreeSet::from([root]);
    // Parents may have larger pids than their children (pid wrap): iterate to a fixed point.
    loop {
        let before = under.len();
        for (p, s) in &stats {
            if under.contains(&s.ppid) {
                under.insert(*p);
            }
        }
        if under.len() == before {
            break;
        }
    }
    stats
        .into_iter()
        .filter(|(p, s)| *p != root && under.contains(p) && !s.zombie)
        .map(|(pid, _)| Descendant {
            pid,
            cmdline: cmdline(pid),
        })
        .collect()
}

/// Reaps the zombie children of the demo (orphans it adopted as subreaper), except `members`:
/// a member is reaped through its `Child`, whose status must not be taken from it.
pub fn reap_orphans_except(members: &[u32]) {
    let me = std::process::id();
    for p in all_pids() {
        if members.contains(&p) {
            continue;
        }
        if let Some(s) = stat(p) {
            if s.ppid == me && s.zombie {
                let Ok(pid) = libc::pid_t::try_from(p) else {
                    continue;
                };
                let mut status = 0;
                // SAFETY: waitpid on a specific zombie child; `status` is a valid out-pointer.
                unsafe {
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        }
    }
}

/// Waits until `c` exits, at most `limit` (`Ok(None)` then). An error from `try_wait` (its
/// status taken by another `waitpid`) is returned, not waited out: it can never succeed.
pub async fn wait_child(c: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    }

    /// The demo once waited 11 s for a member that had left and exited at once: the orphan
    /// reaper, told to skip only the running members, had taken the leaver's exit status.
    #[test]
    fn a_leaving_member_is_skipped_by_the_reaper_and_its_exit_is_seen() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut m = Members::default();
        let pid = m
            .spawn("m1", Command::new("true"), dir.path().join("m1.log"))
            .expect("spawn true");
        m.set_leaving("m1");
        assert!(m.procs.is_empty(), "a leaving member is not a running one");
        assert_eq!(
            m.pids(),
            vec![pid],
            "the reaper must skip the leaving member"
        );
        let st = rt().block_on(m.wait_leaving("m1", Duration::from_secs(10)));
        assert!(matches!(st, Ok(Some(s)) if s.success()), "{st:?}");
        assert!(m.pids().is_empty(), "an exited member is forgotten");
    }

    /// A child whose status another `waitpid` took can never be seen exiting: the wait must
    /// say so at once instead of running out its limit.
    #[test]
    fn a_child_reaped_elsewhere_is_an_error_not_a_timeout() {
        let mut c = Command::new("true").spawn().expect("spawn true");
        let pid = libc::pid_t::try_from(c.id()).expect("a pid fits pid_t");
        let mut status = 0;
        // SAFETY: waitpid on our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        // Another test of this binary (the member-run guard's `waitpid(-1)`) may have reaped it
        // first: reaped elsewhere either way, which is the case under test.
        let err = std::io::Error::last_os_error().raw_os_error();
        assert!(
            r == pid || (r == -1 && err == Some(libc::ECHILD)),
            "{r} {err:?}"
        );
        let t0 = Instant::now();
        let st = rt().block_on(wait_child(&mut c, Duration::from_secs(30)));
        assert!(st.is_err(), "{st:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "it waited out the limit"
        );
    }
}
