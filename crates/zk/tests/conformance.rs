//! The ZooKeeper backend passes the Store contract against a real ZooKeeper 3.8 server (one
//! per test process, started by the test; a unique chroot per check).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rebalanser_conformance::{conformance_tests, Disruption, Subject};
use rebalanser_testkit::{FaultProxy, ZkEnsemble};
use rebalanser_zk::ZkStore;

fn chroot() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn subject() -> Subject {
    let zk = ZkEnsemble::shared();
    let chroot = chroot();
    // The subject reaches the server through a proxy the disruption can cut; the other
    // writer connects directly.
    let proxy = Arc::new(FaultProxy::start(zk.client_addr(0)).expect("proxy"));
    let store = ZkStore::from_url(&format!("zk://{}{chroot}", proxy.addr())).expect("url");
    let other = ZkStore::from_url(&format!("zk://{}{chroot}", zk.connect_string())).expect("url");
    let (cut, heal) = (proxy.clone(), proxy);
    let abandon = store.clone();
    Subject {
        silence: Box::new(move |session| {
            abandon.abandon_session(session);
            Box::pin(async {})
        }),
        store: Arc::new(store),
        prefix: "conformance/".to_string(),
        // tickTime 200 ms: sessions of 2 × tick and up are granted as asked.
        short_ttl: Duration::from_millis(800),
        notify_within: Duration::from_secs(2),
        disruption: Disruption {
            cut: Box::new(move || {
                // Every connection dies and new ones hang: notifications sent meanwhile are
                // lost with the old connection.
                cut.blackhole();
                cut.reset_all();
                Box::pin(async {})
            }),
            heal: Box::new(move || {
                heal.heal();
                Box::pin(async {})
            }),
            other: Arc::new(other),
            recover_within: Duration::from_secs(10),
        },
    }
}

conformance_tests!(subject());
