//! Fault and red-team tests of the PostgreSQL store against real PostgreSQL 15 servers
//! (PITFALLS 4, 5, 17, 27, 31 and the PostgreSQL store mapping): expiry that no keepalive can
//! undo and no wall clock can hasten, a server restarted or its backends terminated under a
//! running store, network partitions shorter and longer than a session's TTL, and a writer
//! that stalls while holding the counter row.
//!
//! Safety properties are asserted strictly and from what a reader observes (L3: a session's
//! key is never seen gone before the send time of its last successful keepalive plus the TTL);
//! "eventually" waits are generous. Tests that kill or restart a server start one of their own;
//! the others share one server, each on a schema of its own.
//!
//! Run: `cargo test -p rebalanser-postgres --test faults -- --nocapture`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rebalanser_core::SessionId;
use rebalanser_postgres::{PostgresOptions, PostgresStore};
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, StoreResult, WatchEvent};
use rebalanser_testkit::{FaultProxy, Postgres};

mod common;
use common::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A store whose connections all carry `application_name=app`, so a test can find them in
/// `pg_stat_activity` on the shared server.
fn named_store(
    pg: &Postgres,
    schema: &str,
    app: &str,
    opts: PostgresOptions,
) -> Arc<PostgresStore> {
    let url = url_at(pg.addr(), schema, &format!("&application_name={app}"));
    Arc::new(PostgresStore::from_url_with(&url, opts).expect("url"))
}

fn count(pg: &Postgres, sql: &str) -> i64 {
    psql(pg, sql).parse().expect("a count")
}

/// A deterministic pseudo-random sequence (no RNG crate needed).
fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

/// How many connections named `app` wait for a lock.
fn waiting_for_a_lock(pg: &Postgres, app: &str) -> i64 {
    count(
        pg,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' \
             AND wait_event_type = 'Lock'"
        ),
    )
}

/// Keeps `session` alive through `store` every 100 ms while `task` runs (each keepalive must
/// succeed); returns how many were answered while it still ran.
async fn renew_while<T>(
    store: &dyn Store,
    session: SessionId,
    task: &tokio::task::JoinHandle<T>,
) -> usize {
    let mut renewed = 0;
    while !task.is_finished() {
        keepalive(store, session)
            .await
            .expect("a keepalive while the counter row is held");
        if !task.is_finished() {
            renewed += 1;
        }
        tokio::time::sleep(ms(100)).await;
    }
    renewed
}

// ---------------------------------------------------------------------------------------------
// 1. Keepalive never revives (PITFALLS 5; L3).
// ---------------------------------------------------------------------------------------------

/// Once another store's reaper deleted a session, `KeepAlive` answers `SessionExpired` for good
/// (through either store), its keys are gone, no keepalive re-creates its row, nothing can be
/// created under it, and unowned keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_session_is_never_revived() {
    let pg = Postgres::shared();
    let schema = unique_schema("revive");
    let a = store_at(pg.addr(), &schema, PostgresOptions::default());
    let b = store_at(pg.addr(), &schema, PostgresOptions::default());
    a.pause_reaper(true);
    // B's reaper runs once B opened a session of its own.
    open_session(&*b, secs(60)).await;
    let ttl = ms(500);
    let sent = Instant::now();
    let (s, granted) = open_session(&*a, ttl).await;
    assert_eq!(granted, ttl);
    for k in ["g/claims/r1", "g/claims/r2"] {
        create(&*a, k, Some(s)).await.expect("claim");
    }
    create(&*a, "g/resources/r1", None).await.expect("resource");
    let deadline = Instant::now() + secs(10);
    while get(&*b, "g/claims/r1").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "B's reaper did not delete A's session"
        );
        tokio::time::sleep(ms(5)).await;
    }
    assert!(
        Instant::now() >= sent + ttl,
        "deleted before the open's send time + TTL"
    );
    for store in [&a, &b] {
        for _ in 0..3 {
            match keepalive(&**store, s).await {
                Err(StoreError::SessionExpired) => {}
                other => panic!("keepalive of a reaped session: {other:?}"),
            }
        }
    }
    assert_eq!(
        count(
            pg,
            &format!("SELECT count(*) FROM {schema}.sessions WHERE id = {}", s.0)
        ),
        0,
        "a keepalive re-created the session's row"
    );
    assert_eq!(
        count(
            pg,
            &format!("SELECT count(*) FROM {schema}.kv WHERE owner = {}", s.0)
        ),
        0
    );
    assert!(get(&*b, "g/claims/r2").await.is_none());
    assert!(get(&*b, "g/resources/r1").await.is_some());
    match create(&*a, "g/claims/r3", Some(s)).await {
        Err(StoreError::SessionExpired) => {}
        other => panic!("create under a reaped session: {other:?}"),
    }
    assert!(get(&*b, "g/claims/r3").await.is_none());
}

