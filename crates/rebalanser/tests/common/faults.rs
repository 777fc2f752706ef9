//! The fault scenarios every networked store runs (`zk_faults.rs`, `pg_faults.rs`): a group
//! whose member m0 reaches the server through a fault proxy, what the tests observe while m0 is
//! cut off, and the two blackhole scenarios (shorter and longer than the TTL).
//!
//! Every lease goes through the access monitor, which fails on two valid leases on one
//! resource. Times are printed (`-- --nocapture`); only generous bounds are asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rebalanser::{Admin, LeaseChecker, Member, MemberEvent, RevokeReason, Token};
use rebalanser_testkit::FaultProxy;

use super::*;

pub const GROUP: &str = "it.faults";
pub const TTL: Duration = Duration::from_secs(2);
pub const MEMBERS: usize = 5;
pub const RESOURCES: usize = 50;
pub const LIMIT: Duration = Duration::from_secs(20);

pub struct Group {
    pub admin: Admin,
    pub mon: Monitor,
    pub workers: Vec<Worker>,
    pub logs: BTreeMap<String, EventLog>,
}

impl Group {
    pub fn worker(&self, name: &str) -> &Worker {
        self.workers.iter().find(|w| w.name == name).unwrap()
    }

    pub fn log(&self, name: &str) -> &EventLog {
        &self.logs[name]
    }
}

/// Member `m<i>` joins through `urls[i]`; the admin through `admin_url`. Returns once balanced
/// and settled.
pub async fn start_group(label: &str, test: &str, admin_url: &str, urls: &[String]) -> Group {
    super::logs();
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
        "{label}[{test}]: initial balance {}x{RESOURCES} in {:?}",
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

/// [`start_group`] with m0 reaching the server at `server` through a fault proxy (returned),
/// the other members and the admin directly; `url_for(HOST:PORT)` is the store URL through an
/// address.
pub async fn start_group_with_m0_proxied(
    label: &str,
    test: &str,
    server: std::net::SocketAddr,
    url_for: impl Fn(&str) -> String,
) -> (Group, FaultProxy) {
    let proxy = FaultProxy::start(server).expect("proxy");
    let direct = url_for(&server.to_string());
    let mut urls = vec![url_for(&proxy.addr().to_string())];
    urls.extend((1..MEMBERS).map(|_| direct.clone()));
    let g = start_group(label, test, &direct, &urls).await;
    (g, proxy)
}

pub fn count(log: &EventLog, since: Instant, f: impl Fn(&MemberEvent) -> bool) -> usize {
    log.since(since).iter().filter(|s| f(s)).count()
}

pub fn suspended(s: &MemberEvent) -> bool {
    matches!(s, MemberEvent::Suspended { .. })
}
pub fn resumed(s: &MemberEvent) -> bool {
    matches!(s, MemberEvent::Resumed)
}
pub fn session_lost(s: &MemberEvent) -> bool {
    matches!(s, MemberEvent::SessionLost { .. })
}
pub fn joined(s: &MemberEvent) -> bool {
    matches!(s, MemberEvent::Joined { .. })
}

/// What the fault loops observe about the member cut off (`who`): when its leases had all
/// turned invalid, when the server dropped its session (its member key is gone), and when the
/// others held all its resources.
#[derive(Debug, Default)]
pub struct Observed {
    pub invalid: Option<Duration>,
    pub expired: Option<Duration>,
    pub taken: Option<Duration>,
}

/// Polls until `until` returns true for what was observed, or `limit` passes.
pub async fn observe(
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
pub struct Isolation {
    pub invalid: Duration,
    pub expired: Duration,
    pub taken: Duration,
    pub regrant: Duration,
}

impl Isolation {
    /// First of all: no takeover while one of m0's leases was still valid (`mon` saw no double
    /// lease); then, each of them happened.
    pub fn checked(mon: &Monitor, o: &Observed, regrant: Option<Duration>) -> Isolation {
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
    pub fn assert_stopped_first(&self) {
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
pub async fn assert_m0_rejoined(
    g: &Group,
    label: &str,
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
        "{label}[{test}]: after heal m0 rejoined and the group rebalanced over {MEMBERS} in {back:?}; \
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
pub fn first_regrant(
    mon: &Monitor,
    resources: &BTreeSet<String>,
    since: Instant,
) -> Option<Duration> {
    mon.grant_log()
        .iter()
        .filter(|g| g.at >= since && resources.contains(&g.resource))
        .map(|g| g.at - since)
        .min()
}

/// A member's connection blackholed for less than the TTL, then healed: its session
/// survives (the server hears nothing for less than its timeout), so membership does not
/// change and none of its resources moves; there is never a double lease, and the group is
/// balanced afterwards. Two lengths: half the TTL (inside the lease deadline) and three
/// quarters (past the point where the member must revoke, before the server's expiry), so
/// both keeping and resuming the leases are exercised; whether they were suspended is
/// reported.
pub async fn blackhole_shorter_than_the_ttl_keeps_the_session_and_the_resources(
    label: &str,
    server: std::net::SocketAddr,
    url_for: impl Fn(&str) -> String,
) {
    let test = "blip";
    let (g, proxy) = start_group_with_m0_proxied(label, test, server, url_for).await;
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
            "{label}[{test}]: m0 (coordinator: {coordinator}) blackholed {blackout:?} (lease deadline \
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

/// The same blackhole for 2.5 × TTL: m0 revokes its leases and they turn invalid before
/// the server expires its session; only then do the others take its resources; after the heal
/// it finds its session expired, rejoins with a new one, and the group rebalances to include
/// it.
pub async fn blackhole_longer_than_the_ttl_stops_the_member_before_its_session_expires(
    label: &str,
    server: std::net::SocketAddr,
    url_for: impl Fn(&str) -> String,
) {
    let test = "blackout";
    let (g, proxy) = start_group_with_m0_proxied(label, test, server, url_for).await;
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
        "{label}[{test}]: m0 (coordinator: {coordinator}) blackholed {blackout:?}: deadline {deadline:?}; \
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
    assert_m0_rejoined(&g, label, test, "blackhole", back, t0, healed).await;
    finish(&g.mon, g.workers).await;
}

/// Events since `t0` over every member: suspended members (with how often), sessions lost,
/// failed operations.
pub fn trouble(g: &Group, t0: Instant) -> (BTreeMap<String, usize>, usize, usize) {
    let mut susp = BTreeMap::new();
    let (mut lost, mut errors) = (0, 0);
    for (name, log) in &g.logs {
        let n = count(log, t0, suspended);
        if n > 0 {
            susp.insert(name.clone(), n);
        }
        lost += count(log, t0, session_lost);
        errors += count(log, t0, |s| matches!(s, MemberEvent::Error { .. }));
    }
    (susp, lost, errors)
}
