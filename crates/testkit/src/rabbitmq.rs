//! A real RabbitMQ broker for integration tests (the Debian `rabbitmq-server` package, 3.10).
//!
//! The broker runs as a plain Erlang VM (`/usr/lib/rabbitmq/bin/rabbitmq-server`, not the
//! `/usr/sbin` wrapper, which switches user), with every path, its node name and its ports in a
//! temporary directory of its own, so test processes can run side by side. Its own `epmd` (the
//! Erlang port mapper, which a broker would otherwise start as a daemon that outlives it) is
//! started first on a free port, tied to the test process like the broker itself.
//!
//! The consistent-hash exchange plugin is enabled through the enabled-plugins file.
//! [`RabbitMq::restart`] kills the VM and starts it again on the same data: durable queues and
//! persistent messages survive, connections do not.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::spawn::{lock, signal, spawn_tied, start_with_retries, tail};
use crate::zk::free_ports;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const EPMD: &str = "/usr/bin/epmd";
const NOT_INSTALLED: &str = "RabbitMQ is not installed: run apt-get install -y rabbitmq-server";
/// The broker answers AMQP about 5 s after its start on these machines; loaded CI machines
/// take longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// One broker (see the module docs). Stopped, with its epmd, when dropped.
pub struct RabbitMq {
    dir: tempfile::TempDir,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    log: PathBuf,
    broker: Mutex<Option<Broker>>,
    epmd: Mutex<Option<Child>>,
}

struct Broker {
    child: Child,
    /// Held open: with `RABBITMQ_ALLOW_INPUT` the VM runs in the foreground of its start
    /// script (so the kill that ties it to the test reaches the VM itself) and reads its
    /// shell's input from here; EOF would stop it.
    _stdin: ChildStdin,
}

impl RabbitMq {
    /// Starts a broker on free loopback ports; fails loudly (never skips) if the package is
    /// missing or the broker does not answer.
    pub fn start() -> Result<RabbitMq> {
        if !Path::new(SERVER).exists() {
            bail!("{NOT_INSTALLED} ({SERVER} is missing)");
        }
        start_with_retries(START_ATTEMPTS, RabbitMq::try_start)
    }

    fn try_start() -> Result<RabbitMq> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rbtest-rmq-{}-", std::process::id()))
            .tempdir()
            .context("cannot create a temp dir")?;
        let ports = free_ports(3)?;
        let (amqp_port, dist_port, epmd_port) = (ports[0], ports[1], ports[2]);
        let b = RabbitMq {
            amqp_port,
            dist_port,
            epmd_port,
            node: format!("rbtest{amqp_port}@localhost"),
            log: dir.path().join("rabbit.log"),
            dir,
            broker: Mutex::new(None),
            epmd: Mutex::new(None),
        };
        let d = b.dir.path();
        fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{amqp_port}\n\
                 log.console = true\n\
                 log.console.level = info\n\
                 log.file = false\n"
            ),
        )?;
        fs::write(
            d.join("enabled_plugins"),
            "[rabbitmq_consistent_hash_exchange].\n",
        )?;
        fs::write(d.join("rabbitmq-env.conf"), "")?;
        fs::create_dir_all(d.join("mnesia"))?;
        fs::create_dir_all(d.join("logs"))?;
        b.spawn_epmd()?;
        b.spawn_broker()?;
        b.wait_ready(START_TIMEOUT)?;
        Ok(b)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.amqp_port))
    }

    /// The broker's console log (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Kills the broker (SIGKILL: no clean shutdown) and starts it again on the same data and
    /// port; returns once it answers AMQP.
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        self.spawn_broker()?;
        self.wait_ready(START_TIMEOUT)
    }

    /// Kills the broker (SIGKILL); its epmd stays.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut b) = lock(&self.broker).take() {
            let _ = b.child.kill();
            b.child.wait().context("cannot reap the broker")?;
        }
        Ok(())
    }

    /// The broker VM's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.broker).as_ref().map(|b| b.child.id())
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the broker VM.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the broker is not running"))?;
        signal(pid, sig).with_context(|| format!("cannot signal the broker (pid {pid})"))
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("logs"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_ALLOW_INPUT", "true");
    }

    fn spawn_epmd(&self) -> Result<()> {
        let log = self.open_log()?;
        let mut cmd = Command::new(EPMD);
        cmd.args([
            "-port",
            &self.epmd_port.to_string(),
            "-address",
            "127.0.0.1",
        ])
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let child = spawn_tied(cmd).map_err(|e| anyhow!("cannot start {EPMD}: {e}"))?;
        *lock(&self.epmd) = Some(child);
        // epmd must listen before the VM looks for it, or the VM starts a daemon of its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.epmd_port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("epmd did not listen on {addr}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn spawn_broker(&self) -> Result<()> {
        let mut slot = lock(&self.broker);
        if slot.is_some() {
            bail!("the broker is already running");
        }
        let log = self.open_log()?;
        writeln!(&log, "==== rebalanser-testkit: starting the broker ====")?;
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = spawn_tied(cmd).map_err(|e| anyhow!("cannot start {SERVER}: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("the broker has no stdin pipe"))?;
        *slot = Some(Broker {
            child,
            _stdin: stdin,
        });
        Ok(())
    }

    fn open_log(&self) -> Result<fs::File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))
    }

    /// Waits until the broker answers the AMQP protocol header with a `connection.start`.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = lock(&self.broker).as_mut() {
                if let Ok(Some(status)) = b.child.try_wait() {
                    bail!(
                        "the broker exited ({status}) before serving; log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
            if amqp_answers(self.addr()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the broker did not answer AMQP on {} within {timeout:?}; log tail:\n{}",
                    self.addr(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = self.kill();
        if let Some(mut e) = lock(&self.epmd).take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// Whether `addr` answers the AMQP 0-9-1 protocol header with a method frame (type 1).
fn amqp_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(s.read_exact(&mut first), Ok(()) if first[0] == 1)
}
