//! Session TTLs a store cannot honour are refused at join, naming the minimum
//! (`Store::min_session_ttl`); the minimum itself works. `measure_flapping` (ignored; run with
//! `cargo test -p rebalanser --test session_ttl -- --ignored --nocapture`) is the evidence the
//! minimums were picked from: what members do with TTLs below them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use rebalanser::{
    Admin, BoxFuture, Error, Member, MemberBuilder, StopPolicy, Store, StoreOp, StoreResult,
    WatchEvent,
};

/// The timings `rebalanser member run --session-ttl` derives from a TTL (crates/cli
/// member_run), so the measured members are what a user of the CLI gets.
fn scaled(b: MemberBuilder, ttl: Duration) -> MemberBuilder {
    b.session_ttl(ttl)
        .keepalive_interval(ttl / 10)
        .op_timeout(ttl / 4)
        .safety_margin(ttl / 8)
        .stop_timeout(ttl / 5)
        .min_rebalance_interval(Duration::from_millis(100).min(ttl / 10))
        .leave_timeout(ttl * 3 + Duration::from_secs(1))
        .on_stop_deadline_missed(StopPolicy::Log)
}

/// A store that claims to honour any TTL: lets the measurement go below the real minimum.
struct AnyTtl(Arc<dyn Store>);

impl Store for AnyTtl {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        self.0.execute(op)
    }
    fn watch(&self, prefix: rebalanser::Key) -> BoxStream<'static, WatchEvent> {
        self.0.watch(prefix)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn keepalive_proves_previous(&self) -> bool {
        self.0.keepalive_proves_previous()
    }
    fn min_session_ttl(&self) -> Duration {
        Duration::ZERO
    }
}

/// What happened to two members sharing 8 resources for `run` with session TTL `ttl`: the
/// count of each kind of event, and the claims held at the end.
async fn run_group(store: Arc<dyn Store>, ttl: Duration, run: Duration) -> BTreeMap<String, u64> {
    let admin = Admin::new(store.clone(), "g").expect("group id");
    admin.create_group().await.expect("create group");
    let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    admin.add_resources(&ids).await.expect("add resources");
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let b = Member::builder("g").name(name).store(store.clone());
        let mut m = scaled(b, ttl).join().await.expect("join");
        let mut events = m.events();
        let c = counts.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let kind = format!("{e:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap_or("").to_string();
                *c.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            }
        });
        // Serve every lease until revoked, as an application does.
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(lease) = m.next_lease().await {
                held.push(tokio::spawn(async move { lease.revoked().await }));
            }
            m
        });
        members.push(task);
    }
    tokio::time::sleep(run).await;
    // Before the members go: their leave would add its own revokes and grants.
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let status = admin.status().await.expect("status");
    let held: usize = status.claims_per_member().values().sum();
    c.insert("claims held at the end".into(), held as u64);
    for t in members {
        t.abort();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints what members do with TTLs below each store's minimum"]
async fn measure_flapping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = Duration::from_secs(5);
    for ms in [20u64, 50, 100, 200, 300, 500, 1000] {
        let ttl = Duration::from_millis(ms);
        for kind in ["memory", "sqlite"] {
            let url = match kind {
                "memory" => format!("memory://measure-{ms}-{}", std::process::id()),
                _ => format!(
                    "sqlite://{}",
                    dir.path().join(format!("m{ms}.db")).display()
                ),
            };
            let store: Arc<dyn Store> =
                Arc::new(AnyTtl(rebalanser::open_store(&url).expect("open")));
            let start = Instant::now();
            let counts = run_group(store, ttl, run).await;
            println!(
                "{kind:>6} ttl {ms:>4} ms, 2 members, 8 resources, {:?}: {counts:?}",
                start.elapsed()
            );
        }
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("g.db").display())
}

/// Joins with the CLI's timings for `ttl`; the group must exist (it does not for the URLs
/// that are refused before the store is contacted).
async fn join(url: &str, ttl: Duration) -> Result<Member, Error> {
    scaled(Member::builder("g").store_url(url), ttl)
        .join()
        .await
}

fn assert_refused(r: Result<Member, Error>, ttl: Duration, min: Duration, store: &str) {
    match r {
        Err(e @ Error::SessionTtlTooShort { .. }) => {
            let Error::SessionTtlTooShort {
                ttl: t,
                min: m,
                store: s,
            } = &e
            else {
                unreachable!("matched above")
            };
            assert_eq!((*t, *m), (ttl, min), "{e}");
            assert!(s.starts_with(store), "{e}");
            let msg = e.to_string();
            for part in [format!("{ttl:?}"), format!("{min:?}"), s.clone()] {
                assert!(msg.contains(&part), "{part:?} missing in: {msg}");
            }
        }
        Err(e) => panic!("{store}: {e}"),
        Ok(_) => panic!("{store}: a TTL of {ttl:?} was accepted"),
    }
}

#[tokio::test]
async fn too_short_ttls_are_refused_naming_the_minimum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = sqlite_url(&dir);
    let memory = format!("memory://ttl-refused-{}", std::process::id());
    // Groups that exist, so that only the TTL is wrong (the memory store lives while its
    // admin does).
    let mut admins = Vec::new();
    for url in [&memory, &sqlite] {
        let admin = Admin::connect(url, "g").expect("open the store");
        admin.create_group().await.expect("create group");
        admins.push(admin);
    }
    let cases = [
        (memory.as_str(), 50, 100, "memory://"),
        (memory.as_str(), 99, 100, "memory://"),
        (sqlite.as_str(), 50, 500, "sqlite://"),
        (sqlite.as_str(), 499, 500, "sqlite://"),
        // Refused before the store is contacted: no server needed.
        ("zk://127.0.0.1:9/ttl", 500, 800, "zk://"),
        ("postgres://u:pw@127.0.0.1:9/db", 400, 500, "postgres://"),
        ("etcd://127.0.0.1:9/ttl", 1500, 2000, "etcd://"),
    ];
    for (url, ttl, min, store) in cases {
        let (ttl, min) = (Duration::from_millis(ttl), Duration::from_millis(min));
        assert_refused(join(url, ttl).await, ttl, min, store);
    }
}

/// The minimum itself: two members take every resource and keep it, no session lost, for
/// ten TTLs.
async fn minimum_works(url: &str) {
    let store = rebalanser::open_store(url).expect("open");
    let ttl = store.min_session_ttl();
    let counts = run_group(store, ttl, ttl * 10 + Duration::from_secs(1)).await;
    assert_eq!(counts.get("claims held at the end"), Some(&8), "{counts:?}");
    assert_eq!(counts.get("SessionLost"), None, "{counts:?}");
    assert_eq!(counts.get("TtlTooShort"), None, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_ttl_works_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    minimum_works(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_ttl_works_on_memory() {
    minimum_works(&format!("memory://ttl-min-{}", std::process::id())).await;
}
