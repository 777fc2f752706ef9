//! Notification plumbing: one persistent recursive watch per namespace on the shared
//! connection, each node event turned into `Keys` naming the node's key (the reader decides
//! whether it concerns it), re-armed and reported as `Reset` after every reconnect. Never
//! reads or interprets keys beyond the path encoding.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_store::{Key, StoreError, WatchEvent};
use zookeeper_client as zk;

use crate::backoff::backoff;
use crate::connect::is_terminal;
use crate::error::read_err;
use crate::path::key_of;
use crate::Inner;

impl Inner {
    pub(crate) fn watch(self: Arc<Self>, prefix: Key) -> BoxStream<'static, WatchEvent> {
        // Unbounded: each event names a key, so none may be dropped; the reader drains
        // whatever is queued in one pass.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // One recursive watch on the namespace directory (or on everything for a prefix that
        // ends inside a namespace name); changes elsewhere in the namespace wake it too, which
        // costs a re-read, never a missed change.
        let dir = match prefix.split_once('/') {
            Some((ns, _)) => format!("/{ns}"),
            None => "/".to_string(),
        };
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                if tx.is_closed() {
                    return;
                }
                let armed = match self.shared().await {
                    Ok(c) => arm(&c, &dir).await.map(|w| (c, w)),
                    Err(e) => Err(e),
                };
                let (c, mut w) = match armed {
                    Ok(cw) => cw,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(store = %self.url, error = %e, "zk watch not armed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(failures)) => continue,
                            _ = tx.closed() => return,
                        }
                    }
                };
                failures = 0;
                // Armed before the reader re-reads, so nothing after the re-read is missed.
                if send(&tx, WatchEvent::Reset).is_err() {
                    return;
                }
                loop {
                    let ev = tokio::select! {
                        ev = w.changed() => ev,
                        _ = tx.closed() => return,
                    };
                    let sent = match (ev.event_type, ev.session_state) {
                        (zk::EventType::Session, s) if is_terminal(s) => break,
                        (zk::EventType::Session, zk::SessionState::Disconnected) => Ok(()),
                        // Reconnected. Events meanwhile are not replayed, and zookeeper-client
                        // 0.11 does not restore persistent watches on the new connection
                        // (`resend_watches` skips them): arm a new one before dropping the old,
                        // so the client never asks the server to remove the path's watch.
                        (zk::EventType::Session, _) => match arm(&c, &dir).await {
                            Ok(fresh) => {
                                w = fresh;
                                send(&tx, WatchEvent::Reset)
                            }
                            Err(_) => break,
                        },
                        _ => match event_of(ev.event_type, &ev.path) {
                            Some(e) => send(&tx, e),
                            None => Ok(()),
                        },
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

async fn arm(c: &zk::Client, dir: &str) -> Result<zk::PersistentWatcher, StoreError> {
    c.watch(dir, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(read_err)
}

/// Queues a notification; `Err` when the reader is gone.
fn send(tx: &tokio::sync::mpsc::UnboundedSender<WatchEvent>, ev: WatchEvent) -> Result<(), ()> {
    tx.send(ev).map_err(|_| ())
}

/// The notification of a node event at `path` (relative to the chroot): the key of a node
/// this store writes, `None` for the write every transaction makes to its namespace directory
/// only to learn its zxid (`multi.rs`; the directory holds no key, and the transaction's own
/// keys have events of their own), or `Changed` (re-read) for anything else.
fn event_of(kind: zk::EventType, path: &str) -> Option<WatchEvent> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    Some(match rel.split_once('/') {
        Some((ns, name)) if !name.is_empty() && !name.contains('/') => {
            key_of(ns, name).map_or(WatchEvent::Changed, |k| WatchEvent::Keys(vec![k]))
        }
        None if !rel.is_empty() && kind == zk::EventType::NodeDataChanged => return None,
        _ => WatchEvent::Changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_event_names_the_key_of_its_node() {
        use zk::EventType::{NodeCreated, NodeDataChanged, NodeDeleted};
        for kind in [NodeCreated, NodeDataChanged, NodeDeleted] {
            assert_eq!(
                event_of(kind, "/g/claims%2Fa%25b"),
                Some(WatchEvent::Keys(vec!["g/claims/a%b".to_string()]))
            );
            assert_eq!(event_of(kind, "/g/"), Some(WatchEvent::Changed));
            assert_eq!(event_of(kind, "/"), Some(WatchEvent::Changed));
            assert_eq!(event_of(kind, "/g/a/b"), Some(WatchEvent::Changed));
            assert_eq!(event_of(kind, "/g/bad%zz"), Some(WatchEvent::Changed));
        }
        // The zxid-learning write to the directory changes no key; its removal is news.
        assert_eq!(event_of(NodeDataChanged, "/g"), None);
        assert_eq!(event_of(NodeDeleted, "/g"), Some(WatchEvent::Changed));
    }
}
