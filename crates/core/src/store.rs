//! The vocabulary of the Store contract (DESIGN §3) as plain data: the operations the core
//! emits, the replies it consumes, and the error taxonomy. Executing them is the job of a
//! backend (crate `rebalanser-store`); this module only names them.

use std::time::Duration;

use crate::ids::SessionId;

/// Largest value a store must accept, whatever the group size (ZooKeeper's znode limit is
/// about 1 MiB; we stay well below it). Larger values are `Invalid`.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Largest key a store must accept.
pub const MAX_KEY_BYTES: usize = 4096;

/// Why `key` is not a valid key, if it is not. Keys are `/`-separated paths of two or more
/// non-empty components (the first is the namespace: a group) other than `.` and `..`, without control or private-use characters, at most
/// [`MAX_KEY_BYTES`] long: the intersection of what every backend can store as-is (ZooKeeper
/// paths are the strictest). Keys built by [`crate::layout`] always pass.
pub fn key_error(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Some(format!(
            "key of {} bytes (must be 1..={MAX_KEY_BYTES})",
            key.len()
        ));
    }
    if !key.contains('/') {
        return Some(format!(
            "key {key:?} needs a namespace: NAMESPACE/NAME (hierarchical stores keep one \
             directory per namespace)"
        ));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some(format!("key {key:?} has an empty, `.` or `..` component"));
    }
    let bad = |c: char| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}');
    if key.chars().any(bad) {
        return Some(format!("key {key:?} has a control or reserved character"));
    }
    None
}

/// Largest transaction a store must accept, in key and value bytes (ZooKeeper refuses requests
/// over 1 MiB; the rest is headroom for its encoding). The protocol's own bound,
/// `Config::max_txn_bytes`, stays below it.
pub const MAX_TXN_BYTES: usize = 896 * 1024;

/// Most conditions, most writes, and most distinct keys (named by conditions and writes
/// together) a transaction may hold on every store: etcd's default `--max-txn-ops` is 128
/// compares and operations per transaction, and its backend can always express a transaction
/// of 128 keys in one compare per key.
pub const MAX_TXN_CONDS: usize = 128;
pub const MAX_TXN_WRITES: usize = 128;
pub const MAX_TXN_KEYS: usize = 128;

/// The size of a transaction as the limits count it: the keys of its conditions, the keys
/// and values of its writes.
pub fn txn_bytes(conds: &[Cond], writes: &[Write]) -> usize {
    let cond_bytes: usize = conds
        .iter()
        .map(|c| match c {
            Cond::Absent(k) | Cond::Version(k, _) | Cond::Owned { key: k, .. } => k.len(),
        })
        .sum();
    let write_bytes: usize = writes
        .iter()
        .map(|w| match w {
            Write::Create { key, value, .. } | Write::Put { key, value } => key.len() + value.len(),
            Write::Delete { key } => key.len(),
        })
        .sum();
    cond_bytes + write_bytes
}

/// Why a transaction is too large, if it is.
pub fn txn_size_error(conds: &[Cond], writes: &[Write]) -> Option<String> {
    let total = txn_bytes(conds, writes);
    (total > MAX_TXN_BYTES)
        .then(|| format!("transaction of {total} bytes of keys and values (limit {MAX_TXN_BYTES})"))
}

/// Why a transaction can never succeed, if it cannot: the checks every store makes before it
/// looks at any data, in `MemModel`'s order (each write's key and value, the transaction's size,
/// each condition's key).
pub fn txn_request_error(conds: &[Cond], writes: &[Write]) -> Option<String> {
    for w in writes {
        if let Some(e) = key_error(w.key()) {
            return Some(e);
        }
        if let Write::Create { key, value, .. } | Write::Put { key, value } = w {
            if let Some(e) = value_error(key, value) {
                return Some(e);
            }
        }
    }
    if let Some(e) = txn_size_error(conds, writes) {
        return Some(e);
    }
    let keys: std::collections::BTreeSet<&str> = conds
        .iter()
        .map(Cond::key)
        .chain(writes.iter().map(Write::key))
        .collect();
    if conds.len() > MAX_TXN_CONDS || writes.len() > MAX_TXN_WRITES || keys.len() > MAX_TXN_KEYS {
        return Some(format!(
            "transaction of {} conditions, {} writes and {} keys (limits {MAX_TXN_CONDS}, \
             {MAX_TXN_WRITES} and {MAX_TXN_KEYS})",
            conds.len(),
            writes.len(),
            keys.len()
        ));
    }
    conds.iter().find_map(|c| key_error(c.key()))
}

/// What a store knows about an existing key when it decides a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    pub version: u64,
    pub create_rev: u64,
    pub owner: Option<SessionId>,
}

impl From<&Entry> for KeyMeta {
    fn from(e: &Entry) -> KeyMeta {
        KeyMeta {
            version: e.version,
            create_rev: e.create_rev,
            owner: e.owner,
        }
    }
}

