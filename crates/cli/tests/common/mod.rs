//! Shared harness of the CLI's process tests (`member_run`, `redteam_member_run`, `zk_chaos`,
//! `pg_chaos`, `rabbitmq_chaos`): the `rebalanser` binary, clocks, process probes, polling,
//! `member run` processes, the hidden `guard` driven over its socket the way `member run`
//! drives it, and ([`chaos`]) the multi-process chaos harness with its access-log checker.
// Each test binary that declares `mod common;` uses only a subset of these helpers.
#![allow(dead_code)]

pub mod chaos;
pub mod cluster_faults;
pub mod prometheus;

use std::fs;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rebalanser::Admin;

pub use rebalanser_testkit::boottime_ns;

/// The `rebalanser` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_rebalanser");

/// Runs the binary with `args` and logs off (stderr is then just the error): its exit code
/// (-1 when killed by a signal) and its stderr.
pub fn run_cli(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The wall clock now, in nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

/// A CLOCK_BOOTTIME instant as Unix time (ns).
pub fn boot_to_unix(boot: u64) -> u64 {
    (boot as i128 + unix_ns() as i128 - boottime_ns() as i128) as u64
}

/// Whether any process of the process group `pgid` exists.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Running (not a zombie, not gone): with its guard dead, a child's zombie waits for init.
pub fn proc_running(pid: i32) -> bool {
    rebalanser_testkit::pid_alive(pid as u32)
}

/// Calls `f` every `poll` until it says yes; an error after `timeout`, or at `f`'s first error.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(poll);
    }
}

/// A new directory `PREFIX-NAME-PID-UNIXNS` under the system's temporary directory.
pub fn temp_dir(prefix: &str, name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{name}-{}-{}",
        std::process::id(),
        unix_ns()
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Creates `group` on `store` with `resources`.
pub async fn create_group(store: &str, group: &str, resources: &[&str]) -> Result<()> {
    let admin = Admin::connect(store, group)?;
    admin.create_group().await?;
    admin.add_resources(resources).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `member run` processes.
// ---------------------------------------------------------------------------------------------

/// A `member run` process; SIGKILLed on drop (its guards then kill its children).
pub struct MemberProc {
    pub name: String,
    pub child: Child,
    /// The JSON log of the member and its guards (their stdout and stderr).
    pub log: PathBuf,
}

impl MemberProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > end {
                bail!("member {} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON log lines of the member and its guards.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for MemberProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how a `member run` process runs.
pub struct MemberSpec<'a> {
    /// Its log goes to `DIR/NAME.log`.
    pub dir: &'a Path,
    pub store: &'a str,
    pub group: &'a str,
    pub name: &'a str,
    pub session_ttl: Duration,
}

impl<'a> MemberSpec<'a> {
    pub fn new(
        dir: &'a Path,
        store: &'a str,
        group: &'a str,
        name: &'a str,
        session_ttl: Duration,
    ) -> MemberSpec<'a> {
        MemberSpec {
            dir,
            store,
            group,
            name,
            session_ttl,
        }
    }
}

/// Starts `rebalanser --log-format json member run` (RUST_LOG=info) as `spec` says; `what`
/// says what to run (`--exec CMD` or `-- CMD ARG...`); `configure` adds to the command
/// (environment, working directory) before it is spawned.
pub fn spawn_member(
    spec: &MemberSpec<'_>,
    what: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Result<MemberProc> {
    let log = spec.dir.join(format!("{}.log", spec.name));
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "json", "member", "run", "--store"])
        .arg(spec.store)
        .args(["--group", spec.group, "--name", spec.name])
        .args([
            "--session-ttl",
            &format!("{}ms", spec.session_ttl.as_millis()),
        ])
        .args(what)
        .env("RUST_LOG", "info");
    configure(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning rebalanser member run")?;
    Ok(MemberProc {
        name: spec.name.to_string(),
        child,
        log,
    })
}

// ---------------------------------------------------------------------------------------------
// The guard alone, driven over its socket the way `member run` drives it.
// ---------------------------------------------------------------------------------------------

/// A `rebalanser guard` process (RUST_LOG=off) for group g, member m, resource r, token 1,
/// in a session of its own; SIGKILLed on drop.
pub struct GuardProc {
    pub child: Child,
    /// Our end of the socket; `None` once the test closed it.
    pub sock: Option<std::os::unix::net::UnixStream>,
    pub reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl GuardProc {
    /// `vars`: extra environment for the guard, which its child inherits.
    pub fn start(
        command: &str,
        term_before_ms: u64,
        kill_after_ms: u64,
        vars: &[(&str, &str)],
    ) -> Result<GuardProc> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::process::CommandExt as _;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.args(["guard", "--fd", &fd.to_string()])
            .args(["--group", "g", "--member", "m", "--resource", "r"])
            .args(["--token", "1"])
            .args(["--kill-after-ms", &kill_after_ms.to_string()])
            .args(["--term-before-ms", &term_before_ms.to_string()])
            .args(["--command", command])
            .envs(vars.iter().copied())
            .env("RUST_LOG", "off")
            .stdin(Stdio::null());
        // SAFETY: async-signal-safe calls only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        let reader = std::io::BufReader::new(ours.try_clone()?);
        Ok(GuardProc {
            child,
            sock: Some(ours),
            reader,
        })
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let s = self.sock.as_mut().context("closed")?;
        s.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    /// Sends the deadline `at` (CLOCK_BOOTTIME ns).
    pub fn deadline_at(&mut self, at: u64) -> Result<()> {
        self.send(&format!("D {at}"))
    }

    /// Sends a deadline `d` from now; returns it (CLOCK_BOOTTIME ns).
    pub fn deadline_in(&mut self, d: Duration) -> Result<u64> {
        let at = boottime_ns() + d.as_nanos() as u64;
        self.deadline_at(at)?;
        Ok(at)
    }

    /// The next line, `None` at EOF; an error after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<String>> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end().to_string())),
            Err(e) => bail!("no message from the guard within {timeout:?}: {e}"),
        }
    }

    /// The child's pid, from the guard's `P <pid>` (5 s at most).
    pub fn started(&mut self) -> Result<i32> {
        let l = self.recv(Duration::from_secs(5))?.context("EOF before P")?;
        l.strip_prefix("P ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("expected P <pid>, got {l:?}"))
    }
}

impl Drop for GuardProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SplitMix64: the fault order is a function of the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A duration uniformly in [lo, hi].
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a valid value")),
        _ => default,
    }
}

/// Has `cmd`'s process die with the test process however it dies, and write no core file
/// when it aborts (the abort policy of a member past its deadline).
pub fn tie_to_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
}
