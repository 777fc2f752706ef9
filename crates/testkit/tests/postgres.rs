//! The PostgreSQL fixture: a server starts (as the postgres user when the test is root),
//! answers SQL, keeps its data across a kill and restart, can terminate a backend, and leaves
//! no process behind.

use rebalanser_testkit::{pid_alive, Postgres};

#[test]
fn server_starts_restarts_and_stops() {
    let pg = Postgres::start().expect("server");
    assert_eq!(pg.psql("select 40 + 2").unwrap(), "42");
    pg.psql("create table t (v int); insert into t values (7)")
        .unwrap();
    let first = pg.pid().expect("pid");
    pg.restart().expect("restart");
    assert!(!pid_alive(first), "the killed server {first} still runs");
    assert_eq!(pg.psql("select v from t").unwrap(), "7");
    // Terminating another backend is what the store's fault tests do to a member's connection.
    let n = pg
        .psql("select count(pg_terminate_backend(pid)) from pg_stat_activity where pid <> pg_backend_pid() and backend_type = 'client backend'")
        .unwrap();
    assert_eq!(n, "0");
    let second = pg.pid().expect("pid");
    drop(pg);
    assert!(!pid_alive(second), "the dropped server {second} still runs");
}
