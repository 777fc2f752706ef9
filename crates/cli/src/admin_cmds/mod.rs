//! `rebalanser group list|create|describe|delete|bump-generation`,
//! `rebalanser resource add|remove|list`,
//! `rebalanser status`, `rebalanser watch`, `rebalanser rabbitmq setup|teardown`: the admin
//! side of the CLI, on the public `rebalanser::Admin` API only (and, for RabbitMQ, the
//! broker's topology through `rebalanser-rabbitmq`).
//!
//! Every failure is one line on stderr starting `rebalanser: ` (a bad URL, an unreachable
//! store — bounded by `--timeout` —, a missing group, a bad id or duration), with exit status
//! 2 for bad arguments and 1 for everything else.

mod common;
mod group;
mod quiet;
mod rabbitmq;
mod resource;
mod status;
mod view;
mod watch;

use std::process::ExitCode;

pub use group::{GroupArgs, ModeArg};
pub use rabbitmq::RabbitArgs;
pub use resource::ResourceArgs;
pub use status::StatusArgs;
pub use watch::WatchArgs;

pub fn group(a: GroupArgs) -> ExitCode {
    common::run(group::run(a))
}

pub fn rabbitmq(a: RabbitArgs) -> ExitCode {
    common::run(rabbitmq::run(a))
}

pub fn resource(a: ResourceArgs) -> ExitCode {
    common::run(resource::run(a))
}

pub fn status(a: StatusArgs) -> ExitCode {
    common::run(status::run(a))
}

pub fn watch(a: WatchArgs) -> ExitCode {
    common::run(watch::run(a))
}