/// Opens sessions of `ttl` one after another until `until`, each with one key, and keeps each
/// alive with gaps spread around the TTL (before, around and after the reaper's decision)
/// until it answers `SessionExpired`; then sends two more keepalives (any success is a
/// revival). Returns the lives and how many keepalives succeeded later than the previous
/// success's send time + TTL (races the keepalive won).
async fn hammer(
    store: Arc<PostgresStore>,
    prefix: String,
    ttl: Duration,
    mut seed: u64,
    until: Instant,
) -> (Vec<Life>, usize) {
    let mut lives = Vec::new();
    let mut late = 0;
    let mut round = 0;
    while Instant::now() < until {
        let opened = Instant::now();
        let (session, granted) = open_session(&*store, ttl).await;
        assert_eq!(granted, ttl);
        let key = format!("{prefix}{round}");
        round += 1;
        match create(&*store, &key, Some(session)).await {
            Ok(_) => {}
            // A loaded machine took a TTL between the two calls: no race to judge here.
            Err(StoreError::SessionExpired) => continue,
            other => panic!("create {key}: {other:?}"),
        }
        let mut life = Life {
            session,
            ttl,
            key,
            created: Instant::now(),
            ok_sends: vec![opened],
            expired: None,
            revived: 0,
        };
        while Instant::now() < until {
            let gap = ttl * (70 + lcg(&mut seed) % 60) as u32 / 100;
            tokio::time::sleep(gap).await;
            let sent = Instant::now();
            match keepalive(&*store, session).await {
                Ok(StoreReply::KeptAlive { ttl: t }) => {
                    assert_eq!(t, ttl);
                    if sent > *life.ok_sends.last().unwrap() + ttl {
                        late += 1;
                    }
                    life.ok_sends.push(sent);
                }
                Err(StoreError::SessionExpired) => {
                    life.expired = Some(Instant::now());
                    break;
                }
                // Gives the member no deadline: it only may have renewed.
                r if is_fault(&r) => {}
                other => panic!("keepalive: {other:?}"),
            }
        }
        if life.expired.is_some() {
            for _ in 0..2 {
                if keepalive(&*store, session).await.is_ok() {
                    life.revived += 1;
                }
            }
        }
        lives.push(life);
    }
    (lives, late)
}

/// PITFALLS 4/5b, L3 under a race: keepalives hammered around the expiry of 200 ms sessions
/// while two other stores' reapers delete them (one behind a proxy that keeps stalling, so it
/// decides on late answers). A reader never sees a session's key gone before the send time of
/// its last successful keepalive + TTL; after `SessionExpired` the key never reappears and no
/// keepalive succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalives_racing_the_reaper_never_outlive_their_keys() {
    let pg = Postgres::shared();
    let schema = unique_schema("race");
    let owner = store_at(pg.addr(), &schema, PostgresOptions::default());
    owner.pause_reaper(true);
    let reaper = store_at(pg.addr(), &schema, PostgresOptions::default());
    let proxy = Arc::new(FaultProxy::start(pg.addr()).expect("proxy"));
    let late_reaper = store_at(proxy.addr(), &schema, PostgresOptions::default());
    let reader = store_at(pg.addr(), &schema, PostgresOptions::default());
    open_session(&*reaper, secs(60)).await;
    open_session(&*late_reaper, secs(60)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = observe(reader, "race/", stop.clone());
    let flapper = tokio::spawn({
        let (proxy, stop) = (proxy.clone(), stop.clone());
        async move {
            let mut seed = 7;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(ms(30 + lcg(&mut seed) % 60)).await;
                proxy.blackhole();
                tokio::time::sleep(ms(20 + lcg(&mut seed) % 100)).await;
                proxy.heal();
            }
        }
    });
    let ttl = ms(200);
    let until = Instant::now() + secs(6);
    let hammers: Vec<_> = (0..4u64)
        .map(|i| {
            tokio::spawn(hammer(
                owner.clone(),
                format!("race/{i}-"),
                ttl,
                i + 1,
                until,
            ))
        })
        .collect();
    let (mut lives, mut late) = (Vec::new(), 0);
    for h in hammers {
        let (l, n) = h.await.expect("hammer");
        lives.extend(l);
        late += n;
    }
    stop.store(true, Ordering::SeqCst);
    flapper.await.expect("flapper");
    let obs = seen.await.expect("observer");
    let mut absent = 0;
    for life in &lives {
        absent += check_l3(life, &obs);
    }
    let expired = lives.iter().filter(|l| l.expired.is_some()).count();
    let renewals: usize = lives.iter().map(|l| l.ok_sends.len() - 1).sum();
    println!(
        "{} sessions, {renewals} renewals ({late} later than TTL after the previous), {expired} \
         reaped under the keepalives, {} listings checked ({absent} sightings of a reaped key's absence)",
        lives.len(),
        obs.len()
    );
    assert!(
        expired >= 8,
        "only {expired} sessions were reaped: no race ran"
    );
    assert!(renewals >= 8, "only {renewals} renewals: no race ran");
    assert!(obs.len() >= 100, "only {} listings", obs.len());
}

