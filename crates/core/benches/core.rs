//! Micro-benchmarks of the core's per-change work: the assignor (a whole plan's worth) and
//! parsing a listing into a view. `cargo bench -p rebalanser-core` (add `-- --quick` for a
//! short run); BENCHMARKS.md records the results.

use std::collections::{BTreeMap, BTreeSet};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rebalanser_core::assignor::{assign, Assignment};
use rebalanser_core::layout::{encode, parse_view, ClaimRec, Layout};
use rebalanser_core::store::{Entry, Key};
use rebalanser_core::{GroupId, MemberId, ResourceId, SessionId};

fn members(n: usize) -> BTreeMap<MemberId, u32> {
    (0..n)
        .map(|i| (MemberId::new(format!("m{i}")).expect("valid id"), 1))
        .collect()
}

fn resources(n: usize) -> BTreeSet<ResourceId> {
    (0..n)
        .map(|i| ResourceId::new(format!("r{i}")).expect("valid id"))
        .collect()
}

/// The assignor from nothing (a start), and after one member joins a balanced group.
fn assignor(c: &mut Criterion) {
    let mut g = c.benchmark_group("assign");
    g.sample_size(10);
    for (n, r) in [(10, 10_000), (100, 100_000), (1000, 100_000)] {
        let (ms, rs) = (members(n), resources(r));
        let label = format!("{n}x{r}");
        g.bench_with_input(BenchmarkId::new("start", &label), &(), |b, _| {
            b.iter(|| assign(&ms, &rs, &Assignment::new()))
        });
        let balanced = assign(&ms, &rs, &Assignment::new());
        let mut joined = ms.clone();
        joined.insert(MemberId::new("newcomer").expect("valid id"), 1);
        g.bench_with_input(BenchmarkId::new("join", &label), &(), |b, _| {
            b.iter(|| assign(&joined, &rs, &balanced))
        });
    }
    g.finish();
}

/// A listing of `r` resources, each claimed: what every member parses after a change today.
fn listing(layout: &Layout, r: usize) -> Vec<(Key, Entry)> {
    let entry = |value: Vec<u8>, owner: Option<SessionId>| Entry {
        value,
        version: 0,
        create_rev: 1,
        mod_rev: 1,
        owner,
    };
    let mut out = Vec::with_capacity(2 * r);
    for id in resources(r) {
        out.push((layout.resource(&id), entry(b"{}".to_vec(), None)));
        let rec = ClaimRec {
            member: MemberId::new("m0").expect("valid id"),
        };
        out.push((layout.claim(&id), entry(encode(&rec), Some(SessionId(1)))));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn parse(c: &mut Criterion) {
    let layout = Layout::new(&GroupId::new("g").expect("valid id"));
    let mut g = c.benchmark_group("parse_view");
    g.sample_size(10);
    for r in [10_000, 100_000] {
        let entries = listing(&layout, r);
        g.bench_with_input(BenchmarkId::from_parameter(r), &(), |b, _| {
            b.iter(|| parse_view(&layout, &entries))
        });
    }
    g.finish();
}

criterion_group!(benches, assignor, parse);
criterion_main!(benches);
