//! Second red-team pass over the ZooKeeper backend (flat keys per namespace, never-deleted
//! directories, server-refusal-only error mapping, `Owned` refuted or refused off the owner's
//! connection, `Invalid` above `MAX_TXN_BYTES`, close by re-attaching), against a real server.
//!
//! Tests named `finding_*` FAIL on the code they were written against; each comment gives the
//! scenario, the severity and a suggested fix. Tests named `pin_*` pass and pin behaviour that
//! was checked and that the protocol relies on. `redteam.rs` holds the first pass; nothing here
//! repeats it.
//!
//! As in `redteam.rs`, some tests drive `execute`'s future by hand (`step`): the client library
//! sends a request when the call is made, so each poll advances the backend by one round trip.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rebalanser_store::{Entry, Store, StoreError, StoreOp, StoreReply, WatchEvent};
use rebalanser_testkit::{ZkEnsemble, ZkOptions};
use rebalanser_zk::{ZkStore, ZkUrl};

mod common;
use common::{
    chroot, committed, create, delete, direct, exec, get, open, proxied, put, steps, try_get, txn,
};

// ----- fixtures ---------------------------------------------------------------------------------

/// `get`, retrying while the store reconnects (after a server restart).
async fn get_eventually(s: &ZkStore, key: &str, within: Duration) -> Option<Entry> {
    let deadline = Instant::now() + within;
    loop {
        match try_get(s, key).await {
            Ok(StoreReply::Got(e)) => return e,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("Get {key}: {other:?}"),
        }
    }
}

// ----- findings ---------------------------------------------------------------------------------

/// FIXED FINDING (contract mismatch: wrong revision; "every key it created has create_rev == rev").
///
/// ZooKeeper 3.8 returns no stat for a create inside a `multi`, so `commit_rev` reads the
/// created znode back with a separate `exists` after the commit. For a session-owned key it
/// checks that the owner is still the session; for a persistent key it accepts any instance.
/// Scenario: X creates `g/epoch` (or any persistent key: `resources/<r>`, `assign/<m>/<i>`,
/// `meta`) on the shared connection; between X's commit and X's read-back, Y deletes the key
/// and creates it again (an admin re-adding a resource, a new coordinator rewriting a chunk).
/// X is told `Committed { rev }` with Y's creation zxid: a revision X never committed, later
/// than its own, and equal to the `create_rev` of a key X did not create. A caller that uses
/// the revision as a base ("my write is at rev r, ignore listings older than r", or a token)
/// is misled. MemModel returns the transaction's own revision.
///
/// Fix: never infer a commit's zxid from a later read of a mutable path. Put a `setData`
/// (with `-1`) of a backend-owned per-namespace marker znode — e.g. the namespace directory
/// itself — into every write `multi`: its `SetData` result carries the stat, whose `mzxid` is
/// the multi's zxid. (Or use `create2` results where the server returns them, ≥ 3.9.) For a
/// read-back, at least require `mzxid == czxid` and report `Indeterminate` when another
/// instance is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_unowned_create_reports_the_revision_of_a_replacing_instance() {
    let root = chroot("rev-race");
    let x = direct(&root);
    let y = direct(&root);
    // Warm x: shared connection up, namespace directory known.
    committed(&exec(&x, create("g/warm", None)).await, "warm");
    let key = "g/epoch";
    let mut f = x.execute(create(key, None));
    // Round trips: sync, multiRead (read phase), multi. The read-back is sent at the 4th poll.
    assert!(
        steps(&mut f, 3).await.is_none(),
        "finished before read-back"
    );
    let mine = get(&y, key).await.expect("anchor: x's create is applied");
    // y replaces the key before x reads it back.
    committed(&exec(&y, txn(vec![delete(key)])).await, "y delete");
    let theirs = committed(&exec(&y, create(key, None)).await, "y create");
    assert!(theirs > mine.create_rev);
    let r = f.await;
    eprintln!(
        "x's create was at {}, y's at {theirs}; x was told {r:?}",
        mine.create_rev
    );
    match r {
        Ok(StoreReply::Committed { rev }) => assert_eq!(
            rev, mine.create_rev,
            "x's create was reported at revision {rev}, which is y's instance ({theirs}), not \
             the one x created ({})",
            mine.create_rev
        ),
        Err(StoreError::Indeterminate(_)) => {} // honest, if weak
        other => panic!("x's create: {other:?}"),
    }
}

