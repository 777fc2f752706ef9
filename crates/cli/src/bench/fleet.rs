//! The members of one group — tasks in this process on `memory://`, or member processes
//! (`rebalanser bench-member`, see `child.rs`) on any other store — and an application for
//! each that holds every lease until it is revoked and reports what it holds to [`Seen`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rebalanser::{Member, MemberBuilder, StopPolicy, Store};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::counting::{Counters, CountingStore, Counts};
use super::seen::Seen;
use crate::admin_cmds::ModeArg;
use crate::util::boottime_ns;

/// How long a member process may take to start and join before the run fails.
const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// Where the members run.
pub enum Launch {
    /// As tasks of this process, sharing this store (the only way to share `memory://`).
    InProcess(Arc<dyn Store>),
    /// As processes of this executable, each opening the store at `url` itself.
    Processes { exe: PathBuf, url: String },
}

/// How a member ends.
pub enum Exit {
    Leave,
    Crash,
}

enum Running {
    Task {
        exit: oneshot::Sender<Exit>,
        task: JoinHandle<()>,
    },
    Process {
        child: tokio::process::Child,
        reader: JoinHandle<()>,
    },
}

/// The members of one group.
pub struct Fleet {
    launch: Launch,
    group: String,
    ttl: Duration,
    seen: Arc<Mutex<Seen>>,
    members: BTreeMap<usize, Running>,
    next: usize,
    /// Per in-process member, its own operations (member processes report theirs).
    task_counters: BTreeMap<usize, Arc<Counters>>,
    /// The members' initial settle delay (`None`: the library's default).
    pub initial_delay: Option<Duration>,
    /// The group's mode, which every member must be configured for.
    pub mode: ModeArg,
}

/// A member as the bench runs it: timings scaled to the TTL within `Config::validate`
/// (2/10 + 1/8 + 1/5 + 1/10 of it), and a late stop logged rather than aborting the process
/// being measured.
pub fn builder(
    group: &str,
    name: &str,
    ttl: Duration,
    initial_delay: Option<Duration>,
    mode: ModeArg,
) -> MemberBuilder {
    let b = Member::builder(group).mode(mode.into());
    let b = match initial_delay {
        Some(d) => b.initial_rebalance_delay(d),
        None => b,
    };
    b.name(name)
        .session_ttl(ttl)
        .keepalive_interval(ttl / 10)
        .op_timeout(ttl / 8)
        .stop_timeout(ttl / 5)
        .safety_margin(ttl / 10)
        .min_rebalance_interval(Duration::from_millis(20))
        .on_stop_deadline_missed(StopPolicy::Log)
}

impl Fleet {
    pub fn new(launch: Launch, group: &str, ttl: Duration) -> Fleet {
        Fleet {
            launch,
            group: group.to_string(),
            ttl,
            seen: Arc::default(),
            members: BTreeMap::new(),
            next: 0,
            task_counters: BTreeMap::new(),
            initial_delay: None,
            mode: ModeArg::Resource,
        }
    }

    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// The members still running, oldest first.
    pub fn live(&self) -> Vec<usize> {
        self.members.keys().copied().collect()
    }

    /// Joins one member; returns its index once it has joined.
    pub async fn join(&mut self) -> anyhow::Result<usize> {
        let joined = self.join_many(1).await?;
        Ok(joined[0])
    }

