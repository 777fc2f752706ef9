//! The broker side of a queue group: a consistent-hash exchange routing by key onto N durable
//! queues bound with equal weight ([`setup`], [`teardown`]), and a [`Publisher`] that sends a
//! keyed message to the key's queue and waits for the broker's confirm.
//!
//! The exchange type comes from the `rabbitmq_consistent_hash_exchange` plugin (shipped with
//! RabbitMQ, enabled with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`); without
//! it the declaration fails with a message naming the plugin. N must stay fixed while messages
//! flow (the crate docs say why).
//!
//! **The [`Publisher`] does not route through the exchange.** The plugin's ring is rebuilt when
//! the broker restarts, in the order the bindings are recovered, and most keys then map to
//! another queue (rabbitmq-server #3386; the plugin's README, "node restart effects"). Our chaos
//! test found it: after a broker restart 866 of 1,000 keys moved, and a key's queued messages
//! were processed after its newer ones from the other queue. The `Publisher` therefore picks
//! the queue itself — [`queue_for_key`]: FNV-1a (64-bit) of the key, then jump consistent hash
//! onto N — and publishes to it through the default exchange, which no restart changes. The
//! exchange stays for publishers that cannot do the same; they keep per-key order only while
//! the broker does not restart with messages queued.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::{check_url, redact, Error};

/// The consistent-hash exchange type.
pub const EXCHANGE_KIND: &str = "x-consistent-hash";

/// The queue names of an exchange's group: `E.0000` … (so they sort in order).
pub fn queue_names(exchange: &str, queues: usize) -> Vec<String> {
    (0..queues).map(|i| format!("{exchange}.{i:04}")).collect()
}

async fn channel(url: &str) -> Result<(Connection, Channel), Error> {
    check_url(url)?;
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| Error::Amqp(format!("cannot connect to {}: {e}", redact(url))))?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// Declares the durable consistent-hash exchange `exchange` and `queues` durable queues bound
/// to it with equal weight; returns the queue names. Idempotent for the same arguments.
pub async fn setup(url: &str, exchange: &str, queues: usize) -> Result<Vec<String>, Error> {
    if queues == 0 {
        return Err(Error::Amqp("a queue group needs at least one queue".into()));
    }
    let (conn, ch) = channel(url).await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Custom(EXCHANGE_KIND.into()),
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(|e| {
        Error::Amqp(format!(
            "cannot declare the {EXCHANGE_KIND} exchange {exchange:?} (is the plugin \
             rabbitmq_consistent_hash_exchange enabled?): {e}"
        ))
    })?;
    let names = queue_names(exchange, queues);
    for q in &names {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(q.as_str().into(), options, FieldTable::default())
            .await?;
        // The binding key of a consistent-hash exchange is the queue's weight on the ring.
        ch.queue_bind(
            q.as_str().into(),
            exchange.into(),
            "1".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(names)
}

/// Deletes the queues (messages in them are lost) and the exchange.
pub async fn teardown(url: &str, exchange: &str, queues: usize) -> Result<(), Error> {
    let (conn, ch) = channel(url).await?;
    for q in queue_names(exchange, queues) {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The index of the queue (of `queues`) that `key`'s messages go to: FNV-1a 64 of the key's
/// bytes, then jump consistent hash (Lamping and Veach), so a new N would move only about 1/N
/// of the keys. Stable across processes, versions and broker restarts; publishers in other
/// languages can compute the same.
pub fn queue_for_key(key: &str, queues: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    jump(h, queues.max(1))
}

/// Jump consistent hash: the bucket in `0..buckets` for `key`.
fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    let n = i64::try_from(buckets).unwrap_or(i64::MAX);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in 0..n: the loop ran at least once because n >= 1.
    b as usize
}

/// Publishes keyed, persistent messages to the key's queue of a queue group, each confirmed by
/// the broker (see the module docs for why not through the exchange).
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    queues: Vec<String>,
}

impl Publisher {
    /// A publisher for the group of `queues` queues behind `exchange` (as `setup` made them).
    pub async fn connect(url: &str, exchange: &str, queues: usize) -> Result<Publisher, Error> {
        if queues == 0 {
            return Err(Error::Amqp("a queue group needs at least one queue".into()));
        }
        let (conn, channel) = channel(url).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            conn,
            channel,
            queues: queue_names(exchange, queues),
        })
    }

    /// The queue `key`'s messages go to.
    pub fn queue_of(&self, key: &str) -> &str {
        &self.queues[queue_for_key(key, self.queues.len())]
    }

    /// Sends `payload` to `key`'s queue; returns once the broker confirmed it (it is then on
    /// disk in its queue). An error means it may or may not have been enqueued.
    pub async fn publish(&self, key: &str, payload: &[u8]) -> Result<(), Error> {
        let confirm = self
            .channel
            .basic_publish(
                // The default exchange routes by queue name.
                "".into(),
                self.queue_of(key).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                // Delivery mode 2: persistent, so a broker restart keeps it.
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            Ok(())
        } else {
            Err(Error::Amqp(format!(
                "the broker did not take the message for key {key:?} (unroutable or nacked)"
            )))
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_stably_and_evenly() {
        // Pinned: other publishers and future versions must route the same way.
        let first: Vec<usize> = (0..8).map(|k| queue_for_key(&format!("k{k}"), 8)).collect();
        assert_eq!(first, [5, 6, 2, 6, 6, 2, 2, 1]);
        let mut counts = [0usize; 8];
        for k in 0..8000 {
            counts[queue_for_key(&format!("k{k}"), 8)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        // One more queue moves about 1/9 of the keys, never between two old queues.
        let mut moved = 0;
        for k in 0..9000 {
            let key = format!("k{k}");
            let (a, b) = (queue_for_key(&key, 8), queue_for_key(&key, 9));
            if a != b {
                assert_eq!(b, 8, "{key} moved between old queues");
                moved += 1;
            }
        }
        assert!((700..1300).contains(&moved), "{moved}");
        assert_eq!(queue_for_key("anything", 1), 0);
    }
}
