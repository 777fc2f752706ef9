//! The member runtime on real ZooKeeper servers under network and server faults: one member's
//! connection blackholed (shorter and longer than the TTL), the ensemble's leader killed, and
//! a follower cut off from its leader while it still serves one member.
//!
//! Every lease goes through the access monitor, which fails on two valid leases on one
//! resource. Times are printed (`-- --nocapture`); only generous bounds are asserted. The
//! tests run one at a time: three JVMs and the members share two cores, and the timings under
//! test are a few hundred milliseconds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rebalanser::{Admin, LeaseChecker, Member, RevokeReason, Status, Token};
use rebalanser_testkit::{FaultProxy, ZkEnsemble, ZkOptions};

const GROUP: &str = "it.faults";
const TTL: Duration = Duration::from_secs(2);
const MEMBERS: usize = 5;
const RESOURCES: usize = 50;
const LIMIT: Duration = Duration::from_secs(20);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url(hosts: &str, test: &str) -> String {
    format!("zk://{hosts}/it-{test}-{}", std::process::id())
}

struct Group {
    admin: Admin,
    mon: Monitor,
    workers: Vec<Worker>,
    logs: BTreeMap<String, EventLog>,
}

impl Group {
    fn worker(&self, name: &str) -> &Worker {
        self.workers.iter().find(|w| w.name == name).unwrap()
    }

    fn log(&self, name: &str) -> &EventLog {
        &self.logs[name]
    }
}

