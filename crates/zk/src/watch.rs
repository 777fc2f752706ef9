//! Notification plumbing: one persistent recursive watch per namespace on the shared
//! connection, turned into `Changed`, re-armed and reported as `Reset` after every reconnect.
//! Never reads or interprets keys: the reader re-reads on any notification.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_store::{Key, StoreError, WatchEvent};
use zookeeper_client as zk;

use crate::backoff::backoff;
use crate::connect::is_terminal;
use crate::error::read_err;
use crate::Inner;

impl Inner {
    pub(crate) fn watch(self: Arc<Self>, prefix: Key) -> BoxStream<'static, WatchEvent> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
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
                        _ => send(&tx, WatchEvent::Changed),
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

/// Queues a notification; a full queue already holds one, which is as good (the reader
/// re-reads everything either way), but a pending `Changed` is upgraded by nothing: a `Reset`
/// that finds the queue full is also fine for the same reason.
fn send(tx: &tokio::sync::mpsc::Sender<WatchEvent>, ev: WatchEvent) -> Result<(), ()> {
    match tx.try_send(ev) {
        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}
