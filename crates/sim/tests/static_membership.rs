//! Static membership (`Config::static_membership`, as Kafka's KIP-345): a restart under the
//! same name takes the previous session's member record over and is handed its assignment,
//! so nothing moves to other members; the previous session's claims still rule until they are
//! deleted (a stop for a restart) or expire (a crash); a live instance whose record was taken
//! over gives everything up and leaves; a dynamic member never takes a record over.

use rebalanser_core::layout::{self, MemberRec};
use rebalanser_core::store::{StoreOp, Write};
use rebalanser_core::{Config, Event, Member, MemberId, SessionId};

mod common;
use common::harness::*;
use common::{member_config, ms};

const RESOURCES: [&str; 4] = ["q1", "q2", "q3", "q4"];

/// With an initial settle delay: a restarted static member's group is not a fresh one (its
/// assignment carries over), so it is not delayed.
fn config(static_membership: bool) -> Config {
    let mut cfg = member_config("a");
    cfg.static_membership = static_membership;
    cfg.initial_rebalance_delay = ms(500);
    cfg
}

/// `a` holds every resource, as coordinator.
fn holding_all(static_membership: bool) -> Harness {
    let mut h = Harness::with_config(&RESOURCES, config(static_membership));
    h.run_for(ms(1000), &mut |_| Fate::Normal);
    assert_eq!(h.grants().len(), 4, "{:?}", h.events);
    h
}

/// A new process under the same name and configuration; the old one stops running (its
/// session lives on in the store until it expires). Returns the old session, if it had one.
fn restart(h: &mut Harness, static_membership: bool) -> Option<SessionId> {
    let old = h.member.session();
    h.member = Member::new(config(static_membership));
    h.member.start(h.now);
    h.events.clear();
    old
}

fn moved_in_rebalances(h: &Harness) -> Vec<usize> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Rebalanced { report } => Some(report.moved()),
            _ => None,
        })
        .collect()
}

fn member_record_owner(h: &Harness) -> Option<SessionId> {
    h.model.entries()[&h.layout.member(&MemberId::new("a").unwrap())].owner
}

#[test]
fn a_crashed_static_member_restarted_takes_its_record_over_and_gets_the_same_resources() {
    let mut h = holding_all(true);
    let old = restart(&mut h, true).expect("a session");
    h.run_for(ms(200), &mut |_| Fate::Normal);
    assert!(
        h.events.contains(&Event::TookOver { from: old }),
        "{:?}",
        h.events
    );
    let new = h.member.session().expect("a session");
    assert_eq!(member_record_owner(&h), Some(new));
    // The old session's claims rule until it expires (2 s TTL): nothing granted before.
    assert!(h.grants().is_empty(), "{:?}", h.grants());
    h.run_for(ms(3000), &mut |_| Fate::Normal);
    let granted: Vec<String> = h.grants().into_iter().map(|(r, _)| r).collect();
    assert_eq!(granted, RESOURCES, "{:?}", h.events);
    assert_eq!(
        moved_in_rebalances(&h),
        vec![0],
        "the assignment was rewritten, not moved"
    );
}

#[test]
fn a_static_member_stopped_for_a_restart_is_granted_again_at_once_with_nothing_moved() {
    let mut h = holding_all(true);
    let stopped_at = h.now;
    h.member.stop_for_restart(h.now);
    h.pump(&mut |_| Fate::Normal);
    assert_eq!(h.revokes(), 4);
    h.release_all_revoked();
    h.pump(&mut |_| Fate::Normal);
    assert!(h.member.is_closed(), "{:?}", h.events);
    assert!(h.events.contains(&Event::Left));
    // The record stays (the session was not closed); the claims and the leader key are gone.
    let old = h.member.session();
    assert_eq!(old, None, "the member no longer has a session");
    let keys: Vec<String> = h.model.entries().keys().cloned().collect();
    assert!(keys.iter().all(|k| !k.contains("/claims/")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.ends_with("/leader")), "{keys:?}");
    assert!(member_record_owner(&h).is_some(), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("/draining/")),
        "a stop for a restart is not a leave: {keys:?}"
    );

    restart(&mut h, true);
    h.run_for(ms(300), &mut |_| Fate::Normal);
    let granted: Vec<String> = h.grants().into_iter().map(|(r, _)| r).collect();
    assert_eq!(granted, RESOURCES, "{:?}", h.events);
    assert!(
        h.now.saturating_since(stopped_at) < ms(1000),
        "granted well before the old session's expiry"
    );
    // Within 300 ms of the restart, although the settle delay is 500 ms: the assignment
    // carried over, so the group was not a fresh one.
    assert_eq!(moved_in_rebalances(&h), vec![0]);
}