/// The reaper re-checks its decision under the row lock (PITFALLS 5b): a reaper that decided a
/// session was dead and then queued for the counter row (held by a stalled writer) while the
/// owner's keepalive committed must not delete the session. Without the re-check, the reaper
/// deletes it as soon as the counter row is free, well before the renewal's send time + TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_that_waited_for_the_lock_rechecks_the_renewals() {
    let pg = Postgres::shared();
    let schema = unique_schema("recheck");
    let owner = store_at(pg.addr(), &schema, PostgresOptions::default());
    owner.pause_reaper(true);
    let reaper = named_store(pg, &schema, &schema, PostgresOptions::default());
    open_session(&*reaper, secs(60)).await;
    let ttl = secs(1);
    let opened = Instant::now();
    let (s, _) = open_session(&*owner, ttl).await;
    create(&*owner, "recheck/claim", Some(s))
        .await
        .expect("claim");
    let created = Instant::now();
    // A writer takes the counter row and stalls.
    let mut staller = raw_client(pg).await;
    let tx = staller.transaction().await.expect("begin");
    tx.query_one(
        &format!("SELECT rev FROM {schema}.meta WHERE id = 1 FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the counter row");
    // The reaper sees no renewal for the TTL, decides, and queues for the counter row.
    eventually(
        secs(10),
        "the reaper queues for the counter row",
        || async { waiting_for_a_lock(pg, &schema) == 1 },
    )
    .await;
    // The owner renews meanwhile: a keepalive takes no lock a writer holds (PITFALLS 31).
    let sent = Instant::now();
    keepalive(&*owner, s)
        .await
        .expect("keepalive while the counter row is held");
    let ok_sends = Arc::new(Mutex::new(vec![opened, sent]));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = observe(owner.clone(), "recheck/", stop.clone());
    let keeper = tokio::spawn({
        let (owner, ok_sends, stop) = (owner.clone(), ok_sends.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(ms(100)).await;
                let sent = Instant::now();
                if keepalive(&*owner, s).await.is_ok() {
                    ok_sends.lock().unwrap().push(sent);
                }
            }
        }
    });
    tokio::time::sleep(ms(100)).await;
    tx.rollback().await.expect("release the counter row");
    eventually(secs(10), "the reaper stops waiting", || async {
        waiting_for_a_lock(pg, &schema) == 0
    })
    .await;
    tokio::time::sleep(ms(300)).await;
    stop.store(true, Ordering::SeqCst);
    keeper.await.expect("keeper");
    let obs = seen.await.expect("observer");
    let life = Life {
        session: s,
        ttl,
        key: "recheck/claim".into(),
        created,
        ok_sends: ok_sends.lock().unwrap().clone(),
        expired: None,
        revived: 0,
    };
    check_l3(&life, &obs);
    assert!(obs.len() >= 10, "only {} listings", obs.len());
}

// ---------------------------------------------------------------------------------------------
// 2. No wall clock decides expiry (PITFALLS 4).
// ---------------------------------------------------------------------------------------------

/// The sessions' wall-clock columns (and `meta.created_at`) are rewritten again and again, to
/// 1970 and to 2999, while one session is kept alive and another is not: the kept one is
/// never reaped, and the other is reaped neither early (a 1970 `renewed_at` does not kill it
/// before its TTL) nor never (a 2999 one does not save it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_wall_clock_does_not_decide_expiry() {
    let pg = Postgres::shared();
    let schema = unique_schema("wallclock");
    let owner = store_at(pg.addr(), &schema, PostgresOptions::default());
    owner.pause_reaper(true);
    let reaper = store_at(pg.addr(), &schema, PostgresOptions::default());
    open_session(&*reaper, secs(60)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rewriter = tokio::spawn({
        let (stop, schema) = (stop.clone(), schema.clone());
        let client = raw_client(pg).await;
        async move {
            let mut rewrites = 0;
            while !stop.load(Ordering::SeqCst) {
                for when in ["1970-01-01 00:00:00+00", "2999-12-31 00:00:00+00"] {
                    let n = client
                        .execute(
                            &format!(
                                "UPDATE {schema}.sessions SET opened_at = '{when}', \
                                 renewed_at = '{when}'"
                            ),
                            &[],
                        )
                        .await
                        .expect("rewrite sessions");
                    client
                        .execute(
                            &format!("UPDATE {schema}.meta SET created_at = '{when}'"),
                            &[],
                        )
                        .await
                        .expect("rewrite meta");
                    rewrites += n;
                    tokio::time::sleep(ms(25)).await;
                }
            }
            rewrites
        }
    });
    let seen = observe(owner.clone(), "wall/", stop.clone());
    let ttl = secs(1);
    let opened = Instant::now();
    let (kept, _) = open_session(&*owner, ttl).await;
    create(&*owner, "wall/kept", Some(kept))
        .await
        .expect("claim");
    let kept_created = Instant::now();
    let keeper = tokio::spawn({
        let (owner, stop) = (owner.clone(), stop.clone());
        async move {
            let mut sends = vec![opened];
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(ms(100)).await;
                let sent = Instant::now();
                match keepalive(&*owner, kept).await {
                    Ok(_) => sends.push(sent),
                    other => panic!("a session kept alive: {other:?}"),
                }
            }
            sends
        }
    });
    // Opened while the columns are being rewritten: it sees 1970 within its first 50 ms.
    tokio::time::sleep(ms(200)).await;
    let short = ms(500);
    let dying_opened = Instant::now();
    let (dying, _) = open_session(&*owner, short).await;
    create(&*owner, "wall/dying", Some(dying))
        .await
        .expect("claim");
    let dying_created = Instant::now();
    eventually(
        secs(10),
        "the session without keepalives is reaped",
        || async { get(&*owner, "wall/dying").await.is_none() },
    )
    .await;
    // The kept session lives on for three TTLs of rewriting.
    tokio::time::sleep((kept_created + ttl * 3).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::SeqCst);
    let sends = keeper.await.expect("keeper");
    let rewrites = rewriter.await.expect("rewriter");
    let obs = seen.await.expect("observer");
    assert!(rewrites >= 20, "only {rewrites} rows rewritten");
    let kept_life = Life {
        session: kept,
        ttl,
        key: "wall/kept".into(),
        created: kept_created,
        ok_sends: sends,
        expired: None,
        revived: 0,
    };
    assert_eq!(
        check_l3(&kept_life, &obs),
        0,
        "a session kept alive was reaped"
    );
    let dying_life = Life {
        session: dying,
        ttl: short,
        key: "wall/dying".into(),
        created: dying_created,
        ok_sends: vec![dying_opened],
        expired: None,
        revived: 0,
    };
    assert!(check_l3(&dying_life, &obs) > 0);
    assert!(get(&*owner, "wall/kept").await.is_some());
}