/// Member `m<i>` joins through `urls[i]`; the admin through `admin_url`. Returns once balanced
/// and settled.
async fn start_group(test: &str, admin_url: &str, urls: &[String]) -> Group {
    common::logs();
    let admin = group_named(admin_url, GROUP, RESOURCES).await;
    let mon = Monitor::default();
    let start = Instant::now();
    let mut workers = Vec::new();
    let mut logs = BTreeMap::new();
    for (name, url) in names(urls.len()).into_iter().zip(urls) {
        let m = zk_fast(Member::builder(GROUP).store_url(url), TTL)
            .name(&name)
            .join()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        logs.insert(name.clone(), EventLog::collect(&m));
        workers.push(Worker::start(m, &name, &mon));
    }
    let all = names(urls.len());
    wait_even(&mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "zk[{test}]: initial balance {}x{RESOURCES} in {:?}",
        urls.len(),
        start.elapsed()
    );
    wait_settled(&admin, &mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Group {
        admin,
        mon,
        workers,
        logs,
    }
}

/// [`start_group`] on the shared server, m0 through a fault proxy (returned), the other members
/// and the admin directly.
async fn start_group_with_m0_proxied(test: &str) -> (Group, FaultProxy) {
    let zk = blocking(ZkEnsemble::shared);
    let proxy = FaultProxy::start(zk.client_addr(0)).expect("proxy");
    let direct = url(&zk.connect_string(), test);
    let mut urls = vec![url(&proxy.addr().to_string(), test)];
    urls.extend((1..MEMBERS).map(|_| direct.clone()));
    let g = start_group(test, &direct, &urls).await;
    (g, proxy)
}

fn count(log: &EventLog, since: Instant, f: impl Fn(&Status) -> bool) -> usize {
    log.since(since).iter().filter(|s| f(s)).count()
}

fn suspended(s: &Status) -> bool {
    matches!(s, Status::Suspended { .. })
}
fn resumed(s: &Status) -> bool {
    matches!(s, Status::Resumed)
}
fn session_lost(s: &Status) -> bool {
    matches!(s, Status::SessionLost { .. })
}
fn joined(s: &Status) -> bool {
    matches!(s, Status::Joined { .. })
}

/// What the fault loops observe about the member cut off (`who`): when its leases had all
/// turned invalid, when the server dropped its session (its member key is gone), and when the
/// others held all its resources.
#[derive(Debug, Default)]
struct Observed {
    invalid: Option<Duration>,
    expired: Option<Duration>,
    taken: Option<Duration>,
}

/// Polls until `until` returns true for what was observed, or `limit` passes.
async fn observe(
    admin: &Admin,
    mon: &Monitor,
    who: &str,
    leases: &BTreeMap<String, LeaseChecker>,
    t0: Instant,
    limit: Duration,
    until: impl Fn(&Observed) -> bool,
) -> Observed {
    let mut o = Observed::default();
    let mut next_status = Instant::now();
    while t0.elapsed() < limit && !until(&o) {
        if o.invalid.is_none() && leases.values().all(|c| !c.is_valid()) {
            o.invalid = Some(t0.elapsed());
        }
        if o.taken.is_none() {
            let holders = mon.holders();
            if leases
                .keys()
                .all(|r| holders.get(r).is_some_and(|h| h != who))
            {
                o.taken = Some(t0.elapsed());
            }
        }
        // The admin reads through a healthy path; ask at most every 50 ms.
        if o.expired.is_none() && Instant::now() >= next_status {
            next_status = Instant::now() + Duration::from_millis(50);
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(500), admin.status()).await
            {
                if s.members.iter().all(|m| m.name.as_str() != who) {
                    o.expired = Some(t0.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    o
}

/// When the member cut off had lost everything, each relative to the start of the fault: its
/// leases all invalid, its session expired at the server, all its resources held by others,
/// and the first of them re-granted.
#[derive(Debug, Clone, Copy)]
struct Isolation {
    invalid: Duration,
    expired: Duration,
    taken: Duration,
    regrant: Duration,
}

impl Isolation {
    /// First of all: no takeover while one of m0's leases was still valid (`mon` saw no double
    /// lease); then, each of them happened.
    fn checked(mon: &Monitor, o: &Observed, regrant: Option<Duration>) -> Isolation {
        mon.assert_clean();
        Isolation {
            invalid: o.invalid.expect("m0's leases never turned invalid"),
            expired: o.expired.expect("m0's session never expired"),
            taken: o.taken.expect("m0's resources were not taken over"),
            regrant: regrant.expect("no re-grant"),
        }
    }

    /// The member stopped before the server expired its session and before anything of it was
    /// re-granted; the others took all of it over within TTL + 3 s.
    fn assert_stopped_first(&self) {
        let Isolation {
            invalid,
            expired,
            taken,
            regrant,
        } = *self;
        assert!(
            invalid < expired,
            "m0's leases ended after {invalid:?}, its session expired after {expired:?}"
        );
        assert!(
            invalid < regrant,
            "re-granted after {regrant:?}, m0's leases ended after {invalid:?}"
        );
        assert!(
            taken < TTL + Duration::from_secs(3),
            "takeover after {taken:?}"
        );
    }
}

/// m0 lost its session in the fault (`what`) that began at `t0` and rejoined after the heal
/// at `healed`, and the group was balanced over every member again after `back`: once the
/// group is settled, m0's events show a suspension, exactly one lost session since `t0`, and
/// exactly one join since the heal.
async fn assert_m0_rejoined(
    g: &Group,
    test: &str,
    what: &str,
    back: Duration,
    t0: Instant,
    healed: Instant,
) {
    let all = names(MEMBERS);
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let log = g.log("m0");
    println!(
        "zk[{test}]: after heal m0 rejoined and the group rebalanced over {MEMBERS} in {back:?}; \
         m0 events since the {what}: {:?}",
        log.since(t0)
    );
    assert!(count(log, t0, suspended) >= 1, "{:?}", log.since(t0));
    assert_eq!(count(log, t0, session_lost), 1, "{:?}", log.since(t0));
    assert_eq!(
        count(log, healed, joined),
        1,
        "rejoined once: {:?}",
        log.since(t0)
    );
}

/// First grant after `since` of any of `resources`, relative to `t0`.
fn first_regrant(mon: &Monitor, resources: &BTreeSet<String>, since: Instant) -> Option<Duration> {
    mon.grant_log()
        .iter()
        .filter(|g| g.at >= since && resources.contains(&g.resource))
        .map(|g| g.at - since)
        .min()
}

/// 7. A member's connection blackholed for less than the TTL, then healed: its session
/// survives (the server hears nothing for less than its timeout), so membership does not
/// change and none of its resources moves; there is never a double lease, and the group is
/// balanced afterwards. Two lengths: half the TTL (inside the lease deadline) and three
/// quarters (past the point where the member must revoke, before the server's expiry), so
/// both keeping and resuming the leases are exercised; whether they were suspended is
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources() {
    let _serial = SERIAL.lock().await;
    let test = "blip";
    let (g, proxy) = start_group_with_m0_proxied(test).await;
    let all = names(MEMBERS);
    let coordinator = g.worker("m0").is_coordinator().await;

    for blackout in [TTL / 2, TTL * 3 / 4] {
        // Fresh keepalives first: the deadline counts from the second-to-last one, and right
        // after a heal that may still be one sent before the previous blackhole.
        tokio::time::sleep(TTL / 2).await;
        let before = g.mon.holders();
        let tokens: BTreeMap<String, Token> = g
            .mon
            .grant_log()
            .into_iter()
            .map(|gr| (gr.resource, gr.token))
            .collect();
        let leases = g.mon.checkers_of("m0");
        let t0 = Instant::now();
        proxy.blackhole();
        let deadline = leases.values().map(|c| c.remaining()).max().unwrap();
        let mut invalid_at = None;
        while t0.elapsed() < blackout {
            if invalid_at.is_none() && leases.values().all(|c| !c.is_valid()) {
                invalid_at = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.heal();
        let healed = Instant::now();
        // Back to a balance that includes m0 (after a suspension, its leases are granted
        // again).
        let back = wait_even(&g.mon, &refs(&all), RESOURCES, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let log = g.log("m0");
        let (susp, res, lost) = (
            count(log, t0, suspended),
            count(log, t0, resumed),
            count(log, t0, session_lost),
        );
        let after = g.mon.holders();
        let moved = moved(&before, &after);
        let regranted: Vec<GrantRec> = g
            .mon
            .grant_log()
            .into_iter()
            .filter(|gr| gr.at >= t0)
            .collect();
        println!(
            "zk[{test}]: m0 (coordinator: {coordinator}) blackholed {blackout:?} (lease deadline \
             {deadline:?} ahead): suspended {susp}x, \
             resumed {res}x, session lost {lost}x; leases invalid during the blackhole: {}; \
             {} leases granted again; balanced again {back:?} after heal; {moved} resources moved",
            match invalid_at {
                Some(t) => format!("yes, after {t:?}"),
                None => "no".into(),
            },
            regranted.len()
        );
        assert_eq!(
            lost,
            0,
            "a session silent for {blackout:?} < TTL expired: {:?}",
            log.since(t0)
        );
        assert_eq!(
            susp,
            res,
            "every suspension ended in a resume: {:?}",
            log.since(t0)
        );
        assert_eq!(
            moved, 0,
            "resources moved although m0's session lived: {before:?} -> {after:?}"
        );
        // Nothing moved: leases granted again went to m0, under its claims' old tokens.
        for gr in &regranted {
            assert_eq!(gr.who, "m0", "{gr:?}");
            assert!(
                gr.at >= healed - Duration::from_millis(50),
                "granted during the blackhole: {gr:?}"
            );
            assert_eq!(Some(&gr.token), tokens.get(&gr.resource), "{gr:?}");
        }
        assert_eq!(regranted.len(), if susp > 0 { leases.len() } else { 0 });
    }
    finish(&g.mon, g.workers).await;
}

/// 8. The same blackhole for 2.5 × TTL: m0 revokes its leases and they turn invalid before
/// the server expires its session; only then do the others take its resources; after the heal
/// it finds its session expired, rejoins with a new one, and the group rebalances to include
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires() {
    let _serial = SERIAL.lock().await;
    let test = "blackout";
    let (g, proxy) = start_group_with_m0_proxied(test).await;
    let all = names(MEMBERS);
    let others: Vec<String> = all[1..].to_vec();
    let coordinator = g.worker("m0").is_coordinator().await;
    let leases = g.mon.checkers_of("m0");
    let resources: BTreeSet<String> = leases.keys().cloned().collect();

    let blackout = TTL * 5 / 2;
    let t0 = Instant::now();
    proxy.blackhole();
    let deadline = leases.values().map(|c| c.remaining()).max().unwrap();
    let o = observe(&g.admin, &g.mon, "m0", &leases, t0, blackout, |_| false).await;
    let balanced4 = is_even(&g.mon.per_holder(), &refs(&others), RESOURCES);
    proxy.heal();
    let healed = Instant::now();
    let regrant = first_regrant(&g.mon, &resources, t0);
    let ended: Vec<ExitRec> = g
        .mon
        .exit_log()
        .into_iter()
        .filter(|e| e.who == "m0" && e.at >= t0)
        .collect();
    println!(
        "zk[{test}]: m0 (coordinator: {coordinator}) blackholed {blackout:?}: deadline {deadline:?}; \
         leases released after {:?}; session expired at the server after {:?}; first re-grant \
         elsewhere after {regrant:?}; all {} taken over after {:?}",
        o.invalid,
        o.expired,
        resources.len(),
        o.taken
    );
    let isolation = Isolation::checked(&g.mon, &o, regrant);
    let invalid = isolation.invalid;
    assert!(
        invalid <= deadline,
        "released after {invalid:?}, deadline {deadline:?}"
    );
    isolation.assert_stopped_first();
    assert!(
        balanced4,
        "not balanced over the others during the blackhole"
    );
    // A well-behaved application: every lease was revoked for the doubtful session (or lost
    // session) and dropped while still valid.
    assert_eq!(ended.len(), leases.len(), "{ended:?}");
    for e in &ended {
        assert!(
            matches!(
                e.reason,
                Some(RevokeReason::SessionInDoubt | RevokeReason::SessionLost)
            ),
            "{e:?}"
        );
        assert!(e.valid, "dropped only after the deadline: {e:?}");
    }

    let back = wait_even(&g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_m0_rejoined(&g, test, "blackhole", back, t0, healed).await;
    finish(&g.mon, g.workers).await;
}

/// 9. Members on a 3-node ensemble lose its leader (SIGKILL): never a double lease; a new
/// leader is elected, sessions survive, and the group is balanced again; the old node
/// restarts and rejoins without disturbing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_leader_killed_the_group_recovers_on_the_new_leader() {
    let _serial = SERIAL.lock().await;
    let test = "failover";
    let t = Instant::now();
    let zk = blocking(|| ZkEnsemble::start(ZkOptions::ensemble(3))).expect("ensemble");
    let leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("leader");
    println!(
        "zk[{test}]: 3-node ensemble serving after {:?}",
        t.elapsed()
    );
    let everywhere = url(&zk.connect_string(), test);
    let urls = vec![everywhere.clone(); MEMBERS];
    let g = start_group(test, &everywhere, &urls).await;
    let all = names(MEMBERS);
    let before = g.mon.holders();

    let t0 = Instant::now();
    blocking(|| zk.kill(leader)).expect("kill");
    let new_leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("new leader");
    let elected = t0.elapsed();
    assert_ne!(new_leader, leader);
    // The store serves linearizable reads again (a sync goes through the leader).
    let mut readable = None;
    while readable.is_none() && t0.elapsed() < LIMIT {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), g.admin.status()).await
        {
            readable = Some(t0.elapsed());
        }
    }
    // Anything the kill does to the members (a suspension at most) happens within a TTL of
    // their last keepalive; after that, wait for the group to be at rest again.
    tokio::time::sleep(TTL.saturating_sub(t0.elapsed())).await;
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let settled = t0.elapsed();
    let regrants: Vec<GrantRec> = g
        .mon
        .grant_log()
        .into_iter()
        .filter(|gr| gr.at >= t0)
        .collect();
    let last_regrant = regrants.iter().map(|gr| gr.at - t0).max();
    let mut susp = BTreeMap::new();
    let mut lost = 0;
    let mut errors = 0;
    for (name, log) in &g.logs {
        let n = count(log, t0, suspended);
        if n > 0 {
            susp.insert(name.clone(), n);
        }
        lost += count(log, t0, session_lost);
        errors += count(log, t0, |s| matches!(s, Status::Error { .. }));
    }
    let after = g.mon.holders();
    let moved = moved(&before, &after);
    println!(
        "zk[{test}]: leader node {leader} killed; node {new_leader} leads after {elected:?}; \
         admin reads again after {readable:?}; members saw {errors} failed ops; suspended \
         members {susp:?}; sessions lost {lost}; {} leases granted again, the last after \
         {last_regrant:?}; settled (checked from {TTL:?}) after {settled:?}; {moved} resources moved",
        regrants.len()
    );
    // ZooKeeper keeps sessions across a leader change, so membership did not change and
    // nothing had a reason to move.
    assert_eq!(lost, 0, "a session was lost in the failover");
    assert_eq!(moved, 0, "{before:?} -> {after:?}");
    g.mon.assert_clean();

    let t1 = Instant::now();
    blocking(|| zk.restart(leader)).expect("restart");
    println!(
        "zk[{test}]: old leader node {leader} serving again after {:?}",
        t1.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_settled(&g.admin, &g.mon, &refs(&all), RESOURCES, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.mon.holders(), after, "the restart moved resources");
    finish(&g.mon, g.workers).await;
}

/// 10. A follower cut off from its leader keeps serving its clients' pings (syncLimit × tick =
/// 6 s ≥ 3 × TTL) while no write through it commits. The member connected only to it must
/// stop (its leases turn invalid) before the leader expires its session and another member
/// takes its resources: its application here ignores revokes and stops only at the deadline,
/// the most a correct application may do, and the monitor checks every takeover against it.
/// After the heal it rejoins with a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zk_member_on_a_cut_off_follower_stops_before_the_leader_expires_it() {
    let _serial = SERIAL.lock().await;
    let test = "cutoff";
    let opts = ZkOptions {
        nodes: 3,
        sync_limit: 30,
        ..Default::default()
    };
    let sync_window = Duration::from_millis(u64::from(opts.sync_limit) * opts.tick_ms);
    assert!(sync_window >= TTL * 3);
    let t = Instant::now();
    let zk = blocking(|| ZkEnsemble::start(opts)).expect("ensemble");
    let leader = blocking(|| zk.wait_for_leader(Duration::from_secs(10))).expect("leader");
    println!(
        "zk[{test}]: 3-node ensemble serving after {:?}",
        t.elapsed()
    );
    let f = (leader + 1) % 3;
    let other = 3 - leader - f;
    let on_f = url(&zk.client_addr(f).to_string(), test);
    let elsewhere = url(
        &format!("{},{}", zk.client_addr(leader), zk.client_addr(other)),
        test,
    );
    let mut urls = vec![on_f];
    urls.extend((1..MEMBERS).map(|_| elsewhere.clone()));
    let g = start_group(test, &elsewhere, &urls).await;
    let all = names(MEMBERS);
    let others: Vec<String> = all[1..].to_vec();
    let coordinator = g.worker("m0").is_coordinator().await;
    g.worker("m0").set_obey(Obey::DeadlineOnly);
    let leases = g.mon.checkers_of("m0");
    let resources: BTreeSet<String> = leases.keys().cloned().collect();

    blocking(|| zk.cut_from_leader(f)).expect("cut");
    let t0 = Instant::now();
    let deadline = leases.values().map(|c| c.remaining()).max().unwrap();
    // Cut until the others have taken everything over and balanced (bounded well inside the
    // window in which f keeps serving m0).
    let o = observe(
        &g.admin,
        &g.mon,
        "m0",
        &leases,
        t0,
        sync_window - Duration::from_secs(1),
        |o| o.taken.is_some() && o.expired.is_some() && o.invalid.is_some(),
    )
    .await;
    let balanced4 = wait_even(&g.mon, &refs(&others), RESOURCES, Duration::from_secs(1)).await;
    let still_follower = blocking(|| zk.mode(f));
    let cut_for = t0.elapsed();
    blocking(|| zk.heal()).expect("heal");
    let healed = Instant::now();
    let regrant = first_regrant(&g.mon, &resources, t0);
    println!(
        "zk[{test}]: m0 (coordinator: {coordinator}) on follower {f}, cut from leader {leader} \
         for {cut_for:?} (f still {still_follower:?}): deadline {deadline:?}; leases invalid \
         after {:?}; session expired at the leader after {:?}; first re-grant elsewhere after \
         {regrant:?}; all {} taken over after {:?}",
        o.invalid,
        o.expired,
        resources.len(),
        o.taken
    );
    let isolation = Isolation::checked(&g.mon, &o, regrant);
    let invalid = isolation.invalid;
    assert_eq!(
        still_follower.as_deref(),
        Some("follower"),
        "f stopped serving during the cut: the scenario did not happen"
    );
    // No valid lease after the deadline it had when the cut began (5 ms polling slack).
    assert!(
        invalid <= deadline + Duration::from_millis(50),
        "leases valid until {invalid:?}, deadline {deadline:?}"
    );
    isolation.assert_stopped_first();
    assert!(
        !g.mon.per_holder().contains_key("m0"),
        "m0 still holds a valid lease: {:?}",
        g.mon.per_holder()
    );
    balanced4.unwrap_or_else(|e| panic!("others during the cut: {e}"));
    g.mon.assert_clean();

    // Healed: f catches up with the leader, m0 learns that its session expired and rejoins.
    g.worker("m0").set_obey(Obey::Revoke);
    let back = wait_even(&g.mon, &refs(&all), RESOURCES, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; m0's events: {:?}", g.log("m0").since(t0)));
    assert_m0_rejoined(&g, test, "cut", back, t0, healed).await;
    finish(&g.mon, g.workers).await;
}
