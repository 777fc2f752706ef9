//! Deleting a group: refused while members live (it would delete their claims), complete
//! once they are gone.

use std::time::Duration;

mod common;

use rebalanser::{Admin, Error, Member};

#[tokio::test]
async fn delete_group_is_refused_while_a_member_lives_and_complete_after() {
    let url = "memory://admin-delete-group";
    let admin = Admin::connect(url, "g").expect("admin");
    admin.create_group().await.expect("create");
    admin.add_resources(&["a", "b", "c"]).await.expect("add");
    let mut m = common::fast(
        Member::builder("g").name("m").store_url(url),
        Duration::from_millis(1000),
    )
    .join()
    .await
    .expect("join");
    let lease = tokio::time::timeout(Duration::from_secs(5), m.next_lease())
        .await
        .expect("a lease in time")
        .expect("a lease");

    match admin.delete_group().await {
        Err(e @ Error::GroupInUse { .. }) => {
            assert!(e.to_string().contains("live session"), "{e}")
        }
        other => panic!("delete with a live member: {other:?}"),
    }
    // Nothing was deleted: resources, and the member's claim, are all still there.
    let status = admin.status().await.expect("status");
    assert_eq!(admin.list_resources().await.expect("list").len(), 3);
    assert!(
        status.resources.iter().any(|r| r.claim.is_some()),
        "the live claim survives"
    );
    assert!(lease.is_valid());

    drop(lease);
    tokio::time::timeout(Duration::from_secs(5), m.leave())
        .await
        .expect("leave in time")
        .expect("leave");
    admin
        .delete_group()
        .await
        .expect("delete once nobody is in");
    assert!(!admin.exists().await.expect("exists"));
    assert!(matches!(
        admin.list_resources().await,
        Err(Error::UnknownGroup { .. })
    ));
    assert!(matches!(
        admin.delete_group().await,
        Err(Error::UnknownGroup { .. })
    ));
    admin.create_group().await.expect("re-create");
    assert!(admin.list_resources().await.expect("list").is_empty());
}
