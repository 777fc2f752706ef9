//! The store operations behind the admin API, shared by the runtime's `Admin`, the CLI and the
//! simulator. Admin never deletes or rewrites a claim (DESIGN §8 rule 7).

use crate::config::Variant;
use crate::ids::ResourceId;
use crate::layout::{self, Layout, MetaRec, Mode};
use crate::store::{Cond, StoreOp, Write};

/// Creates the group marker (per-resource mode); `Conflict` when it exists.
pub fn create_group(layout: &Layout) -> StoreOp {
    create_group_with(layout, Mode::Resource)
}

/// Creates the group marker with its rebalancing mode; `Conflict` when it exists.
pub fn create_group_with(layout: &Layout, mode: Mode) -> StoreOp {
    StoreOp::Txn {
        conds: vec![Cond::Absent(layout.meta())],
        writes: vec![Write::Put {
            key: layout.meta(),
            value: layout::encode(&MetaRec {
                rebalanser: 1,
                mode,
            }),
        }],
    }
}

/// Adds resources (idempotent: re-adding an existing id rewrites the same empty value).
pub fn add_resources(layout: &Layout, ids: &[ResourceId]) -> StoreOp {
    StoreOp::Txn {
        conds: vec![],
        writes: ids
            .iter()
            .map(|r| Write::Put {
                key: layout.resource(r),
                value: b"{}".to_vec(),
            })
            .collect(),
    }
}

/// Removes resources. Their claims stay: each owner stops and deletes its own claim once the
/// coordinator unassigns it, so a re-add cannot let a second owner in.
pub fn remove_resources(layout: &Layout, ids: &[ResourceId]) -> StoreOp {
    remove_resources_variant(layout, ids, Variant::Correct)
}

#[doc(hidden)]
pub fn remove_resources_variant(layout: &Layout, ids: &[ResourceId], variant: Variant) -> StoreOp {
    let mut writes: Vec<Write> = ids
        .iter()
        .map(|r| Write::Delete {
            key: layout.resource(r),
        })
        .collect();
    if variant == Variant::RemoveDeletesClaim {
        writes.extend(ids.iter().map(|r| Write::Delete {
            key: layout.claim(r),
        }));
    }
    StoreOp::Txn {
        conds: vec![],
        writes,
    }
}
