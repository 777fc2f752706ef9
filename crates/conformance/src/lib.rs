//! The Store contract (DESIGN §3, `rebalanser_store` crate docs) as one suite of checks that
//! every backend runs, the in-memory store included: a backend passes when it behaves like
//! `MemModel` wherever the protocol can tell.
//!
//! Each check is a free `async fn` taking a [`Subject`] and panicking with a message that
//! names the broken rule. A backend's test file instantiates all of them with
//! [`conformance_tests!`]:
//!
//! ```text
//! rebalanser_conformance::conformance_tests!(async { my_backend_subject().await });
//! ```
//!
//! `tests/broken.rs` shows the suite failing on deliberately broken stores.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rebalanser_core::layout::{decode_component, encode_component};
use rebalanser_core::store::{
    Cond, Entry, Key, StoreError, StoreOp, StoreReply, StoreResult, Write, MAX_KEY_BYTES,
    MAX_TXN_CONDS, MAX_TXN_WRITES, MAX_VALUE_BYTES,
};
use rebalanser_core::SessionId;
use rebalanser_store::{MemoryStore, Store, WatchEvent};

/// A backend under test.
pub struct Subject {
    pub store: Arc<dyn Store>,
    /// A key prefix no other run uses (a fresh store, or a unique chroot/namespace).
    pub prefix: String,
    /// A session TTL the store grants as asked and expires promptly (expiry checks wait
    /// about twice this long).
    pub short_ttl: Duration,
    /// Longest a change notification may take to arrive.
    pub notify_within: Duration,
    /// How to cut the subject's connection to the store and restore it: every backend must
    /// show that a change made meanwhile still wakes its watches.
    pub disruption: Disruption,
    /// Makes the store stop hearing from a session, as when its process freezes or dies
    /// (the checks of expiry call it where they stop keeping the session alive). A no-op for
    /// stores whose sessions expire without keepalives; ZooKeeper's client library pings on
    /// its own, so its subject abandons the session's connection.
    pub silence: SessionHook,
}

pub type SessionHook =
    Box<dyn Fn(SessionId) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A [`SessionHook`] that does nothing: for stores whose sessions expire without keepalives.
pub fn no_silence() -> SessionHook {
    Box::new(|_| Box::pin(async {}))
}

pub type Hook = Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// The disruption of a memory store (and of wrappers around one): its watches lose
/// notifications while cut and report `Reset` when restored, as a reconnecting client does.
pub fn memory_disruption(store: &MemoryStore) -> Disruption {
    let (cut, heal) = (store.clone(), store.clone());
    Disruption {
        cut: Box::new(move || {
            cut.cut_watches();
            Box::pin(async {})
        }),
        heal: Box::new(move || {
            heal.restore_watches();
            Box::pin(async {})
        }),
        other: Arc::new(store.clone()),
        recover_within: Duration::from_secs(1),
    }
}

/// A connection fault the subject's store must recover from without losing a wake-up.
pub struct Disruption {
    /// Cuts the subject store's connection (notifications sent meanwhile are lost).
    pub cut: Hook,
    /// Restores it.
    pub heal: Hook,
    /// Another client of the same data, unaffected by the cut, that writes meanwhile.
    pub other: Arc<dyn Store>,
    /// Longest the subject may take to reconnect and notify after `heal`.
    pub recover_within: Duration,
}

impl Subject {
    fn key(&self, check: &str, k: &str) -> Key {
        format!("{}{check}/{k}", self.prefix)
    }

    async fn exec(&self, op: StoreOp) -> StoreResult {
        self.store.execute(op).await
    }

    async fn open(&self, ttl: Duration) -> SessionId {
        match self.exec(StoreOp::OpenSession { ttl }).await {
            Ok(StoreReply::Session {
                session,
                ttl: granted,
            }) => {
                assert!(!granted.is_zero(), "OpenSession granted a zero TTL");
                session
            }
            other => panic!("OpenSession: {other:?}"),
        }
    }

