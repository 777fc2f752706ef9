//! Rebalance planning, a pure function of the view: the assignor's target, and the chunk
//! writes (with their version conditions) that bring the stored assignment to it, batched
//! under the transaction limits with removals before additions. Sends nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::assignor::{self, Assignment};
use crate::ids::{Epoch, MemberId, ResourceId, SessionId};
use crate::layout::{self, ChunkRec, MemberView};
use crate::store::{Cond, Write};

use super::report::{self, SharedReport};
use super::Member;

impl Member {
    /// The writes that bring the stored assignment to the assignor's target, or `None` when it
    /// is already there. A static member's assignment stored for an earlier session of its
    /// name is its previous assignment (`Config::static_membership`). When they exceed `max_txn_writes`, only a first batch is returned and
    /// the next plan (from a fresh read) continues: every removal is written before any
    /// addition, so intermediate states have gaps, never a resource in two sets (PITFALLS 21).
    pub(super) fn plan(&self, epoch: Epoch, seq: u64) -> Option<Plan> {
        let v = &self.view.group;
        let live = v.live_members();
        let weights: BTreeMap<MemberId, u32> =
            live.iter().map(|(m, mv)| (m.clone(), mv.weight)).collect();
        let mut prev = Assignment::new();
        // Static members restarted under a new session: their previous session's assignment
        // is theirs (nothing moves), rewritten for the new session.
        let mut carried = BTreeSet::new();
        for (m, mv) in &live {
            if let Some((_, set)) = v.assignment_of(m, mv.session) {
                prev.insert(m.clone(), set);
            } else if let Some((_, _, set)) = mv
                .static_member
                .then(|| v.assign.get(m).and_then(|c| layout::complete_set(c)))
                .flatten()
            {
                prev.insert(m.clone(), set);
                carried.insert(m.clone());
            }
        }
        let next = assignor::assign_avoiding(&weights, &v.resources, &prev, &v.avoided());
        let (finals, removals) = self.write_groups(&live, &prev, &carried, &next, (epoch, seq));
        let total: usize = finals.iter().map(|g| g.writes.len()).sum();
        if total == 0 {
            return None;
        }
        let total_bytes: usize = finals.iter().flat_map(|g| &g.writes).map(write_bytes).sum();
        let fits = total <= self.cfg.max_txn_writes && total_bytes <= self.cfg.max_txn_bytes;
        let mut groups = if fits {
            finals
        } else if !removals.is_empty() {
            removals
        } else {
            finals
        };
        // When a rebalance takes several transactions, the member whose stored assignment is
        // oldest goes first: in name order, a steady trickle of changes to earlier members
        // would starve later ones, and with them a dead member's resources (DESIGN §1.4).
        groups.sort_by_key(|g| g.age);
        let (conds, writes, partial) = self.batch(groups, !fits);
        let initial = prev.is_empty();
        Some(Plan {
            report: Some(Arc::new(report::report(epoch, v, &next, initial))),
            initial,
            partial,
            conds,
            writes,
        })
    }

    /// Per member whose stored assignment differs from `next`: the writes of its final set
    /// (`finals`), and, when it loses something, the writes of what it keeps (`removals`, the
    /// removal step). Assignments of members no longer live are deleted in both.
    fn write_groups(
        &self,
        live: &BTreeMap<MemberId, MemberView>,
        prev: &Assignment,
        carried: &BTreeSet<MemberId>,
        next: &Assignment,
        (epoch, seq): (Epoch, u64),
    ) -> (Vec<WriteGroup>, Vec<WriteGroup>) {
        let v = &self.view.group;
        let existing = |m: &MemberId| v.assign.get(m).map(Vec::as_slice).unwrap_or(&[]);
        let mut finals: Vec<WriteGroup> = Vec::new();
        let mut removals: Vec<WriteGroup> = Vec::new();
        for (m, set) in next {
            // Barrier mode: every assignment is written again for the round.
            let old_round = existing(m)
                .iter()
                .any(|c| c.rec.round != self.barrier_round());
            let unchanged = match prev.get(m) {
                // A carried assignment names the previous session: always rewritten.
                Some(p) => p == set && !carried.contains(m) && !old_round,
                None => set.is_empty() && existing(m).is_empty(),
            };
            if unchanged {
                continue;
            }
            // `next` assigns exactly the live members (they are the assignor's weights).
            let session = live[m].session;
            let write = |set: &BTreeSet<ResourceId>| {
                self.member_writes(m, session, set, existing(m), (epoch, seq))
            };
            if let Some(p) = prev.get(m).filter(|p| !p.is_subset(set)) {
                let keep: BTreeSet<ResourceId> = p.intersection(set).cloned().collect();
                removals.push(write(&keep));
            }
            finals.push(write(set));
        }
        for (m, chunks) in &v.assign {
            if live.contains_key(m) {
                continue;
            }
            let mut g = WriteGroup {
                age: chunks_age(chunks),
                ..WriteGroup::default()
            };
            for c in chunks {
                g.conds.push(Cond::Version(c.key.clone(), c.version));
                g.writes.push(Write::Delete { key: c.key.clone() });
            }
            removals.push(g.clone());
            finals.push(g);
        }
        (finals, removals)
    }

