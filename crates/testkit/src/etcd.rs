//! Real etcd clusters for integration tests (etcd 3.4 from the Debian `etcd-server` and
//! `etcd-client` packages).
//!
//! Each member is an `etcd` process in the foreground, tied to the test process, with its data
//! directory and log in a temporary directory of its own and its client and peer ports on free
//! loopback ports, so test processes can run side by side. The fixture drives the members with
//! `etcdctl` (v3 API): readiness is `endpoint health` (a linearizable read, so it needs a
//! leader and a quorum), leadership is `endpoint status`.
//!
//! Starting a new cluster of more than one member takes about two seconds more than one would
//! guess: before it serves, each new member asks every other one whether it already belongs to
//! a running cluster, and the others do not answer yet (they are at the same step), so each ask
//! waits for its timeout (about 1 s per other member here). A restart on existing data skips it.

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::spawn::{
    kill_child, lock, signal, spawn_tied, start_with_retries, sweep_stale_dirs, tail,
};
use crate::zk::free_ports;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const NOT_INSTALLED: &str = "etcd is not installed: run apt-get install -y etcd-server etcd-client";
const DIR_PREFIX: &str = "rbtest-etcd-";
/// A port taken by another test process between `free_ports` and the bind makes a member exit;
/// a fresh set of ports fixes it.
const START_ATTEMPTS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// etcdctl's dial and command timeout for the fixture's own probes: a live member answers at
/// once, and a paused one must not stall a poll loop for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// etcdctl's command timeout for [`EtcdCluster::etcdctl`] (etcdctl's own default).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard bound on one etcdctl run, whatever its own timeouts do (`watch` never ends).
const ETCDCTL_LIMIT: Duration = Duration::from_secs(30);

/// How to run an etcd cluster. Timings are etcd's own flags, in milliseconds.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Number of members: 1 or 3 in practice (any size from 1 works).
    pub nodes: usize,
    /// `--heartbeat-interval` (etcd's default 100 ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (etcd's default 1000 ms): how long a follower waits without
    /// hearing from its leader before it campaigns, and (check-quorum) how long a leader keeps
    /// leading without hearing from a quorum.
    pub election_timeout_ms: u64,
    /// More flags for every member, e.g. `--pre-vote` (off by default in 3.4) or
    /// `--max-txn-ops=1024`.
    pub extra_args: Vec<String>,
    /// Serve clients over TLS only (peers stay plain).
    pub tls: Option<EtcdTls>,
}

/// The files of a TLS client port: the server's certificate and key, and the CA that signed
/// it (etcdctl trusts it; with `client_cert_auth`, clients must present a certificate it
/// signed).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert_auth: bool,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            nodes: 1,
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            extra_args: Vec::new(),
            tls: None,
        }
    }
}

impl EtcdOptions {
    /// A cluster of `nodes` members with etcd's default timings.
    pub fn cluster(nodes: usize) -> Self {
        EtcdOptions {
            nodes,
            ..Default::default()
        }
    }
}

struct Node {
    /// `--name`: the cluster token and the index, so a member of someone else's cluster that
    /// answers on our port is told apart (see `check_identity`).
    name: String,
    dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    peer_port: u16,
    proc: Mutex<Option<Child>>,
}

/// One or more etcd members owned by a test (see the module docs). Dropping it kills them and
/// deletes their data.
pub struct EtcdCluster {
    opts: EtcdOptions,
    /// `--initial-cluster-token`: the temp dir's name, unique on the machine.
    token: String,
    nodes: Vec<Node>,
    /// Removed on drop, after the members are dead (the field drops after `Drop::drop` runs).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

static SHARED: OnceLock<Result<EtcdCluster, String>> = OnceLock::new();

impl EtcdCluster {
    /// Starts the members and waits until every one is healthy and the cluster has a leader.
    /// Fails (never skips) when etcd is not installed.
    pub fn start(opts: EtcdOptions) -> Result<EtcdCluster> {
        for bin in [ETCD, ETCDCTL] {
            if !Path::new(bin).exists() {
                bail!("{NOT_INSTALLED} ({bin} is missing)");
            }
        }
        if opts.nodes == 0 {
            bail!("EtcdOptions::nodes must be at least 1");
        }
        // A WAL segment is preallocated at 64 MB: leftovers would fill /tmp quickly.
        sweep_stale_dirs(DIR_PREFIX);
        start_with_retries(START_ATTEMPTS, || Self::try_start(&opts))
            .with_context(|| format!("cannot start etcd ({} members)", opts.nodes))
    }

