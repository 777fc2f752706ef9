//! QueueGroup on a real broker and the SQLite store: members join and leave while a publisher
//! sends sequenced messages per key; nothing confirmed is lost, per-key order holds, and no
//! queue is ever in two members' handlers at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rebalanser::{Admin, Member, StopPolicy};
use rebalanser_rabbitmq::topology::{self, Publisher};
use rebalanser_rabbitmq::verify::{verify, Body, Processed, Report};
use rebalanser_rabbitmq::{HandlerError, Message, QueueGroup};
use rebalanser_testkit::boottime_ns;
use rebalanser_testkit::RabbitMq;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const GROUP: &str = "consumers";
const EXCHANGE: &str = "orders";
const QUEUES: usize = 8;
const KEYS: u32 = 100;

/// Every handler appends here.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Processed>>>);

impl Log {
    fn push(&self, p: Processed) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    fn snapshot(&self) -> Vec<Processed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Distinct (key, seq) processed so far.
    fn distinct(&self) -> usize {
        let v = self.snapshot();
        v.iter()
            .map(|p| (p.key, p.seq))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

struct Consumer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), rebalanser_rabbitmq::Error>>,
}

async fn consumer(
    store: &str,
    amqp: &str,
    name: &str,
    log: &Log,
    broken: bool,
) -> Result<Consumer> {
    let member = Member::builder(GROUP)
        .name(name)
        .store_url(store)
        .session_ttl(Duration::from_secs(2))
        .safety_margin(Duration::from_millis(200))
        .keepalive_interval(Duration::from_millis(300))
        .op_timeout(Duration::from_millis(300))
        .stop_timeout(Duration::from_millis(500))
        .min_rebalance_interval(Duration::from_millis(20))
        .leave_timeout(Duration::from_secs(5))
        .on_stop_deadline_missed(StopPolicy::Log)
        .join()
        .await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let log = log.clone();
    let who = name.to_string();
    let handler = move |m: Message| {
        let (log, who) = (log.clone(), who.clone());
        async move {
            let start_ns = boottime_ns();
            let body: Body = serde_json::from_slice(&m.payload)?;
            tokio::time::sleep(Duration::from_millis(1)).await;
            log.push(Processed {
                key: body.key,
                seq: body.seq,
                queue: m.queue.clone(),
                member: who,
                token: m.token.to_string(),
                redelivered: m.redelivered,
                sent_ns: body.sent_ns,
                start_ns,
                end_ns: boottime_ns(),
            });
            Ok::<(), HandlerError>(())
        }
    };
    let mut group = QueueGroup::new(amqp)?.prefetch(10);
    if broken {
        group = group.broken_release_early();
    }
    let task = tokio::spawn(group.run(member, handler, async {
        let _ = stopped.await;
    }));
    Ok(Consumer { stop, task })
}

impl Consumer {
    async fn leave(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_without_loss_reordering_or_overlap() -> Result<()> {
    let (report, members) = scenario(false).await?;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(members, 4, "every member processed something");
    Ok(())
}

/// The checker catches a consumer that gives its queue back before the deliveries it holds
/// are done (and without the broker's exclusive-consumer guard): the same scenario, broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_releasing_before_its_deliveries_are_done_is_caught() -> Result<()> {
    let (report, _) = scenario(true).await?;
    assert!(
        !report.concurrent.is_empty() || !report.order_violations.is_empty(),
        "the broken consumer was not caught: {report:#?}"
    );
    Ok(())
}

/// Two members, then a join, a graceful leave and another join while 100 keys × 30 messages
/// are published; waits until everything confirmed was processed (or 30 s) and judges the log.
async fn scenario(broken: bool) -> Result<(Report, usize)> {
    let broker = RabbitMq::start()?;
    let amqp = broker.url();
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("g.db").display());
    let queues = topology::setup(&amqp, EXCHANGE, QUEUES).await?;
    let admin = Admin::connect(&store, GROUP)?;
    admin.create_group().await?;
    admin.add_resources(&queues).await?;

    let log = Log::default();
    let mut members = vec![
        consumer(&store, &amqp, "c1", &log, broken).await?,
        consumer(&store, &amqp, "c2", &log, broken).await?,
    ];

    // Publish 100 keys × 30 messages at a steady pace; change the group on the way.
    let publisher = Publisher::connect(&amqp, EXCHANGE, QUEUES).await?;
    let mut confirmed = BTreeSet::new();
    let rounds = 30u64;
    for seq in 0..rounds {
        for key in 0..KEYS {
            let body = serde_json::to_vec(&Body {
                key,
                seq,
                sent_ns: boottime_ns(),
            })?;
            publisher.publish(&format!("k{key}"), &body).await?;
            confirmed.insert((key, seq));
        }
        match seq {
            8 => members.push(consumer(&store, &amqp, "c3", &log, broken).await?),
            16 => members.remove(0).leave().await?,
            22 => members.push(consumer(&store, &amqp, "c4", &log, broken).await?),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.close().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while log.distinct() < confirmed.len() {
        if Instant::now() > deadline {
            bail!(
                "processed {} of {} after 30 s",
                log.distinct(),
                confirmed.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in members {
        m.leave().await?;
    }
    let processed = log.snapshot();
    let report = verify(&confirmed, &processed);
    let members: BTreeSet<&str> = processed.iter().map(|p| p.member.as_str()).collect();
    println!(
        "{} published, {} processed by {members:?}; {report:?}",
        confirmed.len(),
        processed.len()
    );
    Ok((report, members.len()))
}