    async fn get(&self, key: &str) -> Option<Entry> {
        match self
            .exec(StoreOp::Get {
                key: key.to_string(),
                linearizable: true,
            })
            .await
        {
            Ok(StoreReply::Got(e)) => e,
            other => panic!("Get {key}: {other:?}"),
        }
    }

    async fn list(&self, prefix: &str) -> (Vec<(Key, Entry)>, u64) {
        match self
            .exec(StoreOp::List {
                prefix: prefix.to_string(),
                linearizable: true,
            })
            .await
        {
            Ok(StoreReply::Listed { entries, rev }) => (entries, rev),
            other => panic!("List {prefix}: {other:?}"),
        }
    }

    async fn txn(&self, conds: Vec<Cond>, writes: Vec<Write>) -> StoreResult {
        self.exec(StoreOp::Txn { conds, writes }).await
    }

    async fn create(&self, key: &str, owner: Option<SessionId>) -> StoreResult {
        self.txn(
            vec![],
            vec![Write::Create {
                key: key.to_string(),
                value: b"v".to_vec(),
                owner,
            }],
        )
        .await
    }

    async fn put(&self, key: &str, value: &[u8], conds: Vec<Cond>) -> StoreResult {
        self.txn(
            conds,
            vec![Write::Put {
                key: key.to_string(),
                value: value.to_vec(),
            }],
        )
        .await
    }
}

fn committed(r: &StoreResult, what: &str) -> u64 {
    match r {
        Ok(StoreReply::Committed { rev }) => *rev,
        other => panic!("{what}: expected a commit, got {other:?}"),
    }
}

fn invalid(r: &StoreResult, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "{what}: expected Invalid, got {r:?}"
    );
}

fn conflict(r: &StoreResult, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "{what}: expected Conflict, got {r:?}"
    );
}

/// Transactions as large as the contract allows work on every store: `MAX_TXN_WRITES`
/// session-owned creates, then `MAX_TXN_CONDS` ownership conditions guarding as many deletes
/// (etcd needs two compares per ownership condition: more than one transaction level); a
/// refused one at that size names the condition that failed; one more condition or write is
/// `Invalid`.
pub async fn transactions_at_the_size_limits(s: &Subject) {
    let session = s.open(s.short_ttl * 20).await;
    let key = |i: usize| format!("{}big/k{i:03}", s.prefix);
    let creates: Vec<Write> = (0..MAX_TXN_WRITES)
        .map(|i| Write::Create {
            key: key(i),
            value: b"v".to_vec(),
            owner: Some(session),
        })
        .collect();
    let rev = committed(&s.txn(vec![], creates).await, "MAX_TXN_WRITES creates");
    let owned = |i: usize, r: u64| Cond::Owned {
        key: key(i),
        session,
        create_rev: r,
    };
    let deletes: Vec<Write> = (0..MAX_TXN_WRITES)
        .map(|i| Write::Delete { key: key(i) })
        .collect();
    // The last condition names a revision no instance has: refused, nothing deleted.
    let mut conds: Vec<Cond> = (0..MAX_TXN_CONDS).map(|i| owned(i, rev)).collect();
    conds[MAX_TXN_CONDS - 1] = owned(MAX_TXN_CONDS - 1, rev + 1_000_000);
    let r = s.txn(conds.clone(), deletes.clone()).await;
    match &r {
        Err(StoreError::Conflict(m)) => assert!(
            m.contains(&key(MAX_TXN_CONDS - 1)),
            "the refusal names another condition: {m}"
        ),
        other => panic!("a failing last condition: expected Conflict, got {other:?}"),
    }
    assert!(
        s.get(&key(0)).await.is_some(),
        "a refused transaction deleted keys"
    );
    // One too many, either way.
    let mut too_many = conds.clone();
    too_many.push(owned(0, rev));
    invalid(
        &s.txn(too_many, vec![]).await,
        "MAX_TXN_CONDS + 1 conditions",
    );
    let mut too_many = deletes.clone();
    too_many.push(Write::Delete {
        key: key(MAX_TXN_WRITES),
    });
    invalid(&s.txn(vec![], too_many).await, "MAX_TXN_WRITES + 1 writes");
    // All conditions hold: every key goes.
    conds[MAX_TXN_CONDS - 1] = owned(MAX_TXN_CONDS - 1, rev);
    committed(&s.txn(conds, deletes).await, "MAX_TXN_CONDS conditions");
    let (left, _) = s.list(&format!("{}big/", s.prefix)).await;
    assert!(left.is_empty(), "{} keys left", left.len());
}

