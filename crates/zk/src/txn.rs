//! Transactions, first half: the client a transaction runs on (the owning session's, else the
//! shared one), validation, and the synced read phase, retried while the keys change under it.
//! The `multi` itself is built and committed in `multi.rs`. No protocol logic: conditions are
//! checked exactly as the contract states them.

use std::collections::{BTreeMap, BTreeSet};

use rebalanser_core::store::txn_request_error;
use rebalanser_core::SessionId;
use rebalanser_store::{Cond, StoreError, StoreResult, Write};
use zookeeper_client as zk;

use crate::error::{read_err, shared_err, unexpected};
use crate::path::{path, zxid};
use crate::Inner;

/// Attempts of one transaction whose reads were overtaken by a concurrent change (not a failed
/// condition: that is a `Conflict` at once).
const TXN_ATTEMPTS: usize = 8;

/// What the read phase of a transaction saw at a key's znode.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen {
    Absent,
    Key(zk::Stat),
}

impl Inner {
    /// The client a transaction runs on: the session its owned creates name, else the one its
    /// `Owned` conditions name, else the shared connection. An `Owned` condition on another
    /// session than the creates' (a static member taking its previous session's record over)
    /// is checked by the read phase and a version `check`, which cannot tell the instance it
    /// read from one created in its place meanwhile (see `ZkStore`).
    pub(crate) async fn txn_client(
        &self,
        conds: &[Cond],
        writes: &[Write],
    ) -> Result<(zk::Client, bool), StoreError> {
        let mut creators = BTreeSet::new();
        for w in writes {
            if let Write::Create { owner: Some(s), .. } = w {
                creators.insert(*s);
            }
        }
        let mut named = BTreeSet::new();
        for c in conds {
            if let Cond::Owned { session, .. } = c {
                named.insert(*session);
            }
        }
        let several = |named: &BTreeSet<SessionId>| {
            Err(StoreError::Invalid(format!(
                "one transaction names several sessions: {named:?}"
            )))
        };
        if creators.len() > 1 {
            return several(&creators);
        }
        if let Some(s) = creators.first() {
            return Ok((self.session_client(*s)?, true));
        }
        if named.len() > 1 {
            return several(&named);
        }
        match named.first() {
            Some(s) => match self.session_client(*s) {
                Ok(c) => Ok((c, true)),
                // `Owned` is exact only on the owner's own connection (see `ZkStore`). For a
                // session this store does not hold (closed, expired, abandoned, another
                // process's) it can only be refuted: a synced read showing another instance
                // or none is a `Conflict`; otherwise nothing can be decided here.
                Err(_) => {
                    let c = self.shared().await?;
                    c.sync("/").await.map_err(read_err)?;
                    for cond in conds {
                        if let Cond::Owned {
                            key,
                            session,
                            create_rev,
                        } = cond
                        {
                            let held = match c.check_stat(&path(key)).await {
                                Ok(Some(st)) => {
                                    st.ephemeral_owner as u64 == session.0
                                        && zxid(st.czxid) == *create_rev
                                }
                                Ok(None) => false,
                                Err(e) => return Err(shared_err(read_err(e))),
                            };
                            if !held {
                                return Err(StoreError::Conflict(format!("{cond:?}")));
                            }
                        }
                    }
                    Err(StoreError::Unavailable(format!(
                        "an ownership condition names session {:#x}, which this store does not hold",
                        s.0
                    )))
                }
            },
            None => Ok((self.shared().await?, false)),
        }
    }

    pub(crate) async fn txn(
        &self,
        c: &zk::Client,
        conds: Vec<Cond>,
        writes: Vec<Write>,
    ) -> StoreResult {
        if let Some(e) = txn_request_error(&conds, &writes) {
            return Err(StoreError::Invalid(e));
        }
        // Keys this backend keeps for itself.
        let reserved = writes
            .iter()
            .map(Write::key)
            .chain(conds.iter().map(Cond::key))
            .find_map(|k| self.reserved(k));
        if let Some(e) = reserved {
            return Err(StoreError::Invalid(e));
        }
        let keys: BTreeSet<&str> = conds
            .iter()
            .map(cond_key)
            .chain(writes.iter().map(Write::key))
            .collect();
        for _ in 0..TXN_ATTEMPTS {
            // Read phase: what every key looks like now (synced, so an `Owned` check sees the
            // current instance).
            c.sync("/").await.map_err(read_err)?;
            let mut r = c.new_multi_reader();
            for k in &keys {
                r.add_get_data(&path(k)).map_err(read_err)?;
            }
            let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
            for (k, res) in keys.iter().zip(r.commit().await.map_err(read_err)?) {
                let s = match res {
                    zk::MultiReadResult::Data { stat, .. } => Seen::Key(stat),
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => Seen::Absent,
                    other => return Err(unexpected(Some(other))),
                };
                seen.insert(k, s);
            }
            if let Some(reply) = self.try_txn(c, &conds, &writes, &seen).await? {
                return Ok(reply);
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: keys kept changing during {TXN_ATTEMPTS} transaction attempts",
            self.url
        )))
    }
}

pub(crate) fn cond_key(c: &Cond) -> &str {
    match c {
        Cond::Absent(k) | Cond::Version(k, _) | Cond::Owned { key: k, .. } => k,
    }
}
