//! The Store contract of Rebalanser (DESIGN §3): the [`Store`] trait every backend implements,
//! the pure [`MemModel`] that defines the contract's semantics, and [`MemoryStore`], an
//! in-process store on top of it for tests and examples.
//!
//! **Contract** (what every backend must provide; the conformance suite checks it):
//! - `execute` performs one [`StoreOp`] and returns exactly one result. Transactions are atomic.
//!   A write whose outcome is unknown is `Indeterminate`; operations of one session are applied
//!   in the order they were issued.
//! - `Create` is create-if-absent; session-owned keys vanish when their session expires or is
//!   closed, and are never rewritten. `create_rev` strictly grows in commit order.
//! - `Get`/`List` with `linearizable: true` reflect every write committed before they started.
//! - `watch(prefix)` yields `Changed` (or `Keys` naming at least every key that changed)
//!   after any change under the prefix and `Reset` after anything that may have lost
//!   notifications; the caller re-reads on `Changed` and `Reset`, and on `Keys` when one of
//!   them concerns it.
//!
//! **API boundary:** backends hold no protocol logic, only encoding, error mapping and
//! notification plumbing.

pub mod memory;
pub mod model;
pub mod tls;

use std::future::Future;
use std::pin::Pin;

use futures::stream::BoxStream;

pub use memory::MemoryStore;
pub use model::{MemModel, ModelConfig};
pub use rebalanser_core::store::{
    Cond, Entry, Key, StoreError, StoreOp, StoreReply, StoreResult, Write,
};
pub use tls::TlsFiles;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store tells of one live session ([`Store::session_info`]), measured on the clock
/// that decides its expiry, at the moment of the call. For people, never for the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Time since its last successful keepalive (or its opening, if none yet).
    pub since_keepalive: std::time::Duration,
    /// Time left before it expires unless kept alive again.
    pub expires_in: std::time::Duration,
}

impl SessionInfo {
    pub fn new(since_keepalive: std::time::Duration, expires_in: std::time::Duration) -> Self {
        SessionInfo {
            since_keepalive,
            expires_in,
        }
    }
}

/// A change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something under the prefix changed.
    Changed,
    /// These keys under the prefix were created, changed or deleted. A backend may name a key
    /// that did not change, never leave out one that did: a member re-reads only when a named
    /// key concerns it (issue 10: a change costs the members it concerns a listing, not every
    /// member).
    Keys(Vec<Key>),
    /// Notifications may have been lost (reconnect, lag): re-read everything.
    Reset,
}

impl WatchEvent {
    /// Whether this event may report a change of `key`.
    pub fn may_concern(&self, key: &str) -> bool {
        match self {
            WatchEvent::Changed | WatchEvent::Reset => true,
            WatchEvent::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// A backend. Object safe, so a member can hold `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Performs one operation.
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult>;
    /// Notifications of changes under `prefix`. The stream ending means the watch broke:
    /// re-arm it, then re-read.
    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent>;
    /// A short description for logs and errors (`memory://name`, `zk://h:p/chroot`).
    fn describe(&self) -> String;
    /// What the store can tell people about these sessions (`rebalanser status`): for each
    /// one it knows alive, when it was last kept alive and when it expires unless kept alive
    /// again. Never used by the protocol. The default knows nothing (an empty map); a store
    /// whose expiry is decided elsewhere (a server's clock) may leave it so.
    fn session_info(
        &self,
        sessions: Vec<rebalanser_core::SessionId>,
    ) -> BoxFuture<
        '_,
        Result<std::collections::BTreeMap<rebalanser_core::SessionId, SessionInfo>, StoreError>,
    > {
        let _ = sessions;
        Box::pin(async { Ok(std::collections::BTreeMap::new()) })
    }
    /// True when a successful `KeepAlive` may not yet have reached the server that decides
    /// expiry, so it proves only the keepalive before it (ZooKeeper via a follower). The
    /// member then counts its deadline from the previous success. Required, not defaulted:
    /// each backend must decide (false is unsafe on ZooKeeper, PITFALLS 1).
    fn keepalive_proves_previous(&self) -> bool;
    /// The shortest session TTL this store can honour: below it sessions expire although
    /// every keepalive was sent on time (the store's own timing is coarser than the TTL), so
    /// members flap. A member refuses to join with a shorter TTL. The default suits a store
    /// that answers in a millisecond or two but has not been measured; a backend overrides it
    /// with its own bound and the reason for it, and a wrapper store passes its inner one's on.
    fn min_session_ttl(&self) -> std::time::Duration {
        DEFAULT_MIN_SESSION_TTL
    }
}

/// [`Store::min_session_ttl`] of a store that does not say.
pub const DEFAULT_MIN_SESSION_TTL: std::time::Duration = std::time::Duration::from_millis(500);
