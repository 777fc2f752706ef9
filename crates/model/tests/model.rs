//! Exhaustive (depth-bounded) checks of the real core. Each correct-core check asserts the
//! number of unique states explored, so a model that silently shrinks is noticed.

use std::collections::BTreeSet;
use std::time::Instant;

use rebalanser_core::Variant;
use rebalanser_model::stateright::{Checker, HasDiscoveries, Model};
use rebalanser_model::{RebalanserModel, Setup, HANDOVER, NO_DOUBLE_ACCESS, SAFETY};

fn check_correct(name: &str, setup: Setup, depth: usize, range: (usize, usize), handover: bool) {
    let t = Instant::now();
    let c = RebalanserModel::new(setup)
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .spawn_dfs()
        .join();
    let n = c.unique_state_count();
    println!(
        "{name}: {n} unique states ({} total), depth {depth}, {:?}",
        c.state_count(),
        t.elapsed()
    );
    for p in SAFETY {
        if let Some(path) = c.discovery(p) {
            panic!(
                "{name}: {p} violated: {:?}\n{path}\nfinal state:\n{:?}",
                c.model().violations(&path.last_state()),
                path.last_state()
            );
        }
    }
    assert!(
        !handover || c.discovery(HANDOVER).is_some(),
        "{name}: no handover: the model is vacuous"
    );
    assert!(
        (range.0..=range.1).contains(&n),
        "{name}: {n} unique states, expected {range:?}: the model changed size"
    );
}

#[test]
fn two_members_two_resources_with_faults() {
    let mut s = Setup::new(2, 2);
    s.faults = 1;
    s.delays = 0;
    check_correct("2x2 faults=1", s, 14, (500_000, 800_000), true);
}

#[test]
fn three_members_three_resources() {
    let mut s = Setup::new(3, 3);
    s.faults = 0;
    s.delays = 0;
    check_correct("3x3 no faults", s, 12, (120_000, 190_000), false);
}

#[test]
fn converges_once_faults_stop_from_every_state() {
    let mut s = Setup::new(2, 2);
    s.faults = 1;
    s.delays = 1;
    s.admin = 1;
    s.quiesce_everywhere = true;
    check_correct("2x2 quiesce everywhere", s, 10, (300_000, 460_000), false);
}

fn catch(variant: Variant, admin: u8, depth: usize) {
    let mut s = Setup::new(2, 2);
    s.faults = 0;
    s.delays = 0;
    s.admin = admin;
    s.variant = variant;
    let t = Instant::now();
    let c = RebalanserModel::new(s)
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([NO_DOUBLE_ACCESS])))
        .spawn_bfs()
        .join();
    let path = c
        .discovery(NO_DOUBLE_ACCESS)
        .unwrap_or_else(|| panic!("{variant:?} not caught ({} states)", c.unique_state_count()));
    println!(
        "{variant:?} caught after {} unique states in {:?}; counterexample ({} steps):\n{path}\nfinal state:\n{:?}",
        c.unique_state_count(),
        t.elapsed(),
        path.clone().into_actions().len(),
        path.last_state()
    );
}

#[test]
fn grant_before_claim_is_caught() {
    catch(Variant::GrantBeforeClaim, 0, 14);
}

#[test]
fn remove_deletes_claim_is_caught() {
    catch(Variant::RemoveDeletesClaim, 1, 14);
}