/// Why a transaction that passed [`txn_request_error`] is refused on this state, if it is: the
/// decision every store makes, in `MemModel`'s order. Each condition against the state before
/// the transaction (`Conflict` naming the first that fails); then each write against the state
/// the writes before it produce: a `Create` of a key that exists is `Conflict`, of a key whose
/// owner session is gone `SessionExpired`; a `Put` of a session-owned key is `Invalid`.
/// `meta(key)` is the key's state before the transaction (`None`: absent); `alive(session)`
/// whether a session exists.
pub fn txn_refusal(
    conds: &[Cond],
    writes: &[Write],
    meta: impl Fn(&str) -> Option<KeyMeta>,
    mut alive: impl FnMut(SessionId) -> bool,
) -> Option<StoreError> {
    for c in conds {
        let ok = match c {
            Cond::Absent(k) => meta(k).is_none(),
            Cond::Version(k, v) => meta(k).is_some_and(|m| m.version == *v),
            Cond::Owned {
                key,
                session,
                create_rev,
            } => {
                meta(key).is_some_and(|m| m.owner == Some(*session) && m.create_rev == *create_rev)
            }
        };
        if !ok {
            return Some(StoreError::Conflict(format!("{c:?}")));
        }
    }
    // Per key: absent (`None`) or present and whether session-owned.
    let mut state: std::collections::BTreeMap<&str, Option<bool>> = Default::default();
    for w in writes {
        let key = w.key();
        let now = *state
            .entry(key)
            .or_insert_with(|| meta(key).map(|m| m.owner.is_some()));
        match w {
            Write::Create { owner, .. } => {
                if now.is_some() {
                    return Some(StoreError::Conflict(format!("{key} exists")));
                }
                if owner.is_some_and(|s| !alive(s)) {
                    return Some(StoreError::SessionExpired);
                }
                state.insert(key, Some(owner.is_some()));
            }
            Write::Put { .. } => {
                if now == Some(true) {
                    return Some(StoreError::Invalid(format!(
                        "{key} is session-owned and cannot be rewritten"
                    )));
                }
                state.insert(key, Some(false));
            }
            Write::Delete { .. } => {
                state.insert(key, None);
            }
        }
    }
    None
}

impl Cond {
    pub fn key(&self) -> &str {
        match self {
            Cond::Absent(k) | Cond::Version(k, _) | Cond::Owned { key: k, .. } => k,
        }
    }
}

/// Why `value` cannot be stored under `key`, if it cannot. Values are 1..=[`MAX_VALUE_BYTES`]
/// bytes: an empty value is refused because hierarchical stores need empty nodes as the
/// directories between keys, and the protocol never writes one.
pub fn value_error(key: &str, value: &[u8]) -> Option<String> {
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Some(format!(
            "value of {} bytes for {key} (must be 1..={MAX_VALUE_BYTES})",
            value.len()
        ));
    }
    None
}

/// A key: a `/`-separated path relative to the store's root. Components are encoded by
/// [`crate::layout`] so that any id maps to exactly one key and back.
pub type Key = String;

/// One stored key-value pair with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// Number of updates since the key was created; restarts at 0 when it is re-created
    /// (ZooKeeper semantics, so the protocol must not rely on it across a delete).
    pub version: u64,
    /// The store revision of the transaction that created the key. Strictly grows in commit
    /// order, so it serves as the fencing token of a claim (DESIGN §8 rule 9).
    pub create_rev: u64,
    /// The store revision of the last write.
    pub mod_rev: u64,
    /// The session that owns the key, if it is session-owned. Such keys vanish with the session
    /// and are never rewritten.
    pub owner: Option<SessionId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key does not exist.
    Absent(Key),
    /// The key exists at this version.
    Version(Key, u64),
    /// The key exists, is owned by `session` and was created at `create_rev` (one claim
    /// instance: a re-created key never matches, which closes the ABA hole of PITFALLS 12).
    Owned {
        key: Key,
        session: SessionId,
        create_rev: u64,
    },
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create the key; fails the whole transaction with `Conflict` when it exists. With an
    /// owner, the key is session-owned: the owner session must be alive.
    Create {
        key: Key,
        value: Vec<u8>,
        owner: Option<SessionId>,
    },
    /// Create or overwrite a persistent key. Overwriting a session-owned key is `Invalid`.
    Put { key: Key, value: Vec<u8> },
    /// Delete the key if it exists (guard it with a condition to make it conditional).
    Delete { key: Key },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Create { key, .. } | Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// An operation the core asks the driver to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Open a session; the store may grant a different TTL than requested.
    OpenSession { ttl: Duration },
    /// Prove the session alive through the path the store uses to decide expiry.
    KeepAlive { session: SessionId },
    /// Close the session: its keys vanish at once.
    CloseSession { session: SessionId },
    /// Read one key. `linearizable` reads reflect every write committed before the read
    /// started; others may be stale and serve only as hints (DESIGN §8 rule 6).
    Get { key: Key, linearizable: bool },
    /// Read every key under a prefix.
    List { prefix: Key, linearizable: bool },
    /// Read these keys and every key under these prefixes, answered as one `Listed` (sorted,
    /// each key once, absent keys left out). A member that does not coordinate reads what
    /// concerns it this way, not the whole group (issue 10). Memory and SQLite: one snapshot;
    /// ZooKeeper: the keys from one `multiRead`, each prefix a listing, the revision the
    /// largest seen.
    Read {
        keys: Vec<Key>,
        prefixes: Vec<Key>,
        linearizable: bool,
    },
    /// All conditions hold → all writes applied atomically; otherwise nothing is applied.
    Txn {
        conds: Vec<Cond>,
        writes: Vec<Write>,
    },
}