/// FIXED FINDING (contract mismatch; cosmetic for today's core, which never writes a key twice in one
/// transaction).
///
/// A transaction that creates a key and deletes it again (`Put k; Delete k`, `Create k; Delete
/// k`) commits in ZooKeeper, but `commit_rev` then reads the created znode back, finds it gone
/// ("replaced or removed at once") and reports `Indeterminate` — every time, for a write that
/// certainly committed. MemModel commits it.
///
/// Fix: the marker `setData` suggested for the finding above gives the zxid directly; failing
/// that, skip read-back for keys the transaction itself deletes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_create_then_delete_in_one_txn_is_reported_indeterminate() {
    let root = chroot("create-delete");
    let s = direct(&root);
    committed(&exec(&s, create("t/warm", None)).await, "warm");
    let r = exec(&s, txn(vec![put("t/k", b"1"), delete("t/k")])).await;
    assert_eq!(get(&s, "t/k").await, None);
    eprintln!("Put k; Delete k: {r:?}");
    assert!(
        matches!(r, Ok(StoreReply::Committed { .. })),
        "a transaction that committed was reported {r:?}"
    );
}

/// FIXED FINDING (contract mismatch + liveness: "CloseSession — its keys vanish at once").
///
/// zookeeper-client declares a session expired on its own when it cannot reconnect within
/// 1.4 × the negotiated timeout (`Error::Timeout` → `SessionState::Expired`), without any word
/// from the server. The server may still hold the session: while the ensemble is down (or
/// electing a leader) nothing expires, and a restarted or newly elected leader re-arms every
/// session for a full timeout. The backend then (a) answers `KeepAlive` with `SessionExpired`
/// ("its keys are gone too") although the keys are there, and (b) has dropped the session's
/// credentials (`session_client` removes a terminal handle), so a `CloseSession` for it — as a
/// caller abandoning the session sends (PITFALLS 25b) — answers `Closed` at once without
/// contacting the server. The claims and `members/<name>` of the dead incarnation then stay
/// for up to a full session timeout after the ensemble is back: the new incarnation waits on
/// its own name (NameInUse) and every resource it held is blocked for everyone.
/// Scenario here: a standalone server is killed for longer than 1.4 T and restarted.
///
/// Fix: keep the credentials of any session whose handle went terminal without a server
/// verdict (state `Expired` after a connect timeout is not a verdict; a `SessionExpired`
/// reply/connect response is) in `closing`, and let `CloseSession` re-attach with them: the
/// server either answers "expired" (then `Closed` is true) or closes the session now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_close_after_client_side_expiry_reports_closed_while_keys_remain() {
    let zk = ZkEnsemble::start(ZkOptions::default()).expect("own ZooKeeper");
    let root = chroot("local-expiry");
    let url = ZkUrl::parse(&format!("zk://{}{root}", zk.connect_string())).expect("url");
    let store = ZkStore::new(
        url,
        rebalanser_zk::ZkOptions {
            connect_timeout: Duration::from_secs(2),
        },
    );
    let observer = ZkStore::from_url(&format!("zk://{}{root}", zk.connect_string())).unwrap();
    let (s, ttl) = open(&store, Duration::from_secs(4)).await;
    committed(&exec(&store, create("g/claims/r", Some(s))).await, "claim");
    assert!(get(&observer, "g/claims/r").await.is_some());
    zk.kill(0).expect("kill");
    // The client gives up after 1.4 × ttl without hearing from any server.
    tokio::time::sleep(ttl * 7 / 5 + Duration::from_millis(1500)).await;
    zk.restart(0).expect("restart");
    let restarted = Instant::now();
    let ka = exec(&store, StoreOp::KeepAlive { session: s }).await;
    let close = exec(&store, StoreOp::CloseSession { session: s }).await;
    let left = get_eventually(&observer, "g/claims/r", Duration::from_secs(3)).await;
    eprintln!(
        "after restart: keepalive {ka:?}, close {close:?}, claim {:?} ({:?} after restart)",
        left.as_ref().map(|e| e.owner),
        restarted.elapsed()
    );
    assert!(
        restarted.elapsed() < ttl,
        "test too slow to observe the re-armed session"
    );
    if matches!(close, Ok(StoreReply::Closed)) {
        assert!(
            left.is_none(),
            "CloseSession answered Closed, but the session's claim is still there (the server \
             re-armed the session; the client had only declared it expired locally; keepalive \
             said {ka:?})"
        );
    }
}

