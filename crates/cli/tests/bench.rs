//! `rebalanser bench`, CI-sized: a small group through every scenario must become stable,
//! move exactly the minimum on a join and a leave, never hold a resource twice, and touch the
//! store only with keepalives at rest — in one process on memory://, and as member
//! processes on SQLite and on a ZooKeeper the bench starts itself. The full-sized runs are in
//! BENCHMARKS.md.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rebalanser"))
        .arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rebalanser bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, format!("{stdout}\n{stderr}"))
}

fn result<'a>(json: &'a Value, scenario: &str) -> &'a Value {
    json["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["scenario"] == scenario))
        .unwrap_or_else(|| panic!("no {scenario} result in {json:#}"))
}

const SMALL: &[&str] = &[
    "--members",
    "3",
    "--resources",
    "60",
    "--reps",
    "1",
    "--ttl",
    "1s",
    "--json",
];

#[test]
fn a_small_group_goes_through_every_scenario() {
    let (ok, json, out) = bench(SMALL);
    assert!(ok, "{out}");
    assert_eq!(json["store"], "memory");
    every_scenario_moves_the_minimum(&json);
}

#[test]
fn member_processes_on_sqlite_go_through_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let (ok, json, out) = bench(&[SMALL, &["--store", &url]].concat());
    assert!(ok, "{out}");
    assert_eq!(json["store"], "sqlite");
    every_scenario_moves_the_minimum(&json);
}

#[test]
fn single_resource_handovers_on_a_zookeeper_the_bench_starts() {
    let (ok, json, out) = bench(&[
        "--zk-start",
        "--members",
        "4",
        "--resources",
        "3",
        "--ttl",
        "1s",
        "--reps",
        "1",
        "--scenarios",
        "start,handover,crash",
        "--handovers",
        "5",
        "--quiet",
        "100ms",
        "--json",
    ]);
    assert!(ok, "{out}");
    assert_eq!(json["store"], "zk");
    let h = result(&json, "handover");
    assert_eq!(
        (h["moved"].as_u64(), h["minimum"].as_u64()),
        (Some(5), Some(5)),
        "{h:#}"
    );
    assert_eq!(h["handover_ms"]["n"], 5, "{h:#}");
    let p50 = h["handover_ms"]["p50"].as_f64().unwrap();
    assert!(p50 > 0.0, "a handover takes time: {h:#}");
    assert_eq!(h["double_holds"], 0, "{h:#}");
    // The crash is a kill -9 of a member process: the resource moves after the store
    // expires its session, not before.
    let c = result(&json, "crash");
    assert_eq!(c["double_holds"], 0, "{c:#}");
    assert!(c["stable_ms"].as_f64().unwrap() >= 500.0, "{c:#}");
}

/// Issue 11: ten member processes started together; the first to coordinate waits for the
/// others (the initial settle delay, TTL/10 by default) instead of taking every resource and
/// handing most of them on: each resource is granted once, nothing is revoked.
fn a_fleet_start_grants_each_resource_once(store: &[&str]) {
    let (ok, json, out) = bench(
        &[
            store,
            &[
                "--members",
                "10",
                "--resources",
                "100",
                "--ttl",
                "2s",
                "--reps",
                "2",
                "--scenarios",
                "start",
                "--json",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    for r in json["results"].as_array().expect("results") {
        assert_eq!(
            (r["grants"].as_u64(), r["revokes"].as_u64()),
            (Some(100), Some(0)),
            "{r:#}"
        );
        assert_eq!(r["double_holds"], 0, "{r:#}");
    }
}

#[test]
fn a_fleet_of_processes_started_together_on_sqlite_is_granted_each_resource_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    a_fleet_start_grants_each_resource_once(&["--store", &url]);
}

#[test]
fn a_fleet_of_processes_started_together_on_zookeeper_is_granted_each_resource_once() {
    a_fleet_start_grants_each_resource_once(&["--zk-start"]);
}

fn every_scenario_moves_the_minimum(json: &Value) {
    for scenario in ["start", "join", "leave", "crash"] {
        let r = result(json, scenario);
        assert!(r["stable_ms"].as_f64().is_some(), "{scenario}: {r:#}");
        assert_eq!(r["double_holds"], 0, "{scenario}: {r:#}");
    }
    // 60 over 3 → 4: the newcomer takes 15; 4 → 3: 15 leave with it; a crash of one of 3: 20.
    for (scenario, expected) in [("join", 15), ("leave", 15), ("crash", 20)] {
        let r = result(json, scenario);
        let minimum = r["minimum"].as_u64().unwrap();
        assert_eq!(minimum, expected, "{scenario}: {r:#}");
        assert_eq!(r["moved"].as_u64(), Some(minimum), "{scenario}: {r:#}");
    }
    // The crash is noticed by the store's expiry: not before the TTL.
    assert!(result(json, "crash")["stable_ms"].as_f64().unwrap() >= 500.0);
    let start = result(json, "start");
    assert_eq!(start["moved"], 60);
    assert!(start["store"]["writes"].as_u64().unwrap() > 0, "{start:#}");
    // At rest: keepalives only, no reads or writes.
    let steady = &result(json, "steady")["store"];
    assert_eq!(
        (steady["reads"].as_u64(), steady["writes"].as_u64()),
        (Some(0), Some(0)),
        "{steady:#}"
    );
    assert!(steady["keepalives"].as_u64().unwrap() > 0, "{steady:#}");
}

#[test]
fn bad_arguments_are_refused_by_name() {
    let (ok, _, out) = bench(&["--members", "0"]);
    assert!(!ok);
    assert!(out.contains("--members"), "{out}");
    let (ok, _, out) = bench(&["--ttl", "soon"]);
    assert!(!ok);
    assert!(out.contains("invalid duration"), "{out}");
    let (ok, _, out) = bench(&["--scenarios", "explode"]);
    assert!(!ok);
    assert!(out.contains("explode"), "{out}");
    let (ok, _, out) = bench(&[
        "--scenarios",
        "handover",
        "--members",
        "2",
        "--resources",
        "3",
    ]);
    assert!(!ok);
    assert!(out.contains("--resources ≤ --members"), "{out}");
    let (ok, _, out) = bench(&["--store", "nosuch://x", "--reps", "1"]);
    assert!(!ok);
    assert!(out.contains("nosuch://x"), "{out}");
}
