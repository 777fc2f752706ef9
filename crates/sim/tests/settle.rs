//! The initial settle delay (`Config::initial_rebalance_delay`): a coordinator of a group in
//! which no live member has an assignment waits for members arriving together before the
//! first assignment, so a fleet start does not hand everything to the first member and move
//! most of it a moment later; once the group has assignments, changes are not delayed.

use std::time::Duration;

use rebalanser_core::layout::{self, MemberRec};
use rebalanser_core::store::{StoreOp, Write};
use rebalanser_core::{MemberId, Time};

mod common;
use common::harness::*;
use common::{member_config, ms};

const RESOURCES: [&str; 4] = ["q1", "q2", "q3", "q4"];

fn harness(delay: Duration) -> Harness {
    let mut cfg = member_config("a");
    cfg.initial_rebalance_delay = delay;
    Harness::with_config(&RESOURCES, cfg)
}

fn is_assignment_write(op: &StoreOp) -> bool {
    writes_under(op, "/assign/", |_| true)
}

/// When the coordinator first wrote an assignment.
fn first_assignment(h: &Harness) -> Option<Time> {
    h.times_of(is_assignment_write).first().copied()
}

/// Another member registers (its record under its own session), and the member is told.
fn join(h: &mut Harness, name: &str) {
    let session = other_session(h);
    let op = StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Create {
            key: h.layout.member(&MemberId::new(name).unwrap()),
            value: layout::encode(&MemberRec {
                weight: 1,
                joined_unix_ms: None,
                static_member: false,
            }),
            owner: Some(session),
        }],
    };
    h.model.apply(h.now, &op).expect("register");
    h.notify();
}

fn at_ms(t: Time) -> u64 {
    t.as_duration().as_millis() as u64
}

#[test]
fn the_first_assignment_waits_until_no_member_joined_for_the_delay() {
    let mut h = harness(ms(300));
    h.run_for(ms(200), &mut |_| Fate::Normal);
    assert_eq!(first_assignment(&h), None, "assigned before the delay");
    join(&mut h, "b");
    h.run_for(ms(250), &mut |_| Fate::Normal);
    assert_eq!(
        first_assignment(&h),
        None,
        "assigned less than the delay after the last join"
    );
    h.run_for(ms(200), &mut |_| Fate::Normal);
    let at = first_assignment(&h).expect("assigned once the group settled");
    assert!((500..=520).contains(&at_ms(at)), "assigned at {at}");
    // The one assignment covers both members: nothing was given to `a` to move to `b`.
    let assigned: Vec<String> = h
        .model
        .entries()
        .keys()
        .filter(|k| k.contains("/assign/"))
        .cloned()
        .collect();
    assert!(
        assigned.iter().any(|k| k.contains("/assign/a/")),
        "{assigned:?}"
    );
    assert!(
        assigned.iter().any(|k| k.contains("/assign/b/")),
        "{assigned:?}"
    );
    assert_eq!(h.revokes(), 0);
}

#[test]
fn without_a_delay_the_first_assignment_is_written_at_once() {
    let mut h = harness(Duration::ZERO);
    h.run_for(ms(200), &mut |_| Fate::Normal);
    let at = first_assignment(&h).expect("assigned");
    assert!(at_ms(at) < 50, "assigned at {at}");
}

#[test]
fn members_that_keep_arriving_hold_the_first_assignment_back_at_most_four_delays() {
    let mut h = harness(ms(300));
    for name in ["b", "c", "d", "e", "f", "g", "h"] {
        h.run_for(ms(200), &mut |_| Fate::Normal);
        join(&mut h, name);
    }
    h.run_for(ms(50), &mut |_| Fate::Normal);
    let at = first_assignment(&h).expect("assigned despite the joins");
    assert!((1200..=1220).contains(&at_ms(at)), "assigned at {at}");
}

#[test]
fn once_the_group_has_assignments_a_join_is_not_delayed() {
    let mut h = harness(ms(300));
    h.run_for(ms(400), &mut |_| Fate::Normal);
    let first = h.times_of(is_assignment_write).len();
    assert!(first > 0, "the first assignment");
    join(&mut h, "b");
    let joined = h.now;
    h.run_for(ms(50), &mut |_| Fate::Normal);
    let later: Vec<Time> = h.times_of(is_assignment_write)[first..].to_vec();
    assert!(
        later
            .first()
            .is_some_and(|t| at_ms(*t) <= at_ms(joined) + 20),
        "the join's rebalance waited: {later:?} after a join at {joined}"
    );
}