/// Racing create-if-absent: exactly one wins, the others see `Conflict`.
pub async fn racing_creates_have_one_winner(s: &Subject) {
    let key = s.key("race", "k");
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(s.open(Duration::from_secs(30)).await);
    }
    let results =
        futures::future::join_all(sessions.iter().map(|x| s.create(&key, Some(*x)))).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "racing creates: {results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        conflict(r, "losing create");
    }
    let owner = s.get(&key).await.and_then(|e| e.owner);
    let winner = sessions
        .iter()
        .zip(&results)
        .find(|(_, r)| r.is_ok())
        .map(|(x, _)| *x);
    assert_eq!(owner, winner, "the key is owned by the winner");
}

/// Versions start at 0, grow by one per update, and guard updates and deletes.
pub async fn versions_guard_updates_and_deletes(s: &Subject) {
    let key = s.key("version", "k");
    committed(
        &s.put(&key, b"a", vec![Cond::Absent(key.clone())]).await,
        "first put",
    );
    assert_eq!(s.get(&key).await.map(|e| e.version), Some(0));
    committed(
        &s.put(&key, b"b", vec![Cond::Version(key.clone(), 0)]).await,
        "guarded put",
    );
    let e = s.get(&key).await.expect("present");
    assert_eq!((e.version, e.value.as_slice()), (1, &b"b"[..]));
    conflict(
        &s.put(&key, b"c", vec![Cond::Version(key.clone(), 0)]).await,
        "stale put",
    );
    conflict(
        &s.put(&key, b"c", vec![Cond::Absent(key.clone())]).await,
        "absent on present",
    );
    let del = |v| {
        s.txn(
            vec![Cond::Version(key.clone(), v)],
            vec![Write::Delete { key: key.clone() }],
        )
    };
    conflict(&del(0).await, "stale delete");
    committed(&del(1).await, "guarded delete");
    assert!(s.get(&key).await.is_none());
    conflict(
        &del(1).await,
        "delete of a missing key under a version condition",
    );
}

/// A delete guarded by owner session and creation revision removes exactly that instance:
/// not another session's key, and not a later re-creation of the key (the ABA case).
pub async fn owner_checked_delete_cannot_remove_a_later_instance(s: &Subject) {
    let key = s.key("owned", "k");
    let a = s.open(Duration::from_secs(30)).await;
    let b = s.open(Duration::from_secs(30)).await;
    let rev1 = committed(&s.create(&key, Some(a)).await, "create by a");
    let del = |session, create_rev| {
        s.txn(
            vec![Cond::Owned {
                key: key.clone(),
                session,
                create_rev,
            }],
            vec![Write::Delete { key: key.clone() }],
        )
    };
    conflict(&del(b, rev1).await, "delete by another session");
    conflict(
        &del(a, rev1 + 1_000_000).await,
        "delete with a wrong creation revision",
    );
    committed(&del(a, rev1).await, "owner's delete");
    let rev2 = committed(&s.create(&key, Some(b)).await, "re-create by b");
    assert!(rev2 > rev1, "creation revisions grow: {rev1} then {rev2}");
    conflict(&del(a, rev1).await, "replayed delete (ABA)");
    assert_eq!(s.get(&key).await.and_then(|e| e.owner), Some(b));
    let rev3 = committed(&s.create(&s.key("owned", "k2"), Some(b)).await, "create");
    assert!(rev3 > rev2);
    // Session-owned keys are never rewritten.
    let r = s.put(&key, b"x", vec![]).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "a Put over a session-owned key must be Invalid, got {r:?}"
    );
}