impl StoreOp {
    /// Whether an unknown outcome of this op must be reported as `Indeterminate` (a write that
    /// may have been applied) rather than `Unavailable` (a read, which changes nothing).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            StoreOp::Get { .. } | StoreOp::List { .. } | StoreOp::Read { .. }
        )
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    Session {
        session: SessionId,
        ttl: Duration,
    },
    KeptAlive {
        ttl: Duration,
    },
    Closed,
    Got(Option<Entry>),
    /// The keys under the prefix, and the store revision the listing reflects (etcd: the
    /// header revision; ZooKeeper: the zxid the server had applied). A reader never acts on
    /// a listing older than one it already acted on.
    Listed {
        entries: Vec<(Key, Entry)>,
        rev: u64,
    },
    /// The transaction's revision: every key it created has `create_rev == rev`.
    Committed {
        rev: u64,
    },
}

/// Errors are data; the protocol reacts to each category differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A condition failed (or a Create found the key present). Nothing was applied.
    #[error("condition failed: {0}")]
    Conflict(String),
    /// The session is gone; its keys are gone too. Final for that session.
    #[error("session expired")]
    SessionExpired,
    /// Nothing was applied; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The operation may or may not have been applied. The protocol must be safe either way.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The request can never succeed (bad key, oversized value, rewrite of a session-owned key).
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type StoreResult = Result<StoreReply, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The key rules every backend relies on, at their edges (the conformance suite runs them
    /// against the stores; these pin the function itself).
    #[test]
    fn key_rules_hold_at_their_edges() {
        let longest = format!("g/{}", "k".repeat(MAX_KEY_BYTES - 2));
        assert_eq!(key_error(&longest), None, "exactly MAX_KEY_BYTES");
        assert!(key_error(&format!("{longest}k")).is_some(), "one byte more");
        for ok in ["g/a", "g/a/b", "g/%2F", "g/é"] {
            assert_eq!(key_error(ok), None, "{ok:?}");
        }
        for bad in [
            "",
            "g",
            "/g/a",
            "g/a/",
            "g//a",
            "g/./a",
            "g/../a",
            "g/a\u{0}",
            "g/a\u{7f}",
            "g/\u{e000}",
            "g/\u{fff0}",
        ] {
            assert!(key_error(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn value_and_transaction_sizes_hold_at_their_edges() {
        assert!(value_error("g/a", b"").is_some(), "empty");
        assert_eq!(value_error("g/a", b"v"), None);
        assert_eq!(value_error("g/a", &vec![0; MAX_VALUE_BYTES]), None);
        assert!(value_error("g/a", &vec![0; MAX_VALUE_BYTES + 1]).is_some());
        // Keys and values count, conditions' keys too: exactly the limit, then one byte over.
        let key = "g/a".to_string();
        let put = |n: usize| Write::Put {
            key: key.clone(),
            value: vec![0; n],
        };
        let at_limit = [put(MAX_TXN_BYTES - key.len())];
        assert_eq!(txn_size_error(&[], &at_limit), None);
        assert!(txn_size_error(&[], &[put(MAX_TXN_BYTES - key.len() + 1)]).is_some());
        assert!(txn_size_error(&[Cond::Absent("g/b".into())], &at_limit).is_some());
    }

    /// An op whose outcome is unknown is `Indeterminate` only if it may have changed the store.
    #[test]
    fn only_reads_are_not_writes() {
        let session = SessionId(1);
        let reads = [
            StoreOp::Get {
                key: "g/a".into(),
                linearizable: true,
            },
            StoreOp::List {
                prefix: "g/".into(),
                linearizable: false,
            },
            StoreOp::Read {
                keys: vec!["g/a".into()],
                prefixes: vec!["g/b/".into()],
                linearizable: false,
            },
        ];
        let writes = [
            StoreOp::OpenSession {
                ttl: Duration::from_secs(1),
            },
            StoreOp::KeepAlive { session },
            StoreOp::CloseSession { session },
            StoreOp::Txn {
                conds: vec![],
                writes: vec![],
            },
        ];
        assert!(reads.iter().all(|op| !op.is_write()));
        assert!(writes.iter().all(StoreOp::is_write));
    }
}