// ---------------------------------------------------------------------------------------------
// 3. A server restart.
// ---------------------------------------------------------------------------------------------

/// What one loop of operations saw: (send time, time taken, answer).
type Log = Vec<(Instant, Duration, StoreResult)>;

/// Runs `op` every `every` until `stop`, logging each answer.
fn ops_loop(
    store: Arc<PostgresStore>,
    op: StoreOp,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let r = store.execute(op.clone()).await;
            log.push((sent, sent.elapsed(), r));
            tokio::time::sleep(every).await;
        }
        log
    })
}

/// Collects a watch's events with their arrival times until the task is aborted.
type Events = Arc<Mutex<Vec<(Instant, WatchEvent)>>>;

fn collect_events(store: &PostgresStore, prefix: &str) -> (Events, tokio::task::JoinHandle<()>) {
    let events: Events = Arc::default();
    let mut w = store.watch(prefix.into());
    let task = tokio::spawn({
        let events = events.clone();
        async move {
            while let Some(ev) = w.next().await {
                events.lock().unwrap().push((Instant::now(), ev));
            }
            panic!("the watch ended");
        }
    });
    (events, task)
}

fn has_event(events: &Events, after: Instant, f: impl Fn(&WatchEvent) -> bool) -> bool {
    events
        .lock()
        .unwrap()
        .iter()
        .any(|(t, ev)| *t >= after && f(ev))
}

fn names(ev: &WatchEvent, key: &str) -> bool {
    matches!(ev, WatchEvent::Keys(ks) if ks.iter().any(|k| k == key)) || *ev == WatchEvent::Changed
}

/// The server is killed (SIGKILL) and started again on the same data while a session is kept
/// alive and writes and reads run. Every operation meanwhile fails as `Unavailable` or
/// `Indeterminate` within its bounds (never another answer, never a hang); `Unavailable`
/// writes were not applied; the store reconnects by itself; the session, cut off for less
/// than its TTL, survives; the watch says `Reset` after the restart and then notifies changes;
/// and the reaper reaps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_is_survived() {
    let pg = tokio::task::block_in_place(Postgres::start).expect("server");
    let opts = quick_opts();
    // Connect, set-up and the op itself, plus scheduling slack.
    let bound = opts.connect_timeout + opts.op_timeout * 2 + secs(3);
    let store = store_at(pg.addr(), "restart", opts);
    let ttl = secs(10);
    let (s, _) = open_session(&*store, ttl).await;
    create(&*store, "restart/claim", Some(s))
        .await
        .expect("claim");
    put(&*store, "restart/counter", b"0").await.expect("put");
    let v0 = get(&*store, "restart/counter")
        .await
        .expect("counter")
        .version;
    let watched = Instant::now();
    let (events, watcher) = collect_events(&store, "restart/");
    eventually(secs(10), "the listener is up", || async {
        has_event(&events, watched, |e| *e == WatchEvent::Reset)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let keepalives = ops_loop(
        store.clone(),
        StoreOp::KeepAlive { session: s },
        ms(100),
        stop.clone(),
    );
    let writes = ops_loop(
        store.clone(),
        StoreOp::Txn {
            conds: vec![],
            writes: vec![rebalanser_store::Write::Put {
                key: "restart/counter".into(),
                value: b"1".to_vec(),
            }],
        },
        ms(20),
        stop.clone(),
    );
    let reads = ops_loop(
        store.clone(),
        StoreOp::Get {
            key: "restart/claim".into(),
            linearizable: true,
        },
        ms(20),
        stop.clone(),
    );
    tokio::time::sleep(ms(500)).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| pg.restart()).expect("restart");
    let up = Instant::now();
    // The store reconnects by itself: a write sent after the restart succeeds.
    eventually(secs(20), "writes succeed again", || async {
        put(&*store, "restart/probe", b"x").await.is_ok()
    })
    .await;
    tokio::time::sleep(ms(500)).await;
    stop.store(true, Ordering::SeqCst);
    let keepalives = keepalives.await.expect("keepalives");
    let writes = writes.await.expect("writes");
    let reads = reads.await.expect("reads");
    println!(
        "server down for {:?}; {} keepalives, {} writes, {} reads",
        up - killed,
        keepalives.len(),
        writes.len(),
        reads.len()
    );
    for (what, log) in [
        ("keepalive", &keepalives),
        ("write", &writes),
        ("read", &reads),
    ] {
        let mut faults = 0;
        for (sent, took, r) in log {
            assert!(*took <= bound, "a {what} took {took:?}: {r:?}");
            match r {
                Ok(_) => {}
                r if is_fault(r) => {
                    faults += 1;
                    assert!(
                        *sent + *took >= killed,
                        "a {what} failed before the kill: {r:?}"
                    );
                }
                other => panic!("a {what} during a restart answered {other:?}"),
            }
        }
        assert!(faults > 0, "no {what} saw the restart");
        let (sent, _, r) = log.last().unwrap();
        assert!(
            *sent > up && r.is_ok(),
            "the last {what} did not succeed: {r:?}"
        );
    }
    // The session survived: no keepalive gap reached the TTL, and it is still alive.
    let oks: Vec<(Instant, Instant)> = keepalives
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(sent, took, _)| (*sent, *sent + *took))
        .collect();
    let last_before = oks.iter().rev().find(|(_, done)| *done < killed).unwrap();
    let first_after = oks.iter().find(|(sent, _)| *sent > killed).unwrap();
    assert!(
        first_after.1 - last_before.0 < ttl,
        "the restart took longer than the TTL: nothing to test"
    );
    keepalive(&*store, s).await.expect("the session survived");
    assert!(get(&*store, "restart/claim").await.is_some());
    // Writes: every success was applied, no `Unavailable` one was, `Indeterminate` either way.
    let applied = get(&*store, "restart/counter").await.unwrap().version - v0;
    let ok = writes.iter().filter(|(_, _, r)| r.is_ok()).count() as u64;
    let unknown = writes
        .iter()
        .filter(|(_, _, r)| matches!(r, Err(StoreError::Indeterminate(_))))
        .count() as u64;
    assert!(
        (ok..=ok + unknown).contains(&applied),
        "{applied} writes applied, {ok} succeeded, {unknown} indeterminate"
    );
    // The watch: a `Reset` after the restart, then notifications again.
    eventually(secs(20), "a Reset after the restart", || async {
        has_event(&events, killed, |e| *e == WatchEvent::Reset)
    })
    .await;
    let before = Instant::now();
    put(&*store, "restart/after", b"x").await.expect("put");
    eventually(
        secs(10),
        "the change after the restart is notified",
        || async { has_event(&events, before, |e| names(e, "restart/after")) },
    )
    .await;
    watcher.abort();
    // The reaper reaps again.
    let (short, _) = open_session(&*store, ms(500)).await;
    create(&*store, "restart/short", Some(short))
        .await
        .expect("claim");
    eventually(secs(10), "the reaper reaps after the restart", || async {
        get(&*store, "restart/short").await.is_none()
    })
    .await;
    keepalive(&*store, s).await.expect("the session lives on");
}

