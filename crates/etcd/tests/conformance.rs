//! The etcd backend passes the Store contract against a real 3-node etcd cluster (Debian's
//! 3.4.23; one cluster per test process, started by the test; a unique prefix per check).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rebalanser_conformance::{conformance_tests, no_silence, Disruption, Subject};
use rebalanser_etcd::EtcdStore;
use rebalanser_testkit::{EtcdCluster, FaultProxy};

fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn subject() -> Subject {
    let etcd = EtcdCluster::shared();
    let prefix = prefix();
    // The subject reaches one node through a proxy the disruption can cut; the other writer
    // uses every node directly.
    let proxy = Arc::new(FaultProxy::start(etcd.client_addr(0)).expect("proxy"));
    let store = EtcdStore::from_url(&format!(
        "etcd://{}/{prefix}?{}",
        proxy.addr(),
        EtcdCluster::ACCEPT_BUG
    ))
    .expect("url");
    let other = EtcdStore::from_url(&format!(
        "etcd://{}/{prefix}?{}",
        etcd.endpoints(),
        EtcdCluster::ACCEPT_BUG
    ))
    .expect("url");
    let (cut, heal) = (proxy.clone(), proxy);
    Subject {
        // Leases expire without keepalives: nothing to silence.
        silence: no_silence(),
        store: Arc::new(store),
        prefix: "conformance/".to_string(),
        // Lease TTLs are whole seconds, at least 1.5 election timeouts (1 s here).
        short_ttl: Duration::from_secs(2),
        notify_within: Duration::from_secs(2),
        disruption: Disruption {
            cut: Box::new(move || {
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
