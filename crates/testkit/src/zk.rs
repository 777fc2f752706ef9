//! Real ZooKeeper servers for integration tests.
//!
//! The store backends must be tested against the real server, not a model of it: session expiry,
//! leader changes and partitions are where a backend goes wrong, and only the real server has
//! its real timing. Servers run as plain `java` processes from the Debian `zookeeper` package,
//! each in its own temporary directory, on random loopback ports, so test processes can run side
//! by side.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::nft;
use crate::spawn::{kill_child, lock, signal, spawn_tied, sweep_stale_dirs, tail};

const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Without a binding slf4j logs nothing, and a server that fails to start leaves no trace.
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
const NETTY_TLS_JARS: [&str; 2] = [
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
];
const ZK_CLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";
const NOT_INSTALLED: &str = "ZooKeeper is not installed: run apt-get install -y zookeeper";

/// Ports below the ephemeral range (32768), so a server never races the kernel's own choice of
/// outgoing ports, and above the well-known ones.
const PORT_RANGE: std::ops::Range<u16> = 10000..32000;
/// Parallel test processes pick ports independently and may collide; a collision shows up as a
/// server that exits or a port answered by someone else's server, and a fresh set of ports fixes
/// it.
const START_ATTEMPTS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Four-letter words are answered at once by a live server; a paused or cut-off one must not
/// stall a poll loop for long.
const FOUR_LETTER_TIMEOUT: Duration = Duration::from_millis(1000);
const ZKCLI_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run a ZooKeeper ensemble. Timings are in ZooKeeper's own units so tests can reason about
/// them the way the server does (`syncLimit * tickTime` is how long a follower survives without
/// its leader).
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// 1 (standalone) or an odd ensemble size, usually 3.
    pub nodes: usize,
    /// `tickTime`. The default 200 ms (ZooKeeper's own is 2000) keeps session expiry and leader
    /// election fast enough for tests; the minimum session timeout is `2 * tick_ms`.
    pub tick_ms: u64,
    /// `syncLimit`, in ticks: how long a follower may lag or be cut off before it drops out.
    pub sync_limit: u32,
    /// `initLimit`, in ticks: how long a follower may take to sync with a new leader.
    pub init_limit: u32,
    /// `maxSessionTimeout` in ticks (ZooKeeper's default is 20 ticks): a test that asks for a
    /// longer session than this gets silently capped, which it may want to control.
    pub max_session_ticks: Option<u32>,
    /// Also serve clients over TLS on a `secureClientPort` of each node (Netty).
    pub tls: Option<ZkTls>,
}

/// The files of a TLS client port: the server's certificate and key, the CA clients' (and with
/// `client_auth`, the CA the clients' certificates must come from).
#[derive(Debug, Clone)]
pub struct ZkTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `ssl.clientAuth=need` (else `none`).
    pub client_auth: bool,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            nodes: 1,
            tick_ms: 200,
            sync_limit: 5,
            init_limit: 10,
            max_session_ticks: None,
            tls: None,
        }
    }
}

impl ZkOptions {
    /// An ensemble of `nodes` servers with the default timings.
    pub fn ensemble(nodes: usize) -> Self {
        ZkOptions {
            nodes,
            ..Default::default()
        }
    }
}

struct Node {
    /// 0-based index; the server's `myid` is `index + 1`.
    index: usize,
    dir: PathBuf,
    data_dir: PathBuf,
    cfg: PathBuf,
    log: PathBuf,
    client_port: u16,
    /// The TLS client port (used only with `ZkOptions::tls`).
    secure_port: u16,
    quorum_port: u16,
    election_port: u16,
    proc: Mutex<Option<Child>>,
}

/// One or more ZooKeeper servers owned by a test. Dropping it kills the servers and deletes their
/// data, so each test starts from nothing and leaves nothing.
pub struct ZkEnsemble {
    opts: ZkOptions,
    nodes: Vec<Node>,
    nft: nft::Table,
    /// Removed on drop, after the servers are dead (the field drops after `Drop::drop` runs).
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for ZkEnsemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkEnsemble")
            .field("connect_string", &self.connect_string())
            .field("dir", &self._dir.path())
            .finish()
    }
}

