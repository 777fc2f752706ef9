//! The simulator's own tests: the correct protocol survives many seeds, a seed replays
//! exactly, and each deliberately broken variant is caught.

use rebalanser_sim::{run, run_many, run_seeds, Mode, Scenario, SimConfig, SimReport, Variant};

const STEPS: u64 = 3000;

/// Seeds for the correct-protocol runs: 500 by default; `REBALANSER_SIM_SEEDS` lowers it for
/// the mutation-testing oracle (`scripts/mutants`), which runs these tests once per mutant.
fn correct_seeds() -> u64 {
    std::env::var("REBALANSER_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn total(reports: &[SimReport], counter: &str) -> u64 {
    reports
        .iter()
        .map(|r| r.counters.get(counter).copied().unwrap_or(0))
        .sum()
}

#[test]
fn correct_protocol_survives_500_seeds() {
    let seeds = correct_seeds();
    let reports = run_many(0, seeds, STEPS, Variant::Correct, threads());
    assert_eq!(reports.len() as u64, seeds);
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| format!("seed {}: {}", r.seed, r.violations[0]))
        .collect();
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Not vacuous: the faults really bit and the protocol really worked through them.
    for counter in [
        "grant",
        "revoke",
        "suspended",
        "resumed",
        "session_lost",
        "abort",
        "coordinator",
        "name_in_use",
        "rebalance",
        "left",
    ] {
        assert!(
            total(&reports, counter) > 0,
            "no {counter} in {seeds} seeds"
        );
    }
    assert!(total(&reports, "grant") > seeds * 10);
}

#[test]
fn a_seed_replays_exactly() {
    let mut c = SimConfig::new(42, STEPS);
    c.trace = true;
    let a = run(&c);
    let b = run(&c);
    assert!(a.trace.len() > 100);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.steps, b.steps);
    let other = run(&SimConfig { seed: 43, ..c });
    assert_ne!(a.trace, other.trace, "the seed must matter");
}

fn caught(variant: Variant, what: &str) {
    caught_in(100, variant, what)
}

fn caught_in(seeds: u64, variant: Variant, what: &str) {
    let reports = run_many(0, seeds, STEPS, variant, threads());
    let hits: Vec<&String> = reports
        .iter()
        .flat_map(|r| r.violations.iter())
        .filter(|v| v.contains(what))
        .collect();
    assert!(
        !hits.is_empty(),
        "{variant:?} was not caught ({what:?}) in {seeds} seeds"
    );
}

#[test]
fn granting_before_the_claim_exists_is_caught() {
    caught(Variant::GrantBeforeClaim, "the store has no claim");
}

#[test]
fn granting_right_after_sending_the_claim_create_is_caught() {
    caught(Variant::GrantOnClaimSent, "but the store");
}

#[test]
fn removal_that_deletes_the_claim_is_caught() {
    caught(Variant::RemoveDeletesClaim, "the store has no claim");
}

#[test]
fn ignoring_the_local_lease_deadline_is_caught() {
    caught(Variant::IgnoreDeadline, "past its session's expiry");
}

#[test]
fn trusting_the_last_keepalive_on_a_zookeeper_like_store_is_caught() {
    // Rarer: it needs a lie, then a partition or pause within the one interval it costs.
    caught_in(
        1000,
        Variant::TrustLastKeepalive,
        "past its session's expiry",
    );
}

#[test]
fn a_coordinator_write_without_the_leader_and_epoch_guard_is_caught() {
    // The store-side check: an assignment lands only under the store's leader and epoch.
    caught_in(
        300,
        Variant::UnguardedRebalance,
        "while the store's epoch is",
    );
}

fn scenario_reports(scenario: Scenario, variant: Variant, seeds: u64) -> Vec<SimReport> {
    let mut template = SimConfig::new(0, STEPS);
    template.scenario = scenario;
    template.variant = variant;
    run_seeds(0, seeds, &template, threads())
}

fn caught_in_scenario(scenario: Scenario, seeds: u64, variant: Variant, what: &str) {
    let reports = scenario_reports(scenario, variant, seeds);
    assert!(
        reports
            .iter()
            .flat_map(|r| r.violations.iter())
            .any(|v| v.contains(what)),
        "{variant:?} was not caught ({what:?}) in {seeds} seeds of {scenario:?}"
    );
}

