//! Several processes on one database file, as in production: the test binary re-executes
//! itself (`helper_process`, selected by environment variables) as the other processes.
//!
//! - Two processes hammer racing creates, racing multi-key transactions and compare-and-set
//!   increments on one file: exactly one winner per key, no lost update, every commit's
//!   revision unique and growing, and lock contention surfacing only as `Unavailable`.
//! - A process in a Linux time namespace (its CLOCK_BOOTTIME shifted by an offset) agrees with
//!   the others on when its session expires: neither later nor earlier.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebalanser_core::SessionId;
use rebalanser_sqlite::{SqliteOptions, SqliteStore};
use rebalanser_store::{Cond, Entry, Store, StoreError, StoreOp, StoreReply, StoreResult, Write};

const ROLE: &str = "REBALANSER_SQLITE_TEST_ROLE";
const DB: &str = "REBALANSER_SQLITE_TEST_DB";
const ARG: &str = "REBALANSER_SQLITE_TEST_ARG";

/// Rounds per task of the hammer; 4 tasks per process.
const ROUNDS: u64 = 150;
const TASKS: u64 = 4;

/// The other processes. Does nothing (and passes) when run as a normal test.
#[test]
fn helper_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let db = std::env::var(DB).expect("db");
    let arg = std::env::var(ARG).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match role.as_str() {
            "hammer" => {
                // `arg` is the busy timeout in ms: tiny in one process, so that lock waits
                // beyond it happen and must surface as `Unavailable`.
                let opts = SqliteOptions {
                    busy_timeout: Duration::from_millis(arg.parse().unwrap()),
                    ..SqliteOptions::default()
                };
                let store = Arc::new(SqliteStore::open_with(&db, opts).expect("open"));
                hammer(store).await
            }
            "session" => hold_session(Arc::new(SqliteStore::open(&db).expect("open")), arg).await,
            other => panic!("unknown role {other}"),
        }
    });
}

fn spawn_helper(role: &str, db: &Path, arg: &str, prefix: &[&str]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([
        "--exact",
        "helper_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env(DB, db)
    .env(ARG, arg)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap_or_else(|e| panic!("spawning {prefix:?} {exe:?}: {e}"))
}

/// The `OUT ` lines a helper printed, after it exited successfully within `bound`.
fn collect(mut child: Child, bound: Duration) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            // The first may follow the harness's "test helper_process ... " on its line.
            .filter_map(|l| l.split_once("OUT ").map(|(_, l)| l.to_string()))
            .collect::<Vec<_>>()
    });
    let end = Instant::now() + bound;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("helper still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "helper failed: {status}");
    reader.join().unwrap()
}

fn txn(conds: Vec<Cond>, writes: Vec<Write>) -> StoreOp {
    StoreOp::Txn { conds, writes }
}

fn create(key: &str, owner: Option<SessionId>) -> Write {
    Write::Create {
        key: key.to_string(),
        value: b"v".to_vec(),
        owner,
    }
}

/// Executes `op`, retrying `Unavailable` (counted): anything but a commit or a `Conflict` is
/// reported as a failure.
async fn run(store: &SqliteStore, op: StoreOp, unavailable: &mut u64) -> StoreResult {
    loop {
        match store.execute(op.clone()).await {
            Err(StoreError::Unavailable(_)) => *unavailable += 1,
            r => return r,
        }
    }
}

