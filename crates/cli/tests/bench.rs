//! `rebalanser bench`, CI-sized: a small group through every scenario must become stable,
//! move exactly the minimum on a join and a leave, never hold a resource twice, and touch the
//! store only with keepalives at rest. The full-sized runs are in BENCHMARKS.md.

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

#[test]
fn a_small_group_goes_through_every_scenario() {
    let (ok, json, out) = bench(&[
        "--members",
        "3",
        "--resources",
        "60",
        "--reps",
        "1",
        "--ttl",
        "1s",
        "--json",
    ]);
    assert!(ok, "{out}");
    for scenario in ["start", "join", "leave", "crash"] {
        let r = result(&json, scenario);
        assert!(r["stable_ms"].as_f64().is_some(), "{scenario}: {r:#}");
        assert_eq!(r["double_holds"], 0, "{scenario}: {r:#}");
    }
    // 60 over 3 → 4: the newcomer takes 15; 4 → 3: 15 leave with it; a crash of one of 3: 20.
    for (scenario, expected) in [("join", 15), ("leave", 15), ("crash", 20)] {
        let r = result(&json, scenario);
        let minimum = r["minimum"].as_u64().unwrap();
        assert_eq!(minimum, expected, "{scenario}: {r:#}");
        assert_eq!(r["moved"].as_u64(), Some(minimum), "{scenario}: {r:#}");
    }
    // The crash is noticed by the store's expiry: not before the TTL.
    assert!(result(&json, "crash")["stable_ms"].as_f64().unwrap() >= 500.0);
    let start = result(&json, "start");
    assert_eq!(start["moved"], 60);
    assert!(start["store"]["writes"].as_u64().unwrap() > 0, "{start:#}");
    // At rest: keepalives only, no reads or writes.
    let steady = &result(&json, "steady")["store"];
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
}
