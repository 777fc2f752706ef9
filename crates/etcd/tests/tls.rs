//! TLS to etcd: a member serving clients over TLS only and asking for client certificates
//! (`--client-cert-auth`). A store given the CA and a client certificate works (sessions,
//! transactions, reads, watches); one that trusts another CA, offers no client certificate, or
//! speaks plain HTTP is refused — and no error names the password of the URL.

use std::time::Duration;

use rebalanser_conformance::works_end_to_end;
use rebalanser_etcd::{EtcdOptions, EtcdStore};
use rebalanser_store::{Store, StoreError, StoreOp};
use rebalanser_testkit::{EtcdCluster, EtcdOptions as ClusterOptions, EtcdTls, TestCerts};

fn opts() -> EtcdOptions {
    EtcdOptions {
        connect_timeout: Duration::from_secs(2),
        op_timeout: Duration::from_secs(3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = TestCerts::new().expect("certificates");
    let etcd = tokio::task::block_in_place(|| {
        EtcdCluster::start(ClusterOptions {
            tls: Some(EtcdTls {
                ca: certs.ca.clone(),
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
                client_cert_auth: true,
            }),
            ..ClusterOptions::cluster(1)
        })
    })
    .expect("a TLS etcd");
    let hosts = etcd.endpoints();
    let url = format!(
        "etcd://{hosts}/tls?cacert={}&cert={}&key={}&{}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display(),
        EtcdCluster::ACCEPT_BUG
    );
    let store = EtcdStore::from_url_with(&url, opts()).expect("url");
    works_end_to_end(&store, "g/", Duration::from_secs(5)).await;

    // Refused: another CA, no client certificate, plain HTTP. The URL's password never shows.
    let other = TestCerts::new().expect("other certificates");
    let refused = [
        format!(
            "etcd://app:hunter2@{hosts}/tls?cacert={}&cert={}&key={}",
            other.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
        format!(
            "etcd://app:hunter2@{hosts}/tls?cacert={}",
            certs.ca.display()
        ),
        format!("etcd://app:hunter2@{hosts}/tls"),
    ];
    for url in refused {
        let store = EtcdStore::from_url_with(&url, opts()).expect("url");
        let r = store
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
        assert!(!store.describe().contains("hunter2"));
    }
}
