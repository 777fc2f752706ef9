//! Error mapping: ZooKeeper errors onto [`StoreError`]s, for reads, for writes (where only a
//! server's answer proves nothing was applied) and for the shared connection. Decides nothing
//! and retries nothing; it only translates.

use rebalanser_store::{StoreError, StoreResult};
use zookeeper_client as zk;

/// A ZooKeeper error on a read: nothing was applied, so anything transient is `Unavailable`.
pub(crate) fn read_err(e: zk::Error) -> StoreError {
    match e {
        zk::Error::SessionExpired => StoreError::SessionExpired,
        zk::Error::NoAuth | zk::Error::AuthFailed => {
            StoreError::Invalid(format!("not authorized: {e}"))
        }
        zk::Error::BadArguments(_) => StoreError::Invalid(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// A ZooKeeper error on a write. Only an answer from the server proves that nothing was
/// applied; anything the client library reports on its own (a lost or silent connection, a
/// timeout, a closed client, an undecodable reply) may have followed an applied write.
pub(crate) fn write_err(e: zk::Error) -> StoreError {
    match e {
        zk::Error::NoNode
        | zk::Error::NoAuth
        | zk::Error::AuthFailed
        | zk::Error::BadVersion
        | zk::Error::NoChildrenForEphemerals
        | zk::Error::NodeExists
        | zk::Error::NotEmpty
        | zk::Error::InvalidAcl
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::NotReadOnly
        | zk::Error::QuotaExceeded
        | zk::Error::Throttled
        | zk::Error::MarshallingError
        | zk::Error::BadArguments(_)
        | zk::Error::Unimplemented => read_err(e),
        e => StoreError::Indeterminate(e.to_string()),
    }
}
/// The shared connection's session expiring says nothing about the caller's session: the
/// request was refused (nothing applied), and the next one reconnects.
pub(crate) fn shared_expiry(r: StoreResult) -> StoreResult {
    r.map_err(shared_err)
}

pub(crate) fn shared_err(e: StoreError) -> StoreError {
    match e {
        StoreError::SessionExpired => StoreError::Unavailable(
            "the shared connection's session expired; reconnecting".to_string(),
        ),
        e => e,
    }
}
pub(crate) fn unexpected(r: Option<zk::MultiReadResult>) -> StoreError {
    match r {
        Some(zk::MultiReadResult::Error { err }) => read_err(err),
        other => StoreError::Unavailable(format!("unexpected multiRead result {other:?}")),
    }
}