// ---------------------------------------------------------------------------------------------
// 4. Each connection terminated by the server.
// ---------------------------------------------------------------------------------------------

/// `pg_terminate_backend` of each of the store's connections in turn (writer, reader,
/// keepalive, reaper, listener): the next operations succeed on a new connection, the session
/// lives on, the reaper reaps again, and the watch says `Reset` after its listener was
/// terminated and then notifies a change made right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_terminated_connection_is_replaced() {
    let pg = tokio::task::block_in_place(Postgres::start).expect("server");
    let store = store_at(pg.addr(), "terminate", PostgresOptions::default());
    let ttl = secs(30);
    let (s, _) = open_session(&*store, ttl).await;
    create(&*store, "t/claim", Some(s)).await.expect("claim");
    assert!(get(&*store, "t/claim").await.is_some());
    keepalive(&*store, s).await.expect("keepalive");
    let mut w = store.watch("t/".into());
    await_reset(&mut w, secs(10)).await;
    for lane in ["writer", "reader", "keepalive", "reaper", "listen"] {
        let app = format!("rebalanser/{lane}");
        let old = backends(&pg, &app);
        assert_eq!(old.len(), 1, "{app}: {old:?}");
        psql(&pg, &format!("SELECT pg_terminate_backend({})", old[0]));
        eventually(secs(10), "the backend exits", || async {
            !backends(&pg, &app).contains(&old[0])
        })
        .await;
        // The client learns of the close from the server's FATAL message and EOF, on its own
        // task: give it a moment, then the next operation must go to a new connection.
        tokio::time::sleep(ms(200)).await;
        match lane {
            "writer" => {
                put(&*store, "t/w", b"1")
                    .await
                    .expect("write after terminate");
            }
            "reader" => {
                assert!(get(&*store, "t/claim").await.is_some());
            }
            "keepalive" => {
                keepalive(&*store, s)
                    .await
                    .expect("keepalive after terminate");
            }
            "reaper" => {
                let (short, _) = open_session(&*store, ms(500)).await;
                create(&*store, "t/short", Some(short))
                    .await
                    .expect("claim");
                eventually(secs(10), "the reaper reaps again", || async {
                    get(&*store, "t/short").await.is_none()
                })
                .await;
            }
            "listen" => {
                await_reset(&mut w, secs(10)).await;
                put(&*store, "t/after", b"1").await.expect("put");
                await_change(&mut w, "t/after", secs(10)).await;
            }
            _ => unreachable!(),
        }
        let new = backends(&pg, &app);
        assert_eq!(new.len(), 1, "{app} reconnected once: {new:?}");
        assert_ne!(new, old, "{app}");
        println!("{app}: backend {} replaced by {}", old[0], new[0]);
    }
    // A write in flight (queued for the counter row) when its connection is terminated: the
    // server ended it before its COMMIT, so it answers `Unavailable` and was not applied.
    let mut staller = raw_client(&pg).await;
    let tx = staller.transaction().await.expect("begin");
    tx.query_one(
        "SELECT rev FROM terminate.meta WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await
    .expect("lock the counter row");
    let write = tokio::spawn({
        let store = store.clone();
        async move { put(&*store, "t/w", b"in flight").await }
    });
    eventually(secs(10), "the write waits for the counter row", || async {
        waiting_for_a_lock(&pg, "rebalanser/writer") == 1
    })
    .await;
    let writer = backends(&pg, "rebalanser/writer");
    psql(&pg, &format!("SELECT pg_terminate_backend({})", writer[0]));
    let r = write.await.expect("write");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "a write terminated before its COMMIT: {r:?}"
    );
    tx.rollback().await.expect("release");
    assert_eq!(get(&*store, "t/w").await.unwrap().value, b"1");
    put(&*store, "t/w", b"2")
        .await
        .expect("write after terminate");
    keepalive(&*store, s).await.expect("the session lives on");
    assert!(get(&*store, "t/claim").await.is_some());
}