async fn hammer(store: Arc<SqliteStore>) {
    let mut sessions = Vec::new();
    let mut unavailable = 0;
    for _ in 0..2 {
        let open = StoreOp::OpenSession {
            ttl: Duration::from_secs(60),
        };
        match run(&store, open, &mut unavailable).await {
            Ok(StoreReply::Session { session, .. }) => sessions.push(session),
            other => panic!("open session: {other:?}"),
        }
    }
    let start = Instant::now();
    let tasks = (0..TASKS).map(|t| {
        let store = store.clone();
        let session = sessions[(t % 2) as usize];
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut unavailable = 0;
            let mut last_rev = 0;
            let mut commit = |what: String, rev: u64, out: &mut Vec<String>| {
                if rev <= last_rev {
                    out.push(format!("BAD rev {rev} after {last_rev} in one task"));
                }
                last_rev = rev;
                out.push(format!("{what} {rev}"));
            };
            for i in 0..ROUNDS {
                // Both processes and all tasks race for the same keys.
                let key = format!("race/{i}");
                match run(
                    &store,
                    txn(vec![], vec![create(&key, Some(session))]),
                    &mut unavailable,
                )
                .await
                {
                    Ok(StoreReply::Committed { rev }) => {
                        commit(format!("WON {key} {}", session.0), rev, &mut out)
                    }
                    Err(StoreError::Conflict(_)) => {}
                    other => out.push(format!("BAD create {key}: {other:?}")),
                }
                // A two-key transaction guarded by an Absent condition.
                let pair = format!("pair/{i}");
                let op = txn(
                    vec![Cond::Absent(pair.clone())],
                    vec![create(&pair, None), create(&format!("{pair}/x"), None)],
                );
                match run(&store, op, &mut unavailable).await {
                    Ok(StoreReply::Committed { rev }) => {
                        commit(format!("PAIR {pair}"), rev, &mut out)
                    }
                    Err(StoreError::Conflict(_)) => {}
                    other => out.push(format!("BAD pair {pair}: {other:?}")),
                }
                // Compare-and-set increment of one shared counter.
                loop {
                    let got = run(
                        &store,
                        StoreOp::Get {
                            key: "ns/counter".into(),
                            linearizable: true,
                        },
                        &mut unavailable,
                    )
                    .await;
                    let (n, cond) = match got {
                        Ok(StoreReply::Got(Some(e))) => (
                            String::from_utf8(e.value).unwrap().parse::<u64>().unwrap(),
                            Cond::Version("ns/counter".into(), e.version),
                        ),
                        Ok(StoreReply::Got(None)) => (0, Cond::Absent("ns/counter".into())),
                        other => {
                            out.push(format!("BAD get: {other:?}"));
                            break;
                        }
                    };
                    let put = Write::Put {
                        key: "ns/counter".into(),
                        value: (n + 1).to_string().into_bytes(),
                    };
                    match run(&store, txn(vec![cond], vec![put]), &mut unavailable).await {
                        Ok(StoreReply::Committed { rev }) => {
                            commit(format!("INC {}", n + 1), rev, &mut out);
                            break;
                        }
                        Err(StoreError::Conflict(_)) => continue,
                        other => {
                            out.push(format!("BAD inc: {other:?}"));
                            break;
                        }
                    }
                }
                // Keepalives under contention must never fail but as `Unavailable`.
                match run(&store, StoreOp::KeepAlive { session }, &mut unavailable).await {
                    Ok(StoreReply::KeptAlive { .. }) => {}
                    other => out.push(format!("BAD keepalive: {other:?}")),
                }
            }
            out.push(format!("UNAVAILABLE {unavailable}"));
            out
        })
    });
    let results = futures::future::join_all(tasks).await;
    for r in results {
        for line in r.expect("task") {
            println!("OUT {line}");
        }
    }
    println!("OUT ELAPSED_MS {}", start.elapsed().as_millis());
}

#[test]
fn two_processes_hammering_one_file_agree() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    drop(SqliteStore::open(&db).unwrap());
    let t = Instant::now();
    let children: Vec<Child> = ["150", "1"]
        .iter()
        .map(|busy_ms| spawn_helper("hammer", &db, busy_ms, &[]))
        .collect();
    let outputs: Vec<Vec<String>> = children
        .into_iter()
        .map(|c| collect(c, Duration::from_secs(300)))
        .collect();
    let wall = t.elapsed();

    let mut winners: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut pairs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut revs: Vec<u64> = Vec::new();
    // Counter value written → revision of that commit.
    let mut increments: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut incs, mut unavailable) = (0u64, 0u64);
    for lines in &outputs {
        for line in lines {
            let w: Vec<&str> = line.split(' ').collect();
            match w[0] {
                "WON" => {
                    let rev = w[3].parse().unwrap();
                    winners
                        .entry(w[1].to_string())
                        .or_default()
                        .push((w[2].parse().unwrap(), rev));
                    revs.push(rev);
                }
                "PAIR" => {
                    let rev = w[2].parse().unwrap();
                    pairs.entry(w[1].to_string()).or_default().push(rev);
                    revs.push(rev);
                }
                "INC" => {
                    incs += 1;
                    let rev = w[2].parse().unwrap();
                    revs.push(rev);
                    let prev = increments.insert(w[1].parse::<u64>().unwrap(), rev);
                    assert!(prev.is_none(), "counter value {} written twice", w[1]);
                }
                "UNAVAILABLE" => unavailable += w[1].parse::<u64>().unwrap(),
                "ELAPSED_MS" => {}
                _ => panic!("helper reported: {line}"),
            }
        }
    }
    // Revisions follow commit order across processes: each increment read the previous one.
    let by_value: Vec<u64> = increments.values().copied().collect();
    assert!(
        by_value.windows(2).all(|w| w[0] < w[1]),
        "increment revisions out of commit order"
    );
    assert_eq!(increments.keys().next_back(), Some(&incs));
    // Every commit got its own revision.
    let unique: BTreeSet<u64> = revs.iter().copied().collect();
    assert_eq!(unique.len(), revs.len(), "two commits share a revision");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteStore::open(&db).unwrap();
    let get = |key: String| -> Option<Entry> {
        match rt.block_on(store.execute(StoreOp::Get {
            key,
            linearizable: true,
        })) {
            Ok(StoreReply::Got(e)) => e,
            other => panic!("{other:?}"),
        }
    };
    for i in 0..ROUNDS {
        let key = format!("race/{i}");
        let won = winners.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(won.len(), 1, "{key}: winners {won:?}");
        let e = get(key.clone()).expect("the winner's key");
        assert_eq!(
            (e.owner, e.create_rev),
            (Some(SessionId(won[0].0)), won[0].1),
            "{key} belongs to its one winner"
        );
        let pair = format!("pair/{i}");
        let won = pairs.get(&pair).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(won.len(), 1, "{pair}: winners {won:?}");
        let (a, b) = (
            get(pair.clone()).unwrap(),
            get(format!("{pair}/x")).unwrap(),
        );
        assert_eq!((a.create_rev, b.create_rev), (won[0], won[0]));
    }
    let counter = get("ns/counter".into()).expect("ns/counter");
    assert_eq!(
        String::from_utf8(counter.value).unwrap(),
        incs.to_string(),
        "no lost update"
    );
    assert_eq!(incs, 2 * TASKS * ROUNDS);
    eprintln!(
        "two processes: {} commits ({} creates races, {} pairs, {} increments), \
         {unavailable} Unavailable retried, {:.0} commits/s over {wall:?}",
        revs.len(),
        ROUNDS,
        ROUNDS,
        incs,
        revs.len() as f64 / wall.as_secs_f64()
    );
}