/// One session replaces another's key in one transaction (a static member taking its
/// record over): delete and create of the same key, guarded by the old instance, applied in
/// order; the new instance is the new session's, and the old session's end leaves it alone.
pub async fn a_transaction_replaces_another_sessions_key(s: &Subject) {
    let key = s.key("replace", "k");
    let old = s.open(Duration::from_secs(30)).await;
    let new = s.open(Duration::from_secs(30)).await;
    let rev1 = committed(
        &s.create(&key, Some(old)).await,
        "create by the old session",
    );
    let replace = || {
        s.txn(
            vec![Cond::Owned {
                key: key.clone(),
                session: old,
                create_rev: rev1,
            }],
            vec![
                Write::Delete { key: key.clone() },
                Write::Create {
                    key: key.clone(),
                    value: b"new".to_vec(),
                    owner: Some(new),
                },
            ],
        )
    };
    let rev2 = committed(&replace().await, "delete and re-create in one transaction");
    assert!(rev2 > rev1, "{rev1} then {rev2}");
    let e = s.get(&key).await.expect("the new instance");
    assert_eq!((e.owner, e.create_rev), (Some(new), rev2), "{e:?}");
    assert_eq!(e.value, b"new");
    conflict(
        &replace().await,
        "the same replacement again (the old instance is gone)",
    );
    let r = s.exec(StoreOp::CloseSession { session: old }).await;
    assert!(r.is_ok(), "close the old session: {r:?}");
    let e = s
        .get(&key)
        .await
        .expect("the old session's end leaves the new instance");
    assert_eq!(e.owner, Some(new));
}

/// Expiry removes the keys the expired session owns, and nothing else; the session is then
/// gone for good.
pub async fn expiry_removes_only_the_sessions_keys(s: &Subject) {
    let dying = s.open(s.short_ttl).await;
    let living = s.open(s.short_ttl).await;
    let (a, b, p) = (
        s.key("expiry", "a"),
        s.key("expiry", "b"),
        s.key("expiry", "p"),
    );
    committed(&s.create(&a, Some(dying)).await, "create a");
    committed(&s.create(&b, Some(living)).await, "create b");
    committed(&s.create(&p, None).await, "create p");
    (s.silence)(dying).await;
    let end = tokio::time::Instant::now() + s.short_ttl * 3;
    while tokio::time::Instant::now() < end {
        let r = s.exec(StoreOp::KeepAlive { session: living }).await;
        assert!(matches!(r, Ok(StoreReply::KeptAlive { .. })), "{r:?}");
        tokio::time::sleep(s.short_ttl / 5).await;
    }
    assert!(
        s.get(&a).await.is_none(),
        "the expired session's key is gone"
    );
    assert!(s.get(&b).await.is_some(), "a live session's key stays");
    assert!(s.get(&p).await.is_some(), "a persistent key stays");
    let r = s.exec(StoreOp::KeepAlive { session: dying }).await;
    assert_eq!(
        r,
        Err(StoreError::SessionExpired),
        "keepalive of an expired session"
    );
    let r = s.create(&s.key("expiry", "late"), Some(dying)).await;
    assert_eq!(
        r,
        Err(StoreError::SessionExpired),
        "create by an expired session"
    );
}

