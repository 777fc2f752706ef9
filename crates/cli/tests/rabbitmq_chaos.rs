//! Multi-process chaos of RabbitMQ queue groups on a real broker, checked by the ordering
//! verifier (issue 12, the original Rebalanser's method).
//!
//! `rebalanser rabbitmq setup` declares a consistent-hash exchange and its queues and makes
//! them the group's resources. A publisher in this test sends sequenced messages over
//! `CHAOS_KEYS` keys at a steady rate to each key's queue (`topology::Publisher`, which routes
//! by its own stable hash: the exchange's ring remaps keys when the broker restarts), each
//! confirmed by the broker, reconnecting when the broker goes away. `CHAOS_CONSUMERS` `rebalanser rabbitmq-consumer` processes (the hidden test
//! tool) consume through the test's TCP fault proxy and append one JSON line per processed
//! message. For `CHAOS_SECS` the test injects, in an order drawn from the seed: SIGKILL of a
//! consumer (restarted a moment later), SIGSTOP of a consumer beyond its session TTL, a graceful
//! leave (SIGTERM) with a new consumer joining later, a broker restart (SIGKILL, same data), every
//! consumer connection cut at the proxy, and the proxy black-holed for 5 s (beyond twice the
//! consumers' 2 s heartbeat, so the broker and the client each declare the link dead). Then the faults
//! and the publisher stop, everything confirmed must be processed, the consumers leave, and the
//! verifier judges the record: no confirmed message lost, no per-key order violation outside
//! redeliveries, no queue in two consumers' handlers at once. The report also gives redelivery
//! reorders, duplicates and, per fault, the longest publish → processing latency of messages
//! sent in the few seconds after it.
//!
//! Environment: `CHAOS_SECS` (default 30: each of the six faults once), `CHAOS_SEED` (random, printed), `CHAOS_DIR` (keep
//! the record and consumer output there), `CHAOS_CONSUMERS` (3), `CHAOS_QUEUES` (8),
//! `CHAOS_KEYS` (1000), `CHAOS_RATE` (messages per second, 300), `CHAOS_MODE` (resource or
//! barrier for both tests; by default SQLite runs per-resource and ZooKeeper barrier mode). `scripts/chaos-rabbitmq
//! SECONDS SEED` runs the long version on both stores and modes.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser_rabbitmq::topology::Publisher;
use rebalanser_rabbitmq::verify::{verify, Body, Processed, Report};
use rebalanser_testkit::{FaultProxy, RabbitMq, ZkEnsemble};

mod common;
use common::{boottime_ns, env_or, tie_to_test, Rng, BIN};

const GROUP: &str = "chaos";
const EXCHANGE: &str = "chaos";
const TTL: Duration = Duration::from_secs(2);

struct Config {
    secs: u64,
    seed: u64,
    consumers: usize,
    queues: usize,
    keys: u32,
    rate: u64,
    dir: Option<PathBuf>,
    /// `CHAOS_MODE=resource|barrier` overrides each test's mode.
    mode: Option<&'static str>,
}

impl Config {
    fn from_env() -> Config {
        let seed = env_or("CHAOS_SEED", boottime_ns() % 1_000_000);
        Config {
            secs: env_or("CHAOS_SECS", 30),
            seed,
            consumers: env_or("CHAOS_CONSUMERS", 3),
            queues: env_or("CHAOS_QUEUES", 8),
            keys: env_or("CHAOS_KEYS", 1000),
            rate: env_or("CHAOS_RATE", 300),
            dir: std::env::var("CHAOS_DIR").ok().map(PathBuf::from),
            mode: match std::env::var("CHAOS_MODE").as_deref() {
                Ok("resource") => Some("resource"),
                Ok("barrier") => Some("barrier"),
                Ok(m) if !m.is_empty() => panic!("CHAOS_MODE={m:?}: resource or barrier"),
                _ => None,
            },
        }
    }
}

