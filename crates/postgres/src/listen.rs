//! Watches: one listener task per store, on a connection of its own, `LISTEN`s on the
//! schema's channel and fans notifications out to every watch (PITFALLS 27).
//!
//! Each writing transaction that changed keys sends one `NOTIFY` naming them (delivered at
//! commit, in commit order; an empty payload when the names do not fit, meaning "something
//! changed"). Notifications are hints: PostgreSQL drops those sent while the listener is
//! disconnected, so every (re)connection ends with a `Reset` once `LISTEN` is in force, and a
//! listener that stops answering its pings is reconnected. A watch that falls behind the
//! fan-out gets a `Reset` too.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rebalanser_store::{Key, WatchEvent};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::{lock, Inner};

/// What the listener fans out.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    /// `LISTEN` is (again) in force: anything before may have been missed.
    Reset,
    /// These keys changed; `None`: unnamed changes.
    Keys(Option<Arc<Vec<Key>>>),
}

/// How many notes a slow watch may lag before it gets a `Reset` instead.
const FANOUT: usize = 1024;

pub(crate) fn watch(inner: &Arc<Inner>, prefix: Key) -> BoxStream<'static, WatchEvent> {
    let start = Some(inner.clone());
    futures::stream::unfold(
        (start, None::<broadcast::Receiver<Note>>, prefix),
        |(start, rx, prefix)| async move {
            let mut rx = match rx {
                Some(rx) => rx,
                None => {
                    // Subscribed on the first poll (inside the runtime), before looking at the
                    // listener's state, so its next `Reset` is not missed.
                    let inner = start?;
                    let rx = subscribe(&inner);
                    if inner.listening.load(Ordering::SeqCst) {
                        return Some((WatchEvent::Reset, (None, Some(rx), prefix)));
                    }
                    rx
                }
            };
            loop {
                let ev = match rx.recv().await {
                    Ok(Note::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        WatchEvent::Reset
                    }
                    Ok(Note::Keys(None)) => WatchEvent::Changed,
                    Ok(Note::Keys(Some(keys))) => {
                        let mine: Vec<Key> = keys
                            .iter()
                            .filter(|k| k.starts_with(prefix.as_str()))
                            .cloned()
                            .collect();
                        if mine.is_empty() {
                            continue;
                        }
                        WatchEvent::Keys(mine)
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((ev, (None, Some(rx), prefix)));
            }
        },
    )
    .boxed()
}

/// A receiver of the live listener, starting one if none runs.
fn subscribe(inner: &Arc<Inner>) -> broadcast::Receiver<Note> {
    let mut slot = lock(&inner.notes);
    if let Some(tx) = slot.as_ref() {
        return tx.subscribe();
    }
    let (tx, rx) = broadcast::channel(FANOUT);
    *slot = Some(tx.clone());
    tokio::spawn(listen_loop(Arc::downgrade(inner), tx));
    rx
}

/// Whether the listener should stop: the store is gone or nobody listens (checked under the
/// lock `subscribe` takes, so a new watch either finds this listener alive or starts another).
fn retire_if_unheard(inner: &Inner, tx: &broadcast::Sender<Note>) -> bool {
    let mut slot = lock(&inner.notes);
    if tx.receiver_count() == 0 {
        *slot = None;
        inner.listening.store(false, Ordering::SeqCst);
        return true;
    }
    false
}

async fn listen_loop(store: Weak<Inner>, tx: broadcast::Sender<Note>) {
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = store.upgrade() else { return };
        if retire_if_unheard(&inner, &tx) {
            return;
        }
        if inner.notifications_paused.load(Ordering::SeqCst) {
            drop(inner);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let r = listen_once(&inner, &tx).await;
        inner.listening.store(false, Ordering::SeqCst);
        let opts = inner.opts.clone();
        match r {
            Ok(Stop::Retired) => return,
            Ok(Stop::Paused) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(store = %inner.at, error = %e, failures, "postgres listener lost; reconnecting");
                }
            }
        }
        drop(inner);
        let backoff = opts.retry_delay * failures.min(10);
        tokio::time::sleep(backoff).await;
    }
}

enum Stop {
    Retired,
    Paused,
}

/// One connection's life: connect, `LISTEN`, `Reset`, then fan out until it breaks.
async fn listen_once(inner: &Arc<Inner>, tx: &broadcast::Sender<Note>) -> Result<Stop, String> {
    let (client, mut connection) = inner.connect_raw("listen").await?;
    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if ntx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let listen = format!("LISTEN \"{}\"", inner.sql.channel());
    tokio::time::timeout(inner.opts.op_timeout, client.batch_execute(&listen))
        .await
        .map_err(|_| "LISTEN timed out".to_string())?
        .map_err(|e| e.to_string())?;
    inner.listening.store(true, Ordering::SeqCst);
    let _ = tx.send(Note::Reset);
    let mut ping = tokio::time::interval(inner.opts.listen_ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            n = nrx.recv() => {
                let Some(payload) = n else { return Err("connection closed".into()) };
                let note = if payload.is_empty() {
                    Note::Keys(None)
                } else {
                    Note::Keys(Some(Arc::new(payload.split('\n').map(str::to_string).collect())))
                };
                let _ = tx.send(note);
            }
            _ = ping.tick() => {
                if retire_if_unheard(inner, tx) {
                    return Ok(Stop::Retired);
                }
                if inner.notifications_paused.load(Ordering::SeqCst) {
                    return Ok(Stop::Paused);
                }
                match tokio::time::timeout(inner.opts.op_timeout, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("ping timed out".into()),
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
