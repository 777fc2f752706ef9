//! The `rebalanser sim` command line: output contract, exit status, replay.

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rebalanser"))
        .arg("sim")
        .args(args)
        .output()
        .expect("run rebalanser");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[test]
fn last_line_is_the_summary_and_exit_is_zero_without_violations() {
    let (ok, out) = sim(&["--seeds", "8", "--steps", "1000"]);
    let last = last_line(&out);
    assert!(ok, "{out}");
    assert!(last.starts_with("sim: seeds=8 steps="), "{last}");
    assert!(last.ends_with(" violations=0"), "{last}");
    let steps: u64 = last
        .split_whitespace()
        .find_map(|w| w.strip_prefix("steps="))
        .and_then(|v| v.parse().ok())
        .expect("steps=N");
    assert!(steps >= 8 * 1000, "{last}");
}

#[test]
fn a_broken_variant_exits_non_zero_and_names_the_seed_to_replay() {
    let (ok, out) = sim(&[
        "--seeds",
        "30",
        "--steps",
        "2000",
        "--variant",
        "ignore-deadline",
    ]);
    assert!(!ok, "{out}");
    assert!(!last_line(&out).ends_with(" violations=0"), "{out}");
    let replay = out
        .lines()
        .find_map(|l| l.strip_prefix("replay: rebalanser sim --seed "))
        .expect("a replay line");
    assert!(
        replay.contains("--variant ignore-deadline"),
        "the replay hint must name the variant: {replay}"
    );
    let seed = replay.split_whitespace().next().unwrap();
    // The failing seed replays with the same violation.
    let (ok1, a) = sim(&[
        "--seed",
        seed,
        "--steps",
        "2000",
        "--variant",
        "ignore-deadline",
    ]);
    let (_, b) = sim(&[
        "--seed",
        seed,
        "--steps",
        "2000",
        "--variant",
        "ignore-deadline",
    ]);
    assert!(!ok1);
    assert_eq!(a, b, "replay must be exact");
    assert!(
        a.contains("VIOLATION") && a.contains("past its session's expiry"),
        "{a}"
    );
}

#[test]
fn bad_arguments_are_a_clear_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_rebalanser"))
        .args(["sim", "--seeds", "many"])
        .output()
        .expect("run rebalanser");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--seeds"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_seed_range_past_the_last_seed_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_rebalanser"))
        .args(["sim", "--seed", "18446744073709551614", "--seeds", "3"])
        .output()
        .expect("run rebalanser");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("past the last seed"), "{err}");
}