/// The consumer processes; all killed on drop, even when the test panics.
struct Consumers {
    store: String,
    amqp: String,
    mode: &'static str,
    record: PathBuf,
    dir: PathBuf,
    next: usize,
    live: Vec<(String, Child)>,
}

impl Consumers {
    fn spawn(&mut self) -> Result<()> {
        let name = format!("c{}", self.next);
        self.next += 1;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.stderr")))?;
        let mut cmd = Command::new(BIN);
        cmd.args([
            "rabbitmq-consumer",
            "--store",
            &self.store,
            "--group",
            GROUP,
        ])
        .args(["--name", &name, "--amqp", &self.amqp, "--mode", self.mode])
        .args(["--ttl", &format!("{}ms", TTL.as_millis())])
        .arg("--record")
        .arg(&self.record)
        .env(
            "RUST_LOG",
            std::env::var("CHAOS_RUST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        tie_to_test(&mut cmd);
        let child = cmd.spawn().context("spawn rabbitmq-consumer")?;
        self.live.push((name, child));
        Ok(())
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.live[i].1.id() as libc::pid_t, sig) };
    }

    /// Takes consumer `i` out of the live set (after SIGKILL or SIGTERM).
    fn remove(&mut self, i: usize) -> (String, Child) {
        self.live.remove(i)
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for (_, c) in &mut self.live {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes `keys` keys round-robin at `rate` per second until told to stop; records what the
/// broker confirmed. A failed publish (the broker went away) is not confirmed and the key moves
/// on to its next seq; the publisher reconnects.
async fn publish(
    amqp: String,
    queues: usize,
    keys: u32,
    rate: u64,
    stop: Arc<Mutex<bool>>,
    confirmed: Arc<Mutex<BTreeSet<(u32, u64)>>>,
) -> Result<u64> {
    let mut publisher: Option<Publisher> = None;
    let mut next_seq = vec![0u64; keys as usize];
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let mut failed = 0u64;
    let mut key = 0u32;
    while !*stop.lock().unwrap_or_else(|e| e.into_inner()) {
        tick.tick().await;
        let p = match publisher.as_ref() {
            Some(p) => p,
            None => match Publisher::connect(&amqp, EXCHANGE, queues).await {
                Ok(p) => publisher.insert(p),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let seq = next_seq[key as usize];
        next_seq[key as usize] += 1;
        let body = serde_json::to_vec(&Body {
            key,
            seq,
            sent_ns: boottime_ns(),
        })?;
        match tokio::time::timeout(Duration::from_secs(5), p.publish(&format!("k{key}"), &body))
            .await
        {
            Ok(Ok(())) => {
                confirmed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((key, seq));
            }
            _ => {
                failed += 1;
                publisher = None;
            }
        }
        key = (key + 1) % keys;
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    Ok(failed)
}

fn read_record(path: &Path) -> Result<Vec<Processed>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        out.push(
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: {line:?}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

/// Waits (30 s at most) for a consumer sent SIGTERM to exit 0; what went wrong otherwise. One
/// paused past its TTL may have aborted instead.
async fn left_cleanly(name: &str, c: &mut Child, was_paused: bool) -> Result<Option<String>> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok((!st.success() && !was_paused)
                .then(|| format!("{name} exited with {st} after SIGTERM")));
        }
        if Instant::now() > end {
            let _ = c.kill();
            return Ok(Some(format!("{name} did not leave within 30 s of SIGTERM")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fault and when it began (CLOCK_BOOTTIME ns).
struct Fault {
    what: String,
    at: u64,
}

async fn run(cfg: &Config, store: String, mode: &'static str) -> Result<(Report, Vec<String>)> {
    let tmp = tempfile::tempdir()?;
    let dir = match &cfg.dir {
        Some(d) => {
            let d = d.join(format!("{mode}-seed-{}", cfg.seed));
            fs::create_dir_all(&d)?;
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let broker = RabbitMq::start()?;
    let proxy = FaultProxy::start(broker.addr())?;
    let direct = broker.url();
    // Consumers go through the proxy; a 2 s heartbeat lets the broker drop a paused consumer's
    // connection (and its exclusive consumer) within a few seconds.
    let via_proxy = format!("amqp://guest:guest@{}/%2f?heartbeat=2", proxy.addr());
    let setup = Command::new(BIN)
        .args([
            "rabbitmq",
            "setup",
            "--amqp",
            &direct,
            "--exchange",
            EXCHANGE,
        ])
        .args(["--queues", &cfg.queues.to_string(), "--mode", mode])
        .args(["--store", &store, "--group", GROUP, "--timeout", "30s"])
        .output()?;
    if !setup.status.success() {
        bail!(
            "rabbitmq setup failed: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
    }
    let record = dir.join("processed.jsonl");
    let mut consumers = Consumers {
        store,
        amqp: via_proxy,
        mode,
        record: record.clone(),
        dir: dir.clone(),
        next: 1,
        live: Vec::new(),
    };
    for _ in 0..cfg.consumers {
        consumers.spawn()?;
    }
    let stop = Arc::new(Mutex::new(false));
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher = tokio::spawn(publish(
        direct.clone(),
        cfg.queues,
        cfg.keys,
        cfg.rate,
        stop.clone(),
        confirmed.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut rng = Rng(cfg.seed);
    let mut faults: Vec<Fault> = Vec::new();
    // Consumers paused beyond their TTL may abort (`StopPolicy::Abort`): that is allowed.
    let mut paused: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    let start = Instant::now();
    // Every kind once per round of six, in a seeded order: the default length covers one round.
    let mut order: Vec<u64> = Vec::new();
    while start.elapsed() < Duration::from_secs(cfg.secs) {
        if order.is_empty() {
            order = (0..6).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let kind = order.pop().unwrap_or(0);
        let at = boottime_ns();
        let n = consumers.live.len();
        let what = match kind {
            0 if n > 1 => {
                let i = rng.below(n as u64) as usize;
                consumers.signal(i, libc::SIGKILL);
                let (name, mut c) = consumers.remove(i);
                let _ = c.wait();
                tokio::time::sleep(rng.between(Duration::from_millis(200), TTL)).await;
                consumers.spawn()?;
                format!("kill -9 {name}, a new consumer started")
            }
            1 if n > 1 => {
                let i = rng.below(n as u64) as usize;
                let name = consumers.live[i].0.clone();
                paused.insert(name.clone());
                consumers.signal(i, libc::SIGSTOP);
                let pause = rng.between(TTL * 3 / 2, TTL * 3);
                tokio::time::sleep(pause).await;
                consumers.signal(i, libc::SIGCONT);
                format!("SIGSTOP {name} for {pause:?}")
            }
            2 if n > 1 => {
                let i = rng.below(n as u64) as usize;
                consumers.signal(i, libc::SIGTERM);
                let (name, mut c) = consumers.remove(i);
                if let Some(p) = left_cleanly(&name, &mut c, paused.contains(&name)).await? {
                    problems.push(p);
                }
                consumers.spawn()?;
                format!("{name} left gracefully, a new consumer joined")
            }
            3 => {
                broker.restart()?;
                "broker restarted (SIGKILL)".to_string()
            }
            4 => {
                proxy.reset_all();
                "every consumer connection cut at the proxy".to_string()
            }
            _ => {
                proxy.blackhole();
                tokio::time::sleep(Duration::from_secs(5)).await;
                proxy.heal();
                "proxy black-holed for 5 s".to_string()
            }
        };
        println!("fault at {:.1}s: {what}", start.elapsed().as_secs_f64());
        faults.push(Fault { what, at });
        tokio::time::sleep(rng.between(Duration::from_millis(1500), Duration::from_secs(3))).await;
    }

    *stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
    let failed_publishes = publisher.await??;
    let confirmed = confirmed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Everything confirmed must be processed once the faults stopped.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done: BTreeSet<(u32, u64)> = read_record(&record)?
            .iter()
            .map(|p| (p.key, p.seq))
            .collect();
        if confirmed.is_subset(&done) {
            break;
        }
        if Instant::now() > deadline {
            println!(
                "not everything confirmed was processed within 90 s ({} missing)",
                confirmed.difference(&done).count()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every consumer still running leaves on SIGTERM and exits 0 within 30 s; one that exited
    // by itself before must have been paused past its TTL (an abort is then what it promises).
    for i in 0..consumers.live.len() {
        let (name, c) = &mut consumers.live[i];
        match c.try_wait()? {
            Some(st) if !paused.contains(name.as_str()) => {
                problems.push(format!(
                    "{name} exited by itself ({st}) without being paused"
                ));
            }
            Some(_) => {}
            None => consumers.signal(i, libc::SIGTERM),
        }
    }
    for (name, c) in &mut consumers.live {
        if let Some(p) = left_cleanly(name, c, paused.contains(name.as_str())).await? {
            problems.push(p);
        }
    }
    let log = read_record(&record)?;
    let report = verify(&confirmed, &log);
    println!(
        "{mode}, seed {}: {} confirmed ({failed_publishes} publishes failed), {} processed, {} \
         lost, {} order violations, {} redelivery reorders, {} duplicates, {} concurrent, max \
         latency {} ms",
        cfg.seed,
        report.published,
        report.processed,
        report.lost.len(),
        report.order_violations.len(),
        report.redelivery_reorders,
        report.duplicates,
        report.concurrent.len(),
        report.max_latency_ns / 1_000_000
    );
    for (i, f) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map_or(u64::MAX, |n| n.at);
        let worst = log
            .iter()
            .filter(|p| p.sent_ns >= f.at && p.sent_ns < until)
            .map(|p| p.end_ns.saturating_sub(p.sent_ns))
            .max()
            .unwrap_or(0);
        println!(
            "  {:<55} longest publish → processed after it: {} ms",
            f.what,
            worst / 1_000_000
        );
    }
    for v in report
        .order_violations
        .iter()
        .chain(&report.concurrent)
        .take(10)
    {
        println!("  ! {v}");
    }
    if !report.lost.is_empty() {
        println!(
            "  ! lost (first 10): {:?}",
            &report.lost[..report.lost.len().min(10)]
        );
    }
    for p in &problems {
        println!("  ! {p}");
    }
    if cfg.dir.is_some() {
        println!("  record and consumer output in {}", dir.display());
    } else if !report.is_clean() || !problems.is_empty() {
        let keep = tmp.keep();
        println!("  record and consumer output kept in {}", keep.display());
    }
    Ok((report, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_chaos_on_sqlite() -> Result<()> {
    let cfg = Config::from_env();
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("g.db").display());
    let (report, problems) = run(&cfg, store, cfg.mode.unwrap_or("resource")).await?;
    assert!(report.is_clean(), "seed {}: {report:#?}", cfg.seed);
    assert!(problems.is_empty(), "seed {}: {problems:?}", cfg.seed);
    assert!(report.processed > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_chaos_on_zookeeper_in_barrier_mode() -> Result<()> {
    let cfg = Config::from_env();
    let zk = ZkEnsemble::shared();
    let store = format!("zk://{}/rbchaos{}", zk.connect_string(), cfg.seed);
    let (report, problems) = run(&cfg, store, cfg.mode.unwrap_or("barrier")).await?;
    assert!(report.is_clean(), "seed {}: {report:#?}", cfg.seed);
    assert!(problems.is_empty(), "seed {}: {problems:?}", cfg.seed);
    assert!(report.processed > 0);
    Ok(())
}
