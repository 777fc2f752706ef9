//! Bad input is a typed error whose message names the problem; nothing panics, nothing is
//! written.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use rebalanser::{Admin, ConfigError, Error, IdError, Member, MemoryStore, Store, StoreError};
use rebalanser_store::{BoxFuture, StoreOp, StoreResult, WatchEvent, Write};

fn msg(e: &Error) -> String {
    e.to_string()
}

#[tokio::test]
async fn bad_resource_ids_are_rejected_before_anything_is_written() {
    let url = common::url("bad-ids");
    let admin = common::group(&url, 0).await;
    let long = "x".repeat(513);
    let cases: [(&str, &str); 3] = [
        ("", "resource id is empty"),
        (&long, "513 bytes"),
        ("a\nb", "control character"),
    ];
    for (id, want) in cases {
        let e = admin
            .add_resources(&["fine", id])
            .await
            .expect_err("must be rejected");
        assert!(matches!(e, Error::InvalidId(_)), "{e:?}");
        assert!(msg(&e).contains(want), "{id:?}: {e}");
        let e = admin.remove_resources(&[id]).await.expect_err("rejected");
        assert!(msg(&e).contains(want), "{e}");
    }
    assert!(
        admin.list_resources().await.expect("list").is_empty(),
        "a batch with one bad id writes nothing"
    );
    // Unicode, spaces, slashes and dots are fine.
    admin
        .add_resources(&["café/q 1.x", "..", "日本"])
        .await
        .expect("valid ids");
    assert_eq!(admin.list_resources().await.expect("list").len(), 3);
}

#[tokio::test]
async fn bad_group_and_member_names_are_typed() {
    let e = Admin::connect("memory://x", "").expect_err("empty group");
    assert!(
        matches!(e, Error::InvalidId(IdError::Empty { kind: "group" })),
        "{e:?}"
    );
    assert!(msg(&e).contains("group id is empty"), "{e}");

    let e = Member::builder("g")
        .name("bad\tname")
        .store_url("memory://x")
        .join()
        .await
        .expect_err("control char in name");
    assert!(
        msg(&e).contains("member id") && msg(&e).contains("control character"),
        "{e}"
    );

    let e = Member::builder(&"g".repeat(600))
        .store_url("memory://x")
        .join()
        .await
        .expect_err("long group");
    assert!(msg(&e).contains("group id is 600 bytes"), "{e}");
}