    /// Starts `n` members at once; returns their indexes once every one has joined.
    pub async fn join_many(&mut self, n: usize) -> anyhow::Result<Vec<usize>> {
        let first = self.next;
        self.next += n;
        let ids: Vec<usize> = (first..first + n).collect();
        match &self.launch {
            Launch::InProcess(store) => {
                let mut stores = Vec::new();
                for &i in &ids {
                    let (counted, counters) = CountingStore::new(store.clone());
                    self.task_counters.insert(i, counters);
                    stores.push(counted);
                }
                let joins = ids.iter().zip(stores).map(|(i, store)| {
                    builder(
                        &self.group,
                        &format!("m{i}"),
                        self.ttl,
                        self.initial_delay,
                        self.mode,
                    )
                    .store(store)
                    .join()
                });
                let handles = futures::future::try_join_all(joins).await?;
                for (&i, handle) in ids.iter().zip(handles) {
                    lock(&self.seen).joined.insert(i);
                    let (exit, rx) = oneshot::channel();
                    let sink = Sink::Seen(i, self.seen.clone());
                    let task = tokio::spawn(serve(handle, rx, sink));
                    self.members.insert(i, Running::Task { exit, task });
                }
            }
            Launch::Processes { exe, url } => {
                for &i in &ids {
                    let mut child = tokio::process::Command::new(exe)
                        .args(["bench-member", "--store", url, "--group", &self.group])
                        .args(["--name", &format!("m{i}")])
                        .arg(format!("--ttl={}ms", self.ttl.as_millis()))
                        .arg(format!("--mode={}", self.mode.name()))
                        .args(
                            self.initial_delay
                                .map(|d| format!("--initial-rebalance-delay={}ms", d.as_millis())),
                        )
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| format!("cannot start {}", exe.display()))?;
                    let stdout = child.stdout.take().context("no stdout of a member")?;
                    let reader = tokio::spawn(read_member(i, stdout, self.seen.clone()));
                    self.members.insert(i, Running::Process { child, reader });
                }
                let since = Instant::now();
                loop {
                    {
                        let s = self.seen();
                        if ids.iter().all(|i| s.joined.contains(i)) {
                            break;
                        }
                        if !s.unexpected_exits.is_empty() {
                            bail!("{}", s.unexpected_exits.join("; "));
                        }
                    }
                    if since.elapsed() > JOIN_LIMIT {
                        bail!("member processes did not join within {JOIN_LIMIT:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        Ok(ids)
    }

    /// Graceful leave of member `i`, returning once it has left.
    pub async fn leave(&mut self, i: usize) {
        self.stop(i, Exit::Leave).await;
    }

    /// Member `i` dies without a word (a task that drops everything, or `kill -9` of its
    /// process): its session ends only by the store's expiry.
    pub async fn crash(&mut self, i: usize) {
        self.stop(i, Exit::Crash).await;
    }

    async fn stop(&mut self, i: usize, how: Exit) {
        let Some(running) = self.members.remove(&i) else {
            return;
        };
        lock(&self.seen).expected_exit.insert(i);
        stop(running, how, self.ttl).await;
    }
}

/// Ends one member the way `how` says, and waits until it is gone.
async fn stop(running: Running, how: Exit, ttl: Duration) {
    match running {
        Running::Task { exit, task } => {
            let _ = exit.send(how);
            let _ = task.await;
        }
        Running::Process { mut child, reader } => {
            match how {
                Exit::Crash => {
                    let _ = child.start_kill();
                }
                Exit::Leave => {
                    if let Some(pid) = child.id() {
                        // SAFETY: kill(2) has no memory-safety preconditions; the pid is
                        // our own child's, not yet reaped (we still hold `child`).
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    }
                }
            }
            // A graceful leave takes at most the leave timeout; past that, kill it.
            let wait = tokio::time::timeout(ttl * 3 + JOIN_LIMIT, child.wait()).await;
            if wait.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            let _ = reader.await;
        }
    }
}

impl Fleet {
    /// Waits until the application sees the group stable and quiet for `quiet`; returns when
    /// it became stable (the last grant or revoke before it), or `None` after `limit`.
    pub async fn wait_stable(
        &self,
        resources: usize,
        since: Instant,
        quiet: Duration,
        limit: Duration,
    ) -> Option<Duration> {
        let live = self.live();
        let since_ns = boottime_ns().saturating_sub(since.elapsed().as_nanos() as u64);
        loop {
            let now = boottime_ns();
            {
                let seen = self.seen();
                if !seen.unexpected_exits.is_empty() {
                    return None;
                }
                if seen.stable(resources, &live) {
                    let at = seen.last_change.unwrap_or(since_ns).max(since_ns);
                    if now.saturating_sub(at) >= quiet.as_nanos() as u64 {
                        return Some(Duration::from_nanos(at - since_ns));
                    }
                }
            }
            if since.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The store counts of every member process so far (in-process members are counted by
    /// the bench's own wrapper instead).
    pub fn child_counts(&self) -> Counts {
        self.seen().child_total()
    }

    /// Each member's store counts so far, member by member (gone ones included).
    pub fn member_counts(&self) -> BTreeMap<usize, Counts> {
        let mut all = self.seen().child_counts.clone();
        for (i, c) in &self.task_counters {
            all.insert(*i, c.snapshot());
        }
        all
    }

    /// Leaves with every member still running, all at once (one after another, 1,000
    /// members took minutes).
    pub async fn shutdown(&mut self) {
        let members = std::mem::take(&mut self.members);
        lock(&self.seen)
            .expected_exit
            .extend(members.keys().copied());
        let ttl = self.ttl;
        let stops = members
            .into_values()
            .map(|running| stop(running, Exit::Leave, ttl));
        futures::future::join_all(stops).await;
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads what member process `i` prints (see `child.rs`) into `seen`. When its output ends
/// the process is gone, and with it every access it made.
async fn read_member(i: usize, stdout: tokio::process::ChildStdout, seen: Arc<Mutex<Seen>>) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut bad = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split(' ');
        let mut s = lock(&seen);
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("joined"), None, None) => {
                s.joined.insert(i);
                true
            }
            (Some(kind @ ("+" | "-")), Some(r), Some(at)) => match at.parse::<u64>() {
                Ok(at) if kind == "+" => {
                    s.grant(i, r, at);
                    true
                }
                Ok(at) => {
                    s.release(i, r, at);
                    true
                }
                Err(_) => false,
            },
            (Some("c"), _, _) => match Counts::from_words(line.split(' ').skip(1)) {
                Some(c) => {
                    s.child_counts.insert(i, c);
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !parsed && bad.is_none() {
            bad = Some(line.clone());
        }
    }
    let mut s = lock(&seen);
    s.release_all(i, boottime_ns());
    if let Some(line) = bad {
        s.unexpected_exits.push(format!(
            "member m{i} printed a line the bench cannot read: {line:?}"
        ));
    }
    if !s.expected_exit.contains(&i) {
        s.unexpected_exits
            .push(format!("member m{i} exited on its own (its log is above)"));
    }
}

/// Where an application reports what it holds.
pub enum Sink {
    /// Straight into the bench's record, as member `i`.
    Seen(usize, Arc<Mutex<Seen>>),
    /// As lines for the bench process to read (`+ RESOURCE NS`, `- RESOURCE NS`).
    Lines(mpsc::UnboundedSender<String>),
}

impl Sink {
    fn event(&self, granted: bool, r: &str) {
        let at = boottime_ns();
        match self {
            Sink::Seen(i, seen) => {
                let mut s = lock(seen);
                if granted {
                    s.grant(*i, r, at);
                } else {
                    s.release(*i, r, at);
                }
            }
            Sink::Lines(tx) => {
                let _ = tx.send(format!("{} {r} {at}", if granted { '+' } else { '-' }));
            }
        }
    }
}

/// A member's application: holds every lease until it is revoked, reporting to `sink`.
pub async fn serve(mut handle: Member, mut exit: oneshot::Receiver<Exit>, sink: Sink) {
    let sink = Arc::new(sink);
    loop {
        tokio::select! {
            how = &mut exit => {
                match how {
                    Ok(Exit::Crash) => handle.simulate_crash(),
                    _ => { let _ = handle.leave().await; }
                }
                return;
            }
            lease = handle.next_lease() => {
                let Some(lease) = lease else { return };
                let r = lease.resource().to_string();
                sink.event(true, &r);
                let sink = sink.clone();
                tokio::spawn(async move {
                    lease.revoked().await;
                    // The access stops here: dropping the lease tells the member.
                    sink.event(false, &r);
                    drop(lease);
                });
            }
        }
    }
}