#[test]
fn the_correct_protocol_passes_the_scripted_scenarios() {
    for (scenario, counter) in [
        (Scenario::Trickle, "failover_checked"),
        (Scenario::Cutoff, "cutoff_holding"),
    ] {
        let seeds = correct_seeds().min(60);
        let reports = scenario_reports(scenario, Variant::Correct, seeds);
        let failed: Vec<String> = reports
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| format!("seed {}: {}", r.seed, r.violations[0]))
            .collect();
        assert!(failed.is_empty(), "{scenario:?}:\n{}", failed.join("\n"));
        // Not vacuous: every seed reached its fault with something at stake.
        assert_eq!(total(&reports, counter), seeds, "{scenario:?}");
    }
}

#[test]
fn a_deadline_counted_from_the_keepalive_reply_is_caught() {
    // A late reply, then a partition: the member believes it has longer than the store.
    caught_in_scenario(
        Scenario::Cutoff,
        20,
        Variant::DeadlineFromReply,
        "past its session's expiry",
    );
}

#[test]
fn no_safety_margin_is_caught() {
    // A timer fired late on a busy machine, with nothing to absorb it.
    caught_in_scenario(
        Scenario::Cutoff,
        60,
        Variant::NoSafetyMargin,
        "past its session's expiry",
    );
}

#[test]
fn a_forced_stop_one_budget_late_is_caught() {
    caught_in_scenario(
        Scenario::Cutoff,
        20,
        Variant::LateAbort,
        "past its session's expiry",
    );
}

#[test]
fn a_debounce_instead_of_a_rate_limit_is_caught_during_churn() {
    // A resource added every 50 ms restarts a debounce forever: the dead member's resources
    // never move, and the failover bound is judged while the trickle goes on.
    caught_in_scenario(
        Scenario::Trickle,
        10,
        Variant::DebounceRebalance,
        "failover bound exceeded during churn",
    );
}

#[test]
fn going_back_in_time_on_stale_reads_is_caught_by_the_stability_check() {
    let reports = run_many(0, 300, STEPS, Variant::AcceptOlderViews, threads());
    assert!(
        reports
            .iter()
            .flat_map(|r| r.violations.iter())
            .any(|v| v.contains("not stable after convergence")),
        "AcceptOlderViews was not caught in 300 seeds"
    );
}

#[test]
fn a_failing_seed_prints_a_readable_trace() {
    let mut c = SimConfig::new(3, STEPS);
    c.variant = Variant::IgnoreDeadline;
    c.trace = true;
    let r = (0..50)
        .map(|s| {
            run(&SimConfig {
                seed: s,
                ..c.clone()
            })
        })
        .find(|r| r.violations.iter().any(|v| v.contains("expiry")))
        .expect("some seed accesses past a session's expiry");
    assert!(r
        .trace
        .iter()
        .any(|l| l.contains("VIOLATION") && l.contains("expiry")));
    assert!(r.trace.iter().any(|l| l.contains("GRANT")));
}

fn barrier_reports(variant: Variant, seeds: u64) -> Vec<SimReport> {
    let mut template = SimConfig::new(0, STEPS);
    template.mode = Mode::Barrier;
    template.variant = variant;
    run_seeds(0, seeds, &template, threads())
}

/// Global-barrier mode (issue 11): the same faults, with the barrier check on top: no lease of
/// a round granted while one of an older round is still accessed. Not vacuous: rounds start.
#[test]
fn barrier_mode_survives_the_seeds_and_keeps_the_barrier() {
    let seeds = correct_seeds().min(200);
    let reports = barrier_reports(Variant::Correct, seeds);
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| format!("seed {}: {}", r.seed, r.violations[0]))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(total(&reports, "grant") > 0);
    assert!(total(&reports, "rebalance") > 0);
}

#[test]
fn barrier_mode_starting_on_an_older_rounds_acknowledgement_is_caught() {
    let reports = barrier_reports(Variant::BarrierOlderAck, 100);
    assert!(
        reports
            .iter()
            .flat_map(|r| r.violations.iter())
            .any(|v| v.starts_with("barrier:") || v.contains("barrier:")),
        "BarrierOlderAck was not caught"
    );
}
