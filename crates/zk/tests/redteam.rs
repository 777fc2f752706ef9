//! Red-team tests of the ZooKeeper backend against a real ZooKeeper server.
//!
//! Tests named `finding_*` FAIL on the code they were written against: each demonstrates a way
//! the backend differs from `MemModel` (the contract's reference semantics) or breaks the
//! contract under a fault, with the scenario in its comment. Tests named `pin_*` pass and pin
//! behaviour the protocol relies on, so a fix of a finding cannot silently break it.
//!
//! Several findings need a precise interleaving between the backend's read phase and its
//! `multi` (or its post-commit clean-up). The client library sends a request when the call is
//! made, not when its future is polled, so a test drives `execute`'s future by hand: each poll
//! advances it by one round trip (`step`), and the test makes its concurrent change between
//! two polls. Anchors (a key that must still exist, or already be gone) check that the stepping
//! is where the comment says it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rebalanser_core::SessionId;
use rebalanser_store::{Cond, Store, StoreError, StoreOp, StoreReply, WatchEvent, Write};
use rebalanser_testkit::{FaultProxy, ZkEnsemble, ZkOptions};
use rebalanser_zk::{ZkStore, ZkUrl};

mod common;
use common::{
    chroot, committed, create, delete, direct, exec, get, list, open, proxied, put, steps,
};

// ----- fixtures ---------------------------------------------------------------------------------

/// A second server that grants sessions up to 40 s, for scenarios in which the store's shared
/// connection (10 s) must expire while a member session (30 s) survives.
fn long_sessions() -> &'static ZkEnsemble {
    static LONG: OnceLock<ZkEnsemble> = OnceLock::new();
    LONG.get_or_init(|| {
        ZkEnsemble::start(ZkOptions {
            max_session_ticks: Some(200),
            ..ZkOptions::default()
        })
        .expect("long-session ZooKeeper")
    })
}

fn owned_delete(key: &str, session: SessionId, create_rev: u64) -> StoreOp {
    StoreOp::Txn {
        conds: vec![Cond::Owned {
            key: key.to_string(),
            session,
            create_rev,
        }],
        writes: vec![delete(key)],
    }
}

// ----- findings ---------------------------------------------------------------------------------

