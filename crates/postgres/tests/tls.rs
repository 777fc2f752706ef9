//! TLS to PostgreSQL: a server that takes TCP clients over TLS only, with a client certificate
//! from its CA. A store given the CA and a client certificate works (schema, sessions,
//! transactions, reads, notifications); one that trusts another CA, offers no client
//! certificate, or connects in plain text is refused — and no error names the URL's password.

use std::time::Duration;

use rebalanser_conformance::works_end_to_end;
use rebalanser_postgres::{PostgresError, PostgresOptions, PostgresStore};
use rebalanser_store::Store;
use rebalanser_testkit::{Postgres, TestCerts};

fn opts() -> PostgresOptions {
    PostgresOptions {
        connect_timeout: Duration::from_secs(2),
        op_timeout: Duration::from_secs(3),
        ..PostgresOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = TestCerts::new().expect("certificates");
    let pg = tokio::task::block_in_place(|| Postgres::start_tls(&certs)).expect("a TLS server");
    let base = format!(
        "postgres://postgres:hunter2@{}/postgres?schema=tls",
        pg.addr()
    );
    let url = format!(
        "{base}&sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let store = PostgresStore::connect_with(&url, opts())
        .await
        .expect("connect over TLS");
    assert!(
        !store.describe().contains("hunter2"),
        "{}",
        store.describe()
    );
    works_end_to_end(&store, "g/", Duration::from_secs(5)).await;
    // Every connection of the store is encrypted (the server would reject the others anyway).
    let plain = pg
        .psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'rebalanser/%' AND NOT s.ssl",
        )
        .expect("psql");
    assert_eq!(plain, "0");

    // Refused: another CA, no client certificate, plain text.
    let other = TestCerts::new().expect("other certificates");
    let refused = [
        format!(
            "{base}&sslrootcert={}&sslcert={}&sslkey={}",
            other.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
        format!("{base}&sslrootcert={}", certs.ca.display()),
        base.clone(),
    ];
    for url in refused {
        match PostgresStore::connect_with(&url, opts()).await {
            Err(e @ PostgresError::Connect { .. }) => {
                let text = format!("{e} {e:?}");
                assert!(!text.contains("hunter2"), "{text}");
            }
            Err(other) => panic!("{url}: {other}"),
            Ok(_) => panic!("{url}: connected"),
        }
    }
}
