//! Store sessions as ZooKeeper sessions: one detached client per session, open, keepalive (a
//! `multi` with one `check`), close (confirmed by the server, retried after an unknown outcome)
//! and abandon. Never revives a session the server or the client library declared ended.

use std::time::Duration;

use rebalanser_core::SessionId;
use rebalanser_store::{StoreError, StoreReply, StoreResult};
use zookeeper_client as zk;

use crate::connect::is_terminal;
use crate::error::{read_err, write_err};
use crate::{lock, Inner};

impl Inner {
    pub(crate) fn session_client(&self, s: SessionId) -> Result<zk::Client, StoreError> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(&s) {
            Some(c) if !is_terminal(c.state()) => Ok(c.clone()),
            Some(c) => {
                // Expired or closed as far as the client library knows; the library declares
                // expiry on its own after a silence, while a restarted ensemble may still hold
                // the session. Keep its credentials so `CloseSession` asks the server.
                lock(&self.closing).insert(s, (c.session().clone(), c.session_timeout()));
                sessions.remove(&s);
                Err(StoreError::SessionExpired)
            }
            // Not one of ours: closed, expired, or another process's.
            None => Err(StoreError::SessionExpired),
        }
    }

    pub(crate) async fn open_session(&self, ttl: Duration) -> StoreResult {
        // The chroot must exist before a chrooted session can use it.
        self.shared().await?;
        // Detached: a session whose handles are dropped without `CloseSession` (the member's
        // runtime died or abandoned it) expires after its timeout like a crashed process's,
        // instead of being closed by the library behind the protocol's back.
        let c = self
            .connect_with(self.connector(ttl)?.with_detached(), true)
            .await?;
        let id = SessionId(c.session_id().0 as u64);
        let granted = c.session_timeout();
        lock(&self.sessions).insert(id, c);
        tracing::debug!(store = %self.url, session = id.0, ttl = ?granted, "zk session opened");
        Ok(StoreReply::Session {
            session: id,
            ttl: granted,
        })
    }

    pub(crate) async fn keepalive(&self, s: SessionId) -> StoreResult {
        let c = self.session_client(s)?;
        let mut m = c.new_multi_writer();
        m.add_check_version("/", -1).map_err(read_err)?;
        match m.commit().await {
            Ok(_) => Ok(StoreReply::KeptAlive {
                ttl: c.session_timeout(),
            }),
            Err(e) => {
                let e = zk::Error::from(e);
                if e == zk::Error::SessionExpired {
                    // Possibly only the client library's verdict: keep the credentials so
                    // `CloseSession` asks the server (see `session_client`).
                    lock(&self.closing).insert(s, (c.session().clone(), c.session_timeout()));
                    lock(&self.sessions).remove(&s);
                }
                Err(write_err(e))
            }
        }
    }

    pub(crate) async fn close_session(&self, s: SessionId) -> StoreResult {
        // The session's own handle is detached, so dropping it closes nothing: drop it, attach
        // a handle to the same session and drop that. The server deletes the session's
        // ephemerals before it answers the close, and the client then reports `Closed`. The
        // session's credentials are kept until the close is confirmed, so a retry after an
        // unknown outcome closes again.
        let held = lock(&self.sessions).remove(&s);
        let (info, ttl) = match held {
            Some(c) => {
                let info = (c.session().clone(), c.session_timeout());
                drop(c);
                info
            }
            None => match lock(&self.closing).get(&s).cloned() {
                Some(info) => info,
                None => return Ok(StoreReply::Closed),
            },
        };
        lock(&self.closing).insert(s, (info.clone(), ttl));
        let closer = match self
            .connect_with(self.connector(ttl)?.with_session(info), true)
            .await
        {
            Ok(c) => c,
            // Already expired: its keys are gone too.
            Err(StoreError::SessionExpired) => {
                lock(&self.closing).remove(&s);
                return Ok(StoreReply::Closed);
            }
            Err(e) => return Err(StoreError::Indeterminate(format!("close: {e}"))),
        };
        let mut state = closer.state_watcher();
        drop(closer);
        if is_terminal(state.peek_state()) {
            lock(&self.closing).remove(&s);
            return Ok(StoreReply::Closed);
        }
        let done = async {
            loop {
                if is_terminal(state.changed().await) {
                    return;
                }
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, done).await {
            Ok(()) => {
                lock(&self.closing).remove(&s);
                Ok(StoreReply::Closed)
            }
            Err(_) => Err(StoreError::Indeterminate(format!(
                "{}: close of session {:#x} not confirmed",
                self.url, s.0
            ))),
        }
    }

    /// Drops the store's handle on session `s` without closing it: the server stops hearing
    /// from it and expires it after its timeout, as if its process had crashed. For fault
    /// injection in tests; the protocol closes sessions with `CloseSession`.
    pub(crate) fn abandon_session(&self, s: SessionId) {
        lock(&self.sessions).remove(&s);
    }
}