/// FIXED FINDING (safety, per the contract: "Unavailable = nothing was applied").
///
/// `write_err` lists the library errors that mean "maybe applied" (ConnectionLoss, Timeout, ...)
/// and maps everything else through `read_err` to `Unavailable`. But when a connection goes
/// silent, zookeeper-client 0.11 fails every in-flight request with `Error::Custom("no response
/// from connection in …ms")` (and with `Error::Custom(io error)` on a TCP reset), which is not
/// in that list. Scenario: a write reaches the server and is applied; its reply is delayed
/// (here: queued behind a large listing on the same connection) and then the network stalls;
/// the client's idle timeout fires and the backend reports `Unavailable` for a write that was
/// applied.
///
/// The core happens to re-verify its own claims (it treats Unavailable like a retry and later
/// adopts a claim of its session from the view), but the contract promises nothing was applied,
/// and read-modify-write callers (Admin's meta updates, a coordinator's epoch bump) act on it.
///
/// Fix: classify by a whitelist of errors that prove "not applied" (the library's own
/// `Error::has_no_data_change`: NoNode, NodeExists, BadVersion, NotEmpty, NoAuth, InvalidAcl,
/// NoChildrenForEphemerals, BadArguments, Throttled, QuotaExceeded, MarshallingError,
/// Unimplemented, NotReadOnly, and SessionExpired of the owning session); every other error of
/// a write (`Custom` included) is `Indeterminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_write_in_flight_at_idle_timeout_is_reported_unavailable_but_applied() {
    let root = chroot("idle");
    let (store, proxy) = proxied(&root);
    let other = direct(&root);
    // 8 MiB of values: a listing whose reply takes a while to cross the proxy.
    let big = vec![b'x'; rebalanser_core::store::MAX_VALUE_BYTES];
    for i in 0..32 {
        let w = vec![put(&format!("big/k{i:02}"), &big)];
        committed(
            &exec(
                &other,
                StoreOp::Txn {
                    conds: vec![],
                    writes: w,
                },
            )
            .await,
            "big",
        );
    }
    let lst = StoreOp::List {
        prefix: "big/".into(),
        linearizable: false,
    };
    assert!(exec(&store, lst.clone()).await.is_ok()); // caches the shape: one request next time
    committed(&exec(&store, create("w/seed", None)).await, "seed"); // caches the directory
                                                                    // The set-up is a race with the machine's speed: the write must be seen applied while the
                                                                    // listing ahead of it is still crossing the proxy. When the listing wins, try again with a
                                                                    // fresh key (a test that cannot arrange its scenario must not pass, so it fails after 5).
    for attempt in 0..5 {
        let key = format!("w/x{attempt}");
        let mut w = store.execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![put(&key, b"1")],
        });
        assert!(
            steps(&mut w, 2).await.is_none(),
            "write finished before its multi"
        );
        assert_eq!(get(&other, &key).await, None, "anchor: not applied yet");
        let mut l = store.execute(lst.clone());
        assert!(futures::poll!(&mut l).is_pending()); // the listing's request goes first
        assert!(futures::poll!(&mut w).is_pending()); // the multi, answered after the listing
                                                      // As soon as the write is applied, stall the network: its reply is still queued
                                                      // behind the listing's.
        let t = Instant::now();
        while get(&other, &key).await.is_none() && t.elapsed() < Duration::from_secs(2) {}
        proxy.blackhole();
        let applied_before_stall = get(&other, &key).await.is_some();
        let listing_done = futures::poll!(&mut l).is_ready();
        eprintln!(
            "attempt {attempt}: applied after {:?}; listing already answered: {listing_done}",
            t.elapsed()
        );
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("answered");
        proxy.heal();
        drop(l);
        if !applied_before_stall || listing_done {
            // Not the scenario: let the connection recover before the next attempt.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let exists = get(&other, &key).await.is_some();
        eprintln!(
            "write: {r:?}; applied before the stall: {applied_before_stall}; exists: {exists}"
        );
        assert!(
            !(matches!(r, Err(StoreError::Unavailable(_))) && exists),
            "a write was reported {r:?} (nothing applied) but it was applied: it must be \
             Indeterminate"
        );
        return;
    }
    panic!("setup: in 5 attempts the write was never applied while its reply was still queued");
}

