//! Sans-IO protocol core of Rebalanser.
//!
//! **Architecture invariant:** nothing in this crate performs IO, reads a clock, spawns a task,
//! or draws from a global RNG. Time comes in as [`Time`]; store operations go out as data
//! ([`store::StoreOp`]) and their results come back as data. The same code runs in production
//! (crate `rebalanser`), in the simulator (`rebalanser-sim`) and under the model checker.
//!
//! Driving loop (see [`member::Member`]):
//! 1. call an input: `start`, `handle_reply`, `handle_notify`, `handle_timeout`,
//!    `handle_released`, `leave`;
//! 2. drain `poll_op()` (execute each, feed the reply back) and `poll_event()`;
//! 3. sleep until `poll_timeout()` or the next input.

pub mod admin;
pub mod assignor;
pub mod config;
pub mod ids;
pub mod layout;
pub mod member;
pub mod store;

pub use config::{Config, ConfigError, Variant};
pub use ids::{
    Epoch, GroupId, IdError, LeaseId, MemberId, OpId, ResourceId, SessionId, Time, Token,
};
pub use member::{
    Event, Member, MembershipChange, Move, RebalanceCause, RebalanceReport, RevokeReason,
};
