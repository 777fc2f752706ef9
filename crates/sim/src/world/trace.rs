//! One-line renderings of store operations, replies and member events for the trace (one line
//! per event, `--trace`). Formats only: the trace of a seed is compared byte for byte across
//! refactors, so a change here changes every trace.

use rebalanser_core::store::{StoreOp, StoreReply, StoreResult};
use rebalanser_core::Event;

pub(super) fn short_op(op: &StoreOp) -> String {
    match op {
        StoreOp::OpenSession { ttl } => format!("open(ttl={ttl:?})"),
        StoreOp::KeepAlive { session } => format!("keepalive({session})"),
        StoreOp::CloseSession { session } => format!("close({session})"),
        StoreOp::Get { key, linearizable } => format!("get({key}, lin={linearizable})"),
        StoreOp::List { linearizable, .. } => format!("list(lin={linearizable})"),
        StoreOp::Read {
            keys,
            prefixes,
            linearizable,
        } => format!(
            "read({} keys, {} prefixes, lin={linearizable})",
            keys.len(),
            prefixes.len()
        ),
        StoreOp::Txn { conds, writes } => {
            let w: Vec<String> = writes
                .iter()
                .map(|w| match w {
                    rebalanser_core::store::Write::Create { key, owner, .. } => {
                        format!(
                            "create {key}{}",
                            owner.map(|o| format!(" by {o}")).unwrap_or_default()
                        )
                    }
                    rebalanser_core::store::Write::Put { key, .. } => format!("put {key}"),
                    rebalanser_core::store::Write::Delete { key } => format!("delete {key}"),
                })
                .collect();
            format!("txn[{} conds] {}", conds.len(), w.join(", "))
        }
    }
}

pub(super) fn short_res(res: &StoreResult) -> String {
    match res {
        Ok(StoreReply::Listed { entries, rev }) => {
            format!("ok listed {} keys at rev {rev}", entries.len())
        }
        Ok(StoreReply::Got(Some(e))) => format!("ok got owner={:?} rev={}", e.owner, e.create_rev),
        Ok(r) => format!("ok {r:?}"),
        Err(e) => format!("err {e}"),
    }
}

pub(super) fn short_event(e: &Event) -> String {
    match e {
        Event::Grant {
            resource, token, ..
        } => format!("GRANT {resource} token {token}"),
        Event::Revoke {
            resource, reason, ..
        } => format!("REVOKE {resource} ({})", reason.as_str()),
        other => format!("{other:?}"),
    }
}
