//! Publishes sequenced messages per key to a queue group's queues, each confirmed by the
//! broker: `{"key": K, "seq": S}` for S = 0.. over keys k0..k(N-1), each key's messages to one
//! queue (chosen by a stable hash of the key), in order.
//!
//! ```text
//! cargo run -p rebalanser-rabbitmq --example rabbitmq-publisher -- \
//!     amqp://guest:guest@127.0.0.1:5672/%2f orders 8 100 10
//! ```
//! (exchange `orders` with 8 queues, 100 keys, 10 messages per key).

use rebalanser_rabbitmq::topology::Publisher;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let [amqp, exchange, queues, keys, per_key]: [String; 5] = v
        .try_into()
        .map_err(|_| "usage: rabbitmq-publisher AMQP_URL EXCHANGE QUEUES KEYS MESSAGES_PER_KEY")?;
    let (queues, keys, per_key): (usize, u32, u64) =
        (queues.parse()?, keys.parse()?, per_key.parse()?);
    let publisher = Publisher::connect(&amqp, &exchange, queues).await?;
    for seq in 0..per_key {
        for key in 0..keys {
            let body = format!(r#"{{"key":{key},"seq":{seq}}}"#);
            publisher
                .publish(&format!("k{key}"), body.as_bytes())
                .await?;
        }
    }
    publisher.close().await;
    println!("published {} messages", u64::from(keys) * per_key);
    Ok(())
}
