//! A real PostgreSQL server for integration tests (the Debian `postgresql` 15 package).
//!
//! The server runs as the `postgres` process itself in the foreground (not through `pg_ctl`,
//! which would detach it), on a free loopback port, with its data directory and socket
//! directory in a temporary directory of its own, `fsync=off`. PostgreSQL refuses to run as
//! root: when the test runs as root, `initdb` and the server run as the `postgres` system user
//! (`Command::uid`, applied before the child is tied to the test process, so it still dies
//! with it). [`Postgres::restart`] kills the server and starts it on the same data;
//! [`Postgres::psql`] runs one SQL statement through `psql` (e.g.
//! `pg_terminate_backend`).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::spawn::{
    kill_child, lock, signal, spawn_tied, start_with_retries, sweep_stale_dirs, tail,
};
use crate::tls::TestCerts;
use crate::zk::free_ports;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const NOT_INSTALLED: &str = "PostgreSQL 15 is not installed: run apt-get install -y postgresql";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;
/// Temp dirs are named `{DIR_PREFIX}{pid}-...`: [`sweep_stale_dirs`] finds a gone process's.
const DIR_PREFIX: &str = "rbtest-pg-";

/// One server (see the module docs). Killed when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// The uid and gid the server runs as (`postgres` when the test runs as root).
    user: Option<(u32, u32)>,
    log: PathBuf,
    server: Mutex<Option<Child>>,
}

static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();

impl Postgres {
    /// One server shared by every test of this process, started on first use, for suites that
    /// isolate tests by a unique schema: never dropped (the kernel kills it with the process).
    /// Panics, failing the calling test, when it cannot start; later calls fail fast.
    pub fn shared() -> &'static Postgres {
        match SHARED.get_or_init(|| Postgres::start().map_err(|e| format!("{e:#}"))) {
            Ok(pg) => pg,
            Err(e) => panic!("the shared PostgreSQL server did not start: {e}"),
        }
    }

    /// Creates a cluster and starts it; fails loudly (never skips) if the package is missing or
    /// the server does not accept connections.
    pub fn start() -> Result<Postgres> {
        Self::start_with(None)
    }

    /// A server that takes TCP clients over TLS only, and only with a client certificate
    /// signed by `certs`' CA (`hostssl … trust clientcert=verify-ca`; plain TCP is rejected).
    /// `psql` goes through the Unix socket.
    pub fn start_tls(certs: &TestCerts) -> Result<Postgres> {
        Self::start_with(Some(certs))
    }

    fn start_with(tls: Option<&TestCerts>) -> Result<Postgres> {
        if !Path::new(BIN).join("postgres").exists() {
            bail!("{NOT_INSTALLED} ({BIN}/postgres is missing)");
        }
        // The shared server is never dropped, so its data directory (~40 MB) outlives every
        // test process that used one: remove those of processes that are gone.
        sweep_stale_dirs(DIR_PREFIX);
        start_with_retries(START_ATTEMPTS, || Postgres::try_start(tls))
    }

    fn try_start(tls: Option<&TestCerts>) -> Result<Postgres> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("cannot create a temp dir")?;
        let user = server_user()?;
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
        }
        let p = Postgres {
            port: free_ports(1)?[0],
            log: dir.path().join("pg.log"),
            dir,
            user,
            server: Mutex::new(None),
        };
        let mut initdb = Command::new(Path::new(BIN).join("initdb"));
        initdb
            .arg("-D")
            .arg(p.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null());
        p.as_server_user(&mut initdb);
        let out = initdb.output().context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(certs) = tls {
            p.configure_tls(certs)?;
        }
        p.spawn()?;
        p.wait_ready(START_TIMEOUT)?;
        Ok(p)
    }

    /// Copies the server's certificate, key and the CA into the data directory (owned by the
    /// server's user, the key 0600, as PostgreSQL demands), turns `ssl` on and allows TCP
    /// clients only over TLS with a certificate from that CA.
    fn configure_tls(&self, certs: &TestCerts) -> Result<()> {
        let data = self.data();
        for (from, to, mode) in [
            (&certs.server_cert, "server.crt", 0o644),
            (&certs.server_key, "server.key", 0o600),
            (&certs.ca, "root.crt", 0o644),
        ] {
            let dest = data.join(to);
            fs::copy(from, &dest).with_context(|| format!("cannot copy {}", from.display()))?;
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid))?;
            }
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        }
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'root.crt'"
        )?;
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )?;
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_server_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// The server's (postmaster's) pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.server).as_ref().map(|c| c.id())
    }

    /// Kills the server (SIGKILL of the postmaster; its backends exit when they notice) and
    /// starts it again on the same data and port, returning once it accepts connections.
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        // Backends of the killed postmaster hold the shared memory until they exit.
        thread::sleep(Duration::from_millis(300));
        self.spawn()?;
        self.wait_ready(START_TIMEOUT)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&self) -> Result<()> {
        kill_child(&self.server).context("cannot reap the server")
    }

    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the server is not running"))?;
        signal(pid, sig).with_context(|| format!("cannot signal the server (pid {pid})"))
    }

    /// Runs one SQL statement with `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new(Path::new(BIN).join("psql"));
        // The Unix socket: it works whatever the TCP rules (a TLS-only server rejects plain
        // TCP).
        cmd.arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null());
        let out = cmd.output().context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn spawn(&self) -> Result<()> {
        let mut slot = lock(&self.server);
        if slot.is_some() {
            bail!("the server is already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        writeln!(&log, "==== rebalanser-testkit: starting the server ====")?;
        let mut cmd = Command::new(Path::new(BIN).join("postgres"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.as_server_user(&mut cmd);
        // The old postmaster's pid file would stop a restart after a kill.
        let _ = fs::remove_file(self.data().join("postmaster.pid"));
        let child = spawn_tied(cmd).map_err(|e| anyhow!("cannot start postgres: {e}"))?;
        *slot = Some(child);
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = lock(&self.server).as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "the server exited ({status}) before serving; log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                && self.psql("select 1").is_ok_and(|s| s == "1")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not accept connections on {} within {timeout:?}; log \
                     tail:\n{}",
                    self.addr(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `Some((uid, gid))` of the `postgres` user when running as root (PostgreSQL refuses root).
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL in a literal");
    // SAFETY: getpwnam reads a static buffer; the fields are copied out at once and no other
    // thread of the testkit calls it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, and there is no postgres user to run PostgreSQL as ({NOT_INSTALLED})"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {} to the postgres user", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    Ok(())
}