/// A session lives at least its granted TTL after it was opened and after each keepalive:
/// the member's local lease deadline is computed from exactly that (DESIGN §8 rule 2). A store
/// that expires early, or reports a longer TTL than it enforces, breaks guarantee 1.
pub async fn sessions_live_their_granted_ttl(s: &Subject) {
    let ttl = s.short_ttl;
    let (session, granted) = match s.exec(StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, ttl }) => (session, ttl),
        other => panic!("OpenSession: {other:?}"),
    };
    let key = s.key("ttl", "k");
    committed(&s.create(&key, Some(session)).await, "create");
    tokio::time::sleep(granted * 7 / 10).await;
    assert!(
        s.get(&key).await.is_some(),
        "session expired before 70% of the {granted:?} it was granted"
    );
    let renewed = match s.exec(StoreOp::KeepAlive { session }).await {
        Ok(StoreReply::KeptAlive { ttl }) => ttl,
        other => panic!("keepalive within the TTL: {other:?}"),
    };
    (s.silence)(session).await;
    tokio::time::sleep(renewed * 7 / 10).await;
    assert!(
        s.get(&key).await.is_some(),
        "session expired before 70% of the {renewed:?} a keepalive granted"
    );
}

/// The expiry of a session is a change like any other: watchers are notified.
pub async fn expiry_is_notified(s: &Subject) {
    let prefix = format!("{}expiry-watch/", s.prefix);
    let session = s.open(s.short_ttl).await;
    committed(
        &s.create(&format!("{prefix}k"), Some(session)).await,
        "create",
    );
    let mut watch = s.store.watch(prefix.clone());
    (s.silence)(session).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), watch.next()).await {}
    let ev = tokio::time::timeout(s.short_ttl * 3 + s.notify_within, watch.next()).await;
    assert!(
        matches!(
            ev,
            Ok(Some(
                WatchEvent::Changed | WatchEvent::Keys(_) | WatchEvent::Reset
            ))
        ),
        "no notification of the expiry: {ev:?}"
    );
    let (entries, _) = s.list(&prefix).await;
    assert!(
        entries.is_empty(),
        "the expired session's key is still listed"
    );
}

/// Closing a session removes its keys at once.
pub async fn close_removes_the_sessions_keys_at_once(s: &Subject) {
    let x = s.open(Duration::from_secs(30)).await;
    let (a, p) = (s.key("close", "a"), s.key("close", "p"));
    committed(&s.create(&a, Some(x)).await, "create a");
    committed(&s.create(&p, None).await, "create p");
    let r = s.exec(StoreOp::CloseSession { session: x }).await;
    assert!(r.is_ok(), "close: {r:?}");
    assert!(
        s.get(&a).await.is_none(),
        "closed session's key is gone at once"
    );
    assert!(s.get(&p).await.is_some());
}

/// Transactions are all or nothing.
pub async fn transactions_are_all_or_nothing(s: &Subject) {
    let (x, y, z) = (s.key("txn", "x"), s.key("txn", "y"), s.key("txn", "z"));
    committed(&s.create(&y, None).await, "create y");
    // A failing condition applies nothing.
    let r = s
        .txn(
            vec![Cond::Absent(y.clone())],
            vec![Write::Put {
                key: x.clone(),
                value: b"v".to_vec(),
            }],
        )
        .await;
    conflict(&r, "failing condition");
    assert!(s.get(&x).await.is_none());
    // A failing write (create of an existing key) applies nothing either.
    let r = s
        .txn(
            vec![],
            vec![
                Write::Put {
                    key: x.clone(),
                    value: b"v".to_vec(),
                },
                Write::Create {
                    key: y.clone(),
                    value: b"v".to_vec(),
                    owner: None,
                },
            ],
        )
        .await;
    conflict(&r, "create of an existing key");
    assert!(
        s.get(&x).await.is_none(),
        "first write of a failed txn not applied"
    );
    // All writes of a successful one land with the same revision.
    let rev = committed(
        &s.txn(
            vec![Cond::Absent(x.clone()), Cond::Version(y.clone(), 0)],
            vec![
                Write::Create {
                    key: x.clone(),
                    value: b"v".to_vec(),
                    owner: None,
                },
                Write::Create {
                    key: z.clone(),
                    value: b"v".to_vec(),
                    owner: None,
                },
                Write::Delete { key: y.clone() },
            ],
        )
        .await,
        "multi-write txn",
    );
    let (ex, ez) = (s.get(&x).await.expect("x"), s.get(&z).await.expect("z"));
    assert_eq!((ex.create_rev, ez.create_rev), (rev, rev));
    assert!(s.get(&y).await.is_none());
}

