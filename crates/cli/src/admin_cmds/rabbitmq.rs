//! `rebalanser rabbitmq setup|teardown`: the broker side of a RabbitMQ queue group (a
//! consistent-hash exchange routing by key onto N durable queues) and the group whose resources
//! are those queues.

use clap::Subcommand;
use rebalanser::Mode;
use rebalanser_rabbitmq::topology;

use super::common::{connect, emit, Access, CliError, StoreArgs};
use super::group::ModeArg;

#[derive(clap::Args, Debug)]
pub struct RabbitArgs {
    #[command(subcommand)]
    cmd: RabbitCmd,
}

#[derive(Subcommand, Debug)]
enum RabbitCmd {
    /// Declare the exchange (type x-consistent-hash, durable) and N durable queues
    /// EXCHANGE.0000… bound to it with equal weight, create the group if needed and add the
    /// queues as its resources. Idempotent. N must stay fixed while messages flow: a new N
    /// remaps keys to other queues and breaks their order (see the crate docs).
    Setup(TopologyArgs),
    /// Remove the queues from the group, then delete them (messages in them are lost) and
    /// the exchange.
    Teardown(TopologyArgs),
}

#[derive(clap::Args, Debug)]
struct TopologyArgs {
    /// The broker: amqp://USER:PASS@HOST:PORT/VHOST (the vhost `/` is %2f).
    #[arg(long, value_name = "URL")]
    amqp: String,
    /// The exchange publishers send to, routing by key.
    #[arg(long)]
    exchange: String,
    /// How many queues (the most consumers that can share the work).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=9999))]
    queues: u16,
    /// The group's mode, if `setup` creates it.
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
    #[command(flatten)]
    store: StoreArgs,
}

fn broker(e: rebalanser_rabbitmq::Error) -> CliError {
    CliError::Broker(e.to_string())
}

pub async fn run(a: RabbitArgs) -> Result<(), CliError> {
    match a.cmd {
        RabbitCmd::Setup(a) => {
            rebalanser_rabbitmq::check_url(&a.amqp).map_err(broker)?;
            let conn = connect(&a.store, Access::Create).await?;
            let queues = tokio::time::timeout(
                conn.timeout,
                topology::setup(&a.amqp, &a.exchange, usize::from(a.queues)),
            )
            .await
            .map_err(|_| {
                CliError::Broker(format!(
                    "{} did not answer within --timeout",
                    rebalanser_rabbitmq::redact(&a.amqp)
                ))
            })?
            .map_err(broker)?;
            let admin = &conn.admin;
            conn.bounded(admin.create_group_with(a.mode.into())).await?;
            conn.bounded(admin.add_resources(&queues)).await?;
            emit(&format!(
                "exchange {} (x-consistent-hash) with {} queues {}..{}; group {} in {} ({} \
                 mode) has them as resources\n",
                a.exchange,
                queues.len(),
                queues.first().map_or("", String::as_str),
                queues.last().map_or("", String::as_str),
                admin.group(),
                conn.store,
                Mode::from(a.mode).as_str()
            ))
        }
        RabbitCmd::Teardown(a) => {
            rebalanser_rabbitmq::check_url(&a.amqp).map_err(broker)?;
            let conn = connect(&a.store, Access::Write).await?;
            let queues = topology::queue_names(&a.exchange, usize::from(a.queues));
            conn.bounded(conn.admin.remove_resources(&queues)).await?;
            tokio::time::timeout(
                conn.timeout,
                topology::teardown(&a.amqp, &a.exchange, usize::from(a.queues)),
            )
            .await
            .map_err(|_| CliError::Broker("the broker did not answer within --timeout".into()))?
            .map_err(broker)?;
            emit(&format!(
                "removed {} queues from group {} and deleted them and exchange {}\n",
                queues.len(),
                conn.admin.group(),
                a.exchange
            ))
        }
    }
}