/// FIXED FINDING (liveness, whole group; PITFALLS 21).
///
/// Every key of a group is a child of one directory znode and a listing is one `multiRead`
/// carrying a `getData` per key. The request grows by ~60-70 bytes per key; above the server's
/// `jute.maxbuffer` (1 MiB by default) the server drops the connection instead of answering.
/// Measured here: 14k keys list in ~0.1 s, 20k keys fail at once ("connection to server has
/// lost"). A group of ~8k resources has that many keys (resources + claims + members +
/// assignment chunks), and then every
/// listing of the group fails, and each attempt also kills the *shared* connection with every
/// other request on it (reads become Unavailable, writes Indeterminate) and resets the watch,
/// whose `Reset` makes every member list again: a fleet-wide reconnect loop, and no member
/// ever sees its assignment. The model lists any number of keys; the crate docs mention
/// "tens of thousands" as a limit, but nothing refuses such a group up front and the failure
/// mode is a connection-killing loop, not an error.
///
/// Fix: split a listing into several `multiRead`s of bounded request size (a snapshot is then
/// no longer one request: keep the consistency check by re-reading the directory's `cversion`
/// /`pzxid` in the last batch and retrying if it moved), or shard directories by prefix
/// (`claims/`, `resources/`, … each its own znode, with a hash level below). At the very least
/// return `Invalid`/`Unavailable` with a clear message before sending an oversized request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_listing_a_large_group_kills_the_connection() {
    let root = chroot("big-list");
    let s = direct(&root);
    let n = 20_000;
    let mut writes = Vec::new();
    for i in 0..n {
        writes.push(put(&format!("big/resources/resource-{i:06}"), b"{}"));
        if writes.len() == rebalanser_core::store::MAX_TXN_WRITES || i == n - 1 {
            committed(&exec(&s, txn(std::mem::take(&mut writes))).await, "batch");
        }
    }
    let lister = direct(&root);
    let t = Instant::now();
    let r = exec(
        &lister,
        StoreOp::List {
            prefix: "big/".into(),
            linearizable: true,
        },
    )
    .await;
    let summary = match &r {
        Ok(StoreReply::Listed { entries, rev }) => format!("{} entries at {rev}", entries.len()),
        other => format!("{other:?}"),
    };
    eprintln!("listing {n} keys: {summary} in {:?}", t.elapsed());
    assert!(
        matches!(&r, Ok(StoreReply::Listed { entries, .. }) if entries.len() == n),
        "a group of {n} keys cannot be listed: {summary}"
    );
}

/// FIXED FINDING (contract mismatch: one-component keys reached ZooKeeper as `/k/`). The
/// contract now requires a namespace (`key_error`), for every store alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_single_component_keys_are_refused() {
    let root = chroot("one-component");
    let s = direct(&root);
    assert!(rebalanser_core::store::key_error("solo").is_some());
    let c = exec(&s, create("solo", None)).await;
    assert!(
        matches!(c, Err(StoreError::Invalid(ref m)) if m.contains("namespace")),
        "{c:?}"
    );
    let g = try_get(&s, "solo").await;
    assert!(matches!(g, Err(StoreError::Invalid(_))), "{g:?}");
}

/// FIXED FINDING (without a chroot, the group `zookeeper` was ZooKeeper's own tree): the
/// namespace is refused there, naming the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_group_named_zookeeper_without_chroot_is_refused() {
    let zk = ZkEnsemble::shared();
    let s = ZkStore::from_url(&format!("zk://{}", zk.connect_string())).expect("url");
    let r = exec(
        &s,
        StoreOp::List {
            prefix: "zookeeper/".into(),
            linearizable: true,
        },
    )
    .await;
    assert!(
        matches!(r, Err(StoreError::Invalid(ref m)) if m.contains("chroot")),
        "{r:?}"
    );
    let r = exec(&s, create("zookeeper/k", None)).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

// ----- pinned behaviour -----------------------------------------------------------------------

