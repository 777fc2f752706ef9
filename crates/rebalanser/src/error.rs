//! The runtime's error type. Every variant names what was wrong, so a message read in a log is
//! enough to fix the call.

use std::time::Duration;

use rebalanser_core::store::StoreError;
use rebalanser_core::{ConfigError, GroupId, IdError, MemberId};

/// Everything the public API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A group, member or resource id was rejected (empty, too long, control characters).
    #[error("invalid id: {0}")]
    InvalidId(#[from] IdError),
    /// A timing or weight cannot work; the field is named.
    #[error("invalid member configuration: {0}")]
    Config(#[from] ConfigError),
    /// `join` was called without `.store(..)` or `.store_url(..)`.
    #[error(
        "no store configured for group {group:?}: call .store(..) or .store_url(..) before join"
    )]
    NoStore { group: String },
    /// The store URL could not be parsed.
    #[error("malformed store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The URL is well formed but this build has no backend for its scheme.
    #[error(
        "unsupported store URL {url:?}: this build supports sqlite:///PATH, \
         zk://HOST:PORT[,...][/CHROOT], postgres://USER@HOST:PORT/DATABASE[?schema=NAME], \
         etcd://HOST:PORT[,...][/PREFIX] and memory://NAME"
    )]
    UnsupportedStore { url: String },
    /// The URL names a backend this build of the crate was compiled without: enable its
    /// Cargo feature (`sqlite`, `zookeeper`, `postgres` or `etcd`; all are on by default).
    #[error(
        "store URL scheme {scheme}:// needs the rebalanser crate's \"{feature}\" feature, which \
         this build leaves out: depend on rebalanser with features = [\"{feature}\"] (or with \
         its default features)"
    )]
    BackendNotCompiled {
        scheme: String,
        feature: &'static str,
    },
    /// The session TTL is shorter than the store can honour ([`crate::Store::min_session_ttl`]).
    #[error(
        "session TTL {ttl:?} is below {min:?}, the shortest store {store} can honour: its \
         sessions would expire although every keepalive went out on time, and the member \
         would keep losing its resources; use a session TTL of at least {min:?}"
    )]
    SessionTtlTooShort {
        ttl: Duration,
        min: Duration,
        store: String,
    },
    /// The store named by the URL could not be opened (e.g. a SQLite file that is not a
    /// Rebalanser database, is locked, or cannot be created); the reason names the file.
    #[error("cannot open store {url:?}: {reason}")]
    StoreOpen { url: String, reason: String },
    /// A `sqlite://` file that does not exist, opened without creating it
    /// ([`crate::OpenOptions::create`] off, or read-only): nothing was created.
    #[error(
        "no such store file {path} (store {url:?}); it was not created: only an open with \
         OpenOptions::create makes a new file"
    )]
    NoStoreFile { url: String, path: String },
    /// The group has no marker in the store.
    #[error(
        "group {group} does not exist: create it first (Admin::create_group, or \
         .create_group_if_missing(true) on the member builder)"
    )]
    UnknownGroup { group: GroupId },
    /// The group rebalances in another mode than this member (or this creation) asked for.
    #[error(
        "group {group} rebalances in {group_mode} mode, not {wanted} mode (a group's mode is \
         chosen at creation: configure the member with MemberBuilder::mode, or \
         `member run --mode {group_mode}`)"
    )]
    ModeMismatch {
        group: GroupId,
        group_mode: &'static str,
        wanted: &'static str,
    },
    /// The group key holds something that is not a Rebalanser group marker.
    #[error(
        "group {group} in store {store}: {key} holds data that is not a Rebalanser group marker"
    )]
    NotAGroup {
        group: GroupId,
        store: String,
        key: String,
    },
    /// The group still has live member sessions: a deletion would remove their claims, a
    /// generation bump could race their grants.
    #[error(
        "group {group} is in use: {sessions} live session(s) own {keys} key(s) (members, \
         claims); stop every member first (a stopped member's session ends within its TTL)"
    )]
    GroupInUse {
        group: GroupId,
        sessions: usize,
        keys: usize,
    },
    /// The store failed an operation the caller was waiting for.
    #[error("store {store} failed: {source}")]
    Store {
        store: String,
        #[source]
        source: StoreError,
    },
    /// A graceful leave did not see the member close its session in time. Usually the
    /// application still holds a lease it was asked to give back.
    #[error(
        "member {member} did not finish leaving within {after:?}; leases still held by the \
         application keep it from closing its session"
    )]
    LeaveTimedOut { member: MemberId, after: Duration },
    /// The member's driver task is gone (the runtime shut down, or the task was aborted).
    #[error("the driver of member {member} is no longer running")]
    DriverGone { member: MemberId },
}