    /// The first transaction's worth of `groups`, in order, within the transaction limits:
    /// `(conds, writes, partial)`, `partial` when groups were left out (or already `partial`).
    fn batch(&self, groups: Vec<WriteGroup>, partial: bool) -> (Vec<Cond>, Vec<Write>, bool) {
        let mut partial = partial;
        let (mut conds, mut writes) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for g in groups {
            // One member's chunks are never split across transactions (that would tear it);
            // a single oversized group still goes alone.
            let size: usize = g.writes.iter().map(write_bytes).sum();
            let full = writes.len() + g.writes.len() > self.cfg.max_txn_writes
                || bytes + size > self.cfg.max_txn_bytes;
            if !writes.is_empty() && full {
                partial = true;
                break;
            }
            bytes += size;
            conds.extend(g.conds);
            writes.extend(g.writes);
        }
        (conds, writes, partial)
    }

    /// The chunk writes that make `m`'s stored assignment `set` (no chunks for an empty set).
    fn member_writes(
        &self,
        m: &MemberId,
        session: SessionId,
        set: &BTreeSet<ResourceId>,
        existing: &[layout::ChunkView],
        (epoch, seq): (Epoch, u64),
    ) -> WriteGroup {
        let mut g = WriteGroup {
            age: chunks_age(existing),
            ..WriteGroup::default()
        };
        let chunks = if set.is_empty() {
            Vec::new()
        } else {
            split(set, self.cfg.assignment_chunk_bytes)
        };
        let n = chunks.len() as u32;
        for (i, part) in chunks.into_iter().enumerate() {
            let i = i as u32;
            let key = self.layout.assign_chunk(m, i);
            g.conds.push(version_cond(existing, &key));
            let rec = ChunkRec {
                session,
                epoch,
                seq,
                i,
                n,
                resources: part,
                round: self.barrier_round(),
            };
            g.writes.push(Write::Put {
                key,
                value: layout::encode(&rec),
            });
        }
        for c in existing.iter().filter(|c| c.rec.i >= n) {
            g.conds.push(Cond::Version(c.key.clone(), c.version));
            g.writes.push(Write::Delete { key: c.key.clone() });
        }
        g
    }
}

