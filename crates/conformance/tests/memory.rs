//! The in-memory store passes the Store contract: it is the reference the simulator uses, so
//! it must behave like the real backends wherever the protocol can tell.

use std::sync::Arc;
use std::time::Duration;

use rebalanser_conformance::{conformance_tests, memory_disruption, no_silence, Subject};
use rebalanser_store::MemoryStore;

async fn subject() -> Subject {
    let store = MemoryStore::new();
    Subject {
        disruption: memory_disruption(&store),
        silence: no_silence(),
        store: Arc::new(store),
        prefix: "conformance/".to_string(),
        short_ttl: Duration::from_millis(300),
        notify_within: Duration::from_secs(1),
    }
}

conformance_tests!(subject());