// ---------------------------------------------------------------------------------------------
// 5. Network partitions shorter and longer than the TTL.
// ---------------------------------------------------------------------------------------------

/// A store cut off by a silent partition (a proxy) for less than its session's TTL keeps its
/// session: the keepalive held in the partition completes after the heal and later ones
/// succeed. Cut off for longer than the TTL: another store's reaper deletes the session and its
/// keys, never before (last successful keepalive's send) + TTL; operations of the cut-off
/// store fail within their bounds; once healed, its `KeepAlive` answers `SessionExpired` (the
/// keepalives held in the partition revived nothing), and the store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_shorter_and_longer_than_the_ttl() {
    let pg = Postgres::shared();
    let schema = unique_schema("cut");
    let proxy = FaultProxy::start(pg.addr()).expect("proxy");
    let opts = PostgresOptions {
        connect_timeout: secs(1),
        op_timeout: secs(3),
        ..PostgresOptions::default()
    };
    let bound = opts.connect_timeout + opts.op_timeout * 2 + secs(3);
    let cut_off = store_at(proxy.addr(), &schema, opts);
    let other = store_at(pg.addr(), &schema, PostgresOptions::default());
    open_session(&*other, secs(60)).await;
    let ttl = secs(1);
    let opened = Instant::now();
    let (s, _) = open_session(&*cut_off, ttl).await;
    create(&*cut_off, "cut/claim", Some(s))
        .await
        .expect("claim");
    let created = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = observe(other.clone(), "cut/", stop.clone());
    let keeper = ops_loop(
        cut_off.clone(),
        StoreOp::KeepAlive { session: s },
        ms(200),
        stop.clone(),
    );

    // Shorter than the TTL.
    tokio::time::sleep(ms(500)).await;
    proxy.blackhole();
    tokio::time::sleep(ms(300)).await;
    // Taken before the heal: no answer held in the partition can arrive earlier.
    let healed = Instant::now();
    proxy.heal();
    tokio::time::sleep(ttl + ms(500)).await;
    keepalive(&*cut_off, s)
        .await
        .expect("the session survived a short partition");
    assert!(get(&*other, "cut/claim").await.is_some());

    // Longer than the TTL.
    proxy.blackhole();
    // Taken after the cut: nothing sent later reaches the server before the heal.
    let long_cut = Instant::now();
    eventually(
        secs(15),
        "the other store reaps the cut-off session",
        || async { get(&*other, "cut/claim").await.is_none() },
    )
    .await;
    let t = Instant::now();
    let r = cut_off
        .execute(StoreOp::Get {
            key: "cut/claim".into(),
            linearizable: true,
        })
        .await;
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "a read in a partition: {r:?}"
    );
    assert!(
        t.elapsed() <= bound,
        "a read in a partition took {:?}",
        t.elapsed()
    );
    let long_healed = Instant::now();
    proxy.heal();
    eventually(
        secs(15),
        "KeepAlive answers SessionExpired once healed",
        || async {
            matches!(
                keepalive(&*cut_off, s).await,
                Err(StoreError::SessionExpired)
            )
        },
    )
    .await;
    // Keepalives held in the partition reach the server now: they must revive nothing.
    tokio::time::sleep(ms(500)).await;
    stop.store(true, Ordering::SeqCst);
    let log = keeper.await.expect("keeper");
    let obs = seen.await.expect("observer");
    assert_eq!(
        count(
            pg,
            &format!("SELECT count(*) FROM {schema}.sessions WHERE id = {}", s.0)
        ),
        0,
        "the session's row came back"
    );
    assert!(get(&*other, "cut/claim").await.is_none());

    let mut life = Life {
        session: s,
        ttl,
        key: "cut/claim".into(),
        created,
        ok_sends: vec![opened],
        expired: None,
        revived: 0,
    };
    // A keepalive in flight when the short partition healed: held in it, then answered.
    let mut held_and_completed = false;
    for (sent, took, r) in &log {
        assert!(*took <= bound, "a keepalive took {took:?}: {r:?}");
        match r {
            Ok(_) if life.expired.is_some() => life.revived += 1,
            Ok(_) => {
                life.ok_sends.push(*sent);
                held_and_completed |= *sent < healed && *sent + *took >= healed;
                assert!(
                    *sent < long_cut,
                    "a keepalive sent in the long partition succeeded"
                );
            }
            Err(StoreError::SessionExpired) => {
                assert!(
                    *sent + *took >= long_healed,
                    "SessionExpired before the long partition healed"
                );
                life.expired.get_or_insert(*sent + *took);
            }
            r if is_fault(r) => {
                assert!(
                    *sent + *took >= long_cut,
                    "a fault outside the long partition: {r:?}"
                );
            }
            other => panic!("keepalive: {other:?}"),
        }
    }
    assert!(
        held_and_completed,
        "no keepalive held in the short partition completed after it"
    );
    assert!(check_l3(&life, &obs) > 0);
    // The store works again.
    let (s2, _) = open_session(&*cut_off, ttl).await;
    create(&*cut_off, "cut/claim", Some(s2))
        .await
        .expect("claim again");
}

// ---------------------------------------------------------------------------------------------
// 7. A writer stalled while holding the counter row (PITFALLS 31; idle_in_transaction).
// ---------------------------------------------------------------------------------------------

