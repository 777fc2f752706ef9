//! Rebalanser: Kafka-style consumer groups over any resources, coordinated through a store.
//!
//! A **group** is a set of members (processes) and a set of resources (opaque string ids).
//! Each resource is leased to exactly one live member at a time, balanced across members and
//! moved only when it must. This crate is the runtime: it drives the sans-IO protocol core
//! (`rebalanser-core`) against a [`Store`] on tokio, and turns the core's decisions into
//! [`Lease`]s for the application.
//!
//! # A worker
//!
//! `examples/worker.rs`, whole: it joins a group on a store URL (the argument, else
//! `$REBALANSER_STORE`, else an embedded SQLite file in `/tmp`), serves each lease on its own
//! task until the lease is revoked, and leaves gracefully on Ctrl-C. Run several with
//! `cargo run -p rebalanser --example worker -- sqlite:///tmp/jobs.db jobs` and add resources
//! with `rebalanser resource add --store sqlite:///tmp/jobs.db --group jobs q1 q2 q3`.
//!
#![doc = concat!("```no_run\n", include_str!("../examples/worker.rs"), "```")]
//!
//! Each store backend is a Cargo feature, all on by default: `sqlite`, `zookeeper`,
//! `postgres`, `etcd` (`memory://` needs none); a URL of a backend compiled out is
//! [`Error::BackendNotCompiled`]. A lease still held at its deadline, or `stop_timeout` after
//! its revoke, aborts the process by default ([`StopPolicy::Abort`]: past that point another
//! member may be granted the resource, and ending the process is the only stop a library can
//! force); [`MemberBuilder::on_stop_deadline_missed`] with [`StopPolicy::Log`] reports it
//! instead, for applications that enforce the stop themselves.
//!
//! # Usage: two members on one store
//!
//! ```
//! use std::time::Duration;
//! use rebalanser::{Admin, Lease, Member};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), rebalanser::Error> {
//! // The in-process store lives while a handle to it does: the Admin keeps it here.
//! let admin = Admin::connect("memory://doc-example", "jobs")?;
//! admin.create_group().await?;
//! admin.add_resources(&["q1", "q2", "q3", "q4"]).await?;
//!
//! let mut a = Member::builder("jobs").name("a").store_url("memory://doc-example").join().await?;
//! let mut b = Member::builder("jobs").name("b").store_url("memory://doc-example").join().await?;
//!
//! // Serve each lease until it is revoked; dropping it tells the library the work stopped.
//! fn serve(lease: Lease) {
//!     tokio::spawn(async move {
//!         println!("working on {} with token {}", lease.resource(), lease.token());
//!         // ... access the resource while `lease.is_valid()` ...
//!         lease.revoked().await;
//!     });
//! }
//!
//! // Take leases until the group settles: every resource held by the member it is
//! // assigned to, two each.
//! loop {
//!     tokio::select! {
//!         Some(lease) = a.next_lease() => serve(lease),
//!         Some(lease) = b.next_lease() => serve(lease),
//!         _ = tokio::time::sleep(Duration::from_millis(50)) => {
//!             let status = admin.status().await?;
//!             let per_member = status.claims_per_member();
//!             if status.is_settled() && per_member.values().all(|&n| n == 2) {
//!                 break;
//!             }
//!         }
//!     }
//! }
//!
//! // Graceful leave: the leaving member's resources are handed over without waiting for a
//! // timeout, in any order.
//! a.leave().await?;
//! b.leave().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Map
//!
//! - [`Member::builder`] → [`MemberBuilder`] → [`MemberBuilder::join`] → [`Member`]:
//!   leases ([`Member::next_lease`], or the handle as a `Stream`), status events
//!   ([`Member::events`]) and [`Member::leave`].
//! - [`Lease`]: one resource; [`Lease::is_valid`] is computed at call time from a deadline on
//!   the boot-time [`clock`], so it turns false on time even if the member's task is stalled.
//! - [`Admin`]: create or delete a group (refused while members live), add/remove/list
//!   resources, [`Admin::status`].
//! - [`Callbacks`]: `on_assigned` / `on_revoked` / `on_error` over a [`Member`].
//!
//! **Architecture invariant:** this crate is the only place that spawns tasks or reads the
//! real clock; all protocol decisions are the core's. One tokio task per member owns the
//! core and everything it does on the store.
//!
//! # Logs
//!
//! `tracing`, one span `member` per member with fields `group`, `member`, `epoch`. `info` is
//! one line per membership or ownership change (joined, coordinator, rebalanced, lease
//! granted/revoked, session lost, left) with the fields `resource`, `token`, `epoch`, `from`,
//! `to`, `reason`; `debug` has every store operation.
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade, every series labelled `group` and
//! `member`: leases held, grants, revokes by reason, rebalances, resources moved, handover
//! latency, session state, keepalive and store-operation latency and errors, coordinator epoch,
//! bad data ([`metrics`] names them; `docs/metrics.md` describes them). No exporter: install a
//! recorder before the members join.

pub mod clock;

mod admin;
mod builder;
mod callbacks;
mod driver;
mod error;
mod groups;
mod handle;
mod lease;
pub mod metrics;
mod read_only;
mod url;
mod watchdog;

pub use admin::{
    Admin, BadKey, ClaimInfo, CoordinatorInfo, GroupStatus, Handover, MemberInfo, ResourceStatus,
    Unhealthy,
};
pub use builder::{MemberBuilder, StopPolicy};
pub use callbacks::{CallbackHandle, Callbacks};
pub use error::Error;
pub use groups::{list_groups, GroupListing, GroupSummary};
pub use handle::{Events, Member, MemberEvent, MemberStatus};
pub use lease::{Lease, LeaseChecker};
pub use url::{open_store, open_store_with, OpenOptions};

pub use rebalanser_core::layout::Mode;
pub use rebalanser_core::store::StoreError;
pub use rebalanser_core::store::{
    txn_bytes, Cond, Entry, Key, StoreOp, StoreReply, StoreResult, Write,
};
pub use rebalanser_core::{
    ConfigError, Epoch, GroupId, IdError, MemberId, MembershipChange, Move, RebalanceCause,
    RebalanceReport, ResourceId, RevokeReason, SessionId, Time, Token,
};
pub use rebalanser_store::{BoxFuture, MemoryStore, Store, WatchEvent};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_cross_threads() {
        send_sync::<Lease>();
        send_sync::<LeaseChecker>();
        send_sync::<Member>();
        send_sync::<Admin>();
        send_sync::<Error>();
        send_sync::<MemberEvent>();
        send_sync::<CallbackHandle>();
    }
}