/// PIN (documents a hazard the core must keep handling; passes today).
///
/// zookeeper-client sends a request when the call is made and has no cancellation: if the
/// caller drops the future (the driver's `op_timeout`), a request already handed to the
/// library is still delivered and applied later. Here the `multi` of an owned create is sent
/// while the network stalls; the future is dropped; a *linearizable* read on another
/// connection says "absent"; the stall ends and the claim appears, owned by the session.
/// So an Indeterminate write is not settled by one linearizable read on another connection.
/// The core copes today because its per-session ops are FIFO on the session's connection
/// (a retried create or owned delete is applied after the late one), it adopts unexplained
/// claims of its own session only after a fresh verification, and it never re-adopts an
/// instance it is deleting (`deleting`). A backend change that routes session ops over more
/// than one connection, or a core change that trusts one verification read, breaks this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_a_dropped_write_can_still_apply_after_a_verifying_read() {
    let root = chroot("late-apply");
    let (store, proxy) = proxied(&root);
    let observer = direct(&root);
    let (s, _) = open(&store, Duration::from_secs(4)).await;
    committed(
        &exec(&store, create("g/claims/warm", Some(s))).await,
        "warm",
    );
    let key = "g/claims/r";
    let mut f = store.execute(create(key, Some(s)));
    // sync and multiRead answered; the multi goes out into a stalled network.
    assert!(steps(&mut f, 2).await.is_none());
    proxy.blackhole();
    assert!(futures::poll!(&mut f).is_pending()); // sends the multi
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(f); // the driver's op_timeout: reported Indeterminate
    let verified = get(&observer, key).await;
    assert_eq!(verified, None, "the verifying read saw nothing");
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut late = None;
    while late.is_none() && Instant::now() < deadline {
        late = get(&observer, key).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("after the verifying read said absent: {late:?}");
    assert_eq!(
        late.and_then(|e| e.owner),
        Some(s),
        "the dropped create was applied after the verification"
    );
}

/// PIN: a connection reset shorter than the session timeout (the library reconnects with the
/// same session and re-registers the persistent watch without replaying missed events) is
/// reported as `Reset`, and a change made meanwhile by another client is seen on re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_watch_reports_reset_after_a_short_reconnect() {
    let root = chroot("watch-blip");
    let (store, proxy) = proxied(&root);
    let other = direct(&root);
    committed(&exec(&store, create("w/seed", None)).await, "seed");
    let mut w = store.watch("w/".to_string());
    let first = tokio::time::timeout(Duration::from_secs(3), w.next()).await;
    assert!(matches!(first, Ok(Some(WatchEvent::Reset))), "{first:?}");
    proxy.blackhole();
    proxy.reset_all();
    committed(&exec(&other, create("w/during", None)).await, "during");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain whatever arrived during the cut (nothing should, the change was missed).
    let mut during = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), w.next()).await {
        during.push(ev);
    }
    proxy.heal();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    eprintln!("during the cut: {during:?}; after: {ev:?}");
    assert!(
        matches!(ev, Ok(Some(WatchEvent::Reset))),
        "a reconnect must be reported as Reset: {ev:?}"
    );
    assert!(get(&store, "w/during").await.is_some());
}

/// PIN: `KeepAlive` is a write that the server answers only while it serves: with the server
/// SIGSTOPped it neither succeeds nor hangs past the library's silence detection (so the
/// driver's op_timeout is not the only bound), and once the server resumes within the session
/// timeout the session is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_keepalive_against_a_paused_server_fails_and_recovers() {
    let zk = ZkEnsemble::start(ZkOptions::default()).expect("own ZooKeeper");
    let root = chroot("paused");
    let store = ZkStore::from_url(&format!("zk://{}{root}", zk.connect_string())).unwrap();
    let (s, ttl) = open(&store, Duration::from_secs(4)).await;
    assert!(matches!(
        exec(&store, StoreOp::KeepAlive { session: s }).await,
        Ok(StoreReply::KeptAlive { .. })
    ));
    zk.pause(0).expect("pause");
    let t = Instant::now();
    let r = tokio::time::timeout(ttl * 2, exec(&store, StoreOp::KeepAlive { session: s })).await;
    let took = t.elapsed();
    zk.resume(0).expect("resume");
    eprintln!("keepalive against a paused server: {r:?} after {took:?}");
    let r = r.expect("the keepalive must not hang beyond 2 × ttl");
    assert!(
        matches!(r, Err(StoreError::Indeterminate(_))),
        "a keepalive without reply is Indeterminate: {r:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match exec(&store, StoreOp::KeepAlive { session: s }).await {
            Ok(StoreReply::KeptAlive { .. }) => break,
            Err(StoreError::Indeterminate(_) | StoreError::Unavailable(_))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("keepalive after resume: {other:?}"),
        }
    }
}