/// A connection holding the counter row and idle (a raw one, with no server-side bound): other
/// writers wait and answer a fault within their `op_timeout` (nothing applied), while
/// keepalives are not blocked; once the row is free, writes go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_do_not_wait_for_the_counter_row() {
    let pg = Postgres::shared();
    let schema = unique_schema("rowlock");
    let opts = quick_opts();
    let bound = opts.op_timeout + secs(3);
    let store = named_store(pg, &schema, &schema, opts);
    let (s, _) = open_session(&*store, secs(10)).await;
    put(&*store, "rl/k", b"0").await.expect("put");
    let mut staller = raw_client(pg).await;
    let tx = staller.transaction().await.expect("begin");
    tx.query_one(
        &format!("SELECT rev FROM {schema}.meta WHERE id = 1 FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the counter row");
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            let t = Instant::now();
            (put(&*store, "rl/k", b"blocked").await, t.elapsed())
        }
    });
    eventually(secs(10), "the write waits for the counter row", || async {
        waiting_for_a_lock(pg, &schema) >= 1
    })
    .await;
    let renewed = renew_while(&*store, s, &write).await;
    let (r, took) = write.await.expect("write");
    assert!(is_fault(&r), "a write behind a held counter row: {r:?}");
    assert!(took <= bound, "the write took {took:?}");
    assert!(
        renewed >= 3,
        "only {renewed} keepalives while a write waited {took:?}"
    );
    assert_eq!(get(&*store, "rl/k").await.unwrap().value, b"0");
    tx.rollback().await.expect("release");
    put(&*store, "rl/k", b"1")
        .await
        .expect("a write once the row is free");
    keepalive(&*store, s).await.expect("keepalive");
}

/// One of the store's own writers stalls inside its transaction holding the counter row (its
/// client silent behind a partition): the server ends that connection after
/// `idle_in_transaction`, so another store's write goes through while the partition lasts,
/// with that store's keepalives never blocked meanwhile. The stalled write fails and was not
/// applied, and the stalled store works again once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_writer_is_cut_off_by_the_server() {
    let pg = Postgres::shared();
    let schema = unique_schema("stall");
    let proxy = FaultProxy::start(pg.addr()).expect("proxy");
    // The client would give up only after 30 s: the server must end the transaction first.
    let slow_client = PostgresOptions {
        op_timeout: secs(30),
        ..PostgresOptions::default()
    };
    let stalled = {
        let url = url_at(
            proxy.addr(),
            &schema,
            &format!("&application_name={schema}"),
        );
        Arc::new(PostgresStore::from_url_with(&url, slow_client).expect("url"))
    };
    let other_app = format!("{schema}_other");
    let other = named_store(pg, &schema, &other_app, PostgresOptions::default());
    let (s, _) = open_session(&*other, secs(10)).await;
    put(&*other, "stall/k", b"0").await.expect("put");
    // Hold the key's row so the stalled store's write stops inside its transaction, after it
    // took the counter row.
    let mut holder = raw_client(pg).await;
    let tx = holder.transaction().await.expect("begin");
    tx.query_one(
        &format!("SELECT 1 FROM {schema}.kv WHERE key = 'stall/k' FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the key's row");
    let stalled_write = tokio::spawn({
        let stalled = stalled.clone();
        async move {
            let t = Instant::now();
            (put(&*stalled, "stall/k", b"stalled").await, t.elapsed())
        }
    });
    eventually(
        secs(10),
        "the stalled store's write waits for the key",
        || async { waiting_for_a_lock(pg, &schema) == 1 },
    )
    .await;
    // Its client goes silent; the key's row is freed: the write's transaction now sits idle on
    // the server, holding the counter row.
    proxy.blackhole();
    tx.rollback().await.expect("release the key");
    let t = Instant::now();
    let write = tokio::spawn({
        let other = other.clone();
        async move { put(&*other, "stall/other", b"1").await }
    });
    eventually(
        secs(10),
        "the other store's write waits for the counter row",
        || async { waiting_for_a_lock(pg, &other_app) >= 1 },
    )
    .await;
    let renewed = renew_while(&*other, s, &write).await;
    write
        .await
        .expect("write")
        .expect("a write once the server ended the stalled transaction");
    println!("the counter row was free again after {:?}", t.elapsed());
    assert!(proxy.is_blackholed());
    assert!(
        renewed >= 3,
        "only {renewed} keepalives while the write waited"
    );
    // The server ended the stalled store's connection (the partition still holds its client).
    let its_conns =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{schema}'");
    eventually(secs(10), "the stalled connection is gone", || async {
        count(pg, &its_conns) == 0
    })
    .await;
    proxy.heal();
    let (r, took) = stalled_write.await.expect("stalled write");
    assert!(is_fault(&r), "the stalled write: {r:?}");
    assert!(
        took < secs(30),
        "the stalled write waited for its client timeout"
    );
    assert_eq!(get(&*other, "stall/k").await.unwrap().value, b"0");
    put(&*stalled, "stall/k", b"2")
        .await
        .expect("the stalled store works again");
    keepalive(&*other, s).await.expect("keepalive");
}

// ---------------------------------------------------------------------------------------------
// A server that falls silent right after accepting a connection.
// ---------------------------------------------------------------------------------------------

