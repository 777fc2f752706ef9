//! Transactions, second half: one attempt's `multi`, built from what the read phase saw
//! (conditions as `check`s and create+delete pairs, writes conditioned on the versions read),
//! the namespace directories it needs, its failure mapped back to the op that caused it, and
//! the revision of a committed one. Never retries by itself: `Ok(None)` asks `txn` to.

use std::collections::BTreeMap;

use rebalanser_core::SessionId;
use rebalanser_store::{Cond, StoreError, StoreReply, Write};
use zookeeper_client as zk;

use crate::error::{read_err, write_err};
use crate::path::{dir_of, path, stat_rev, zxid};
use crate::txn::{cond_key, Seen};
use crate::{lock, Inner};

/// Why an op of a `multi` is there, to map its failure back.
#[derive(Debug, Clone)]
enum Origin {
    /// A `Version` or `Owned` condition: its failure is `Conflict`.
    Cond(String),
    /// The create that checks an `Absent` condition: `NodeExists` is `Conflict`.
    Absent(String),
    /// A `Create` of the transaction: `NodeExists` is `Conflict`.
    Create(String),
    /// An assumption from the read phase: its failure means "read again and retry".
    Guess,
}

impl Inner {
    /// One attempt: builds the `multi` from what the read phase saw. `Ok(None)` = retry.
    pub(crate) async fn try_txn(
        &self,
        c: &zk::Client,
        conds: &[Cond],
        writes: &[Write],
        seen: &BTreeMap<&str, Seen>,
    ) -> Result<Option<StoreReply>, StoreError> {
        let conflict = |c: &Cond| Err(StoreError::Conflict(format!("{c:?}")));
        let mut m = c.new_multi_writer();
        let mut origins: Vec<Origin> = Vec::new();
        // Znodes the multi creates: their parent directories must exist first.
        let mut created: Vec<String> = Vec::new();
        let dir_opts = self.create_options(zk::CreateMode::Persistent);
        let seen_of = |k: &str| seen.get(k).copied().unwrap_or(Seen::Absent);
        for cond in conds {
            let p = path(cond_key(cond));
            let what = format!("{cond:?}");
            match (cond, seen_of(cond_key(cond))) {
                (Cond::Absent(_), Seen::Key(_)) => return conflict(cond),
                (Cond::Absent(_), Seen::Absent) => {
                    // Fails atomically with NodeExists if the key appears meanwhile.
                    m.add_create(&p, b"", &dir_opts).map_err(read_err)?;
                    m.add_delete(&p, None).map_err(read_err)?;
                    origins.push(Origin::Absent(what));
                    origins.push(Origin::Guess);
                    created.push(p);
                }
                (Cond::Version(_, v), Seen::Key(stat)) => {
                    if i32::try_from(*v).ok() != Some(stat.version) {
                        return conflict(cond);
                    }
                    m.add_check_version(&p, stat.version).map_err(read_err)?;
                    origins.push(Origin::Cond(what));
                }
                (
                    Cond::Owned {
                        session,
                        create_rev,
                        ..
                    },
                    Seen::Key(stat),
                ) => {
                    if stat.ephemeral_owner as u64 != session.0 || zxid(stat.czxid) != *create_rev {
                        return conflict(cond);
                    }
                    m.add_check_version(&p, stat.version).map_err(read_err)?;
                    origins.push(Origin::Cond(what));
                }
                (Cond::Version(..) | Cond::Owned { .. }, Seen::Absent) => return conflict(cond),
            }
        }
        // Each key's state as the writes before it leave it, starting from the read phase.
        let mut state: BTreeMap<&str, Seen> = BTreeMap::new();
        let mut deleted_parents: Vec<String> = Vec::new();
        // Keys the transaction creates, with their owner: their czxid is its revision.
        let mut made: Vec<(String, Option<SessionId>)> = Vec::new();
        for w in writes {
            let key = w.key();
            let from_read = !state.contains_key(key);
            let now = *state.entry(key).or_insert_with(|| seen_of(key));
            let p = path(key);
            let (value, owner, create) = match w {
                Write::Create { value, owner, .. } => (Some(value), *owner, true),
                Write::Put { value, .. } => (Some(value), None, false),
                Write::Delete { .. } => (None, None, false),
            };
            match (value, now) {
                // Create or Put
                (Some(_), Seen::Key(_)) if create => {
                    return Err(StoreError::Conflict(format!("{key} exists")))
                }
                (Some(_), Seen::Key(s)) if s.ephemeral_owner != 0 => {
                    return Err(StoreError::Invalid(format!(
                        "{key} is session-owned and cannot be rewritten"
                    )))
                }
                (Some(v), Seen::Key(s)) => {
                    m.add_set_data(&p, v, Some(s.version)).map_err(read_err)?;
                    origins.push(Origin::Guess);
                    let mut after = s;
                    after.version += 1;
                    state.insert(key, Seen::Key(after));
                }
                (Some(v), Seen::Absent) => {
                    let mode = if owner.is_some() {
                        zk::CreateMode::Ephemeral
                    } else {
                        zk::CreateMode::Persistent
                    };
                    m.add_create(&p, v, &self.create_options(mode))
                        .map_err(read_err)?;
                    made.push((p.clone(), owner));
                    origins.push(if create {
                        Origin::Create(key.to_string())
                    } else {
                        Origin::Guess
                    });
                    created.push(p);
                    // Only its being a key matters for the writes after it.
                    let mut fresh = blank_stat();
                    fresh.version = 0;
                    fresh.ephemeral_owner = owner.map_or(0, |s| s.0 as i64);
                    state.insert(key, Seen::Key(fresh));
                }
                // Delete
                (None, Seen::Key(s)) => {
                    // Unversioned when the key was created by this transaction.
                    let version = (!from_read || s.ephemeral_owner == 0).then_some(s.version);
                    m.add_delete(&p, version.filter(|_| from_read))
                        .map_err(read_err)?;
                    origins.push(Origin::Guess);
                    deleted_parents.push(dir_of(&p));
                    state.insert(key, Seen::Absent);
                }
                (None, Seen::Absent) if from_read => {
                    // Deleting nothing must still fail if the key appears meanwhile.
                    m.add_create(&p, b"", &dir_opts).map_err(read_err)?;
                    m.add_delete(&p, None).map_err(read_err)?;
                    origins.push(Origin::Guess);
                    origins.push(Origin::Guess);
                    created.push(p);
                }
                (None, Seen::Absent) => {}
            }
        }
        if origins.is_empty() {
            // Nothing to apply: the revision is the newest the read phase saw.
            let rev = seen
                .values()
                .filter_map(|s| match s {
                    Seen::Key(st) => Some(stat_rev(st)),
                    Seen::Absent => None,
                })
                .max()
                .unwrap_or(0);
            return Ok(Some(StoreReply::Committed { rev }));
        }
        if let Some((first, _)) = made.first() {
            // ZooKeeper before 3.9 answers a create inside a multi without its stat
            // (ZOOKEEPER-4026); a write to the namespace directory (which stays empty and is
            // never checked) is answered with one, and its zxid is the transaction's.
            m.add_set_data(&dir_of(first), b"", None)
                .map_err(read_err)?;
            origins.push(Origin::Guess);
        }
        self.ensure_dirs(c, &created).await?;
        match m.commit().await {
            Ok(results) => {
                let rev = self
                    .commit_rev(c, &results, &made, &deleted_parents)
                    .await?;
                Ok(Some(StoreReply::Committed { rev }))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let origin = origins.get(index).cloned().unwrap_or(Origin::Guess);
                match (origin, source) {
                    (Origin::Cond(c), zk::Error::BadVersion | zk::Error::NoNode) => {
                        Err(StoreError::Conflict(c))
                    }
                    (Origin::Absent(c), zk::Error::NodeExists) => Err(StoreError::Conflict(c)),
                    (Origin::Create(k), zk::Error::NodeExists) => {
                        Err(StoreError::Conflict(format!("{k} exists")))
                    }
                    (_, zk::Error::NoNode) => {
                        // A namespace directory was removed by hand, or a guess was wrong.
                        self.forget_dirs(&created);
                        Ok(None)
                    }
                    (_, zk::Error::NodeExists | zk::Error::BadVersion | zk::Error::NotEmpty) => {
                        Ok(None)
                    }
                    (_, zk::Error::NoChildrenForEphemerals) => Err(StoreError::Invalid(
                        "a key cannot live under a session-owned key".to_string(),
                    )),
                    (_, e) => Err(write_err(e)),
                }
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(write_err(source)),
        }
    }

    fn forget_dirs(&self, created: &[String]) {
        let mut dirs = lock(&self.dirs);
        for p in created {
            dirs.remove(&dir_of(p));
        }
    }

    /// Creates the namespace directories the znodes in `created` live in.
    async fn ensure_dirs(&self, c: &zk::Client, created: &[String]) -> Result<(), StoreError> {
        let opts = self.create_options(zk::CreateMode::Persistent);
        for p in created {
            let dir = dir_of(p);
            if lock(&self.dirs).contains(&dir) {
                continue;
            }
            match c.create(&dir, b"", &opts).await {
                Ok(_) | Err(zk::Error::NodeExists) => {
                    lock(&self.dirs).insert(dir);
                }
                Err(e) => return Err(write_err(e)),
            }
        }
        Ok(())
    }

    /// The zxid of a committed `multi`: an updated znode's mzxid (all ops of a multi share one
    /// zxid; a creating transaction always updates its namespace directory for this). For
    /// deletes only, the pzxid of a directory it changed, read back on the same connection:
    /// the same or later, which the contract allows for a transaction that created nothing.
    async fn commit_rev(
        &self,
        c: &zk::Client,
        results: &[zk::MultiWriteResult],
        made: &[(String, Option<SessionId>)],
        deleted_parents: &[String],
    ) -> Result<u64, StoreError> {
        for r in results {
            match r {
                zk::MultiWriteResult::Create { stat, .. } if stat.czxid > 0 => {
                    return Ok(zxid(stat.czxid))
                }
                zk::MultiWriteResult::SetData { stat } if stat.mzxid > 0 => {
                    return Ok(zxid(stat.mzxid))
                }
                _ => {}
            }
        }
        if !made.is_empty() {
            return Err(StoreError::Indeterminate(
                "committed, but the server's reply carried no revision".to_string(),
            ));
        }
        let mut rev = 0;
        let mut probe: Vec<String> = deleted_parents.to_vec();
        probe.push("/".to_string());
        for p in probe {
            match c.check_stat(&p).await {
                Ok(Some(stat)) => rev = rev.max(stat_rev(&stat)),
                Ok(None) => {}
                Err(e) => return Err(StoreError::Indeterminate(format!("committed, but {e}"))),
            }
        }
        Ok(rev)
    }
}

fn blank_stat() -> zk::Stat {
    zk::Stat {
        czxid: -1,
        mzxid: -1,
        pzxid: -1,
        ctime: -1,
        mtime: -1,
        version: 0,
        cversion: 0,
        aversion: 0,
        ephemeral_owner: 0,
        data_length: 0,
        num_children: 0,
    }
}