/// PIN (was a finding during this review — liveness, permanent — and fixed concurrently by
/// `shared_expiry`, now in src/error.rs; this test pins the fix).
///
/// Reads and unowned writes run on the store's shared connection, whose ZooKeeper session
/// (10 s) owns nothing. When *that* session expires (a network stall longer than 10 s but
/// shorter than the member's session timeout), every request queued on it fails with the
/// library's `SessionExpired`, and `read_err` passes it on as `StoreError::SessionExpired` —
/// "the session is gone; its keys are gone too". The core reacts to `SessionExpired` on any op
/// tagged with its session (ClaimVerify, RegisterVerify, ElectVerify are linearizable `Get`s on
/// the shared connection) with `lose_session`: it drops its live member session without closing
/// it. The store still holds that session's detached client, which keeps pinging, so the old
/// session and its claims and `members/<name>` never expire: the new incarnation waits forever
/// for its own name (PITFALLS 25b), and its resources are blocked for everyone.
///
/// Fix: `SessionExpired` must only ever come from the session an op names. On the shared
/// connection map it to `Unavailable` (reads) / `Indeterminate` (writes whose request may have
/// been sent; `Unavailable` if it never left), and reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_expiry_of_the_shared_connection_is_not_reported_as_session_expired() {
    let zk = long_sessions();
    let root = chroot("shared-expiry");
    let proxy = Arc::new(FaultProxy::start(zk.client_addr(0)).expect("proxy"));
    let store = ZkStore::from_url(&format!("zk://{}{root}", proxy.addr())).expect("url");
    let (s, ttl) = open(&store, Duration::from_secs(30)).await;
    assert!(ttl >= Duration::from_secs(20), "granted {ttl:?}");
    committed(&exec(&store, create("m/claim", Some(s))).await, "claim");
    assert!(get(&store, "m/claim").await.is_some());
    proxy.blackhole();
    // The shared connection's 10 s session expires at the server; the member's 30 s one lives.
    tokio::time::sleep(Duration::from_millis(10_800)).await;
    let store2 = store.clone();
    let read = tokio::spawn(async move {
        exec(
            &store2,
            StoreOp::Get {
                key: "m/claim".into(),
                linearizable: true,
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.heal();
    let read = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("read answered")
        .expect("task");
    let ka = exec(&store, StoreOp::KeepAlive { session: s }).await;
    eprintln!("read during the stall: {read:?}; member keepalive after: {ka:?}");
    assert!(
        matches!(ka, Ok(StoreReply::KeptAlive { .. })),
        "the member session survived the stall: {ka:?}"
    );
    assert!(
        !matches!(read, Err(StoreError::SessionExpired)),
        "a Get reported SessionExpired while the member session is alive (the shared \
         connection's session expired): the core would drop a live session"
    );
}

/// FIXED FINDING (safety, latent: the contract's `Owned` is an atomic compare of owner + create_rev).
///
/// `Cond::Owned` is a synced read of ephemeralOwner/czxid followed by a `multi` that only
/// checks the *data version*. The type docs argue the window is closed because the multi runs
/// on the owning session's connection — but `txn_client` silently falls back to the shared
/// connection whenever the named session is not one this store holds (another process's
/// session, or our own after `CloseSession` returned Indeterminate, after the client declared it
/// expired locally, or after `abandon_session`). On that connection nothing ties the multi to
/// the session: between the read and the multi the owner's session ends (its claim vanishes)
/// and another member re-creates the key; claims are never updated, so the new instance is at
/// version 0 again and the `check` passes. The delete removes the NEW owner's claim — exactly
/// PITFALLS 12 — and a third member can then claim the resource while the second still runs it.
///
/// Fix: never run `Owned` on a connection other than the owner's (the core only ever names its
/// own session): for a session this store does not hold, answer without writing — `Conflict`
/// if a synced read shows the instance gone (what the model answers), else `Invalid`/
/// `Unavailable` ("cannot check ownership of a session not held here"). If a cross-session
/// owner-checked delete is ever needed (PITFALLS 25 clean-up), it needs an instance-exact
/// guard, e.g. every create/delete through the backend also bumps the parent directory's
/// data version and `Owned` checks it too (retrying, not Conflict, when only the parent moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_owned_condition_on_a_session_not_held_has_an_aba_window() {
    let root = chroot("owned-aba");
    let owner_store = direct(&root);
    let newcomer_store = direct(&root);
    let reaper = direct(&root);
    let key = "g/claims/r";
    let (a, _) = open(&owner_store, Duration::from_secs(4)).await;
    let (b, _) = open(&newcomer_store, Duration::from_secs(4)).await;
    let rev_a = committed(
        &exec(&owner_store, create(key, Some(a))).await,
        "claim by a",
    );
    assert_eq!(get(&reaper, "g/warm").await, None); // shared connection up
    let mut f = reaper.execute(owned_delete(key, a, rev_a));
    // Round trips 1 and 2: sync, then the multiRead that sees a's instance at version 0.
    assert!(
        steps(&mut f, 2).await.is_none(),
        "finished before its multi"
    );
    let e = get(&owner_store, key)
        .await
        .expect("anchor: a's claim still there");
    assert_eq!((e.owner, e.create_rev), (Some(a), rev_a), "anchor");
    // a's session ends; b claims r: a new instance, version 0 again.
    exec(&owner_store, StoreOp::CloseSession { session: a })
        .await
        .expect("close a");
    let rev_b = committed(
        &exec(&newcomer_store, create(key, Some(b))).await,
        "claim by b",
    );
    assert!(rev_b > rev_a);
    let r = f.await;
    let now = get(&newcomer_store, key).await;
    eprintln!("stale owned delete: {r:?}; claim now {now:?}");
    assert_eq!(
        now.map(|e| (e.owner, e.create_rev)),
        Some((Some(b), rev_b)),
        "an Owned{{a, {rev_a}}} delete removed b's claim (created at {rev_b}); result {r:?}"
    );
    // Fixed: refuted by a synced read (Conflict) or refused undecided (Unavailable); never
    // applied on a connection that is not the owner's.
    assert!(
        matches!(r, Err(StoreError::Conflict(_) | StoreError::Unavailable(_))),
        "{r:?}"
    );
}

/// FIXED FINDING (contract mismatch: transactions are not serializable around leftover directories).
///
/// `Absent(k)` on an empty directory znode is a `check` of the directory's version, "because a
/// directory's version moves when someone writes a value into it". It does not: a Put (or
/// Create) over an empty directory deletes it and creates a fresh znode, at version 0 again.
/// Leftover directories are easy to get: a `Delete` of an absent key creates its parents (for
/// the create+delete guard) and nothing removes them, and the best-effort clean-up after a
/// delete can fail. Scenario (write skew, impossible in any serial order):
///   T1: if Absent(d) then Put(o)       T2: if Absent(o) then Put(d)
/// T1 reads (d is a directory), T2 commits (d is now a key at version 0), T1 commits because
/// its check(d, 0) passes on T2's key. Both committed; in the model the second must conflict.
///
/// Fix (also fixes the clean-up finding below): make keys and directories disjoint. Never
/// delete directory znodes (drop `remove_empty_dirs`; they are bounded by the layout) and
/// refuse a write over a directory as `Invalid` (documented; the layout never does it). A
/// directory is then immutable, so a version check on it cannot be fooled by a replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_absent_on_a_leftover_directory_allows_write_skew() {
    let root = chroot("skew");
    let t1_store = direct(&root);
    let t2_store = direct(&root);
    // A Delete of an absent key leaves its parent "s/d" behind as an empty directory.
    committed(
        &exec(
            &t1_store,
            StoreOp::Txn {
                conds: vec![],
                writes: vec![delete("s/d/k")],
            },
        )
        .await,
        "delete of an absent key",
    );
    assert_eq!(
        get(&t1_store, "s/d").await,
        None,
        "a directory is not a key"
    );
    let mut t1 = t1_store.execute(StoreOp::Txn {
        conds: vec![Cond::Absent("s/d".into())],
        writes: vec![put("s/o", b"t1")],
    });
    assert!(
        steps(&mut t1, 2).await.is_none(),
        "t1 finished before its multi"
    );
    assert_eq!(
        get(&t2_store, "s/o").await,
        None,
        "anchor: t1 not applied yet"
    );
    let t2 = exec(
        &t2_store,
        StoreOp::Txn {
            conds: vec![Cond::Absent("s/o".into())],
            writes: vec![put("s/d", b"t2")],
        },
    )
    .await;
    committed(&t2, "t2");
    let t1 = t1.await;
    eprintln!("t1 = {t1:?}, t2 = {t2:?}");
    assert!(
        matches!(t1, Err(StoreError::Conflict(_))),
        "t1 (Absent(s/d) → Put s/o) committed after t2 (Absent(s/o) → Put s/d) committed: {t1:?}"
    );
}

/// FIXED FINDING (safety under the contract's key model; not reachable with today's layout, which
/// never nests a key under another key's path).
///
/// After a delete, `remove_empty_dirs` reads each parent (`get_data`) and, if it is empty and
/// childless, deletes it *with the version it read*. A Put/Create over an empty directory
/// replaces it with a fresh znode at version 0, so a key created between the clean-up's read
/// and its delete is deleted by the clean-up — even a session-owned one (a claim): its owner
/// keeps running the resource while the claim is gone and another member can take it (L2).
///
/// Fix: as for the write-skew finding above: directories are never deleted and never
/// replaced by keys. (A version check cannot tell a directory from the key that replaced it:
/// both are at version 0, and ZooKeeper's `check` cannot compare czxid or data.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_empty_directory_cleanup_deletes_a_key_created_in_its_place() {
    let root = chroot("cleanup");
    let cleaner = direct(&root);
    let claimer = direct(&root);
    let (s, _) = open(&claimer, Duration::from_secs(4)).await;
    assert_eq!(get(&cleaner, "w/warm").await, None);
    let mut lost = Vec::new();
    // The clean-up's read happens a few round trips after the delete commits; try the
    // concurrent create after each of them.
    for after in 3..=8 {
        let dir = format!("c{after}/d");
        let child = format!("{dir}/k");
        committed(&exec(&cleaner, create(&child, None)).await, "child");
        let mut f = cleaner.execute(StoreOp::Txn {
            conds: vec![],
            writes: vec![delete(&child)],
        });
        let early = steps(&mut f, after).await;
        let r = exec(&claimer, create(&dir, Some(s))).await;
        let done = match early {
            Some(r) => r,
            None => f.await,
        };
        committed(&done, "delete of the child");
        if r.is_ok() && get(&claimer, &dir).await.is_none() {
            lost.push((after, r));
        }
    }
    assert!(
        lost.is_empty(),
        "a session-owned key created over an empty directory was deleted by another client's \
         clean-up while its session lives: {lost:?}"
    );
}

