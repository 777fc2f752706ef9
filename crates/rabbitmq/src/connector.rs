//! One AMQP connection shared by a member's queue consumers, dialled again when it is lost.
//! Each consumer asks for the connection when it (re)starts; a dead one is replaced once, by the
//! first consumer that notices, under the lock.

use std::sync::Arc;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{redact, Error};

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
        let c = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| Error::Amqp(format!("cannot connect to {}: {e}", redact(&self.url))))?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Closes the connection, if any (on shutdown).
    pub(crate) async fn close(&self) {
        if let Some(c) = self.current.lock().await.take() {
            let _ = c.close(200, "bye".into()).await;
        }
    }
}