/// A server that accepts a connection and then answers nothing (a host that freezes right
/// after the start-up): an operation that needs a new connection answers `Unavailable` within
/// its bounds instead of hanging, and so does the reaper's connection: once the server answers
/// again, the reaper reaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_after_the_startup_does_not_hang_the_store() {
    let pg = Postgres::shared();
    let schema = unique_schema("mute");
    let mute = MuteAfterStartup::start(pg.addr()).await;
    let opts = quick_opts();
    let bound = opts.connect_timeout + opts.op_timeout * 2 + secs(3);
    let reader = store_at(pg.addr(), &schema, PostgresOptions::default());

    // A first operation: the connection's set-up (and the schema check) gets no answer.
    mute.mute.store(true, Ordering::SeqCst);
    let fresh = store_at(mute.addr, &schema, opts.clone());
    let t = Instant::now();
    let r = tokio::time::timeout(
        secs(30),
        fresh.execute(StoreOp::OpenSession { ttl: secs(1) }),
    )
    .await
    .expect("an operation hung on a silent server");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() <= bound, "took {:?}", t.elapsed());
    let t = Instant::now();
    let r = tokio::time::timeout(
        secs(30),
        PostgresStore::connect_with(&url_at(mute.addr, &schema, ""), opts.clone()),
    )
    .await
    .expect("connect hung on a silent server");
    assert!(r.is_err());
    assert!(t.elapsed() <= bound, "took {:?}", t.elapsed());

    // The reaper's connection: the store has a working writer; its reaper connects into the
    // silence; the only session of the schema is reaped only if the reaper recovers.
    mute.mute.store(false, Ordering::SeqCst);
    let store = store_at(mute.addr, &schema, opts);
    put(&*store, "mute/k", b"1").await.expect("put");
    mute.mute.store(true, Ordering::SeqCst);
    let (s, _) = open_session(&*store, ms(200)).await;
    create(&*store, "mute/claim", Some(s)).await.expect("claim");
    tokio::time::sleep(ms(300)).await;
    mute.mute.store(false, Ordering::SeqCst);
    eventually(secs(20), "the reaper recovers and reaps", || async {
        get(&*reader, "mute/claim").await.is_none()
    })
    .await;
    match keepalive(&*store, s).await {
        Err(StoreError::SessionExpired) => {}
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A lost reply to a commit.
// ---------------------------------------------------------------------------------------------

/// A write whose COMMIT the server applied but whose reply was lost (the connection reset
/// while the reply was in flight) answers `Indeterminate`, never `Unavailable` ("nothing was
/// applied", which would be a lie: PITFALLS 11); so does an autocommit keepalive. The COMMIT
/// is held on the server by a deferred constraint trigger waiting for an advisory lock the
/// test holds; the keepalive by a table lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_indeterminate() {
    let pg = Postgres::shared();
    let schema = unique_schema("lostcommit");
    let proxy = FaultProxy::start(pg.addr()).expect("proxy");
    let store = {
        let url = url_at(
            proxy.addr(),
            &schema,
            &format!("&application_name={schema}"),
        );
        Arc::new(PostgresStore::from_url_with(&url, PostgresOptions::default()).expect("url"))
    };
    store.pause_reaper(true);
    let (s, _) = open_session(&*store, secs(60)).await;
    put(&*store, "lc/k", b"0").await.expect("put");
    let lock_key = i64::from(std::process::id()) << 20 | 0x1c;
    psql(
        pg,
        &format!(
            "CREATE FUNCTION {schema}.hold() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_advisory_xact_lock({lock_key}); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER hold AFTER INSERT OR UPDATE ON {schema}.kv \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.hold()"
        ),
    );
    let value = format!("SELECT convert_from(value, 'UTF8') FROM {schema}.kv WHERE key = 'lc/k'");
    let renewals = format!("SELECT renewals FROM {schema}.sessions WHERE id = {}", s.0);

    for what in ["txn", "keepalive"] {
        // Statements are prepared on a connection's first use, and preparing an UPDATE already
        // takes its table's lock: the connections (new after a reset) prepare theirs now, so
        // the op below waits in its execution.
        put(&*store, "lc/k", b"0").await.expect("put");
        keepalive(&*store, s).await.expect("keepalive");
        let mut holder = raw_client(pg).await;
        let tx = holder.transaction().await.expect("begin");
        let hold = match what {
            "txn" => format!("SELECT pg_advisory_xact_lock({lock_key})"),
            _ => format!("LOCK TABLE {schema}.sessions IN SHARE MODE"),
        };
        tx.batch_execute(&hold).await.expect("hold");
        let before = psql(pg, if what == "txn" { &value } else { &renewals });
        let op = tokio::spawn({
            let store = store.clone();
            async move {
                match what {
                    "txn" => put(&*store, "lc/k", b"1").await,
                    _ => keepalive(&*store, s).await,
                }
            }
        });
        eventually(secs(10), "the commit waits on the server", || async {
            waiting_for_a_lock(pg, &schema) == 1
        })
        .await;
        // The reply will be lost: the client is cut off, then the commit completes.
        proxy.blackhole();
        tx.rollback().await.expect("release");
        eventually(secs(10), "the commit completes on the server", || async {
            psql(pg, if what == "txn" { &value } else { &renewals }) != before
        })
        .await;
        proxy.reset_all();
        // Healed only once the reset closed every connection: a heal first would let the held
        // reply through.
        eventually(secs(10), "the proxy resets its connections", || async {
            proxy.active_connections() == 0
        })
        .await;
        proxy.heal();
        let r = op.await.expect("op");
        assert!(
            matches!(r, Err(StoreError::Indeterminate(_))),
            "{what}: a commit applied but unanswered gave {r:?}"
        );
    }
    psql(pg, &format!("DROP TRIGGER hold ON {schema}.kv"));
    put(&*store, "lc/k", b"2")
        .await
        .expect("the store works again");
    keepalive(&*store, s).await.expect("the session lives on");
}