/// FIXED FINDING (contract mismatch, liveness for deep layouts).
///
/// A listing discovers the tree one level per `multiRead` round and gives up after
/// `LIST_ATTEMPTS` (8) rounds, and the shape is cached only after a success. A key 8 or more
/// levels below the listed directory can therefore never be listed: every `List` of that
/// prefix is `Unavailable`, forever. The model lists any depth.
///
/// Fix: count only rounds in which an already-read level changed, not rounds that merely
/// discovered a deeper level (or cache the partial shape between calls), and document a
/// depth limit if one remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_deep_keys_can_never_be_listed() {
    let root = chroot("deep");
    let s = direct(&root);
    let key = "deep/1/2/3/4/5/6/7/8/k";
    committed(&exec(&s, create(key, None)).await, "deep create");
    let r = list(&s, "deep/").await;
    match r {
        Ok(StoreReply::Listed { entries, .. }) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].0, key);
        }
        other => panic!("List of a prefix with one key 9 levels down: {other:?}"),
    }
}

/// FIXED FINDING (liveness / contract mismatch: PITFALLS 21).
///
/// A transaction whose request exceeds the server's `jute.maxbuffer` (1 MiB by default) — five
/// values at the contract's own 256 KiB limit — makes the server drop the connection. The
/// backend reports `Indeterminate`, so the caller verifies and retries, and each retry kills
/// the connection again: on a session's own connection (a coordinator's rebalance runs there,
/// because it carries `Owned(leader)`) that also fails the session's keepalives in flight.
/// The model commits it.
///
/// Fix: measure the encoded `multi` before sending it and return `Invalid` ("transaction too
/// large for ZooKeeper, split it") when it is above the server's limit (make the limit a
/// `ZkOptions` field, default a little under 1 MiB); document the bound in the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_oversized_transaction_is_indeterminate_and_kills_the_connection() {
    let root = chroot("big-txn");
    let s = direct(&root);
    let big = vec![b'x'; rebalanser_core::store::MAX_VALUE_BYTES];
    let writes: Vec<Write> = (0..5).map(|i| put(&format!("big/k{i}"), &big)).collect();
    let r = exec(
        &s,
        StoreOp::Txn {
            conds: vec![],
            writes,
        },
    )
    .await;
    eprintln!(
        "5 × 256 KiB in one txn: {:?}",
        r.as_ref()
            .map_err(|e| e.to_string().chars().take(120).collect::<String>())
    );
    assert!(
        matches!(
            r,
            Ok(StoreReply::Committed { .. }) | Err(StoreError::Invalid(_))
        ),
        "a transaction that can never be applied must be Invalid (or committed), not {r:?}"
    );
}