/// A watch on a prefix notifies every change under it; a linearizable listing reflects every
/// committed write and its revision never goes back.
pub async fn watch_notifies_changes_and_listings_are_current(s: &Subject) {
    let prefix = format!("{}watch/", s.prefix);
    let mut watch = s.store.watch(prefix.clone());
    let mut last_rev = 0;
    for i in 0..5 {
        let key = format!("{prefix}k{i}");
        let rev = committed(&s.create(&key, None).await, "create");
        let ev = tokio::time::timeout(s.notify_within, watch.next()).await;
        assert!(
            matches!(&ev, Ok(Some(e)) if e.may_concern(&key)),
            "no notification naming {key} within {:?} of write {i}: {ev:?}",
            s.notify_within
        );
        let (entries, listed_rev) = s.list(&prefix).await;
        assert!(
            listed_rev >= rev,
            "listing at rev {listed_rev} after commit {rev}"
        );
        assert!(listed_rev >= last_rev, "listing revisions went back");
        last_rev = listed_rev;
        assert_eq!(entries.len(), i + 1, "listing misses a committed key");
        // Drain duplicates so the next write is the next event.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), watch.next()).await
        {
        }
    }
    // A delete is a change too: the listing's revision must grow past it, not fall back to
    // the newest surviving key's (a store-wide revision, not a per-key one).
    let victim = format!("{prefix}k4");
    let rev = committed(
        &s.txn(vec![], vec![Write::Delete { key: victim }]).await,
        "delete",
    );
    let (entries, listed_rev) = s.list(&prefix).await;
    assert_eq!(entries.len(), 4);
    assert!(
        listed_rev >= rev && listed_rev > last_rev,
        "listing rev {listed_rev} after a delete committed at {rev} (before: {last_rev})"
    );
}

/// A change made while the watcher's connection is cut still wakes it once the connection is
/// back (ZooKeeper does not replay missed events: the backend must report `Reset`).
pub async fn watch_wakes_up_after_a_reconnect(s: &Subject) {
    let d = &s.disruption;
    let prefix = format!("{}reconnect/", s.prefix);
    let mut watch = s.store.watch(prefix.clone());
    // Arm the watch and see it work before the fault.
    committed(&s.create(&format!("{prefix}before"), None).await, "create");
    let ev = tokio::time::timeout(s.notify_within, watch.next()).await;
    assert!(
        matches!(ev, Ok(Some(_))),
        "no notification before the cut: {ev:?}"
    );
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), watch.next()).await {}
    (d.cut)().await;
    let during = format!("{prefix}during");
    let r = d
        .other
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: during.clone(),
                value: b"v".to_vec(),
                owner: None,
            }],
        })
        .await;
    committed(&r, "create while cut");
    // Whatever the cut watcher would have been told is lost by now.
    tokio::time::sleep(s.notify_within / 2).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), watch.next()).await {}
    (d.heal)().await;
    let ev = tokio::time::timeout(d.recover_within, watch.next()).await;
    assert!(
        matches!(
            ev,
            Ok(Some(
                WatchEvent::Changed | WatchEvent::Keys(_) | WatchEvent::Reset
            ))
        ),
        "no wake-up within {:?} of reconnecting after a change made while cut off: {ev:?}",
        d.recover_within
    );
    let (entries, _) = s.list(&prefix).await;
    assert!(
        entries.iter().any(|(k, _)| *k == during),
        "the listing after the wake-up misses {during}"
    );
    // And the watch still works after the reconnect (a client library may restore only
    // some kinds of watches on a new connection).
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), watch.next()).await {}
    let r = d
        .other
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: format!("{prefix}after"),
                value: b"v".to_vec(),
                owner: None,
            }],
        })
        .await;
    committed(&r, "create after the reconnect");
    let ev = tokio::time::timeout(s.notify_within, watch.next()).await;
    assert!(
        matches!(
            ev,
            Ok(Some(
                WatchEvent::Changed | WatchEvent::Keys(_) | WatchEvent::Reset
            ))
        ),
        "no notification of a change made after the reconnect: {ev:?}"
    );
}

