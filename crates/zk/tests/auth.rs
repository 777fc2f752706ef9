//! Digest authentication: a store with credentials in its URL puts every znode it creates
//! under an ACL that only the same identity can use, so other clients can neither write nor
//! read the group's subtree.

use rebalanser_store::{Store, StoreError, StoreOp, StoreReply, Write};
use rebalanser_testkit::ZkEnsemble;
use rebalanser_zk::ZkStore;
use zookeeper_client as zk;

fn put(key: &str) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Put {
            key: key.to_string(),
            value: b"v".to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_cannot_touch_a_protected_group() {
    let zk = ZkEnsemble::shared();
    let chroot = format!("/auth-{}", std::process::id());
    let url = |cred: &str| format!("zk://{cred}{}{chroot}", zk.connect_string());
    let owner = ZkStore::from_url(&url("app:s3cret@")).expect("url");
    assert!(!owner.describe().contains("s3cret"), "{}", owner.describe());
    let r = owner.execute(put("g/resources/r1")).await;
    assert!(matches!(r, Ok(StoreReply::Committed { .. })), "{r:?}");
    // Session-owned keys are protected the same way.
    let session = match owner
        .execute(StoreOp::OpenSession {
            ttl: std::time::Duration::from_secs(2),
        })
        .await
    {
        Ok(StoreReply::Session { session, .. }) => session,
        other => panic!("{other:?}"),
    };
    let r = owner
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: "g/claims/r1".into(),
                value: b"c".to_vec(),
                owner: Some(session),
            }],
        })
        .await;
    assert!(matches!(r, Ok(StoreReply::Committed { .. })), "{r:?}");

    // The same identity from another process works.
    let twin = ZkStore::from_url(&url("app:s3cret@")).expect("url");
    let r = twin.execute(put("g/resources/r2")).await;
    assert!(matches!(r, Ok(StoreReply::Committed { .. })), "{r:?}");

    // Anonymous and wrongly authenticated stores are refused with a typed error.
    for cred in ["", "app:wrong@", "other:s3cret@"] {
        let intruder = ZkStore::from_url(&url(cred)).expect("url");
        let r = intruder.execute(put("g/resources/r1")).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(ref m)) if m.contains("not authorized")),
            "{cred:?} overwrote a protected key: {r:?}"
        );
        let r = intruder.execute(put("g/resources/evil")).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "{cred:?} created a key in a protected group: {r:?}"
        );
        let r = intruder
            .execute(StoreOp::List {
                prefix: "g/".into(),
                linearizable: true,
            })
            .await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "{cred:?} listed a protected group: {r:?}"
        );
    }

    // A raw client, as any other tool would be, cannot delete or rewrite the znodes either.
    let raw = zk::Client::connect(&zk.connect_string())
        .await
        .expect("connect");
    let claim = format!("{chroot}/g/claims%2Fr1");
    assert_eq!(raw.delete(&claim, None).await, Err(zk::Error::NoAuth));
    let res = format!("{chroot}/g/resources%2Fr1");
    assert_eq!(
        raw.set_data(&res, b"x", None).await.map(|_| ()),
        Err(zk::Error::NoAuth)
    );
    let r = owner
        .execute(StoreOp::Get {
            key: "g/resources/r1".into(),
            linearizable: true,
        })
        .await;
    assert!(
        matches!(r, Ok(StoreReply::Got(Some(ref e))) if e.value == b"v"),
        "{r:?}"
    );
}