/// FIXED FINDING (contract mismatch, cosmetic for today's core, which ignores close results).
///
/// `CloseSession` removes the session's handle from the map *before* it knows the close
/// worked. When re-attaching to close it fails (a network blip), it returns `Indeterminate` —
/// and a retry finds no handle and answers `Closed` at once, although nothing closed the
/// session: its keys live on until the server expires it. The contract says closed = keys gone.
///
/// Fix: keep the session info until the close is confirmed; a retry re-attaches and closes
/// (or learns the session already expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_close_retry_after_indeterminate_reports_closed_while_keys_remain() {
    let root = chroot("close");
    let zk = ZkEnsemble::shared();
    let proxy = Arc::new(FaultProxy::start(zk.client_addr(0)).expect("proxy"));
    let url = ZkUrl::parse(&format!("zk://{}{root}", proxy.addr())).expect("url");
    let store = ZkStore::new(
        url,
        rebalanser_zk::ZkOptions {
            connect_timeout: Duration::from_millis(700),
        },
    );
    let other = direct(&root);
    let (s, _) = open(&store, Duration::from_secs(4)).await;
    committed(&exec(&store, create("close/k", Some(s))).await, "create");
    proxy.blackhole();
    let first = exec(&store, StoreOp::CloseSession { session: s }).await;
    proxy.heal();
    let second = exec(&store, StoreOp::CloseSession { session: s }).await;
    let still = get(&other, "close/k").await;
    eprintln!("close during a blip: {first:?}; retry: {second:?}; key after: {still:?}");
    if matches!(second, Ok(StoreReply::Closed)) {
        assert!(
            still.is_none(),
            "CloseSession answered Closed but the session's key is still there ({first:?} before)"
        );
    }
}