static SHARED: OnceLock<std::result::Result<ZkEnsemble, String>> = OnceLock::new();

impl ZkEnsemble {
    /// Starts the servers and waits until every one serves clients.
    ///
    /// Fails (never skips) when ZooKeeper is not installed, so a machine without it cannot pass
    /// the suites that need it.
    pub fn start(opts: ZkOptions) -> Result<ZkEnsemble> {
        check_installed()?;
        if opts.nodes == 0 {
            bail!("ZkOptions::nodes must be at least 1");
        }
        sweep_stale_dirs("rbtest-zk-");
        nft::sweep_stale_tables();
        let mut errors = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&opts) {
                Ok(ensemble) => return Ok(ensemble),
                Err(e) => errors.push(format!("attempt {attempt}: {e:#}")),
            }
        }
        bail!(
            "cannot start ZooKeeper ({} nodes):\n{}",
            opts.nodes,
            errors.join("\n")
        )
    }

    /// A standalone server with the default timings.
    pub fn single() -> Result<ZkEnsemble> {
        Self::start(ZkOptions::default())
    }

    /// One standalone server for the whole test process, started on first use.
    ///
    /// For suites that isolate tests by a unique chroot rather than a server each: one JVM
    /// instead of dozens on a 2-core machine. It is never dropped; the kernel kills it when the
    /// process exits (see `spawn`). Panics, failing the calling test, when it cannot start; later
    /// calls fail fast with the same message instead of retrying for another 30 s each.
    pub fn shared() -> &'static ZkEnsemble {
        match SHARED.get_or_init(|| ZkEnsemble::single().map_err(|e| format!("{e:#}"))) {
            Ok(ensemble) => ensemble,
            Err(e) => panic!("the shared ZooKeeper server did not start: {e}"),
        }
    }

    fn try_start(opts: &ZkOptions) -> Result<ZkEnsemble> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rbtest-zk-{}-", std::process::id()))
            .tempdir()
            .context("cannot create a temp dir")?;
        let ports = free_ports(opts.nodes * 4)?;
        let nodes: Vec<Node> = (0..opts.nodes)
            .map(|index| {
                let node_dir = dir.path().join(format!("node{}", index + 1));
                Node {
                    index,
                    data_dir: node_dir.join("data"),
                    cfg: node_dir.join("zoo.cfg"),
                    log: node_dir.join("zk.log"),
                    dir: node_dir,
                    client_port: ports[index * 4],
                    quorum_port: ports[index * 4 + 1],
                    election_port: ports[index * 4 + 2],
                    secure_port: ports[index * 4 + 3],
                    proc: Mutex::new(None),
                }
            })
            .collect();
        for node in &nodes {
            fs::create_dir_all(&node.data_dir)
                .with_context(|| format!("cannot create {}", node.data_dir.display()))?;
            if opts.nodes > 1 {
                fs::write(node.data_dir.join("myid"), format!("{}\n", node.index + 1))?;
            }
            if let Some(t) = &opts.tls {
                // A PEM key store holds the key and the certificate in one file.
                let pem = format!(
                    "{}{}",
                    fs::read_to_string(&t.key).context("the TLS key")?,
                    fs::read_to_string(&t.cert).context("the TLS certificate")?
                );
                fs::write(node.dir.join("keystore.pem"), pem)?;
            }
            fs::write(&node.cfg, zoo_cfg(opts, node, &nodes))?;
        }
        let ensemble = ZkEnsemble {
            opts: opts.clone(),
            nodes,
            nft: nft::Table::new(),
            _dir: dir,
        };
        for i in 0..ensemble.nodes.len() {
            ensemble.spawn_node(i)?;
        }
        let all: Vec<usize> = (0..ensemble.nodes.len()).collect();
        ensemble.wait_serving_all(&all, START_TIMEOUT)?;
        Ok(ensemble)
    }

    fn spawn_node(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut slot = lock(&node.proc);
        if slot.is_some() {
            bail!("node {i} is already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        writeln!(&log, "==== rebalanser-testkit: starting node {i} ====")?;
        let mut classpath = ZK_JAR.to_string();
        if Path::new(SLF4J_SIMPLE_JAR).exists() {
            classpath.push(':');
            classpath.push_str(SLF4J_SIMPLE_JAR);
        }
        if self.opts.tls.is_some() {
            // Netty's TLS pipeline needs its codec and resolver, which the package's jar
            // manifest leaves out (it lists only what the plain NIO server uses).
            for jar in NETTY_TLS_JARS {
                classpath.push(':');
                classpath.push_str(jar);
            }
        }
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xmx256m",
            // Fewer GC and JIT threads: several JVMs share two cores during the tests, and they
            // start faster this way.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            // No /tmp/hsperfdata_* files left behind by SIGKILLed JVMs.
            "-XX:-UsePerfData",
            // IPv4 sockets keep `ss` output and the nft rules of `cut_from_leader` simple.
            "-Djava.net.preferIPv4Stack=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-cp",
            &classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        ])
        .arg(&node.cfg)
        .current_dir(&node.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let child = spawn_tied(cmd).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("{NOT_INSTALLED} (java not found)")
            } else {
                anyhow!("cannot start java for node {i}: {e}")
            }
        })?;
        *slot = Some(child);
        Ok(())
    }

    /// Waits until each node in `idxs` serves clients and is the server we started (not another
    /// process's server that took the port after our test-bind).
    fn wait_serving_all(&self, idxs: &[usize], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = idxs.to_vec();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                if let Some(status) = self.exit_status(i) {
                    bail!(
                        "ZooKeeper node {i} exited ({status}) before serving; log tail:\n{}",
                        self.log_tail(i)
                    );
                }
                if self.mode(i).is_some() {
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
                    "ZooKeeper node {first} (client port {}) not serving after {timeout:?}; log tail:\n{}",
                    self.nodes[first].client_port,
                    self.log_tail(first)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_identity(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let conf = four_letter(self.client_addr(i), "conf").unwrap_or_default();
        let ours = format!("dataDir={}", node.data_dir.display());
        if conf.lines().any(|l| l.starts_with(&ours)) {
            Ok(())
        } else {
            bail!(
                "port {} is answered by another ZooKeeper server (port collision); its conf:\n{conf}",
                node.client_port
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

    /// The last lines of node `i`'s log: what a failed start or a failed assertion needs to show.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.nodes[i].log, 40)
    }

    /// Path of node `i`'s log (the JVM's stdout and stderr, appended across restarts).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// The connection string of the whole ensemble, as clients take it.
    pub fn connect_string(&self) -> String {
        let addrs: Vec<String> = (0..self.len())
            .map(|i| self.client_addr(i).to_string())
            .collect();
        addrs.join(",")
    }

    /// The TLS client endpoints of every node (with `ZkOptions::tls`), `127.0.0.1:p1,...`.
    pub fn secure_connect_string(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.secure_port))
            .collect();
        addrs.join(",")
    }

    /// Client address of node `i` alone: connect here to pin a client to one server.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            self.nodes[i].client_port,
        ))
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (an ensemble has at least one server); for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The options it was started with.
    pub fn options(&self) -> &ZkOptions {
        &self.opts
    }

    /// The java pid of node `i`, or `None` while it is killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        lock(&self.nodes[i].proc).as_ref().map(|c| c.id())
    }

    fn running_pid(&self, i: usize) -> Result<u32> {
        self.pid(i)
            .ok_or_else(|| anyhow!("ZooKeeper node {i} is not running"))
    }

    /// SIGKILLs node `i` and reaps it: a crash, with no goodbye to peers or clients. Killing a
    /// node that is not running does nothing, so cleanup paths can call it freely.
    pub fn kill(&self, i: usize) -> Result<()> {
        kill_child(&self.nodes[i].proc).with_context(|| format!("cannot reap node {i}"))
    }

    /// Starts node `i` again with its config and data (killing it first if it runs) and waits
    /// until it serves: a crashed server coming back, with its log and snapshot intact.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.kill(i)?;
        self.spawn_node(i)?;
        self.wait_serving_all(&[i], START_TIMEOUT)
    }

    /// SIGSTOPs node `i`: a GC pause or a frozen VM. Its sockets stay open and its peers and
    /// clients see silence, not a closed connection, which is the harder case for timeouts.
    pub fn pause(&self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        signal(pid, libc::SIGSTOP).with_context(|| format!("cannot SIGSTOP node {i}"))
    }

    /// SIGCONTs node `i` after `pause`.
    pub fn resume(&self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        signal(pid, libc::SIGCONT).with_context(|| format!("cannot SIGCONT node {i}"))
    }

    /// What node `i` says it is (`standalone`, `leader`, `follower`, ...), asked with `srvr`;
    /// `None` when it does not answer within a second or answers that it is not serving (a
    /// follower that lost its leader says so while it looks for a new one).
    pub fn mode(&self, i: usize) -> Option<String> {
        let reply = four_letter(self.client_addr(i), "srvr").ok()?;
        reply
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_string())
    }

    /// Whether node `i` serves clients now (it answers `srvr` with a mode). Unlike `ruok`, which a
    /// running server answers even while it has no quorum and rejects every client.
    pub fn is_serving(&self, i: usize) -> bool {
        self.mode(i).is_some()
    }

    /// Whether node `i`'s process answers `ruok` with `imok`: alive and reading its client
    /// port, serving or not.
    pub fn ruok(&self, i: usize) -> bool {
        four_letter(self.client_addr(i), "ruok")
            .map(|r| r.trim() == "imok")
            .unwrap_or(false)
    }

    /// `mode` of every node, asked in parallel so that a paused node (which makes its own query
    /// wait for the full timeout) does not also delay the answers of the others.
    pub fn modes(&self) -> Vec<Option<String>> {
        thread::scope(|scope| {
            let asks: Vec<_> = (0..self.len())
                .map(|i| scope.spawn(move || self.mode(i)))
                .collect();
            asks.into_iter().map(|a| a.join().unwrap_or(None)).collect()
        })
    }

    /// The index of the one node that says it leads (a standalone server counts as its own
    /// leader). `None` if none does or, transiently, more than one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .modes()
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m.as_deref(), Some("leader" | "standalone")))
            .map(|(i, _)| i)
            .collect();
        match leaders[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits until exactly one node leads and serves (a leader serves only once a quorum
    /// follows it), and returns its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let modes: Vec<String> = self
                    .modes()
                    .iter()
                    .enumerate()
                    .map(|(i, m)| format!("{i}: {m:?}"))
                    .collect();
                bail!("no leader after {timeout:?}; modes: {}", modes.join(", "));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` serves clients.
    pub fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.is_serving(i) {
            if Instant::now() >= deadline {
                bail!(
                    "node {i} not serving after {timeout:?}; log tail:\n{}",
                    self.log_tail(i)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Cuts node `follower` off from the current leader, and only from it: the partition in
    /// which a follower still answers its clients' pings while no write through it can commit.
    ///
    /// That lasts until the follower notices that its leader is silent, `sync_limit * tick_ms`
    /// after the last packet it got (about 0.9 s with the defaults; raise `sync_limit` for a
    /// longer window). It then drops every client connection and stays out of service (`mode`
    /// is `None`, though `ruok` still says `imok`) until `heal`, because rejoining needs the
    /// leader itself. The leader and the other follower keep the quorum throughout.
    ///
    /// All nodes share 127.0.0.1, so addresses cannot tell them apart: the cut drops the
    /// established TCP connections between the two JVMs (found with `ss` by pid, both directions
    /// of each 4-tuple) and any new connection attempt (SYN or SYN-ACK) to the leader's quorum and
    /// election ports and to the follower's. The other follower keeps the connections it already
    /// has, so it stays in the quorum; but while the cut lasts no node can open a new connection
    /// to those ports, so restarting a node under a cut does not rejoin it. `heal` undoes it.
    pub fn cut_from_leader(&self, follower: usize) -> Result<()> {
        if self.len() < 2 {
            bail!("cut_from_leader needs an ensemble, this is a standalone server");
        }
        let leader = self
            .leader()
            .ok_or_else(|| anyhow!("cut_from_leader: no leader now"))?;
        if leader == follower {
            bail!("cut_from_leader: node {follower} is the leader");
        }
        let f_pid = self.running_pid(follower)?;
        let l_pid = self.running_pid(leader)?;
        let (f, l) = (&self.nodes[follower], &self.nodes[leader]);
        let ports = [
            l.quorum_port,
            l.election_port,
            f.quorum_port,
            f.election_port,
        ];
        nft::sweep_stale_tables();
        let mut cut: BTreeSet<(u16, u16)> = nft::connections_between(f_pid, l_pid)?;
        self.nft.install(&ports, &cut)?;
        // A connection whose handshake was in flight while we listed sockets escaped the
        // listing; look once more now that new handshakes are dropped.
        thread::sleep(Duration::from_millis(50));
        let again = nft::connections_between(f_pid, l_pid)?;
        let new: BTreeSet<(u16, u16)> = again.difference(&cut).copied().collect();
        if !new.is_empty() {
            self.nft.add_connections(&new)?;
            cut.extend(new);
        }
        Ok(())
    }

    /// Removes every cut made by `cut_from_leader`. Connections that survived the cut resume
    /// where they stopped (TCP retransmits what was dropped) and the follower rejoins on its own,
    /// but not at once: it hears from the leader only at its next TCP retransmission on their
    /// election connection, and retransmissions back off exponentially, so rejoining takes
    /// roughly up to as long again as the cut lasted (about 1.7 s after a 3 s cut, 5.5 s after an
    /// 8 s cut here). Use `wait_serving` before relying on that node.
    pub fn heal(&self) -> Result<()> {
        self.nft.remove()
    }

    /// Runs `zkCli.sh -server <node i> args...` and returns its standard output without the
    /// connection banner: for writing and reading data exactly as a foreign or careless client
    /// would. The output is the command's data (`get`, `ls`, `stat`); zkCli prints status
    /// messages such as "Created /x" on stderr, which appears only in the error when zkCli exits
    /// non-zero (for example "Node already exists: /x") or does not finish within 30 s.
    pub fn zkcli(&self, i: usize, args: &[&str]) -> Result<String> {
        zkcli(self.client_addr(i), args)
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
        let _ = self.nft.remove();
    }
}

fn check_installed() -> Result<()> {
    if !Path::new(ZK_JAR).exists() {
        bail!("{NOT_INSTALLED} ({ZK_JAR} is missing)");
    }
    Ok(())
}

fn zoo_cfg(opts: &ZkOptions, node: &Node, all: &[Node]) -> String {
    let mut cfg = String::new();
    let _ = writeln!(cfg, "tickTime={}", opts.tick_ms);
    let _ = writeln!(cfg, "dataDir={}", node.data_dir.display());
    let _ = writeln!(cfg, "clientPort={}", node.client_port);
    cfg.push_str("clientPortAddress=127.0.0.1\n");
    cfg.push_str("admin.enableServer=false\n");
    cfg.push_str("4lw.commands.whitelist=*\n");
    // The test machine's disk is not what is under test, and SIGKILL (the only crash the tests
    // make) keeps the page cache.
    cfg.push_str("forceSync=no\n");
    if let Some(t) = &opts.tls {
        cfg.push_str("serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n");
        let _ = writeln!(cfg, "secureClientPort={}", node.secure_port);
        cfg.push_str("secureClientPortAddress=127.0.0.1\n");
        let _ = writeln!(
            cfg,
            "ssl.keyStore.location={}",
            node.dir.join("keystore.pem").display()
        );
        cfg.push_str("ssl.keyStore.type=PEM\n");
        let _ = writeln!(cfg, "ssl.trustStore.location={}", t.ca.display());
        cfg.push_str("ssl.trustStore.type=PEM\n");
        let _ = writeln!(
            cfg,
            "ssl.clientAuth={}",
            if t.client_auth { "need" } else { "none" }
        );
    }
    if let Some(ticks) = opts.max_session_ticks {
        let _ = writeln!(cfg, "maxSessionTimeout={}", u64::from(ticks) * opts.tick_ms);
    }
    if all.len() > 1 {
        let _ = writeln!(cfg, "initLimit={}", opts.init_limit);
        let _ = writeln!(cfg, "syncLimit={}", opts.sync_limit);
        cfg.push_str("standaloneEnabled=false\n");
        cfg.push_str("reconfigEnabled=false\n");
        for n in all {
            let _ = writeln!(
                cfg,
                "server.{}=127.0.0.1:{}:{}",
                n.index + 1,
                n.quorum_port,
                n.election_port
            );
        }
    }
    cfg
}

/// A random port in `PORT_RANGE`. Random rather than sequential so parallel test processes
/// rarely pick the same ones.
fn random_port() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    PORT_RANGE.start + (h.finish() % span) as u16
}

/// `n` distinct ports in `PORT_RANGE` that were free a moment ago (another process may take one
/// before the server binds it: `start` retries).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if ports.len() == n {
            return Ok(ports);
        }
        let port = random_port();
        if !ports.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.push(port);
        }
    }
    bail!("cannot find {n} free loopback ports in {PORT_RANGE:?}")
}

/// A listener on 127.0.0.1 at a random port in `PORT_RANGE`, bound at once so it cannot collide.
pub(crate) fn random_port_listener() -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..1000 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, random_port())) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    bail!("cannot bind a loopback port in {PORT_RANGE:?}: {last:?}")
}

/// Sends a four-letter word and reads the reply to the end (the server closes after answering).
pub(crate) fn four_letter(addr: SocketAddr, word: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, FOUR_LETTER_TIMEOUT)?;
    s.set_read_timeout(Some(FOUR_LETTER_TIMEOUT))?;
    s.set_write_timeout(Some(FOUR_LETTER_TIMEOUT))?;
    s.write_all(word.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// `zkCli.sh` for a given server address; see [`ZkEnsemble::zkcli`].
pub fn zkcli(addr: SocketAddr, args: &[&str]) -> Result<String> {
    if !Path::new(ZK_CLI).exists() {
        bail!("{NOT_INSTALLED} ({ZK_CLI} is missing)");
    }
    let out_dir = tempfile::Builder::new()
        .prefix(&format!("rbtest-zk-{}-cli-", std::process::id()))
        .tempdir()?;
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut cmd = Command::new(ZK_CLI);
    cmd.arg("-server")
        .arg(addr.to_string())
        .args(args)
        .current_dir(out_dir.path())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        // zkCli.sh runs java as its child, not with exec: a group of their own lets a timeout
        // kill both.
        .process_group(0);
    let mut child = spawn_tied(cmd).with_context(|| format!("cannot run {ZK_CLI}"))?;
    let deadline = Instant::now() + ZKCLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill has no memory-safety preconditions; the group id is the child's pid.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            bail!("zkCli.sh {args:?} against {addr} did not finish within {ZKCLI_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let stderr: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("SLF4J:"))
            .collect();
        bail!(
            "zkCli.sh {args:?} against {addr} failed ({status}):\n{}\n{}",
            strip_banner(&stdout),
            stderr.join("\n")
        );
    }
    Ok(strip_banner(&stdout))
}

/// Drops the lines zkCli prints about connecting, which are not the command's output.
fn strip_banner(stdout: &str) -> String {
    let mut out = String::new();
    for line in stdout.lines() {
        if line.starts_with("Connecting to ")
            || line == "WATCHER::"
            || line.starts_with("WatchedEvent state:")
            || (out.is_empty() && line.trim().is_empty())
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
