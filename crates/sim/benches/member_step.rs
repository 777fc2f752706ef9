//! Micro-benchmarks of one member step, the real core against the store model with time
//! standing still: what a change costs the member that handles it.
//!
//! - `coordinator_join`: the coordinator's pass over the listing that shows one more member
//!   (parse the view, plan with the assignor, batch the assignment writes, reconcile its own
//!   claims).
//! - `follower_own_read`: another member's pass over the read of its own assignment after
//!   that join took part of its share (the issue-10 path: not the group, only
//!   `assign/<me>/`).
//!
//! `cargo bench -p rebalanser-sim` (add `-- --quick` for a short run); BENCHMARKS.md records
//! the results.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion,
};
use rebalanser_core::layout::{self, Layout, MemberRec};
use rebalanser_core::store::{StoreOp, StoreReply, StoreResult, Write};
use rebalanser_core::{admin, Config, GroupId, Member, MemberId, OpId, ResourceId, Time};
use rebalanser_store::{MemModel, ModelConfig};

const NOW: Time = Time::ZERO;

/// (members, resources).
const SIZES: [(usize, usize); 2] = [(10, 10_000), (100, 100_000)];

fn id(s: String) -> ResourceId {
    ResourceId::new(s).expect("valid id")
}

fn config(name: &str) -> Config {
    let mut c = Config::new(
        GroupId::new("g").expect("valid id"),
        MemberId::new(name).expect("valid id"),
    );
    c.min_rebalance_interval = Duration::ZERO;
    c
}

/// Registers member `name` under a session of its own, as its process would.
fn register(model: &mut MemModel, layout: &Layout, name: &str) {
    let Ok(StoreReply::Session { session, .. }) = model.apply(
        NOW,
        &StoreOp::OpenSession {
            ttl: Duration::from_secs(10),
        },
    ) else {
        panic!("open session");
    };
    let rec = MemberRec {
        weight: 1,
        joined_unix_ms: None,
        static_member: false,
    };
    let create = StoreOp::Txn {
        conds: vec![],
        writes: vec![Write::Create {
            key: layout.member(&MemberId::new(name).expect("valid id")),
            value: layout::encode(&rec),
            owner: Some(session),
        }],
    };
    model.apply(NOW, &create).expect("register");
}

/// Runs every operation the members send against `model` at once, telling all of them
/// after each round that the group changed, until a round writes nothing.
fn settle(members: &mut [&mut Member], model: &mut MemModel) {
    loop {
        let mut wrote = false;
        for m in members.iter_mut() {
            m.handle_notify(NOW);
            while let Some((op, req)) = m.poll_op() {
                wrote |= req.is_write();
                let res = model.apply(NOW, &req);
                m.handle_reply(NOW, op, res);
                while m.poll_event().is_some() {}
            }
        }
        if !wrote {
            return;
        }
    }
}

/// A group of `r` resources and `n` members: "a", which coordinates, "b", and `n - 2`
/// registered members that never act; "a" and "b" have claimed their shares.
fn group(n: usize, r: usize) -> (MemModel, Layout, Member, Member) {
    let layout = Layout::new(&GroupId::new("g").expect("valid id"));
    let mut model = MemModel::new(ModelConfig::default());
    model
        .apply(NOW, &admin::create_group(&layout))
        .expect("group");
    let ids: Vec<ResourceId> = (0..r).map(|i| id(format!("r{i}"))).collect();
    for some in ids.chunks(10_000) {
        model
            .apply(NOW, &admin::add_resources(&layout, some))
            .expect("resources");
    }
    for i in 2..n {
        register(&mut model, &layout, &format!("m{i}"));
    }
    let mut a = Member::new(config("a"));
    a.start(NOW);
    settle(&mut [&mut a], &mut model);
    let mut b = Member::new(config("b"));
    b.start(NOW);
    settle(&mut [&mut a, &mut b], &mut model);
    assert!(a.is_coordinator().is_some() && b.is_coordinator().is_none());
    assert_eq!(a.leased_count() + b.leased_count(), 2 * r / n);
    (model, layout, a, b)
}

/// The next operation `m` sends, answered by `model`, not yet handed to `m`.
fn next_reply(m: &mut Member, model: &mut MemModel) -> (OpId, StoreResult) {
    let (op, req) = m.poll_op().expect("an operation");
    (op, model.apply(NOW, &req))
}

/// Benchmarks `m` handling the reply `res` to its operation `op` (on a fresh copy each time).
fn bench_reply(
    g: &mut BenchmarkGroup<'_, WallTime>,
    label: String,
    m: &Member,
    op: OpId,
    res: &StoreResult,
) {
    g.bench_with_input(BenchmarkId::from_parameter(label), &(), |b, _| {
        b.iter_batched(
            || (m.clone(), res.clone()),
            |(mut m, res)| {
                m.handle_reply(NOW, op, res);
                m
            },
            BatchSize::LargeInput,
        )
    });
}

fn coordinator_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("coordinator_join");
    g.sample_size(10);
    for (n, r) in SIZES {
        let (mut model, layout, mut a, _) = group(n, r);
        register(&mut model, &layout, "newcomer");
        a.handle_notify(NOW);
        let (op, listing) = next_reply(&mut a, &mut model);
        assert!(matches!(listing, Ok(StoreReply::Listed { .. })));
        bench_reply(&mut g, format!("{n}x{r}"), &a, op, &listing);
    }
    g.finish();
}

fn follower_own_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("follower_own_read");
    g.sample_size(10);
    for (n, r) in SIZES {
        let (mut model, layout, mut a, mut b) = group(n, r);
        // A member joins: the coordinator gives it a share, part of it from "b".
        register(&mut model, &layout, "newcomer");
        settle(&mut [&mut a], &mut model);
        let me = MemberId::new("b").expect("valid id");
        b.handle_notify_keys(NOW, &[layout.assign_chunk(&me, 0)]);
        let (op, res) = next_reply(&mut b, &mut model);
        let Ok(StoreReply::Listed { entries, .. }) = &res else {
            panic!("a listing: {res:?}");
        };
        let own = layout.assign_prefix(&me);
        assert!(
            !entries.is_empty() && entries.iter().all(|(k, _)| k.starts_with(&own)),
            "the member reads its own assignment alone"
        );
        bench_reply(&mut g, format!("{n}x{r}"), &b, op, &res);
    }
    g.finish();
}

criterion_group!(benches, coordinator_join, follower_own_read);
criterion_main!(benches);