/// FIXED FINDING (cosmetic / security hygiene).
///
/// Passwords are taken verbatim from the URL, with no percent-decoding, and the authority ends
/// at the first `/`. A generated password containing `/` (base64 does) cannot be written at
/// all, and the parse error then quotes the password's first part as a "port"
/// (`bad port "s3cr"`) into logs, although the error type otherwise redacts it.
///
/// Fix: split the authority at the last `@` before the first `/` *after* it, percent-decode
/// user and password, and never quote host/port text that came from the credentials part.
#[test]
fn fixed_url_errors_leak_password_fragments() {
    let url = "zk://app:s3cr/etXYZ@h1:2181/chroot";
    match ZkUrl::parse(url) {
        Ok(u) => assert_eq!(u.digest, Some(("app".into(), "s3cr/etXYZ".into()))),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("s3cr") && !msg.contains("etXYZ"),
                "the error quotes part of the password: {msg}"
            );
        }
    }
}

// ----- pinned behaviour -----------------------------------------------------------------------

/// PIN: on the owner's own connection, `Owned` is safe against the same ABA: if the owner
/// session expires between the read and the multi and someone re-creates the key, the multi is
/// refused (the leader checks the session of every `check`), and the new claim stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_owned_condition_on_the_owners_connection_survives_expiry_aba() {
    let root = chroot("owned-own");
    let (owner_store, proxy) = proxied(&root);
    let newcomer = direct(&root);
    let key = "g/claims/r";
    let (a, ttl) = open(&owner_store, Duration::from_millis(800)).await;
    let (b, _) = open(&newcomer, Duration::from_secs(4)).await;
    let rev_a = committed(
        &exec(&owner_store, create(key, Some(a))).await,
        "claim by a",
    );
    let mut f = owner_store.execute(owned_delete(key, a, rev_a));
    assert!(steps(&mut f, 2).await.is_none());
    assert_eq!(
        get(&newcomer, key).await.and_then(|e| e.owner),
        Some(a),
        "anchor"
    );
    proxy.blackhole();
    // a expires at the server; b claims r.
    let deadline = Instant::now() + ttl * 5;
    let rev_b = loop {
        match exec(&newcomer, create(key, Some(b))).await {
            Ok(StoreReply::Committed { rev }) => break rev,
            Err(StoreError::Conflict(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("b's claim: {other:?}"),
        }
    };
    let poll = steps(&mut f, 1).await; // the multi is queued on a's (dead) connection
    proxy.heal();
    let r = match poll {
        Some(r) => r,
        None => tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("answer"),
    };
    assert!(
        matches!(r, Err(StoreError::SessionExpired | StoreError::Conflict(_))),
        "{r:?}"
    );
    assert_eq!(
        get(&newcomer, key).await.map(|e| (e.owner, e.create_rev)),
        Some((Some(b), rev_b))
    );
}

/// PIN: a listing is one snapshot: a key moved between two directories by single transactions
/// is never listed twice or not at all, even while the directories are created and removed
/// under it. Also reports how often a listing gave up under this churn (liveness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_listings_never_show_a_torn_transaction() {
    let root = chroot("torn");
    let mover = direct(&root);
    let lister = direct(&root);
    committed(
        &exec(
            &mover,
            StoreOp::Txn {
                conds: vec![],
                writes: vec![put("t/a/x", b"1")],
            },
        )
        .await,
        "seed",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let moves = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let (mut from, mut to) = ("t/a/x", "t/b/x");
            while !stop.load(Ordering::SeqCst) {
                let r = exec(
                    &mover,
                    StoreOp::Txn {
                        conds: vec![],
                        writes: vec![delete(from), put(to, b"1")],
                    },
                )
                .await;
                if r.is_ok() {
                    n += 1;
                    std::mem::swap(&mut from, &mut to);
                }
            }
            n
        })
    };
    let (mut ok, mut gave_up) = (0, 0);
    let mut last_rev = 0;
    for _ in 0..150 {
        match list(&lister, "t/").await {
            Ok(StoreReply::Listed { entries, rev }) => {
                assert_eq!(entries.len(), 1, "torn listing at rev {rev}: {entries:?}");
                assert!(
                    rev >= last_rev,
                    "listing revision went back: {rev} < {last_rev}"
                );
                last_rev = rev;
                ok += 1;
            }
            Err(StoreError::Unavailable(_)) => gave_up += 1,
            other => panic!("{other:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let n = moves.await.unwrap();
    eprintln!("{ok} listings, {gave_up} gave up, {n} moves");
    assert!(ok > 0, "every listing gave up under churn");
}

/// PIN: the listing revision covers deletes that also removed the directories above the key
/// (the ancestors' pzxid), and never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_listing_revision_covers_deletes_that_remove_directories() {
    let root = chroot("rev");
    let s = direct(&root);
    let other = direct(&root);
    let c = committed(&exec(&s, create("r/a/b/c/k", None)).await, "create");
    let Ok(StoreReply::Listed { rev: r0, .. }) = list(&other, "r/").await else {
        panic!()
    };
    assert!(r0 >= c);
    let d = committed(
        &exec(
            &s,
            StoreOp::Txn {
                conds: vec![],
                writes: vec![delete("r/a/b/c/k")],
            },
        )
        .await,
        "delete",
    );
    for prefix in ["r/", "r/a/", "r/a/b/c/"] {
        let Ok(StoreReply::Listed { entries, rev }) = list(&other, prefix).await else {
            panic!("list {prefix}")
        };
        assert!(entries.is_empty());
        assert!(
            rev >= d && rev > r0,
            "{prefix}: listing rev {rev} after delete {d} (before {r0})"
        );
    }
}

/// PIN: the watch survives the expiry of the shared connection's own session (not just a
/// reconnect): it is re-armed on a new connection and reports `Reset`, and the change made
/// meanwhile is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_watch_resets_after_the_shared_session_expires() {
    let root = chroot("watch-expiry");
    let (store, proxy) = proxied(&root);
    let other = direct(&root);
    let mut w = store.watch("w/".to_string());
    committed(&exec(&store, create("w/before", None)).await, "before");
    let ev = tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut w)).await;
    assert!(matches!(ev, Ok(Some(_))), "{ev:?}");
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(100), futures::StreamExt::next(&mut w)).await
    {
    }
    proxy.blackhole();
    proxy.reset_all();
    committed(&exec(&other, create("w/during", None)).await, "during");
    // Longer than the shared session (10 s asked, 4 s granted here) and the client's 1.4×.
    tokio::time::sleep(Duration::from_secs(7)).await;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(10), futures::StreamExt::next(&mut w)).await
    {
    }
    proxy.heal();
    let ev = tokio::time::timeout(Duration::from_secs(15), futures::StreamExt::next(&mut w)).await;
    assert!(
        matches!(
            ev,
            Ok(Some(
                WatchEvent::Reset | WatchEvent::Changed | WatchEvent::Keys(_)
            ))
        ),
        "no wake-up after the shared session expired: {ev:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match list(&store, "w/").await {
            Ok(StoreReply::Listed { entries, .. }) => {
                assert!(entries.iter().any(|(k, _)| k == "w/during"));
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("{other:?}"),
        }
    }
}