/// Opens a session with TTL `arg` ms owning key `tn/<pid>`, reports it, then holds it
/// without keepalives until killed (or exits at once if `arg` ends with `!`).
async fn hold_session(store: Arc<SqliteStore>, arg: String) {
    let (ms, exit) = match arg.strip_suffix('!') {
        Some(ms) => (ms, true),
        None => (arg.as_str(), false),
    };
    let ttl = Duration::from_millis(ms.parse().unwrap());
    let session = match store.execute(StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, .. }) => session,
        other => panic!("{other:?}"),
    };
    let key = format!("tn/{}", std::process::id());
    let r = store
        .execute(txn(vec![], vec![create(&key, Some(session))]))
        .await;
    assert!(matches!(r, Ok(StoreReply::Committed { .. })), "{r:?}");
    println!("OUT KEY {key}");
    if !exit {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs `hold_session` in a time namespace whose CLOCK_BOOTTIME is shifted by `offset_s`;
/// returns the key it created and when it reported it.
fn session_in_time_namespace(db: &Path, offset_s: i64, ttl_ms: u64) -> (String, Instant) {
    let offset = offset_s.to_string();
    let prefix = ["unshare", "--time", "--fork", "--boottime", offset.as_str()];
    let child = spawn_helper("session", db, &format!("{ttl_ms}!"), &prefix);
    let lines = collect(child, Duration::from_secs(60));
    let key = lines
        .iter()
        .find_map(|l| l.strip_prefix("KEY "))
        .unwrap_or_else(|| {
            panic!(
                "no key from the helper (needs util-linux unshare and time namespaces): {lines:?}"
            )
        })
        .to_string();
    (key, Instant::now())
}

#[test]
fn a_time_namespace_offset_neither_delays_nor_hastens_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("timens.db");
    drop(SqliteStore::open(&db).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteStore::open(&db).unwrap();
    let present = |key: &str| -> bool {
        matches!(
            rt.block_on(store.execute(StoreOp::Get {
                key: key.to_string(),
                linearizable: true,
            })),
            Ok(StoreReply::Got(Some(_)))
        )
    };
    // Shifted far ahead: a store that took the raw clock would let this session live for
    // another day.
    let (ahead, reported) = session_in_time_namespace(&db, 100_000, 800);
    assert!(present(&ahead), "{ahead} right after its creation");
    while present(&ahead) {
        assert!(
            reported.elapsed() < Duration::from_secs(5),
            "a session of a process whose BOOTTIME runs 100000 s ahead outlived its 800 ms TTL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Shifted back: a store that took the raw clock would expire this session at once.
    let back = -(i64::try_from(uptime_secs() / 2).unwrap().min(3600));
    assert!(back < 0, "uptime too short to shift BOOTTIME back");
    let (behind, reported) = session_in_time_namespace(&db, back, 3000);
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(reported.elapsed()));
    assert!(
        present(&behind),
        "a session of a process whose BOOTTIME runs {back} s behind expired before half its TTL"
    );
}
