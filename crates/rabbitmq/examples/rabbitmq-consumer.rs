//! A consumer process of a RabbitMQ queue group: every queue it leases is consumed by it alone,
//! in order, and handed over without losing or reordering a message. Start several.
//!
//! ```text
//! rebalanser rabbitmq setup --amqp amqp://guest:guest@127.0.0.1:5672/%2f --exchange orders \
//!     --queues 8 --store sqlite:///tmp/orders.db --group orders
//! cargo run -p rebalanser-rabbitmq --example rabbitmq-consumer -- \
//!     sqlite:///tmp/orders.db orders amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! Ctrl-C leaves the group gracefully: each queue moves on once its delivery in flight is done.

use rebalanser::Member;
use rebalanser_rabbitmq::{Message, QueueGroup};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [store, group, amqp] = args()?;
    let member = Member::builder(&group).store_url(&store).join().await?;
    let handler = |m: Message| async move {
        let body = String::from_utf8_lossy(&m.payload);
        println!("{} (token {}): {body}", m.queue, m.token);
        Ok(())
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    QueueGroup::new(&amqp)?.run(member, handler, ctrl_c).await?;
    Ok(())
}

fn args() -> Result<[String; 3], String> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    v.try_into()
        .map_err(|_| "usage: rabbitmq-consumer STORE_URL GROUP AMQP_URL".to_string())
}