/// Empty values are `Invalid` (hierarchical stores use empty nodes as directories), and so are
/// keys a hierarchical store cannot hold as-is.
pub async fn empty_values_and_malformed_keys_are_invalid(s: &Subject) {
    let key = s.key("shape", "empty");
    let r = s.put(&key, b"", vec![]).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "empty value: {r:?}"
    );
    assert!(s.get(&key).await.is_none());
    for bad in [
        "",
        "/lead",
        "trail/",
        "a//b",
        "a/./b",
        "a/../b",
        "nul\u{0}x",
    ] {
        let r = s.put(bad, b"v", vec![]).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "key {bad:?}: {r:?}"
        );
    }
    // A key under which other keys live, and a key above an existing one, both work.
    committed(&s.put(&s.key("shape", "a/b"), b"v", vec![]).await, "a/b");
    let (entries, _) = s.list(&s.key("shape", "")).await;
    assert_eq!(
        entries.len(),
        1,
        "a directory must not list as a key: {entries:?}"
    );
}

/// `Read` answers the named keys that exist and every key under its prefixes, sorted, each
/// once, with the keys' current entries; its revision covers a delete of a named key (a
/// member decides from it whether a claim is gone); bad keys are `Invalid`.
pub async fn reads_of_keys_and_prefixes(s: &Subject) {
    let k = |name: &str| s.key("many", name);
    let sub = format!("{}many/sub/", s.prefix);
    for name in ["a", "b", "sub/x", "sub/y", "z"] {
        committed(&s.create(&k(name), None).await, name);
    }
    let read = |keys: Vec<Key>, prefixes: Vec<Key>| async move {
        match s
            .exec(StoreOp::Read {
                keys,
                prefixes,
                linearizable: true,
            })
            .await
        {
            Ok(StoreReply::Listed { entries, rev }) => (entries, rev),
            other => panic!("Read: {other:?}"),
        }
    };
    let keys = vec![k("b"), k("a"), k("missing"), k("sub/x")];
    let (entries, rev) = read(keys, vec![sub.clone()]).await;
    let names: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
    let want = [k("a"), k("b"), k("sub/x"), k("sub/y")];
    assert_eq!(names, want.iter().map(|w| w.as_str()).collect::<Vec<_>>());
    for (key, e) in &entries {
        assert_eq!(Some(e), s.get(key).await.as_ref(), "{key}");
    }
    let deleted = committed(
        &s.txn(vec![], vec![Write::Delete { key: k("a") }]).await,
        "delete",
    );
    let (entries, after) = read(vec![k("a")], vec![]).await;
    assert!(entries.is_empty(), "a deleted key was read: {entries:?}");
    assert!(
        after >= deleted && after > rev,
        "Read at rev {after} after a delete committed at {deleted} (before: {rev})"
    );
    let r = s
        .exec(StoreOp::Read {
            keys: vec![format!("{}bad//key", s.prefix)],
            prefixes: vec![],
            linearizable: true,
        })
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "bad key: {r:?}");
}

/// Creation revisions (fencing tokens) strictly grow in commit order.
pub async fn creation_revisions_grow_in_commit_order(s: &Subject) {
    let mut last = 0;
    for i in 0..20 {
        let rev = committed(
            &s.create(&s.key("revs", &format!("k{i}")), None).await,
            "create",
        );
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
    }
}

