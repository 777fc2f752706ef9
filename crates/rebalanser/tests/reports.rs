//! Logs that say why (issue 14): the coordinator's rebalance report and its log line name the
//! cause, the members before and after and exactly what moved, checked against what the
//! members actually held before and after a crash, a join and a graceful leave; membership
//! changes get one line each; a revoke the coordinator planned names the new owner.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{group_named, url, wait_balanced, EventLog, Monitor, Worker};
use rebalanser::{
    Member, MemberEvent, MemberId, MembershipChange, RebalanceCause, RebalanceReport,
};

const TTL: Duration = Duration::from_secs(1);

/// Every log line of this test binary, as JSON.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Lines::default();
        let w = lines.clone();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("rebalanser=info")
            .with_writer(move || w.clone())
            .init();
        lines
    })
}

/// The info lines logged in `group` with this message, as JSON objects.
fn lines(group: &str, message: &str) -> Vec<serde_json::Value> {
    let buf = captured()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["span"]["group"] == group && v["fields"]["message"] == message)
        .collect()
}

struct Group {
    name: &'static str,
    url: String,
    mon: Monitor,
    workers: BTreeMap<String, Worker>,
    events: BTreeMap<String, EventLog>,
}

impl Group {
    async fn start(name: &'static str, members: &[&str], resources: usize) -> Group {
        captured();
        let url = url(name);
        // Kept alive by the members' handles.
        let _admin = group_named(&url, name, resources).await;
        let mut g = Group {
            name,
            url,
            mon: Monitor::default(),
            workers: BTreeMap::new(),
            events: BTreeMap::new(),
        };
        for m in members {
            g.join(m).await;
        }
        g
    }

    async fn join(&mut self, m: &str) {
        let b = common::fast(Member::builder(self.name).store_url(&self.url), TTL);
        let member = b.name(m).join().await.expect("join");
        self.events.insert(m.into(), EventLog::collect(&member));
        self.workers
            .insert(m.into(), Worker::start(member, m, &self.mon));
    }

    async fn balanced(&self, want: &[(&str, usize)]) {
        wait_balanced(&self.mon, want, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }

    /// A member that is not the coordinator (whose view a membership change is told against).
    async fn not_coordinator(&self) -> String {
        for (n, w) in &self.workers {
            if !w.is_coordinator().await {
                return n.clone();
            }
        }
        panic!("every member coordinates");
    }

    /// The reports committed since `t` by any member.
    fn reports_since(&self, t: Instant) -> Vec<Arc<RebalanceReport>> {
        self.events
            .values()
            .flat_map(|l| l.all())
            .filter(|(at, _)| *at >= t)
            .filter_map(|(_, e)| match e {
                MemberEvent::Rebalanced { report } => Some(report),
                _ => None,
            })
            .collect()
    }

    fn events_since(&self, t: Instant) -> Vec<MemberEvent> {
        self.events.values().flat_map(|l| l.since(t)).collect()
    }

    async fn finish(self) {
        common::leave_all(self.workers.into_values().collect()).await;
        self.mon.assert_clean();
    }
}

/// Resource → (holder before, holder after) for every resource whose holder changed.
fn changed(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|r| before.get(*r) != after.get(*r))
        .map(|r| (r.clone(), (before.get(r).cloned(), after.get(r).cloned())))
        .collect()
}

