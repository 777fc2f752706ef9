//! The SQLite backend passes the Store contract: a fresh database file per check, sessions
//! that expire without keepalives (no silence hook needed), and a disruption that really
//! stops the subject's change poller while another store on the same file writes.

use std::sync::Arc;
use std::time::Duration;

use rebalanser_conformance::{conformance_tests, Disruption, Subject};
use rebalanser_sqlite::SqliteStore;

async fn subject() -> Subject {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let path = dir.path().join("conformance.db");
    let store = SqliteStore::open(&path).expect("open");
    // Another client of the same file (its own connections and poller), unaffected by the cut.
    let other = SqliteStore::open(&path).expect("open other");
    let (cut, heal) = (store.clone(), store.clone());
    Subject {
        // The directory lives as long as the subject.
        silence: Box::new(move |_| {
            let _keep = &dir;
            Box::pin(async {})
        }),
        store: Arc::new(store),
        prefix: "conformance/".to_string(),
        short_ttl: Duration::from_millis(300),
        notify_within: Duration::from_secs(1),
        disruption: Disruption {
            cut: Box::new(move || {
                cut.pause_notifications();
                Box::pin(async {})
            }),
            heal: Box::new(move || {
                heal.resume_notifications();
                Box::pin(async {})
            }),
            other: Arc::new(other),
            recover_within: Duration::from_secs(1),
        },
    }
}

conformance_tests!(subject());
