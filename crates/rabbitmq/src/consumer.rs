//! [`QueueGroup`]: consume every queue the member leases, one delivery at a time per queue, and
//! give a queue back only once nothing of it is in flight (the crate docs say why and how).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use rebalanser::{Lease, LeaseChecker, Member, Token};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::connector::Connector;
use crate::{check_url, redact, Error};

/// What a handler returns when it could not process a delivery: the delivery goes back to the
/// queue (in order) and is tried again after a back-off.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// One delivery, as the application's handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The queue (the leased resource) it came from.
    pub queue: String,
    /// The lease's fencing token: pass it to storage that refuses older tokens.
    pub token: Token,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// The broker delivered it before without an ack (a consumer stopped, crashed or lost its
    /// connection mid-way): it may have been processed already.
    pub redelivered: bool,
    /// Whether the lease still allows access, computed when asked.
    pub lease: LeaseChecker,
}

/// Consumes the queues a Rebalanser member leases (see the crate docs).
#[derive(Clone)]
pub struct QueueGroup {
    url: String,
    prefetch: u16,
    unhealthy_after: u32,
    backoff: Duration,
    max_backoff: Duration,
    /// Test-only mutation (see [`QueueGroup::broken_release_early`]).
    release_early: bool,
}

impl std::fmt::Debug for QueueGroup {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGroup")
            .field("url", &redact(&self.url))
            .field("prefetch", &self.prefetch)
            .field("unhealthy_after", &self.unhealthy_after)
            .finish_non_exhaustive()
    }
}

impl QueueGroup {
    /// A group consuming through the broker at `amqp_url` (`amqp://user:pass@host:port/vhost`;
    /// `?heartbeat=SECONDS` makes a dead connection noticed sooner). Checked, not dialled.
    pub fn new(amqp_url: &str) -> Result<QueueGroup, Error> {
        check_url(amqp_url)?;
        Ok(QueueGroup {
            url: amqp_url.to_string(),
            prefetch: 20,
            unhealthy_after: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            release_early: false,
        })
    }

    /// **Deliberately broken, for checking the checkers**: consume without the exclusive flag
    /// and, on a revoke, release the lease at once and go on handling deliveries for another
    /// 300 ms, as a consumer that gives a queue back before its deliveries in flight are done
    /// would. The ordering verifier of the tests must catch it.
    #[doc(hidden)]
    pub fn broken_release_early(mut self) -> QueueGroup {
        self.release_early = true;
        self
    }

    /// Deliveries the broker sends ahead of the one being handled, per queue (default 20). On a
    /// revoke they go back to the queue unprocessed.
    pub fn prefetch(mut self, n: u16) -> QueueGroup {
        self.prefetch = n.max(1);
        self
    }

    /// Handler failures in a row after which the queue is reported unhealthy and moves to
    /// another member (default 5; 0 = never).
    pub fn unhealthy_after(mut self, n: u32) -> QueueGroup {
        self.unhealthy_after = n;
        self
    }

    /// Consumes every queue `member` leases with `handler` until `shutdown` completes; then
    /// leaves the group gracefully (each queue handed over after its delivery in flight) and
    /// returns. Returns earlier if the member stops by itself.
    pub async fn run<H, F>(
        self,
        mut member: Member,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        H: Fn(Message) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let conn = Arc::new(Connector::new(&self.url));
        let cfg = Arc::new(self);
        let who = member.name().to_string();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let mut left = false;
        loop {
            tokio::select! {
                lease = member.next_lease() => match lease {
                    Some(lease) => {
                        let job = Job {
                            cfg: cfg.clone(),
                            conn: conn.clone(),
                            member: who.clone(),
                        };
                        tasks.spawn(job.serve(lease, handler.clone()));
                    }
                    None => break,
                },
                _ = &mut shutdown => {
                    left = true;
                    break;
                }
                // Reap finished consumers as they end, so the set does not grow.
                Some(r) = tasks.join_next(), if !tasks.is_empty() => log_join(&who, r),
            }
        }
        let result = if left {
            // The consumers keep running: each revoke stops one after its delivery in flight.
            member.leave().await.map_err(Error::from)
        } else {
            Ok(())
        };
        while let Some(r) = tasks.join_next().await {
            log_join(&who, r);
        }
        conn.close().await;
        result
    }
}

