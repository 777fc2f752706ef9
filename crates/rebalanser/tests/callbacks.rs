//! The callback adapter delivers assignments and revokes, and releases revoked leases itself.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fast, group, url, wait_until};
use rebalanser::{Callbacks, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_receive_assign_and_revoke_and_the_adapter_releases() {
    let url = url("callbacks");
    let admin = group(&url, 2).await;
    let member = fast(
        Member::builder("g").name("cb").store_url(&url),
        Duration::from_secs(1),
    )
    .join()
    .await
    .expect("join");

    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), errors.clone());
    let running = Callbacks::new()
        .on_assigned(move |lease| {
            assert!(lease.is_valid());
            l1.lock()
                .expect("lock")
                .push(format!("+{}", lease.resource()));
        })
        .on_revoked(move |r| l2.lock().expect("lock").push(format!("-{r}")))
        .on_error(move |s| l3.lock().expect("lock").push(s.to_string()))
        .run(member);
    let seen = |what: &str| log.lock().expect("lock").iter().any(|e| e == what);

    assert!(
        wait_until(Duration::from_secs(2), || seen("+r00") && seen("+r01")).await,
        "{:?}",
        log.lock().expect("lock")
    );

    admin.remove_resources(&["r00"]).await.expect("remove");
    assert!(
        wait_until(Duration::from_secs(2), || seen("-r00")).await,
        "{:?}",
        log.lock().expect("lock")
    );
    // The adapter dropped the lease after on_revoked returned: the claim goes away.
    let released = async {
        for _ in 0..100 {
            let st = admin.status().await.expect("status");
            if st.pending_handovers.is_empty() && st.members[0].claimed == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(released.await, "claim on r00 still held");
    assert!(!seen("-r01"), "r01 must not be disturbed");

    running.leave().await.expect("leave");
    assert!(seen("-r01"), "{:?}", log.lock().expect("lock"));
    assert_eq!(
        log.lock().expect("lock").as_slice(),
        ["+r00", "+r01", "-r00", "-r01"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert!(errors.lock().expect("lock").is_empty(), "{errors:?}");
    let st = admin.status().await.expect("status");
    assert!(st.members.is_empty(), "{st:#?}");
}
