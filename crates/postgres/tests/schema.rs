//! Opening a PostgreSQL store on a schema it cannot use, or a server it cannot reach: the typed
//! `PostgresError` from `PostgresStore::connect`, the contract's error from an operation, the
//! other application's tables left untouched, and the password in the URL never echoed.
//!
//! Run: `cargo test -p rebalanser-postgres --test schema`

use std::time::{Duration, Instant};

use rebalanser_postgres::schema::SCHEMA_VERSION;
use rebalanser_postgres::{PostgresError, PostgresOptions, PostgresStore};
use rebalanser_store::{Store, StoreError, StoreOp, Write};
use rebalanser_testkit::{FaultProxy, Postgres};

mod common;
use common::*;

/// Every kind of operation, for checking that each answers the same error.
fn every_op() -> Vec<StoreOp> {
    vec![
        StoreOp::Get {
            key: "g/k".into(),
            linearizable: true,
        },
        StoreOp::List {
            prefix: "g/".into(),
            linearizable: true,
        },
        StoreOp::OpenSession {
            ttl: Duration::from_secs(1),
        },
        StoreOp::KeepAlive {
            session: rebalanser_core::SessionId(1),
        },
        StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Put {
                key: "g/k".into(),
                value: b"v".to_vec(),
            }],
        },
    ]
}

/// Everything in `schema` that a store could change: its relations (tables, indexes,
/// sequences) with their columns, and every row of its tables with the row's `xmin` (so even
/// an update writing the same values shows).
fn fingerprint(pg: &Postgres, schema: &str, tables: &[&str]) -> String {
    let mut out = psql(
        pg,
        &format!(
            "SELECT string_agg(c.relname::text || ':' || c.relkind::text || ':' || coalesce(( \
               SELECT string_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod), ',' \
                                 ORDER BY a.attnum) \
               FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), ''), ';' \
               ORDER BY c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{schema}'"
        ),
    );
    for t in tables {
        out.push('\n');
        out.push_str(&psql(
            pg,
            &format!(
                "SELECT string_agg(t.xmin::text || '=' || t::text, ';' ORDER BY t::text) \
                 FROM {schema}.{t} t"
            ),
        ));
    }
    out
}

/// A schema holding another application's `meta`, `kv` and `sessions` (and one holding only
/// some of them, or a `meta` of the right shape naming another application): `connect` fails
/// with `PostgresError::Foreign` naming the schema, every operation answers `Invalid`, and the
/// tables and rows are exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_schema_is_refused_and_left_untouched() {
    let pg = Postgres::shared();
    let cases: [(&str, &[&str], String); 3] = [
        (
            "all three names",
            &["meta", "kv", "sessions"],
            "CREATE TABLE {s}.meta (id INT PRIMARY KEY, note TEXT); \
             INSERT INTO {s}.meta VALUES (1, 'theirs'), (2, 'also theirs'); \
             CREATE TABLE {s}.kv (k TEXT PRIMARY KEY, v TEXT); \
             INSERT INTO {s}.kv VALUES ('g/k', 'their value'); \
             CREATE TABLE {s}.sessions (user_id INT, token TEXT); \
             INSERT INTO {s}.sessions VALUES (1, 'abc');"
                .into(),
        ),
        (
            "only kv",
            &["kv"],
            "CREATE TABLE {s}.kv (key TEXT PRIMARY KEY, value BYTEA); \
             INSERT INTO {s}.kv VALUES ('g/k', 'x');"
                .into(),
        ),
        (
            "a meta of our shape naming another application",
            &["meta", "kv", "sessions"],
            "CREATE TABLE {s}.meta (id INT PRIMARY KEY, app TEXT NOT NULL, \
               schema_version INT NOT NULL, rev BIGINT NOT NULL); \
             INSERT INTO {s}.meta VALUES (1, 'someone-else', 1, 5); \
             CREATE TABLE {s}.sessions (id BIGINT PRIMARY KEY, ttl_us BIGINT, renewals BIGINT); \
             CREATE TABLE {s}.kv (key TEXT PRIMARY KEY, value BYTEA, version BIGINT, \
               create_rev BIGINT, mod_rev BIGINT, owner BIGINT); \
             INSERT INTO {s}.kv VALUES ('g/k', 'x', 0, 1, 1, NULL);"
                .into(),
        ),
    ];
    for (what, tables, ddl) in cases {
        let schema = unique_schema("foreign");
        psql(
            pg,
            &format!("CREATE SCHEMA {schema}; {}", ddl.replace("{s}", &schema)),
        );
        let before = fingerprint(pg, &schema, tables);
        let url = url(pg, &schema);
        match PostgresStore::connect(&url).await {
            Err(e @ PostgresError::Foreign { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&schema), "{what}: {msg}");
            }
            other => panic!("{what}: connect gave {other:?}"),
        }
        let store = PostgresStore::from_url(&url).expect("url");
        for op in every_op() {
            match store.execute(op.clone()).await {
                Err(StoreError::Invalid(msg)) => {
                    assert!(msg.contains(&schema), "{what}: {op:?}: {msg}")
                }
                other => panic!("{what}: {op:?} gave {other:?}"),
            }
        }
        assert_eq!(
            fingerprint(pg, &schema, tables),
            before,
            "{what}: the foreign schema was changed"
        );
    }
}

