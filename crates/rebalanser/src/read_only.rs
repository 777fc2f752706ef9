//! [`ReadOnly`]: a store handle that refuses every write, for [`crate::OpenOptions::read_only`].
//! The SQLite backend opens its file read-only itself; this wrapper gives every backend the same
//! answer to a write (ZooKeeper, PostgreSQL and etcd have no read-only connection mode of their
//! own that the crate uses).

use std::sync::Arc;

use futures::stream::BoxStream;
use rebalanser_core::store::{Key, StoreError, StoreOp, StoreResult};
use rebalanser_store::{BoxFuture, SessionInfo, Store, WatchEvent};

pub(crate) struct ReadOnly {
    inner: Arc<dyn Store>,
}

impl ReadOnly {
    pub(crate) fn new(inner: Arc<dyn Store>) -> ReadOnly {
        ReadOnly { inner }
    }
}

impl Store for ReadOnly {
    fn execute(&self, op: StoreOp) -> BoxFuture<'_, StoreResult> {
        if op.is_write() {
            let refused = StoreError::Invalid(format!(
                "{} was opened read-only: a write is refused",
                self.inner.describe()
            ));
            return Box::pin(async move { Err(refused) });
        }
        self.inner.execute(op)
    }

    fn watch(&self, prefix: Key) -> BoxStream<'static, WatchEvent> {
        self.inner.watch(prefix)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn session_info(
        &self,
        sessions: Vec<rebalanser_core::SessionId>,
    ) -> BoxFuture<
        '_,
        Result<std::collections::BTreeMap<rebalanser_core::SessionId, SessionInfo>, StoreError>,
    > {
        self.inner.session_info(sessions)
    }

    fn keepalive_proves_previous(&self) -> bool {
        self.inner.keepalive_proves_previous()
    }

    fn min_session_ttl(&self) -> std::time::Duration {
        self.inner.min_session_ttl()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open_store_with, OpenOptions};
    use rebalanser_core::store::{StoreReply, Write};

    #[tokio::test]
    async fn writes_are_refused_and_reads_pass() {
        let store = open_store_with(
            "memory://read-only-wrapper",
            OpenOptions::new().read_only(true),
        )
        .expect("a memory store");
        let put = StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Put {
                key: "g/k".into(),
                value: vec![1],
            }],
        };
        match store.execute(put).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains("read-only"), "{m}"),
            other => panic!("a write went through: {other:?}"),
        }
        let got = store
            .execute(StoreOp::Get {
                key: "g/k".into(),
                linearizable: true,
            })
            .await
            .expect("a read");
        assert_eq!(got, StoreReply::Got(None));
    }

    /// Through the API: an admin write on a read-only SQLite store is a typed error naming
    /// the file, and a missing file opened without create is `NoStoreFile`, not created.
    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_writes_on_a_read_only_sqlite_store_are_typed_errors() {
        use crate::{Admin, Error};
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let url = format!("sqlite://{}/g.db", dir.display());
        let missing = format!("sqlite://{}/typo.db", dir.display());
        for opts in [
            OpenOptions::new().read_only(true),
            OpenOptions::new().create(false),
        ] {
            match Admin::connect_with(&missing, "g", opts) {
                Err(e @ Error::NoStoreFile { .. }) => {
                    assert!(e.to_string().contains("typo.db"), "{e}")
                }
                other => panic!("{opts:?}: {other:?}"),
            }
        }
        assert!(!dir.join("typo.db").exists());
        let admin = Admin::connect(&url, "g").expect("creates");
        admin.create_group().await.expect("group");
        admin.add_resources(&["q1"]).await.expect("add");
        drop(admin);
        let ro = Admin::connect_with(&url, "g", OpenOptions::new().read_only(true)).expect("opens");
        assert_eq!(ro.list_resources().await.expect("reads").len(), 1);
        match ro.add_resources(&["q2"]).await {
            Err(Error::Store {
                source: StoreError::Invalid(m),
                ..
            }) => assert!(m.contains("read-only") && m.contains("g.db"), "{m}"),
            other => panic!("a write through a read-only store: {other:?}"),
        }
    }
}