    /// One member with the default timings.
    pub fn single() -> Result<EtcdCluster> {
        Self::start(EtcdOptions::cluster(1))
    }

    /// Three members with the default timings.
    pub fn three() -> Result<EtcdCluster> {
        Self::start(EtcdOptions::cluster(3))
    }

    /// One 3-member cluster for the whole test process, started on first use, for suites that
    /// isolate tests by a unique key prefix. Tests using it must not kill or pause its members.
    /// It is never dropped; the kernel kills it when the process exits (see `spawn`). Panics,
    /// failing the calling test, when it cannot start; later calls fail fast with the same
    /// message.
    pub fn shared() -> &'static EtcdCluster {
        match SHARED.get_or_init(|| EtcdCluster::three().map_err(|e| format!("{e:#}"))) {
            Ok(cluster) => cluster,
            Err(e) => panic!("the shared etcd cluster did not start: {e}"),
        }
    }

    fn try_start(opts: &EtcdOptions) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("cannot create a temp dir")?;
        let token = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("temp dir {} has no UTF-8 name", dir.path().display()))?
            .to_string();
        let ports = free_ports(opts.nodes * 2)?;
        let mut nodes = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("cannot create {}", node_dir.display()))?;
            nodes.push(Node {
                name: format!("{token}-{i}"),
                log: node_dir.join("etcd.log"),
                dir: node_dir,
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                proc: Mutex::new(None),
            });
        }
        let cluster = EtcdCluster {
            opts: opts.clone(),
            token,
            nodes,
            dir,
        };
        for i in 0..cluster.len() {
            cluster.spawn_node(i, "new")?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let all: Vec<usize> = (0..cluster.len()).collect();
        cluster.wait_healthy(&all, deadline)?;
        cluster.wait_for_leader(deadline.saturating_duration_since(Instant::now()))?;
        Ok(cluster)
    }

    fn spawn_node(&self, i: usize, state: &str) -> Result<()> {
        let node = &self.nodes[i];
        let mut slot = lock(&node.proc);
        if slot.is_some() {
            bail!("etcd member {i} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        writeln!(
            &log,
            "==== rebalanser-testkit: starting member {i} ({state}) ===="
        )?;
        let initial: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}=http://127.0.0.1:{}", n.name, n.peer_port))
            .collect();
        let client = format!("{}://127.0.0.1:{}", self.scheme(), node.client_port);
        let peer = format!("http://127.0.0.1:{}", node.peer_port);
        let mut cmd = Command::new(ETCD);
        clean_env(&mut cmd, "ETCD_");
        cmd.arg(format!("--name={}", node.name))
            .arg(format!("--data-dir={}", node.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={}", self.opts.heartbeat_ms))
            .arg(format!(
                "--election-timeout={}",
                self.opts.election_timeout_ms
            ))
            // 3.4's default logger (capnslog) is deprecated and says so at every start.
            .args(["--logger=zap", "--log-outputs=stderr"])
            .args(&self.opts.extra_args)
            .args(self.opts.tls.iter().flat_map(|t| {
                let mut a = vec![
                    format!("--cert-file={}", t.cert.display()),
                    format!("--key-file={}", t.key.display()),
                ];
                if t.client_cert_auth {
                    a.push("--client-cert-auth".into());
                    a.push(format!("--trusted-ca-file={}", t.ca.display()));
                }
                a
            }))
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied(cmd).with_context(|| format!("cannot start {ETCD}"))?;
        *slot = Some(child);
        Ok(())
    }

    /// Waits until every member in `idxs` is healthy and is the member we started.
    fn wait_healthy(&self, idxs: &[usize], deadline: Instant) -> Result<()> {
        let mut pending = idxs.to_vec();
        loop {
            for &i in &pending {
                if let Some(status) = self.exit_status(i) {
                    bail!(
                        "etcd member {i} exited ({status}) before serving; log tail:\n{}",
                        self.log_tail(i)
                    );
                }
            }
            let healthy = thread::scope(|s| {
                let asks: Vec<_> = pending
                    .iter()
                    .map(|&i| s.spawn(move || self.is_healthy(i)))
                    .collect();
                asks.into_iter()
                    .map(|a| a.join().unwrap_or(false))
                    .collect::<Vec<bool>>()
            });
            let mut still = Vec::new();
            for (&i, ok) in pending.iter().zip(healthy) {
                if ok {
                    self.check_identity(i)?;
                } else {
                    still.push(i);
                }
            }
            pending = still;
            let Some(&first) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcd member {first} ({}) not healthy in time; log tail:\n{}",
                    self.client_addr(first),
                    self.log_tail(first)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the member answering node `i`'s port belongs to this cluster (not to another
    /// process's cluster that took the port after our test-bind).
    fn check_identity(&self, i: usize) -> Result<()> {
        let members = self.etcdctl_with(i, PROBE_TIMEOUT, &["member", "list", "-w", "json"])?;
        if members.contains(&format!("\"name\":\"{}\"", self.nodes[i].name)) {
            Ok(())
        } else {
            bail!(
                "port {} is answered by another etcd cluster (port collision): {members}",
                self.nodes[i].client_port
            )
        }
    }

    fn exit_status(&self, i: usize) -> Option<std::process::ExitStatus> {
        let mut slot = lock(&self.nodes[i].proc);
        match slot.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                *slot = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The URL parameter a store URL on this cluster needs: the installed etcd (Debian's
    /// 3.4.23) has etcd #15247, which the store refuses unless the URL accepts it (PITFALLS 3).
    pub const ACCEPT_BUG: &'static str = "allow_server_bug=15247";

    /// The client endpoints of every member, `127.0.0.1:p1,127.0.0.1:p2,...`: the host list of
    /// a store URL `etcd://h1:p1,h2:p2/prefix`, and etcdctl's `--endpoints`.
    pub fn endpoints(&self) -> String {
        let addrs: Vec<String> = (0..self.len())
            .map(|i| self.client_addr(i).to_string())
            .collect();
        addrs.join(",")
    }

    /// Client address of member `i` alone: connect here to pin a client to one member.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            self.nodes[i].client_port,
        ))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has at least one member); for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The options it was started with.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// The etcd pid of member `i`, or `None` while it is killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        lock(&self.nodes[i].proc).as_ref().map(|c| c.id())
    }

    /// Path of member `i`'s log (etcd's stdout and stderr, zap JSON lines, appended across
    /// restarts).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.nodes[i].log, 40)
    }

    /// SIGKILLs member `i` and reaps it: a crash. Killing a member that is not running does
    /// nothing.
    pub fn kill(&self, i: usize) -> Result<()> {
        kill_child(&self.nodes[i].proc).with_context(|| format!("cannot reap etcd member {i}"))
    }

    /// Starts member `i` again on its data (killing it first if it runs; the
    /// `--initial-cluster-state existing` of a member coming back) and waits until it is
    /// healthy.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.kill(i)?;
        self.spawn_node(i, "existing")?;
        self.wait_healthy(&[i], Instant::now() + START_TIMEOUT)
    }

    /// SIGSTOPs member `i`: a GC pause or a frozen VM. Its sockets stay open, so its peers and
    /// clients see silence, not a closed connection.
    pub fn pause(&self, i: usize) -> Result<()> {
        signal(self.running_pid(i)?, libc::SIGSTOP)
            .with_context(|| format!("cannot SIGSTOP etcd member {i}"))
    }

    /// SIGCONTs member `i` after `pause`.
    pub fn resume(&self, i: usize) -> Result<()> {
        signal(self.running_pid(i)?, libc::SIGCONT)
            .with_context(|| format!("cannot SIGCONT etcd member {i}"))
    }

    fn running_pid(&self, i: usize) -> Result<u32> {
        self.pid(i)
            .ok_or_else(|| anyhow!("etcd member {i} is not running"))
    }

    /// Whether member `i` answers `etcdctl endpoint health` within a second: a linearizable
    /// read through it commits, so it has a leader and the leader a quorum.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.listening(i)
            && self
                .etcdctl_with(i, PROBE_TIMEOUT, &["endpoint", "health"])
                .is_ok()
    }

    /// Whether member `i`'s client port accepts a TCP connection. etcdctl retries a refused
    /// connection until its dial timeout, so the probes ask this first to learn at once that a
    /// member is down (a paused one still accepts: the kernel completes the handshake).
    fn listening(&self, i: usize) -> bool {
        TcpStream::connect_timeout(&self.client_addr(i), PROBE_TIMEOUT).is_ok()
    }

    /// Waits until member `i` is healthy (see `is_healthy`).
    pub fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()> {
        self.wait_healthy(&[i], Instant::now() + timeout)
            .with_context(|| format!("etcd member {i} not serving after {timeout:?}"))
    }

    /// `(its member id, the leader id it knows, 0 for none)` from member `i`'s
    /// `endpoint status`; `None` when it does not answer within a second.
    fn status(&self, i: usize) -> Option<(u64, u64)> {
        if !self.listening(i) {
            return None;
        }
        let json = self
            .etcdctl_with(i, PROBE_TIMEOUT, &["endpoint", "status", "-w", "json"])
            .ok()?;
        Some((json_u64(&json, "member_id")?, json_u64(&json, "leader")?))
    }

    /// `status` of every member, asked in parallel so that a paused member (which makes its
    /// own ask wait for the full second) does not also delay the others.
    fn statuses(&self) -> Vec<Option<(u64, u64)>> {
        thread::scope(|s| {
            let asks: Vec<_> = (0..self.len())
                .map(|i| s.spawn(move || self.status(i)))
                .collect();
            asks.into_iter().map(|a| a.join().unwrap_or(None)).collect()
        })
    }

    /// The index of the one member that says it leads (its leader id is its own member id).
    /// `None` if none does or, transiently (a resumed old leader not yet told of the new
    /// term), more than one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .statuses()
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Some((me, leader)) if me == leader))
            .map(|(i, _)| i)
            .collect();
        match leaders[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits until exactly one member leads, and returns its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .statuses()
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match s {
                        Some((me, leader)) => format!("{i}: member {me:x}, leader {leader:x}"),
                        None => format!("{i}: no answer"),
                    })
                    .collect();
                bail!("no etcd leader after {timeout:?}; {}", seen.join(", "));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `etcdctl --endpoints=<member i> args...` (v3 API, 5 s command timeout) and returns
    /// its standard output, e.g. `OK` for `put k v`, the value for `get k --print-value-only`.
    /// An error carries its exit status and standard error.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Result<String> {
        self.etcdctl_with(i, COMMAND_TIMEOUT, args)
    }

    fn etcdctl_with(&self, i: usize, timeout: Duration, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(ETCDCTL);
        // etcdctl refuses a flag given both as ETCDCTL_* and on the command line.
        clean_env(&mut cmd, "ETCDCTL_");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}://{}",
                self.scheme(),
                self.client_addr(i)
            ))
            .arg(format!("--dial-timeout={}ms", timeout.as_millis()))
            .arg(format!("--command-timeout={}ms", timeout.as_millis()))
            .args(self.opts.tls.iter().flat_map(|t| {
                let mut a = vec![format!("--cacert={}", t.ca.display())];
                if t.client_cert_auth {
                    // The server's own pair serves etcdctl as a client certificate: same CA.
                    a.push(format!("--cert={}", t.cert.display()));
                    a.push(format!("--key={}", t.key.display()));
                }
                a
            }))
            .args(args);
        let (status, out, err) = run_bounded(cmd, ETCDCTL_LIMIT)
            .with_context(|| format!("etcdctl {args:?} against member {i}"))?;
        if !status.success() {
            bail!("etcdctl {args:?} against member {i} failed ({status}): {out}{err}");
        }
        Ok(out)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}

/// Keeps the test's own `{prefix}*` variables (etcd and etcdctl read them as flags) away from
/// the child.
fn clean_env(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with(prefix)) {
            cmd.env_remove(key);
        }
    }
}

/// Runs `cmd` to its end, SIGKILLing it after `limit`; returns its status, stdout and stderr.
fn run_bounded(
    mut cmd: Command,
    limit: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).with_context(|| format!("cannot run {ETCDCTL}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    thread::scope(|s| {
        // Read both pipes while waiting, so a full pipe never blocks the child.
        let out = s.spawn(|| read_all(stdout));
        let err = s.spawn(|| read_all(stderr));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not finish within {limit:?}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        Ok((status, out, err))
    })
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut s);
    }
    s
}

/// The unsigned integer after `"key":` in etcdctl's JSON output (its ids are plain numbers,
/// and this crate has no JSON parser).
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}