fn log_join(member: &str, r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        error!(member = %member, reason = %e, "a queue's consumer task failed");
    }
}

/// One consumption of one queue.
struct Consuming<'a> {
    channel: &'a Channel,
    tag: &'a str,
    lease: &'a LeaseChecker,
    queue: &'a str,
    token: Token,
}

/// Why one consumption of a queue ended.
enum End {
    /// The lease was revoked or is no longer valid: give the queue back.
    Stop,
    /// The handler failed (or panicked): back off and consume again.
    HandlerFailed(String),
    /// The broker or the connection failed: back off and consume again.
    Broker(String),
}

/// How long closing a channel is waited for. Safety does not rest on it (until the broker
/// processes the close, the channel's exclusive consumer keeps the next owner out, and the
/// close requeues before it lets anyone in), so the wait is short: it must fit in the
/// member's stop budget even when the link is dead.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest any other broker operation of a consumption may take (opening a channel,
/// consuming, an ack): a link that went silent must not hold a queue's consumer forever.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    cfg: Arc<QueueGroup>,
    conn: Arc<Connector>,
    member: String,
}

impl Job {
    /// Consumes the leased queue until the lease ends, then releases it (by dropping it).
    async fn serve<H, F>(self, lease: Lease, handler: Arc<H>)
    where
        H: Fn(Message) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let queue = lease.resource().to_string();
        let token = lease.token();
        info!(member = %self.member, resource = %queue, token = %token, "consuming");
        let mut backoff = self.cfg.backoff;
        let mut failures = 0u32;
        let checker = lease.checker();
        let mut held = Some(lease);
        while checker.is_valid() && !checker.is_revoked() {
            let mut acked = 0u64;
            let end = self
                .consume(&checker, &mut held, &queue, token, &*handler, &mut acked)
                .await;
            if acked > 0 {
                // Progress: failures are counted in a row, and the back-off starts over.
                failures = 0;
                backoff = self.cfg.backoff;
            }
            let reason = match end {
                End::Stop => break,
                End::HandlerFailed(e) => {
                    failures += 1;
                    if self.cfg.unhealthy_after > 0 && failures >= self.cfg.unhealthy_after {
                        warn!(member = %self.member, resource = %queue, token = %token,
                            reason = %e, "handler failed {failures} times in a row: giving the queue back");
                        if let Some(l) = &held {
                            l.report_unhealthy();
                        }
                    }
                    e
                }
                End::Broker(e) => e,
            };
            warn!(member = %self.member, resource = %queue, token = %token, reason = %reason,
                "consumption stopped; again in {backoff:?}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = checker.revoked() => {}
            }
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
        info!(member = %self.member, resource = %queue, token = %token, "queue given back");
        drop(held);
    }

