//! `member run` refuses a session TTL its store cannot honour, naming the TTL, the store and
//! the minimum (`Store::min_session_ttl`; SQLite's is 500 ms), before it joins.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rebalanser");

#[test]
fn member_run_refuses_a_ttl_below_the_stores_minimum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let out = Command::new(BIN)
        .args(["group", "create", "--store", &url, "-g", "g"])
        .output()
        .expect("run group create");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "group create: {err}");

    // 200 ms fits the timing budget `member run` derives from it, so only the store objects.
    let out = Command::new(BIN)
        .args(["member", "run", "--store", &url, "--group", "g"])
        .args(["--session-ttl", "200ms", "--exec", "true"])
        .env("RUST_LOG", "off")
        .output()
        .expect("run member run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 200 ms TTL was accepted: {err}");
    for part in ["session TTL 200ms is below 500ms", &url, "at least 500ms"] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}