/// The one report of a change, checked against what the members held: the same resources,
/// from and to the same members.
fn the_report(g: &Group, t: Instant, before: &BTreeMap<String, String>) -> Arc<RebalanceReport> {
    let after = g.mon.holders();
    let want = changed(before, &after);
    let reports = g.reports_since(t);
    assert_eq!(reports.len(), 1, "{}: {reports:#?}", g.name);
    let r = reports[0].clone();
    let got: BTreeMap<String, (Option<String>, Option<String>)> = r
        .moves
        .iter()
        .map(|m| {
            let name = |x: &Option<rebalanser::MemberId>| x.as_ref().map(|m| m.to_string());
            (m.resource.to_string(), (name(&m.from), name(&m.to)))
        })
        .collect();
    assert_eq!(got, want, "{}: the report's moves are what moved", g.name);
    assert_eq!(r.moved(), want.len(), "{}", g.name);

    // The log line says the same.
    let line = lines(g.name, "rebalanced")
        .into_iter()
        .find(|l| l["fields"]["epoch"] == r.epoch.0 && l["fields"]["moved"] == r.moved())
        .unwrap_or_else(|| {
            panic!(
                "{}: no 'rebalanced' line with moved={}: {:#?}",
                g.name,
                r.moved(),
                lines(g.name, "rebalanced")
            )
        });
    let moves = line["fields"]["moves"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (res, (from, to)) in &want {
        let text = format!(
            "{res}:{}->{}",
            from.as_deref().unwrap_or("(new)"),
            to.as_deref().unwrap_or("(removed)")
        );
        assert!(moves.contains(&text), "{}: {text} not in {moves}", g.name);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_is_reported_with_every_resource_that_moved_and_who_expired() {
    let g = Group::start("report-crash", &["a", "b", "c"], 21).await;
    g.balanced(&[("a", 7), ("b", 7), ("c", 7)]).await;
    let victim = g.not_coordinator().await;
    let before = g.mon.holders();
    let t = Instant::now();
    let mut g = g;
    let w = g.workers.remove(&victim).expect("worker");
    w.crash().await;
    let rest: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|m| *m != victim)
        .collect();
    let split = || {
        let mut per: Vec<usize> = g.mon.per_holder().into_values().collect();
        per.sort();
        per
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || split() == [10, 11]).await,
        "not rebalanced over {rest:?}: {:?}",
        g.mon.per_holder()
    );

    let r = the_report(&g, t, &before);
    // Before the fix this said moved=0: only live members' assignments were compared.
    assert_eq!(r.moved(), 7, "{r:#?}");
    assert_eq!(r.expired, vec![MemberId::new(&victim).unwrap()], "{r:#?}");
    assert_eq!(r.causes, vec![RebalanceCause::Expired], "{r:#?}");
    assert_eq!(r.members_before.len(), 3, "{r:#?}");
    assert_eq!(r.members_after.len(), 2, "{r:#?}");
    assert!(r
        .moves
        .iter()
        .all(|m| m.from.as_ref().map(|f| f.as_str()) == Some(victim.as_str())));

    // One membership line, from the coordinator.
    let expired: Vec<MemberEvent> = g
        .events_since(t)
        .into_iter()
        .filter(|e| matches!(e, MemberEvent::Membership { .. }))
        .collect();
    assert!(
        matches!(
            expired.as_slice(),
            [MemberEvent::Membership { member, change: MembershipChange::Expired, .. }]
                if member.as_str() == victim
        ),
        "{expired:#?}"
    );
    let line = lines(g.name, "member expired");
    assert_eq!(line.len(), 1, "{line:#?}");
    assert_eq!(line[0]["fields"]["who"], victim.as_str());
    g.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_is_reported_with_what_it_took_and_from_whom() {
    let mut g = Group::start("report-join", &["a", "b"], 12).await;
    g.balanced(&[("a", 6), ("b", 6)]).await;
    let before = g.mon.holders();
    let t = Instant::now();
    g.join("c").await;
    g.balanced(&[("a", 4), ("b", 4), ("c", 4)]).await;
    let r = the_report(&g, t, &before);
    assert_eq!(r.moved(), 4, "{r:#?}");
    assert_eq!(r.joined, vec![MemberId::new("c").unwrap()], "{r:#?}");
    assert_eq!(r.causes, vec![RebalanceCause::Joined], "{r:#?}");
    assert!(r
        .moves
        .iter()
        .all(|m| m.to.as_ref().unwrap().as_str() == "c"));
    let joined = lines(g.name, "member joined");
    assert!(
        joined.iter().any(|l| l["fields"]["who"] == "c"),
        "{joined:#?}"
    );
    // The coordinator gave up some of its own resources: those revoke lines name `c`.
    let revokes: Vec<serde_json::Value> = lines(g.name, "lease revoked")
        .into_iter()
        .filter(|l| l["fields"]["reason"] == "reassigned")
        .collect();
    assert_eq!(revokes.len(), 4, "{revokes:#?}");
    let named: Vec<&serde_json::Value> = revokes
        .iter()
        .filter(|l| l["fields"]["to"] == "c")
        .collect();
    assert!(
        !named.is_empty(),
        "the coordinator's own revokes name the new owner: {revokes:#?}"
    );
    g.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_leave_is_reported_as_left_not_expired() {
    let mut g = Group::start("report-leave", &["a", "b", "c"], 12).await;
    g.balanced(&[("a", 4), ("b", 4), ("c", 4)]).await;
    let leaver = g.not_coordinator().await;
    let before = g.mon.holders();
    let t = Instant::now();
    let w = g.workers.remove(&leaver).expect("worker");
    w.leave().await.expect("leave");
    let rest: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|m| *m != leaver)
        .collect();
    g.balanced(&[(rest[0], 6), (rest[1], 6)]).await;
    let r = the_report(&g, t, &before);
    assert_eq!(r.moved(), 4, "{r:#?}");
    assert_eq!(r.left, vec![MemberId::new(&leaver).unwrap()], "{r:#?}");
    assert!(r.expired.is_empty(), "{r:#?}");
    assert_eq!(r.causes, vec![RebalanceCause::Left], "{r:#?}");
    // Leaving, then left: never expired.
    common::wait_until(Duration::from_secs(3), || {
        g.events_since(t).iter().any(|e| {
            matches!(
                e,
                MemberEvent::Membership {
                    change: MembershipChange::Left,
                    ..
                }
            )
        })
    })
    .await;
    let changes: Vec<MembershipChange> = g
        .events_since(t)
        .into_iter()
        .filter_map(|e| match e {
            MemberEvent::Membership { member, change, .. } if member.as_str() == leaver => {
                Some(change)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![MembershipChange::Leaving, MembershipChange::Left]
    );
    g.finish().await;
}
