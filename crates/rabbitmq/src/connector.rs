//! One AMQP connection shared by a member's queue consumers, dialled again when it is lost.
//! Each consumer asks for the connection when it (re)starts; a dead one is replaced once, by the
//! first consumer that notices, under the lock.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{redact, Error};

/// The longest a connection attempt (TCP and the AMQP handshake) may take: a host that
/// accepts but never answers must not hold every consumer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Connector {
    url: String,
    current: Mutex<Option<Arc<Connection>>>,
}

impl Connector {
    pub(crate) fn new(url: &str) -> Connector {
        Connector {
            url: url.to_string(),
            current: Mutex::new(None),
        }
    }

    /// The live connection, dialling a new one if there is none or it was lost.
    pub(crate) async fn get(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.current.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        let url = redact(&self.url);
        let c = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| {
            Error::Amqp(format!(
                "cannot connect to {url}: no answer in {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Amqp(format!("cannot connect to {url}: {e}")))?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Stops handing out `conn` (a channel on it could not be closed): the next `get` dials.
    pub(crate) async fn discard(&self, conn: &Arc<Connection>) {
        let mut slot = self.current.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    /// Closes the connection, if any (on shutdown), without waiting long on a dead link.
    pub(crate) async fn close(&self) {
        if let Some(c) = self.current.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bye".into())).await;
        }
    }
}