#[tokio::test]
async fn invalid_durations_and_weights_name_the_field() {
    let url = common::url("bad-config");
    let _admin = common::group(&url, 0).await;
    let base = || Member::builder("g").name("m").store_url(&url);

    let e = base()
        .session_ttl(Duration::ZERO)
        .join()
        .await
        .expect_err("zero ttl");
    assert!(
        matches!(
            e,
            Error::Config(ConfigError::Zero {
                field: "session_ttl"
            })
        ),
        "{e:?}"
    );
    assert!(
        msg(&e).contains("session_ttl must be greater than zero"),
        "{e}"
    );

    let e = base()
        .keepalive_interval(Duration::ZERO)
        .join()
        .await
        .expect_err("zero");
    assert!(msg(&e).contains("keepalive_interval"), "{e}");

    let e = base()
        .session_ttl(Duration::from_secs(3))
        .stop_timeout(Duration::from_secs(5))
        .join()
        .await
        .expect_err("budget");
    assert!(
        matches!(e, Error::Config(ConfigError::Budget { .. })),
        "{e:?}"
    );
    assert!(
        msg(&e).contains("stop_timeout") && msg(&e).contains("session_ttl"),
        "{e}"
    );

    let e = base().weight(0).join().await.expect_err("weight");
    assert!(msg(&e).contains("weight must be greater than zero"), "{e}");

    let e = base()
        .session_ttl(Duration::from_secs(200_000))
        .join()
        .await
        .expect_err("huge ttl");
    assert!(
        msg(&e).contains("session_ttl") && msg(&e).contains("at most"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_groups_are_reported_by_name() {
    let url = common::url("unknown-group");
    let admin = common::group(&url, 0).await; // keeps the store alive; group "g" only
    let e = Member::builder("nope")
        .store_url(&url)
        .join()
        .await
        .expect_err("unknown group");
    assert!(matches!(e, Error::UnknownGroup { .. }), "{e:?}");
    assert!(msg(&e).contains("group nope does not exist"), "{e}");

    let other = Admin::new(admin.store().clone(), "nope").expect("valid id");
    assert!(!other.exists().await.expect("exists"));
    for e in [
        other.add_resources(&["r"]).await.expect_err("add"),
        other.remove_resources(&["r"]).await.expect_err("remove"),
        other.list_resources().await.map(|_| ()).expect_err("list"),
        other.status().await.map(|_| ()).expect_err("status"),
    ] {
        assert!(matches!(e, Error::UnknownGroup { .. }), "{e:?}");
    }

    // Opting in creates it.
    let m = Member::builder("nope")
        .store_url(&url)
        .create_group_if_missing(true)
        .join()
        .await
        .expect("created on demand");
    assert!(other.exists().await.expect("exists"));
    drop(m);
}

#[tokio::test]
async fn bad_urls_and_missing_stores_are_typed() {
    for url in ["nonsense", "memory://", "://host", "memory://a/b"] {
        let e = Member::builder("g")
            .store_url(url)
            .join()
            .await
            .expect_err("bad url");
        assert!(matches!(e, Error::BadUrl { .. }), "{url}: {e:?}");
        assert!(msg(&e).contains(&format!("{url:?}")), "{e}");
        let e = Admin::connect(url, "g").expect_err("bad url");
        assert!(matches!(e, Error::BadUrl { .. }), "{url}: {e:?}");
    }
    let e = Member::builder("g")
        .store_url("mysql://h1:3306")
        .join()
        .await
        .expect_err("unsupported");
    assert!(matches!(e, Error::UnsupportedStore { .. }), "{e:?}");
    assert!(msg(&e).contains("mysql://h1:3306"), "{e}");
    // A supported store that cannot be reached: a typed error naming it, not a hang.
    let e = Member::builder("g")
        .store_url("zk://127.0.0.1:1/x")
        .join()
        .await
        .expect_err("unreachable");
    assert!(matches!(e, Error::Store { .. }), "{e:?}");
    assert!(msg(&e).contains("zk://127.0.0.1:1/x"), "{e}");
    // The same for the other networked stores, their passwords never in the message.
    for url in [
        "etcd://app:hunter2@127.0.0.1:1/x",
        "postgres://app:hunter2@127.0.0.1:1/db?schema=x",
    ] {
        let e = Member::builder("g")
            .store_url(url)
            .join()
            .await
            .expect_err("unreachable");
        assert!(matches!(e, Error::Store { .. }), "{url}: {e:?}");
        assert!(msg(&e).contains("127.0.0.1:1"), "{e}");
        assert!(
            !msg(&e).contains("hunter2") && !format!("{e:?}").contains("hunter2"),
            "{e:?}"
        );
    }

    let e = Member::builder("g").join().await.expect_err("no store");
    assert!(matches!(e, Error::NoStore { .. }), "{e:?}");
    assert!(msg(&e).contains(".store("), "{e}");
}

#[tokio::test]
async fn foreign_data_at_the_group_key_is_not_a_group() {
    let store = MemoryStore::new();
    store
        .apply(&StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Put {
                key: "g/meta".into(),
                value: b"not json".to_vec(),
            }],
        })
        .expect("put");
    let e = Member::builder("g")
        .store(Arc::new(store.clone()))
        .join()
        .await
        .expect_err("not a group");
    assert!(matches!(e, Error::NotAGroup { .. }), "{e:?}");
    assert!(msg(&e).contains("g/meta"), "{e}");
    let admin = Admin::new(Arc::new(store), "g").expect("valid");
    let e = admin.status().await.expect_err("not a group");
    assert!(matches!(e, Error::NotAGroup { .. }), "{e:?}");
}

/// A store that is down.
struct Down;

impl Store for Down {
    fn execute(&self, _op: StoreOp) -> BoxFuture<'_, StoreResult> {
        Box::pin(async { Err(StoreError::Unavailable("connection refused".into())) })
    }
    fn watch(&self, _prefix: String) -> BoxStream<'static, WatchEvent> {
        futures::stream::empty().boxed()
    }
    fn describe(&self) -> String {
        "down://test".into()
    }

    fn keepalive_proves_previous(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn store_errors_at_join_name_the_store() {
    let e = Member::builder("g")
        .store(Arc::new(Down))
        .join()
        .await
        .expect_err("store down");
    assert!(
        matches!(
            e,
            Error::Store {
                source: StoreError::Unavailable(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        msg(&e).contains("down://test") && msg(&e).contains("connection refused"),
        "{e}"
    );
}

#[tokio::test]
async fn absurd_durations_are_typed_errors_not_panics() {
    use std::time::Duration;
    let url = "memory://absurd-durations";
    let admin = rebalanser::Admin::connect(url, "g").expect("admin");
    admin.create_group().await.expect("group");
    type Set = fn(rebalanser::MemberBuilder) -> rebalanser::MemberBuilder;
    let cases: [(&str, Set); 5] = [
        ("keepalive_interval", |b| {
            b.keepalive_interval(Duration::MAX)
        }),
        ("stop_timeout", |b| b.stop_timeout(Duration::MAX)),
        ("op_timeout", |b| b.op_timeout(Duration::MAX)),
        ("safety_margin", |b| b.safety_margin(Duration::MAX)),
        ("leave_timeout", |b| b.leave_timeout(Duration::MAX)),
    ];
    for (field, set) in cases {
        let b = rebalanser::Member::builder("g").name("m").store_url(url);
        let err = match set(b).join().await {
            Ok(_) => panic!("{field} = Duration::MAX was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(field), "{field}: {err}");
    }
}