/// PIN: with credentials, every znode the store creates is `creator_all` for that digest
/// identity: another store with the same credentials reads and writes the group; other
/// credentials and anonymous clients get `Invalid` (not authorized), never data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_digest_credentials_fence_the_group() {
    let zk = ZkEnsemble::shared();
    let root = chroot("acl");
    let url = |cred: &str| format!("zk://{cred}{}{root}", zk.connect_string());
    let owner = ZkStore::from_url(&url("app:pw@")).unwrap();
    let same = ZkStore::from_url(&url("app:pw@")).unwrap();
    let stranger = ZkStore::from_url(&url("eve:pw@")).unwrap();
    let anon = ZkStore::from_url(&url("")).unwrap();
    committed(&exec(&owner, create("acl/k", None)).await, "create");
    assert!(get(&same, "acl/k").await.is_some());
    committed(
        &exec(
            &same,
            StoreOp::Txn {
                conds: vec![],
                writes: vec![put("acl/k2", b"v")],
            },
        )
        .await,
        "same identity writes",
    );
    for (who, s) in [("other identity", &stranger), ("anonymous", &anon)] {
        let r = exec(
            s,
            StoreOp::Get {
                key: "acl/k".into(),
                linearizable: true,
            },
        )
        .await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "{who} read: {r:?}"
        );
        let r = exec(
            s,
            StoreOp::Txn {
                conds: vec![],
                writes: vec![put("acl/k", b"x")],
            },
        )
        .await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "{who} write: {r:?}"
        );
    }
}

/// PIN: the keepalive is refused once the server expired the session (whether the client learns
/// it on reconnecting or declares it locally first); a claim create on it is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_keepalive_after_server_side_expiry_is_session_expired() {
    let root = chroot("ka");
    let (store, proxy) = proxied(&root);
    let (s, ttl) = open(&store, Duration::from_millis(800)).await;
    let r = exec(&store, StoreOp::KeepAlive { session: s }).await;
    assert!(matches!(r, Ok(StoreReply::KeptAlive { .. })), "{r:?}");
    proxy.blackhole();
    tokio::time::sleep(ttl + Duration::from_millis(300)).await; // < 1.4 × ttl + connect
    proxy.heal();
    let r = exec(&store, StoreOp::KeepAlive { session: s }).await;
    assert_eq!(
        r,
        Err(StoreError::SessionExpired),
        "keepalive after server-side expiry"
    );
    let r = exec(&store, create("ka/late", Some(s))).await;
    assert_eq!(r, Err(StoreError::SessionExpired));
}
