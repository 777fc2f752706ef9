//! The broker side of a queue group: a consistent-hash exchange routing by key onto N durable
//! queues bound with equal weight ([`setup`], [`teardown`]), and a [`Publisher`] that sends a
//! keyed message through it and waits for the broker's confirm.
//!
//! The exchange type comes from the `rabbitmq_consistent_hash_exchange` plugin (shipped with
//! RabbitMQ, enabled with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`); without
//! it the declaration fails with a message naming the plugin. N must stay fixed while messages
//! flow (the crate docs say why).

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

/// Publishes keyed, persistent messages through the exchange, each confirmed by the broker.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    pub async fn connect(url: &str, exchange: &str) -> Result<Publisher, Error> {
        let (conn, channel) = channel(url).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            conn,
            channel,
            exchange: exchange.to_string(),
        })
    }

    /// Sends `payload` routed by `key`; returns once the broker confirmed it (it is then on
    /// disk in its queue). An error means it may or may not have been enqueued.
    pub async fn publish(&self, key: &str, payload: &[u8]) -> Result<(), Error> {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
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
