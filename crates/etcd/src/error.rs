//! The mapping of etcd client errors onto [`StoreError`].

use etcd_client::Error;
use rebalanser_store::StoreError;

use crate::EtcdUrl;

/// What failed: decides whether an unknown outcome may have changed the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect,
    Read,
    Write,
}

pub(crate) fn fail(url: &EtcdUrl, kind: Kind, e: Error) -> StoreError {
    let detail = format!("{url}: {e}");
    if let Error::GRpcStatus(s) = &e {
        let msg = s.message();
        if msg.contains("lease not found") {
            return StoreError::SessionExpired;
        }
        // Refused before anything was applied, and never going to succeed: INVALID_ARGUMENT
        // (3), PERMISSION_DENIED (7), RESOURCE_EXHAUSTED (8, a request too large),
        // UNAUTHENTICATED (16).
        if matches!(s.code() as i32, 3 | 7 | 8 | 16) {
            return StoreError::Invalid(detail);
        }
    }
    if let Error::LeaseKeepAliveError(m) = &e {
        if m.contains("lease not found") {
            return StoreError::SessionExpired;
        }
    }
    match kind {
        Kind::Connect | Kind::Read => StoreError::Unavailable(detail),
        // The request may have reached the leader and been applied.
        Kind::Write => StoreError::Indeterminate(detail),
    }
}
