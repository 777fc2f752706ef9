//! What the store finds out about the server it talks to: the version check of PITFALLS 3 on
//! the installed etcd, and an unreachable server answered in bounded time.

use std::time::{Duration, Instant};

use rebalanser_etcd::{EtcdOptions, EtcdStore};
use rebalanser_store::{Store, StoreError, StoreOp};
use rebalanser_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_version_is_checked_against_the_lease_bug() {
    let etcd = EtcdCluster::shared();
    let store = EtcdStore::from_url(&format!("etcd://{}/version", etcd.endpoints())).unwrap();
    let v = store.check_version().await.expect("status");
    println!("etcd server {v:?}");
    // Debian bookworm's etcd is 3.4.23: affected by etcd #15247.
    assert!(v.version.starts_with("3."), "{v:?}");
    assert_eq!(
        v.affected,
        rebalanser_etcd::version_affected(&v.version),
        "{v:?}"
    );
    if v.version == "3.4.23" {
        assert!(v.affected, "3.4.23 has the lease bug");
    }
}

/// A server with etcd #15247 is refused unless the URL accepts the bug by name: every
/// operation is `Invalid`, naming the bug, the versions that fix it and the parameter (PITFALLS
/// 3: such a server once let two members access 8 resources at once for 19 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_lease_bug_is_refused_unless_the_url_accepts_it() {
    let etcd = EtcdCluster::shared();
    let plain = EtcdStore::from_url(&format!("etcd://{}/refuse", etcd.endpoints())).unwrap();
    let v = plain.check_version().await.expect("status");
    assert!(v.affected, "the test servers have the bug: {v:?}");
    let get = || StoreOp::Get {
        key: "g/k".into(),
        linearizable: true,
    };
    match plain.execute(get()).await {
        Err(StoreError::Invalid(m)) => {
            for part in ["15247", "3.4.31", "allow_server_bug=15247", &v.version] {
                assert!(m.contains(part), "{part:?} not in {m}");
            }
        }
        other => panic!("{other:?}"),
    }
    let accepted = EtcdStore::from_url(&format!(
        "etcd://{}/refuse?{}",
        etcd.endpoints(),
        EtcdCluster::ACCEPT_BUG
    ))
    .unwrap();
    assert!(
        accepted.describe().ends_with("?allow_server_bug=15247"),
        "{}",
        accepted.describe()
    );
    accepted.execute(get()).await.expect("accepted by the URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_in_bounded_time_without_the_password() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = EtcdOptions {
        connect_timeout: Duration::from_millis(500),
        op_timeout: Duration::from_secs(1),
    };
    let store =
        EtcdStore::from_url_with(&format!("etcd://app:hunter2@127.0.0.1:{port}/x"), opts).unwrap();
    assert_eq!(
        store.describe(),
        format!("etcd://app:***@127.0.0.1:{port}/x")
    );
    let t = Instant::now();
    let r = store
        .execute(StoreOp::Get {
            key: "g/k".into(),
            linearizable: true,
        })
        .await;
    let took = t.elapsed();
    match &r {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("hunter2"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// `session_info` (for `rebalanser status`): a live lease's time since its keepalive and until
/// its expiry, from the server, in whole seconds; a closed one is not reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_info_tells_keepalive_and_expiry_of_live_leases() {
    use rebalanser_store::StoreReply;
    let etcd = EtcdCluster::shared();
    let store = EtcdStore::from_url(&format!(
        "etcd://{}/session-info?{}",
        etcd.endpoints(),
        EtcdCluster::ACCEPT_BUG
    ))
    .unwrap();
    let open = store
        .execute(StoreOp::OpenSession {
            ttl: Duration::from_secs(10),
        })
        .await
        .expect("open");
    let StoreReply::Session { session, .. } = open else {
        panic!("{open:?}")
    };
    let info = store.session_info(vec![session]).await.expect("info");
    let i = info.get(&session).expect("a live lease is reported");
    assert!(
        i.expires_in > Duration::from_secs(7) && i.expires_in <= Duration::from_secs(10),
        "{i:?}"
    );
    assert!(i.since_keepalive <= Duration::from_secs(3), "{i:?}");
    assert_eq!(
        i.since_keepalive + i.expires_in,
        Duration::from_secs(10),
        "{i:?}"
    );
    store
        .execute(StoreOp::CloseSession { session })
        .await
        .expect("close");
    let info = store.session_info(vec![session]).await.expect("info");
    assert!(info.is_empty(), "a closed lease is not reported: {info:?}");
}