impl Member {
    /// Barrier mode: the round of the barrier record (the round being stopped, or started);
    /// 0 in per-resource mode, where chunks carry no round.
    pub(super) fn barrier_round(&self) -> u64 {
        match (self.view.group.mode, self.view.group.barrier) {
            (crate::layout::Mode::Barrier, Some((b, _))) => b.round,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct WriteGroup {
    conds: Vec<Cond>,
    writes: Vec<Write>,
    /// (epoch, seq) of the oldest stored chunk it replaces; zero when there is none.
    age: (Epoch, u64),
}

#[derive(Clone)]
pub(super) struct Plan {
    /// Reported as a rebalance once committed (`None`: a barrier record written alone).
    pub(super) report: Option<SharedReport>,
    /// No live member has an assignment for its session yet: the group's first assignment
    /// (held back by the initial settle delay).
    pub(super) initial: bool,
    pub(super) partial: bool,
    pub(super) conds: Vec<Cond>,
    pub(super) writes: Vec<Write>,
}

fn chunks_age(chunks: &[layout::ChunkView]) -> (Epoch, u64) {
    chunks
        .iter()
        .map(|c| (c.rec.epoch, c.rec.seq))
        .min()
        .unwrap_or((Epoch(0), 0))
}

/// Encoded size of a write, for the transaction size limit.
fn write_bytes(w: &Write) -> usize {
    match w {
        Write::Create { key, value, .. } | Write::Put { key, value } => key.len() + value.len(),
        Write::Delete { key } => key.len(),
    }
}

fn version_cond(existing: &[layout::ChunkView], key: &str) -> Cond {
    match existing.iter().find(|c| c.key == key) {
        Some(c) => Cond::Version(key.to_string(), c.version),
        None => Cond::Absent(key.to_string()),
    }
}

/// Splits a set into chunks whose encoded size stays under `max_bytes` (with room for the
/// record's other fields).
fn split(set: &BTreeSet<ResourceId>, max_bytes: usize) -> Vec<Vec<ResourceId>> {
    let budget = max_bytes.saturating_sub(256).max(64);
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for r in set {
        // Worst case of JSON-encoding an id: 2 bytes per byte (serde_json escapes only `"`,
        // `\` and control characters, and ids have no control characters: `ids::validate`),
        // plus its quotes and a comma. `split_fills_chunks_with_the_worst_ids` checks it.
        let cost = r.as_str().len() * 2 + 3;
        if size + cost > budget && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            size = 0;
        }
        size += cost;
        if let Some(last) = out.last_mut() {
            last.push(r.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoded chunk record with every other field at its longest.
    fn encoded_len(resources: &[ResourceId]) -> usize {
        let rec = ChunkRec {
            session: SessionId(u64::MAX),
            epoch: Epoch(u64::MAX),
            seq: u64::MAX,
            i: u32::MAX,
            n: u32::MAX,
            resources: resources.to_vec(),
            round: u64::MAX,
        };
        layout::encode(&rec).len()
    }

    #[test]
    fn split_bounds_every_chunk() {
        let set: BTreeSet<ResourceId> = (0..5000)
            .map(|i| ResourceId::new(format!("resource-{i:06}")).unwrap())
            .collect();
        let chunks = split(&set, 4096);
        assert!(chunks.len() > 1);
        let total: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(total, 5000);
        for c in &chunks {
            assert!(encoded_len(c) <= 4096);
        }
    }

    /// Ids made only of the characters JSON escapes cost the most: the chunks still fit, and
    /// none is split early (mutants of the cost and the comparison; a chunk of a tenth of its
    /// room multiplies the writes of a rebalance).
    #[test]
    fn split_fills_chunks_with_the_worst_ids() {
        for (len, max_bytes) in [(9, 2356), (1, 300), (40, 4096), (512, 4096), (3, 65536)] {
            let set: BTreeSet<ResourceId> = (0..(1u32 << len.min(12)))
                .map(|bits| {
                    let id: String = (0..len)
                        .map(|k| {
                            if k < 32 && bits >> k & 1 == 1 {
                                '"'
                            } else {
                                '\\'
                            }
                        })
                        .collect();
                    ResourceId::new(id).unwrap()
                })
                .collect();
            let chunks = split(&set, max_bytes);
            let total: usize = chunks.iter().map(Vec::len).sum();
            assert_eq!(total, set.len());
            let room = max_bytes.saturating_sub(256).max(64);
            for (n, c) in chunks.iter().enumerate() {
                let size = encoded_len(c);
                assert!(
                    size <= max_bytes,
                    "{len}/{max_bytes}: chunk {n} is {size} bytes"
                );
                if n + 1 < chunks.len() {
                    // Not the last: the next id did not fit in the room left. The array's
                    // bytes, as the cost counts them (a comma per id, no brackets), with it:
                    let with_next = encoded_len(&[c.as_slice(), &chunks[n + 1][..1]].concat());
                    let array = with_next - encoded_len(&[]) + 1;
                    assert!(
                        array > room,
                        "{len}/{max_bytes}: chunk {n} ({} ids, {size} bytes) had room",
                        c.len()
                    );
                }
            }
        }
    }
}