#[test]
fn a_dynamic_member_restarted_waits_for_its_old_record_to_expire() {
    let mut h = holding_all(false);
    let old = restart(&mut h, false).expect("a session");
    h.run_for(ms(500), &mut |_| Fate::Normal);
    assert!(
        h.events.contains(&Event::NameInUse { holder: old }),
        "{:?}",
        h.events
    );
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::TookOver { .. } | Event::Joined { .. })));
    assert_eq!(member_record_owner(&h), Some(old));
}

#[test]
fn a_static_member_does_not_take_over_a_dynamic_record() {
    let mut h = holding_all(false);
    let old = restart(&mut h, true).expect("a session");
    h.run_for(ms(500), &mut |_| Fate::Normal);
    assert!(h.events.contains(&Event::NameInUse { holder: old }));
    assert_eq!(member_record_owner(&h), Some(old));
}

#[test]
fn a_live_instance_whose_record_was_taken_over_gives_everything_up_and_leaves() {
    let mut h = holding_all(true);
    // Another process under the same static name takes the record over.
    let key = h.layout.member(&MemberId::new("a").unwrap());
    let record = h.model.entries()[&key].clone();
    let other = other_session(&mut h);
    let takeover = StoreOp::Txn {
        conds: vec![],
        writes: vec![
            Write::Delete { key: key.clone() },
            Write::Create {
                key: key.clone(),
                value: layout::encode(&MemberRec {
                    weight: 1,
                    joined_unix_ms: None,
                    static_member: true,
                }),
                owner: Some(other),
            },
        ],
    };
    h.model.apply(h.now, &takeover).expect("takeover");
    assert!(h.model.entries()[&key].create_rev > record.create_rev);
    h.notify();
    assert!(
        h.events.contains(&Event::Replaced { by: other }),
        "{:?}",
        h.events
    );
    assert_eq!(h.revokes(), 4);
    h.release_all_revoked();
    h.run_for(ms(300), &mut |_| Fate::Normal);
    assert!(h.member.is_closed(), "{:?}", h.events);
    let keys: Vec<String> = h.model.entries().keys().cloned().collect();
    assert!(keys.iter().all(|k| !k.contains("/claims/")), "{keys:?}");
    // The new instance's record is untouched.
    assert_eq!(h.model.entries()[&key].owner, Some(other));
}

/// A coordinator stopping for a restart leaves no leader key behind, even holding nothing (it
/// would be closed in the pass that resigns) and even when its first resignation fails.
#[test]
fn a_coordinator_stopping_for_a_restart_resigns_before_it_stops() {
    let mut h = Harness::with_config(&[], config(true));
    h.run_for(ms(1000), &mut |_| Fate::Normal);
    assert!(h.member.is_coordinator().is_some());
    let leader = format!("{}leader", h.layout.prefix());
    assert!(h.model.entries().contains_key(&leader));
    h.member.stop_for_restart(h.now);
    let is_resign =
        |op: &StoreOp| writes_under(op, "/leader", |w| matches!(w, Write::Delete { .. }));
    h.run_for(ms(1000), &mut first_n(1, is_resign, Fate::Unavailable));
    assert!(
        h.member.is_closed(),
        "{:?}",
        h.log.iter().rev().take(10).collect::<Vec<_>>()
    );
    assert!(
        !h.model.entries().contains_key(&leader),
        "the leader key outlives the member"
    );
    assert!(
        h.times_of(is_resign).len() >= 2,
        "the failed resignation was sent again"
    );
    // The record stays for the next instance.
    assert!(member_record_owner(&h).is_some());
}
