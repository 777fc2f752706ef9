//! The PostgreSQL backend passes the Store contract against a real PostgreSQL 15 server (one
//! per test process, started by the test; a unique schema per check).

use std::sync::Arc;
use std::time::Duration;

use rebalanser_conformance::{conformance_tests, no_silence, Disruption, Subject};
use rebalanser_postgres::PostgresStore;
use rebalanser_testkit::{FaultProxy, Postgres};

mod common;

async fn subject() -> Subject {
    let pg = Postgres::shared();
    let schema = common::unique_schema("conformance");
    // The subject reaches the server through a proxy the disruption can cut; the other
    // writer connects directly.
    let proxy = Arc::new(FaultProxy::start(pg.addr()).expect("proxy"));
    let url = |addr: String| format!("postgres://postgres@{addr}/postgres?schema={schema}");
    let store = PostgresStore::from_url(&url(proxy.addr().to_string())).expect("url");
    let other = PostgresStore::from_url(&url(pg.addr().to_string())).expect("url");
    let (cut, heal) = (proxy.clone(), proxy);
    Subject {
        // Sessions expire without keepalives: nothing to silence.
        silence: no_silence(),
        store: Arc::new(store),
        prefix: "conformance/".to_string(),
        short_ttl: Duration::from_millis(400),
        notify_within: Duration::from_secs(2),
        disruption: Disruption {
            cut: Box::new(move || {
                // Every connection dies and new ones hang: notifications sent meanwhile are
                // lost with the listener's connection.
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