/// Oversized values and keys are `Invalid`, and nothing is written.
pub async fn oversized_values_and_keys_are_invalid(s: &Subject) {
    let key = s.key("size", "big");
    let r = s.put(&key, &vec![b'x'; MAX_VALUE_BYTES + 1], vec![]).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "oversized value: {r:?}"
    );
    assert!(s.get(&key).await.is_none());
    let long = s.key("size", &"k".repeat(MAX_KEY_BYTES + 1));
    let r = s.put(&long, b"v", vec![]).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "oversized key: {r:?}"
    );
    // The limit itself is accepted.
    committed(
        &s.put(&key, &vec![b'x'; MAX_VALUE_BYTES], vec![]).await,
        "value at the limit",
    );
}

/// Ids with Unicode, `/`, spaces and dots round-trip through the key encoding.
pub async fn awkward_ids_round_trip(s: &Subject) {
    let ids = [
        "café",
        "cafe\u{301}",
        "a/b",
        "x y",
        ".",
        "..",
        "a.b",
        "日本語",
        "%41",
        "-_",
    ];
    let prefix = format!("{}ids/", s.prefix);
    for id in ids {
        committed(
            &s.create(&format!("{prefix}{}", encode_component(id)), None)
                .await,
            id,
        );
    }
    let (entries, _) = s.list(&prefix).await;
    let back: BTreeSet<String> = entries
        .iter()
        .map(|(k, _)| {
            let comp = k.strip_prefix(&prefix).expect("under the prefix");
            decode_component(comp).unwrap_or_else(|| panic!("undecodable key {k}"))
        })
        .collect();
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(back, want);
}

/// Instantiates every check as a `#[tokio::test]` against the subject `$make` builds (an
/// async block evaluating to a [`Subject`]).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            racing_creates_have_one_winner,
            versions_guard_updates_and_deletes,
            owner_checked_delete_cannot_remove_a_later_instance,
            a_transaction_replaces_another_sessions_key,
            expiry_removes_only_the_sessions_keys,
            sessions_live_their_granted_ttl,
            expiry_is_notified,
            close_removes_the_sessions_keys_at_once,
            transactions_are_all_or_nothing,
            watch_notifies_changes_and_listings_are_current,
            creation_revisions_grow_in_commit_order,
            oversized_values_and_keys_are_invalid,
            awkward_ids_round_trip,
            watch_wakes_up_after_a_reconnect,
            empty_values_and_malformed_keys_are_invalid,
            reads_of_keys_and_prefixes,
            transactions_at_the_size_limits,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $make.await;
                $crate::$check(&subject).await;
            }
        )*
    };
}

/// A store works end to end, as after a connection set up differently (TLS): a watch arms
/// (`Reset`), a session opens, a key it owns is created and read back as its own, and the watch
/// hears of it. Panics naming the step that failed.
pub async fn works_end_to_end(store: &dyn Store, prefix: &str, ttl: Duration) {
    let key = format!("{prefix}k");
    let mut watch = store.watch(prefix.to_string());
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert!(
        matches!(first, Ok(Some(WatchEvent::Reset))),
        "the watch did not arm: {first:?}"
    );
    let session = match store.execute(StoreOp::OpenSession { ttl }).await {
        Ok(StoreReply::Session { session, .. }) => session,
        other => panic!("open a session: {other:?}"),
    };
    let r = store
        .execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: key.clone(),
                value: b"v".to_vec(),
                owner: Some(session),
            }],
        })
        .await;
    assert!(
        matches!(r, Ok(StoreReply::Committed { .. })),
        "create: {r:?}"
    );
    let got = store
        .execute(StoreOp::Get {
            key: key.clone(),
            linearizable: true,
        })
        .await;
    assert!(
        matches!(&got, Ok(StoreReply::Got(Some(e))) if e.owner == Some(session)),
        "read back: {got:?}"
    );
    let mut woke = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        if ev.may_concern(&key) {
            woke = true;
            break;
        }
    }
    assert!(woke, "no notification of {key}");
}
