//! TLS to etcd: a member serving clients over TLS only and asking for client certificates
//! (`--client-cert-auth`). A store given the CA and a client certificate works (sessions,
//! transactions, reads, watches); one that trusts another CA, offers no client certificate, or
//! speaks plain HTTP is refused — and no error names the password of the URL.

use std::time::Duration;

use futures::StreamExt;
use rebalanser_etcd::{EtcdOptions, EtcdStore};
use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, WatchEvent, Write};
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
        "etcd://{hosts}/tls?cacert={}&cert={}&key={}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let store = EtcdStore::from_url_with(&url, opts()).expect("url");
    let mut watch = store.watch("g/".into());
    // Armed once it says `Reset`.
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(matches!(first, Ok(Some(WatchEvent::Reset))), "{first:?}");
    let session = match store
        .execute(StoreOp::OpenSession {
            ttl: Duration::from_secs(5),
        })
        .await
    {
        Ok(StoreReply::Session { session, .. }) => session,
        other => panic!("open over TLS: {other:?}"),
    };
    let r = store
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: "g/k".into(),
                value: b"v".to_vec(),
                owner: Some(session),
            }],
        })
        .await;
    assert!(matches!(r, Ok(StoreReply::Committed { .. })), "{r:?}");
    let got = store
        .execute(StoreOp::Get {
            key: "g/k".into(),
            linearizable: true,
        })
        .await;
    assert!(
        matches!(&got, Ok(StoreReply::Got(Some(e))) if e.owner == Some(session)),
        "{got:?}"
    );
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        seen.push(ev.clone());
        if matches!(ev, WatchEvent::Keys(_)) {
            break;
        }
    }
    assert!(
        seen.contains(&WatchEvent::Keys(vec!["g/k".into()])),
        "{seen:?}"
    );

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