    /// One consumption: channel, exclusive consumer, deliveries one by one; always ends by
    /// closing the channel, which cancels the consumer and puts every delivery not acked back
    /// in the queue in one step at the broker. No separate `basic.cancel` first: that would
    /// drop the exclusive consumer while unacked deliveries still sit on the channel, and a
    /// close that then fails (a dead link) would leave the next owner free to consume later
    /// messages before those come back. If the close fails or times out, the channel (and its
    /// exclusive consumer) lives at the broker until the broker drops the connection, which
    /// requeues first: the next owner is refused until then, so releasing is safe.
    async fn consume<H, F>(
        &self,
        lease: &LeaseChecker,
        held: &mut Option<Lease>,
        queue: &str,
        token: Token,
        handler: &H,
        acked: &mut u64,
    ) -> End
    where
        H: Fn(Message) -> F,
        F: Future<Output = Result<(), HandlerError>>,
    {
        // Nothing is in flight while opening: a revoke may stop it at once.
        let opened = tokio::select! {
            biased;
            _ = lease.revoked() => return End::Stop,
            c = tokio::time::timeout(OP_TIMEOUT, self.open()) => c,
        };
        let (conn, channel) = match opened {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return End::Broker(e.to_string()),
            Err(_) => return End::Broker(format!("opening a channel took over {OP_TIMEOUT:?}")),
        };
        let tag = format!("{}/{token}", self.member);
        let on = Consuming {
            channel: &channel,
            tag: &tag,
            lease,
            queue,
            token,
        };
        let end = self.deliveries(&on, held, handler, acked).await;
        match tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "revoked".into())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(member = %self.member, resource = %queue, token = %token, reason = %e,
                    "channel close failed: the broker drops the channel with the connection");
                self.conn.discard(&conn).await;
            }
            Err(_) => {
                debug!(member = %self.member, resource = %queue, token = %token,
                    "channel close not confirmed in time: the broker finishes it");
            }
        }
        end
    }

    async fn open(&self) -> Result<(Arc<lapin::Connection>, Channel), Error> {
        let conn = self.conn.get().await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.cfg.prefetch, BasicQosOptions::default())
            .await?;
        Ok((conn, channel))
    }

    async fn deliveries<H, F>(
        &self,
        on: &Consuming<'_>,
        held: &mut Option<Lease>,
        handler: &H,
        acked: &mut u64,
    ) -> End
    where
        H: Fn(Message) -> F,
        F: Future<Output = Result<(), HandlerError>>,
    {
        let broken = self.cfg.release_early;
        let options = BasicConsumeOptions {
            exclusive: !broken,
            no_ack: false,
            ..BasicConsumeOptions::default()
        };
        let (lease, queue) = (on.lease, on.queue);
        let consuming =
            on.channel
                .basic_consume(queue.into(), on.tag.into(), options, FieldTable::default());
        let mut consumer = tokio::select! {
            biased;
            _ = lease.revoked() => return End::Stop,
            c = tokio::time::timeout(OP_TIMEOUT, consuming) => match c {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return End::Broker(format!("cannot consume {queue}: {e}")),
                Err(_) => return End::Broker(format!("consuming {queue} took over {OP_TIMEOUT:?}")),
            },
        };
        let mut late_until = None;
        loop {
            let delivery = match late_until {
                // The broken variant, after its early release: whatever arrives until then.
                Some(until) => match tokio::time::timeout_at(until, consumer.next()).await {
                    Ok(d) => d,
                    Err(_) => return End::Stop,
                },
                None => tokio::select! {
                    biased;
                    _ = lease.revoked() => {
                        if !broken {
                            return End::Stop;
                        }
                        // Release first, then go on consuming: the bug this variant stands for.
                        drop(held.take());
                        late_until = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                        continue;
                    }
                    d = consumer.next() => d,
                },
            };
            let delivery = match delivery {
                None => return End::Broker("the consumer was cancelled by the broker".into()),
                Some(Err(e)) => return End::Broker(e.to_string()),
                Some(Ok(d)) => d,
            };
            // Checked per delivery: a member that lost its session must not start another.
            if !lease.is_valid() && late_until.is_none() {
                return End::Stop;
            }
            let msg = Message {
                queue: queue.to_string(),
                token: on.token,
                routing_key: delivery.routing_key.to_string(),
                payload: delivery.data.clone(),
                redelivered: delivery.redelivered,
                lease: lease.clone(),
            };
            // A panic is a failure like an `Err`: the delivery goes back and the lease stays
            // held until the channel is closed (a panic unwinding through here would drop it
            // first).
            let outcome = AssertUnwindSafe(handler(msg)).catch_unwind().await;
            match outcome {
                Ok(Ok(())) => {
                    match tokio::time::timeout(OP_TIMEOUT, delivery.ack(Default::default())).await {
                        Ok(Ok(true)) => *acked += 1,
                        Ok(Ok(false)) => {
                            return End::Broker(
                                "the delivery could not be acked (channel gone)".into(),
                            )
                        }
                        Ok(Err(e)) => return End::Broker(format!("ack failed: {e}")),
                        // Unacked: the broker redelivers it (a duplicate, marked redelivered).
                        Err(_) => return End::Broker(format!("ack took over {OP_TIMEOUT:?}")),
                    }
                }
                Ok(Err(e)) => return End::HandlerFailed(error_chain(&*e)),
                Err(panic) => return End::HandlerFailed(panic_message(&panic)),
            }
        }
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    format!("the handler panicked: {what}")
}
