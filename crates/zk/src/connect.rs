//! Connections: the connector (session timeout, digest credentials), the ACL of created znodes,
//! connecting within the timeout, and the shared connection (reconnected with backoff, chroot
//! created on first connect). Never retries a request: a failed connect is reported, and the
//! next request reconnects.

use std::time::{Duration, Instant};

use rebalanser_store::StoreError;
use zookeeper_client as zk;

use crate::backoff::backoff;
use crate::Inner;

/// How long the shared connection's session lives without the server hearing from it. It owns
/// no keys, so its length only bounds how long a dead process's watches linger.
const SHARED_SESSION_TTL: Duration = Duration::from_secs(10);

pub(crate) fn is_terminal(s: zk::SessionState) -> bool {
    matches!(
        s,
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

impl Inner {
    pub(crate) fn connector(&self, ttl: Duration) -> Result<zk::Connector, StoreError> {
        let mut c = zk::Client::connector()
            .with_session_timeout(ttl)
            .with_connection_timeout(self.opts.connect_timeout);
        if let Some(t) = &self.url.tls {
            c = c.with_tls(self.tls_options(t)?);
        }
        Ok(match &self.url.digest {
            Some((user, password)) => {
                c.with_auth("digest", format!("{user}:{password}").as_bytes())
            }
            None => c,
        })
    }

    /// TLS from the URL's files, read now (a rotated certificate is picked up by the next
    /// connection). A file that cannot be read or parsed is `Invalid`: no retry will help.
    fn tls_options(&self, t: &rebalanser_store::TlsFiles) -> Result<zk::TlsOptions, StoreError> {
        // zookeeper-client asks rustls for the process's default provider, which is ambiguous
        // when two are compiled in (ring for PostgreSQL and etcd, aws-lc-rs by
        // zookeeper-client's own rustls): install ring unless the application chose one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            #[allow(deprecated)] // ring lacks post-quantum key exchange; nothing here needs it
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let invalid = |what: &dyn std::fmt::Display| {
            StoreError::Invalid(format!("{}: TLS: {what}", self.url))
        };
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| invalid(&format!("{}: {e}", p.display())))
        };
        let mut o = zk::TlsOptions::new()
            .with_pem_ca(&read(&t.ca)?)
            .map_err(|e| invalid(&format!("{}: {e}", t.ca.display())))?;
        if let Some((cert, key)) = &t.identity {
            o = o
                .with_pem_identity(&read(cert)?, &read(key)?)
                .map_err(|e| invalid(&format!("{}: {e}", cert.display())))?;
        }
        Ok(o)
    }

    /// The ACL of every znode this store creates: all rights for our digest identity when
    /// credentials are configured (others can neither read nor write the group), open otherwise.
    pub(crate) fn create_options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'static> {
        match self.url.digest {
            Some(_) => mode.with_acls(zk::Acls::creator_all()),
            None => mode.with_acls(zk::Acls::anyone_all()),
        }
    }

    pub(crate) async fn connect(
        &self,
        ttl: Duration,
        chroot: bool,
    ) -> Result<zk::Client, StoreError> {
        self.connect_with(self.connector(ttl)?, chroot).await
    }

    pub(crate) async fn connect_with(
        &self,
        connector: zk::Connector,
        chroot: bool,
    ) -> Result<zk::Client, StoreError> {
        let mut cluster = self.url.connect_string();
        if chroot && self.url.chroot != "/" {
            cluster.push_str(&self.url.chroot);
        }
        let secure = self.url.tls.is_some();
        let connect = async move {
            if secure {
                connector.secure_connect(&cluster).await
            } else {
                connector.connect(&cluster).await
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(zk::Error::SessionExpired)) => Err(StoreError::SessionExpired),
            Ok(Err(e @ (zk::Error::AuthFailed | zk::Error::NoAuth))) => Err(StoreError::Invalid(
                format!("{}: authentication failed: {e}", self.url),
            )),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "cannot connect to {}: {e}",
                self.url
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to {} within {:?}",
                self.url, self.opts.connect_timeout
            ))),
        }
    }

    /// The shared connection, (re)connecting with backoff and jitter when it is gone. The
    /// chroot is created on first connect.
    pub(crate) async fn shared(&self) -> Result<zk::Client, StoreError> {
        let mut s = self.shared.lock().await;
        if let Some(c) = &s.client {
            if !is_terminal(c.state()) {
                return Ok(c.clone());
            }
            tracing::info!(store = %self.url, reason = "session ended", "zk shared connection lost; reconnecting");
            s.client = None;
        }
        if let Some(at) = s.retry_at {
            if Instant::now() < at {
                return Err(StoreError::Unavailable(format!(
                    "{}: reconnecting after {} failures",
                    self.url, s.failures
                )));
            }
        }
        match self.connect_shared().await {
            Ok(c) => {
                s.client = Some(c.clone());
                s.failures = 0;
                s.retry_at = None;
                Ok(c)
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                s.retry_at = Some(Instant::now() + backoff(s.failures));
                Err(e)
            }
        }
    }

    pub(crate) async fn connect_shared(&self) -> Result<zk::Client, StoreError> {
        if self.url.chroot != "/" {
            let root = self.connect(SHARED_SESSION_TTL, false).await?;
            let opts = self.create_options(zk::CreateMode::Persistent);
            root.mkdir(&self.url.chroot, &opts)
                .await
                .map_err(|e| match e {
                    zk::Error::NoAuth => StoreError::Invalid(format!(
                        "{}: not authorized to create the chroot",
                        self.url
                    )),
                    e => StoreError::Unavailable(format!("{}: creating the chroot: {e}", self.url)),
                })?;
        }
        self.connect(SHARED_SESSION_TTL, true).await
    }
}
