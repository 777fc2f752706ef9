//! A TCP proxy that a test puts between a client and a server to fail the network on demand.
//!
//! nftables can cut traffic, but only as root and only by port; a proxy in the test process cuts
//! one client's path to one server, with no privileges, and can do what a firewall cannot
//! cleanly: hold a partition silently for as long as the test wants, then heal it with the TCP
//! streams intact. (`tc netem` does not exist on the test machines.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::zk::random_port_listener;

/// A TCP proxy on 127.0.0.1 in front of one upstream server.
///
/// Faults:
/// - [`blackhole`](Self::blackhole): a silent partition. No byte moves in either direction and
///   no connection is closed; new connections are accepted and then held. Clients see silence,
///   as with a pulled cable, and only their own timeouts can tell.
/// - [`heal`](Self::heal): the partition ends. **No byte is dropped**: the proxy stops reading
///   while blackholed (so bytes wait in kernel socket buffers) and holds back a chunk it had read
///   just before, so each stream resumes exactly where it stopped, as TCP does when a partition
///   heals before its retransmission timeout. Held new connections then connect upstream. A test
///   that wants the data lost uses [`reset_all`](Self::reset_all) as well.
/// - [`reset_all`](Self::reset_all): every proxied connection is closed with a TCP RST on both
///   sides at once, as when a middlebox or the server's host reboots.
///
/// Dropping the proxy aborts all its tasks, closing its listener and connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    /// `true` while forwarding, `false` while blackholed.
    forwarding: watch::Sender<bool>,
    /// Bumped by `reset_all`; each connection resets when it sees a change after its accept.
    reset: watch::Sender<u64>,
    conns: Mutex<JoinSet<()>>,
    active: AtomicUsize,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &*lock(&self.shared.upstream))
            .field("forwarding", &*self.shared.forwarding.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream`, forwarding. Must be called within a tokio runtime (any
    /// flavour); the proxy's tasks run on it.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow!("FaultProxy::start must be called within a tokio runtime"))?;
        let _entered = handle.enter();
        let std_listener = random_port_listener()?;
        std_listener.set_nonblocking(true)?;
        let listener =
            TcpListener::from_std(std_listener).context("cannot register the listener")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            forwarding: watch::Sender::new(true),
            reset: watch::Sender::new(0),
            conns: Mutex::new(JoinSet::new()),
            active: AtomicUsize::new(0),
        });
        let accept = handle.spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops all forwarding, silently, until [`heal`](Self::heal).
    pub fn blackhole(&self) {
        self.shared.forwarding.send_replace(false);
    }

    /// Resumes forwarding; nothing sent during the blackhole is lost.
    pub fn heal(&self) {
        self.shared.forwarding.send_replace(true);
    }

    /// Whether the proxy is blackholed now.
    pub fn is_blackholed(&self) -> bool {
        !*self.shared.forwarding.borrow()
    }

    /// Closes every current connection with an RST to both ends (connections accepted later are
    /// not affected). Returns at once; the sockets close within moments, on the runtime.
    pub fn reset_all(&self) {
        self.shared.reset.send_modify(|g| *g += 1);
    }

    /// Points connections made from now on at `upstream` (a server moved or failed over);
    /// existing connections keep their server.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// Client connections open now (held ones included): lets a test see a client reconnect.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        lock(&self.shared.conns).abort_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of file descriptors and the like: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let reset = shared.reset.subscribe();
        let mut conns = lock(&shared.conns);
        while conns.try_join_next().is_some() {}
        conns.spawn(serve(client, shared.clone(), reset));
    }
}

struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closing a socket with zero linger sends RST instead of FIN.
fn rst(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn serve(client: TcpStream, shared: Arc<Shared>, mut reset: watch::Receiver<u64>) {
    let _active = Active::new(&shared.active);
    let _ = client.set_nodelay(true);
    let fwd = shared.forwarding.subscribe();
    let connect = async {
        let mut fwd = fwd.clone();
        // Accepted during a blackhole: held until it heals, as a SYN would be retransmitted.
        fwd.wait_for(|f| *f).await.ok()?;
        let upstream = *lock(&shared.upstream);
        TcpStream::connect(upstream).await.ok()
    };
    let upstream = tokio::select! {
        _ = reset.changed() => None,
        up = connect => up,
    };
    let Some(upstream) = upstream else {
        // Upstream refused (or a reset came first): refuse the client the same way.
        rst(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let clean = tokio::select! {
        _ = reset.changed() => false,
        r = async {
            tokio::try_join!(pump(&mut cr, &mut uw, fwd.clone()), pump(&mut ur, &mut cw, fwd.clone()))
        } => r.is_ok(),
    };
    if !clean {
        // A reset, or one side failed: pass the failure on to the other side as an RST. A
        // dropped write half would send a FIN first, so it must not shut down on drop.
        rst(cr.as_ref());
        rst(ur.as_ref());
        cw.forget();
        uw.forget();
    }
}

/// Copies one direction until EOF, pausing (not dropping) while blackholed.
async fn pump(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    mut fwd: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if fwd.wait_for(|f| *f).await.is_err() {
            return Ok(());
        }
        let n = r.read(&mut buf).await?;
        // The blackhole may have started while we were reading: hold the chunk until it heals.
        if fwd.wait_for(|f| *f).await.is_err() {
            return Ok(());
        }
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
    }
}