/// A Rebalanser schema of another version: `connect` fails with `PostgresError::SchemaVersion`
/// naming both versions, operations answer `Invalid`, and the schema is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_another_version_is_refused() {
    let pg = Postgres::shared();
    let schema = unique_schema("version");
    let url = url(pg, &schema);
    let store = PostgresStore::connect(&url)
        .await
        .expect("create the schema");
    put(&store, "g/k", b"v").await.expect("put");
    drop(store);
    psql(pg, &format!("UPDATE {schema}.meta SET schema_version = 99"));
    let tables = ["meta", "kv", "sessions"];
    let before = fingerprint(pg, &schema, &tables);
    match PostgresStore::connect(&url).await {
        Err(PostgresError::SchemaVersion {
            schema: s,
            found: 99,
            supported,
            ..
        }) => {
            assert_eq!(s, schema);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("connect gave {other:?}"),
    }
    let store = PostgresStore::from_url(&url).expect("url");
    for op in every_op() {
        match store.execute(op.clone()).await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("99"), "{op:?}: {msg}"),
            other => panic!("{op:?} gave {other:?}"),
        }
    }
    assert_eq!(fingerprint(pg, &schema, &tables), before);
}

/// A server that refuses connections, and one that accepts them and then says nothing (a
/// silent partition): `connect` fails with `PostgresError::Connect` within `connect_timeout`
/// (plus scheduling slack), and every operation answers `Unavailable` within its bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_fast() {
    let opts = PostgresOptions {
        connect_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(1),
        ..PostgresOptions::default()
    };
    let slack = Duration::from_secs(2);
    // Nothing listens on a port just released.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = FaultProxy::start(Postgres::shared().addr()).expect("proxy");
    proxy.blackhole();
    for (what, addr) in [("refused", refused), ("silent", proxy.addr())] {
        let url = url_at(addr, "unreachable", "");
        let t = Instant::now();
        match PostgresStore::connect_with(&url, opts.clone()).await {
            Err(PostgresError::Connect { .. }) => {}
            other => panic!("{what}: connect gave {other:?}"),
        }
        assert!(
            t.elapsed() <= opts.connect_timeout + slack,
            "{what}: connect took {:?}",
            t.elapsed()
        );
        let store = PostgresStore::from_url_with(&url, opts.clone()).expect("url");
        for op in every_op() {
            let t = Instant::now();
            match store.execute(op.clone()).await {
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("{what}: {op:?} gave {other:?}"),
            }
            assert!(
                t.elapsed() <= opts.connect_timeout + slack,
                "{what}: {op:?} took {:?}",
                t.elapsed()
            );
        }
    }
}

/// The password in the URL (user info or `password=` parameter) appears in no error message
/// (`Display` or `Debug`), in `describe()`, or in the store's `Debug`, whether the server is
/// unreachable, the schema foreign or of another version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_echoed() {
    const PW: &str = "Sup3r-Secret-Pw";
    let pg = Postgres::shared();
    let foreign = unique_schema("pwforeign");
    psql(
        pg,
        &format!("CREATE SCHEMA {foreign}; CREATE TABLE {foreign}.kv (k TEXT)"),
    );
    let versioned = unique_schema("pwversion");
    PostgresStore::connect(&url(pg, &versioned))
        .await
        .expect("create the schema");
    psql(
        pg,
        &format!("UPDATE {versioned}.meta SET schema_version = 99"),
    );
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let opts = PostgresOptions {
        connect_timeout: Duration::from_secs(1),
        ..PostgresOptions::default()
    };
    let mut urls = Vec::new();
    for (addr, schema) in [
        (refused, "pw".to_string()),
        (pg.addr(), foreign.clone()),
        (pg.addr(), versioned.clone()),
    ] {
        // The server trusts every local connection, so a password does not stop them.
        urls.push(format!(
            "postgres://postgres:{PW}@{addr}/postgres?schema={schema}"
        ));
        urls.push(format!(
            "postgres://{addr}/postgres?user=postgres&password={PW}&schema={schema}"
        ));
    }
    urls.push(format!(
        "postgres://postgres:{PW}@{refused}/postgres?bogus=1"
    ));
    let mut texts = Vec::new();
    for url in &urls {
        match PostgresStore::connect_with(url, opts.clone()).await {
            Ok(_) => panic!("{url}: connected"),
            Err(e) => texts.extend([e.to_string(), format!("{e:?}")]),
        }
        let Ok(store) = PostgresStore::from_url_with(url, opts.clone()) else {
            continue;
        };
        texts.extend([store.describe(), format!("{store:?}")]);
        for op in every_op() {
            match store.execute(op).await {
                Ok(r) => panic!("{url}: {r:?}"),
                Err(e) => texts.extend([e.to_string(), format!("{e:?}")]),
            }
        }
    }
    assert!(texts.len() > 40);
    for t in &texts {
        assert!(!t.contains(PW), "the password was echoed: {t}");
    }
    assert!(
        texts.iter().any(|t| t.contains("***")),
        "no message names the server at all"
    );
}
