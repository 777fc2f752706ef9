//! Unhealthy resources (`Member::report_unhealthy`): the resource is given back (revoked with
//! reason `Unhealthy`, its claim deleted once released), marked `unhealthy/<me>/<r>` for the
//! back-off, and the coordinator assigns it to another member meanwhile, or to nobody when it
//! fails on every member; once the back-off ends the mark goes and the resource is assigned
//! as usual again.

use std::time::Duration;

use rebalanser_core::layout::{self, MemberRec};
use rebalanser_core::store::{StoreOp, StoreReply, Write};
use rebalanser_core::{Event, MemberId, ResourceId, RevokeReason};

mod common;
use common::harness::*;
use common::{member_config, ms};

const RESOURCES: [&str; 4] = ["q1", "q2", "q3", "q4"];
const BACKOFF: Duration = Duration::from_millis(1000);

fn holding_all() -> Harness {
    holding_all_with(BACKOFF)
}

fn holding_all_with(backoff: Duration) -> Harness {
    let mut cfg = member_config("a");
    cfg.unhealthy_backoff = backoff;
    let mut h = Harness::with_config(&RESOURCES, cfg);
    h.run_for(ms(300), &mut |_| Fate::Normal);
    assert_eq!(h.grants().len(), 4, "{:?}", h.events);
    h
}

fn r(id: &str) -> ResourceId {
    ResourceId::new(id).unwrap()
}

fn has_key(h: &Harness, key: &str) -> bool {
    h.model.entries().contains_key(key)
}

/// The members whose stored assignment names `res`.
fn assigned_to(h: &Harness, res: &str) -> Vec<String> {
    let (view, _) = layout::parse_view(
        &h.layout,
        &h.model
            .entries()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect::<Vec<_>>(),
    );
    view.members
        .iter()
        .filter(|(m, mv)| {
            view.assignment_of(m, mv.session)
                .is_some_and(|(_, set)| set.contains(&r(res)))
        })
        .map(|(m, _)| m.to_string())
        .collect()
}

#[test]
fn a_resource_failing_on_the_only_member_is_given_back_and_assigned_to_nobody_until_the_backoff_ends(
) {
    let mut h = holding_all();
    let mark = h.layout.unhealthy(&MemberId::new("a").unwrap(), &r("q1"));
    let claim = h.layout.claim(&r("q1"));
    h.member.report_unhealthy(h.now, &r("q1"));
    h.pump(&mut |_| Fate::Normal);
    assert!(
        h.events.iter().any(|e| matches!(
            e,
            Event::Revoke { resource, reason: RevokeReason::Unhealthy, .. } if *resource == r("q1")
        )),
        "{:?}",
        h.events
    );
    assert_eq!(h.revokes(), 1, "only q1");
    assert!(has_key(&h, &mark), "the mark is written");
    h.release_all_revoked();
    h.run_for(ms(300), &mut |_| Fate::Normal);
    assert!(!has_key(&h, &claim), "q1's claim is given up");
    assert!(assigned_to(&h, "q1").is_empty(), "nobody else to take it");
    assert_eq!(h.grants().len(), 4, "not taken again: {:?}", h.grants());
    // The back-off ends: the mark goes, and q1 is assigned and granted again.
    h.run_for(BACKOFF, &mut |_| Fate::Normal);
    assert!(!has_key(&h, &mark));
    assert_eq!(assigned_to(&h, "q1"), ["a"]);
    let q1_grants = h.grants().iter().filter(|(x, _)| x == "q1").count();
    assert_eq!(q1_grants, 2, "{:?}", h.grants());
}

#[test]
fn a_resource_failing_here_is_assigned_to_another_member() {
    let mut h = holding_all();
    // Another member registers (its process is not simulated: the coordinator only plans).
    let other = match h
        .model
        .apply(h.now, &StoreOp::OpenSession { ttl: ms(60_000) })
    {
        Ok(StoreReply::Session { session, .. }) => session,
        r => panic!("{r:?}"),
    };
    let join = StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Create {
            key: h.layout.member(&MemberId::new("b").unwrap()),
            value: layout::encode(&MemberRec {
                weight: 1,
                joined_unix_ms: None,
                static_member: false,
            }),
            owner: Some(other),
        }],
    };
    h.model.apply(h.now, &join).unwrap();
    h.notify();
    h.release_all_revoked();
    h.run_for(ms(300), &mut |_| Fate::Normal);
    let mine: Vec<String> = RESOURCES
        .iter()
        .filter(|x| assigned_to(&h, x) == ["a"])
        .map(|x| x.to_string())
        .collect();
    assert_eq!(mine.len(), 2, "balanced first: {mine:?}");
    let victim = mine[0].clone();
    h.member.report_unhealthy(h.now, &r(&victim));
    h.pump(&mut |_| Fate::Normal);
    h.release_all_revoked();
    h.run_for(ms(300), &mut |_| Fate::Normal);
    assert_eq!(assigned_to(&h, &victim), ["b"], "moved to the other member");
    // Balance holds: b gave a one of its own in exchange.
    let count = |m: &str| {
        RESOURCES
            .iter()
            .filter(|x| assigned_to(&h, x) == [m])
            .count()
    };
    assert_eq!((count("a"), count("b")), (2, 2));
}

#[test]
fn a_mark_whose_write_died_with_its_session_is_written_again_under_the_next() {
    let mut h = holding_all_with(ms(10_000));
    let mark = h.layout.unhealthy(&MemberId::new("a").unwrap(), &r("q1"));
    let is_mark = |op: &StoreOp| writes_under(op, "/unhealthy/", |_| true);
    h.member.report_unhealthy(h.now, &r("q1"));
    h.pump(&mut first_n(1, is_mark, Fate::Held));
    let old = h.member.session().expect("a session");
    h.answer_held_with(Err(rebalanser_core::store::StoreError::SessionExpired));
    h.release_all_revoked();
    // The store still holds the old session (the reply lied): the name is free once it
    // expires there.
    h.run_for(ms(3000), &mut |_| Fate::Normal);
    let new = h.member.session().expect("a new session");
    assert_ne!(old, new);
    let owner = h.model.entries().get(&mark).and_then(|e| e.owner);
    assert_eq!(
        owner,
        Some(new),
        "{:?}",
        h.log.iter().rev().take(20).collect::<Vec<_>>()
    );
}
