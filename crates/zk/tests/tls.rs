//! TLS to ZooKeeper: a server serving clients on a `secureClientPort` (Netty) that needs a
//! client certificate from its CA. A store given the CA and a client certificate works
//! (sessions, ephemeral keys, reads, watches); one that trusts another CA or offers no client
//! certificate is refused — and no error names the URL's password.

use std::time::Duration;

use rebalanser_conformance::works_end_to_end;
use rebalanser_store::{Store, StoreError, StoreOp};
use rebalanser_testkit::{TestCerts, ZkEnsemble, ZkOptions, ZkTls};
use rebalanser_zk::{ZkOptions as StoreOptions, ZkStore, ZkUrl};

fn store(url: &str) -> ZkStore {
    let opts = StoreOptions {
        connect_timeout: Duration::from_secs(3),
    };
    ZkStore::new(ZkUrl::parse(url).expect("url"), opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = TestCerts::new().expect("certificates");
    let zk = tokio::task::block_in_place(|| {
        ZkEnsemble::start(ZkOptions {
            tls: Some(ZkTls {
                ca: certs.ca.clone(),
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
                client_auth: true,
            }),
            ..ZkOptions::default()
        })
    })
    .expect("a ZooKeeper server with a TLS port");
    let hosts = zk.secure_connect_string();
    let url = format!(
        "zk://{hosts}/tls?cacert={}&cert={}&key={}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    works_end_to_end(&store(&url), "g/", Duration::from_secs(4)).await;

    // Refused: another CA, no client certificate. The URL's password never shows.
    let other = TestCerts::new().expect("other certificates");
    for url in [
        format!(
            "zk://app:hunter2@{hosts}/tls?cacert={}&cert={}&key={}",
            other.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
        format!("zk://app:hunter2@{hosts}/tls?cacert={}", certs.ca.display()),
    ] {
        let s = store(&url);
        let r = s
            .execute(StoreOp::Get {
                key: "g/k".into(),
                linearizable: true,
            })
            .await;
        match &r {
            Err(e @ (StoreError::Unavailable(_) | StoreError::Invalid(_))) => {
                assert!(!e.to_string().contains("hunter2"), "{e}")
            }
            other => panic!("{url}: {other:?}"),
        }
        assert!(!s.describe().contains("hunter2"));
    }
}
