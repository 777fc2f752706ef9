//! [`list_groups`]: the groups of a store, from one listing of the store's root.
//!
//! Every group lives under its own root, `<encoded group id>/` (`rebalanser_core::layout`),
//! and exists while its marker `<root>/meta` does. One listing of everything finds them all,
//! whatever the backend: no registry key to keep in step, and a group created by any version
//! is found. The price is reading every key of every group once, which is fine for an admin
//! tool, not for a hot path.

use std::collections::BTreeMap;
use std::time::Duration;

use rebalanser_core::layout::{self, Layout, Mode};
use rebalanser_core::store::{Entry, Key, StoreError, StoreOp, StoreReply};
use rebalanser_core::{Epoch, GroupId, MemberId};
use rebalanser_store::Store;
use serde::Serialize;

use crate::admin::{exec, BadKey};
use crate::error::Error;

/// The groups of a store (see [`list_groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupListing {
    /// The groups, sorted by id.
    pub groups: Vec<GroupSummary>,
    /// Keys at the store's root that belong to no group: another application's keys, keys of
    /// no group id, a damaged group marker, or a group's keys without its marker (a deletion
    /// that stopped midway; `group delete` again finishes it). Reported, never fatal.
    pub bad_keys: Vec<BadKey>,
}

/// One group, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupSummary {
    pub group: GroupId,
    pub mode: Mode,
    pub generation: u64,
    /// The epoch counter (latest coordinator elected), if any was.
    pub epoch: Option<Epoch>,
    /// The member named in the coordinator record, if there is one.
    pub coordinator: Option<MemberId>,
    /// Registered members (live sessions).
    pub members: usize,
    /// Resources of the set.
    pub resources: usize,
}

/// The groups of `store`, from one linearizable listing of the whole store. A group deleted
/// with [`crate::Admin::delete_group`] leaves only its token generation behind (for a later
/// re-creation) and is not listed.
pub async fn list_groups(store: &dyn Store, timeout: Duration) -> Result<GroupListing, Error> {
    let op = StoreOp::List {
        prefix: String::new(),
        linearizable: true,
    };
    match exec(store, op, timeout).await? {
        StoreReply::Listed { entries, .. } => Ok(from_entries(&entries)),
        other => Err(Error::Store {
            store: store.describe(),
            source: StoreError::Invalid(format!("unexpected reply to list: {other:?}")),
        }),
    }
}

/// The listing's keys sorted into groups (pure, for tests).
fn from_entries(entries: &[(Key, Entry)]) -> GroupListing {
    let mut roots: BTreeMap<&str, Vec<(Key, Entry)>> = BTreeMap::new();
    let mut bad_keys = Vec::new();
    for (key, e) in entries {
        // Every store key has a namespace (`key_error`); a key without one is reported too.
        let root = key.split_once('/').map_or(key.as_str(), |(r, _)| r);
        roots
            .entry(root)
            .or_default()
            .push((key.clone(), e.clone()));
    }
    let mut groups = Vec::new();
    for (root, keys) in roots {
        // The encoding is bijective: a root is a group's only if it decodes to a valid id
        // whose encoding is the root itself.
        let group = layout::decode_component(root)
            .and_then(|name| GroupId::new(name).ok())
            .filter(|g| layout::encode_component(g.as_str()) == root);
        let Some(group) = group else {
            bad_keys.extend(keys.into_iter().map(|(key, _)| BadKey {
                key,
                reason: "not under a group's root (the first component is not an encoded group id)",
            }));
            continue;
        };
        let lay = Layout::new(&group);
        let (view, bad) = layout::parse_view(&lay, &keys);
        if view.exists {
            groups.push(GroupSummary {
                mode: view.mode,
                generation: view.generation,
                epoch: view.epoch.map(|(e, _)| e),
                coordinator: view.leader.as_ref().map(|l| l.member.clone()),
                members: view.members.len(),
                resources: view.resources.len(),
                group,
            });
            continue;
        }
        let (marker, generation) = (lay.meta(), lay.generation());
        if let Some(b) = bad.into_iter().find(|b| b.key == marker) {
            bad_keys.push(BadKey {
                key: b.key,
                reason: "a damaged group marker: not a Rebalanser group",
            });
        } else if keys.iter().any(|(k, _)| *k != generation) {
            bad_keys.push(BadKey {
                key: lay.prefix(),
                reason: "keys of a group without its marker (a deletion stopped midway, or \
                         another application's keys)",
            });
        }
        // Only the generation left: a deleted group keeping it for a re-creation.
    }
    GroupListing { groups, bad_keys }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Admin;
    use rebalanser_core::store::Write;
    use rebalanser_store::MemoryStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn lists_groups_skips_deleted_ones_and_reports_foreign_keys() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::named("list-groups-test"));
        let t = Duration::from_secs(5);
        for (g, mode) in [("jobs", Mode::Resource), ("a b/c", Mode::Barrier)] {
            let admin = Admin::new(store.clone(), g).unwrap();
            admin.create_group_with(mode).await.unwrap();
        }
        Admin::new(store.clone(), "jobs")
            .unwrap()
            .add_resources(&["q1", "q2"])
            .await
            .unwrap();
        let gone = Admin::new(store.clone(), "gone").unwrap();
        gone.create_group().await.unwrap();
        gone.bump_generation().await.unwrap();
        gone.delete_group().await.unwrap();
        let put = |key: &str, value: &[u8]| StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Put {
                key: key.into(),
                value: value.to_vec(),
            }],
        };
        for (key, value) in [
            ("other%zz/x", b"1".as_slice()),
            ("broken/meta", b"not json"),
            ("half/resources/q", b"{}"),
        ] {
            store.execute(put(key, value)).await.unwrap();
        }
        let got = list_groups(&*store, t).await.unwrap();
        let names: Vec<(&str, Mode, usize)> = got
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.mode, g.resources))
            .collect();
        assert_eq!(
            names,
            [("a b/c", Mode::Barrier, 0), ("jobs", Mode::Resource, 2)]
        );
        let bad: Vec<&str> = got.bad_keys.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(bad, ["broken/meta", "half/", "other%zz/x"], "{got:?}");
    }
}
