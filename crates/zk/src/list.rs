//! Listings: every key under a prefix from one `multiRead` snapshot per namespace, repeated
//! until the children it reveals are the ones it read, with the snapshot's largest zxid as the
//! revision. Reads only; never writes a znode.

use std::collections::{BTreeMap, BTreeSet};

use rebalanser_core::store::key_error;
use rebalanser_store::{Entry, Key, StoreError};
use zookeeper_client as zk;

use crate::error::{read_err, unexpected};
use crate::path::{dir_of, entry, escape, key_of, path, stat_rev};
use crate::{lock, Inner};

/// Rounds of a listing whose set of keys keeps changing under it.
const LIST_ATTEMPTS: usize = 8;
/// Budget of one listing request, well under ZooKeeper's 1 MiB request limit, and the
/// per-read encoding overhead counted against it.
const LIST_REQUEST_BYTES: usize = 256 * 1024;
const LIST_OP_OVERHEAD: usize = 16;

impl Inner {
    /// `StoreOp::Read`: the keys from one `multiRead` per request-sized chunk (with the root
    /// and their namespaces' directories, whose pzxid moves with every create and delete, so
    /// the revision covers absent keys too), then each prefix as a listing. Each part is
    /// current as of its read; the revision is the largest zxid seen.
    pub(crate) async fn read_many(
        &self,
        c: &zk::Client,
        keys: &[Key],
        prefixes: &[Key],
    ) -> Result<(Vec<(Key, Entry)>, u64), StoreError> {
        if let Some(e) = keys.iter().find_map(|k| key_error(k)) {
            return Err(StoreError::Invalid(e));
        }
        let mut all: BTreeMap<Key, Entry> = BTreeMap::new();
        let mut rev = 0;
        let dirs: BTreeSet<String> = keys.iter().map(|k| dir_of(&path(k))).collect();
        let mut first = true;
        let mut rest = keys;
        while first || !rest.is_empty() {
            let mut r = c.new_multi_reader();
            let mut stats = 0;
            if first {
                r.add_get_data("/").map_err(read_err)?;
                for d in &dirs {
                    r.add_get_data(d).map_err(read_err)?;
                }
                stats = 1 + dirs.len();
            }
            let mut bytes = 0;
            let mut n = 0;
            for k in rest {
                let p = path(k);
                bytes += p.len() + LIST_OP_OVERHEAD;
                if bytes > LIST_REQUEST_BYTES && n > 0 {
                    break;
                }
                r.add_get_data(&p).map_err(read_err)?;
                n += 1;
            }
            let (chunk, later) = rest.split_at(n);
            let mut results = r.commit().await.map_err(read_err)?.into_iter();
            for _ in 0..stats {
                match results.next() {
                    Some(zk::MultiReadResult::Data { stat, .. }) => rev = rev.max(stat_rev(&stat)),
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => {}
                    other => return Err(unexpected(other)),
                }
            }
            for k in chunk {
                match results.next() {
                    Some(zk::MultiReadResult::Data { data, stat }) => {
                        rev = rev.max(stat_rev(&stat));
                        // Empty data is a directory, never a key (values are never empty).
                        if !data.is_empty() {
                            all.insert(k.clone(), entry(data, &stat));
                        }
                    }
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => {}
                    other => return Err(unexpected(other)),
                }
            }
            first = false;
            rest = later;
        }
        for p in prefixes {
            let (entries, r) = self.list(c, p).await?;
            rev = rev.max(r);
            all.extend(entries);
        }
        Ok((all.into_iter().collect(), rev))
    }

    /// Lists every key under `prefix` from one consistent snapshot.
    pub(crate) async fn list(
        &self,
        c: &zk::Client,
        prefix: &str,
    ) -> Result<(Vec<(Key, Entry)>, u64), StoreError> {
        if let Some((ns, _)) = prefix.split_once('/') {
            return self.list_ns(c, ns, prefix).await;
        }
        // The prefix ends inside a namespace name: every namespace it may start. (The
        // protocol always lists within one group; this keeps the contract whole.)
        let mut names = c.list_children("/").await.map_err(read_err)?;
        names.retain(|n| n.starts_with(prefix) && self.reserved(n).is_none());
        let (mut all, mut rev) = (Vec::new(), 0);
        for ns in names {
            let (entries, r) = self.list_ns(c, &ns, prefix).await?;
            all.extend(entries);
            rev = rev.max(r);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((all, rev))
    }

    /// Lists the keys of namespace `ns` under `prefix` with one `multiRead` (a snapshot on one
    /// server): the namespace's children and the data of those the previous round found,
    /// repeated until both agree. The last shape is cached, so a listing usually takes one
    /// round trip. The revision is the largest zxid in the snapshot, including the pzxid of
    /// the namespace directory and of the chroot, which deletes move forward too.
    async fn list_ns(
        &self,
        c: &zk::Client,
        ns: &str,
        prefix: &str,
    ) -> Result<(Vec<(Key, Entry)>, u64), StoreError> {
        if let Some(e) = key_error(&format!("{ns}/x")).or_else(|| self.reserved(ns)) {
            return Err(StoreError::Invalid(format!("prefix {prefix:?}: {e}")));
        }
        let dir = format!("/{ns}");
        let name_prefix = escape(prefix.split_once('/').map_or("", |(_, r)| r));
        let cache_key = format!("{dir}/{name_prefix}");
        let mut shape = lock(&self.shapes)
            .get(&cache_key)
            .cloned()
            .unwrap_or_default();
        for _ in 0..LIST_ATTEMPTS {
            // The names whose data each request reads: as many as fit one request (ZooKeeper
            // drops a connection whose request exceeds jute.maxbuffer, 1 MiB by default).
            let names: Vec<&String> = shape.iter().collect();
            let mut chunks: Vec<&[&String]> = Vec::new();
            let (mut start, mut bytes) = (0, 0);
            for (i, n) in names.iter().enumerate() {
                bytes += dir.len() + n.len() + LIST_OP_OVERHEAD;
                if bytes > LIST_REQUEST_BYTES && i > start {
                    chunks.push(&names[start..i]);
                    (start, bytes) = (i, dir.len() + n.len() + LIST_OP_OVERHEAD);
                }
            }
            chunks.push(&names[start..]);
            let mut r = c.new_multi_reader();
            r.add_get_data("/").map_err(read_err)?;
            r.add_get_data(&dir).map_err(read_err)?;
            r.add_get_children(&dir).map_err(read_err)?;
            for name in chunks[0] {
                r.add_get_data(&format!("{dir}/{name}")).map_err(read_err)?;
            }
            let mut results = r.commit().await.map_err(read_err)?.into_iter();
            let mut rev = 0;
            for _ in 0..2 {
                match results.next() {
                    Some(zk::MultiReadResult::Data { stat, .. }) => {
                        rev = rev.max(stat_rev(&stat));
                    }
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => {}
                    other => return Err(unexpected(other)),
                }
            }
            let found: BTreeSet<String> = match results.next() {
                Some(zk::MultiReadResult::Children { children }) => children
                    .into_iter()
                    .filter(|n| n.starts_with(&name_prefix))
                    .collect(),
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }) => BTreeSet::new(),
                other => return Err(unexpected(other)),
            };
            let mut entries = Vec::new();
            let mut take = |ns: &str, name: &str, res: Option<zk::MultiReadResult>| {
                match res {
                    Some(zk::MultiReadResult::Data { data, stat }) => {
                        rev = rev.max(stat_rev(&stat));
                        // A name this store never writes (foreign, e.g. by hand) is skipped.
                        if let Some(key) = key_of(ns, name) {
                            entries.push((key, entry(data, &stat)));
                        }
                        Ok(())
                    }
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => Ok(()),
                    other => Err(unexpected(other)),
                }
            };
            for name in chunks[0] {
                take(ns, name, results.next())?;
            }
            // A namespace too large for one request is read in several: each key is then
            // current as of the listing, but one transaction's changes to several keys may be
            // seen half (the protocol conditions every write on the versions it read, so a torn
            // plan fails). The set of keys under the prefix is still exact: it is read again
            // after the data and compared. (Comparing the directory's child changes instead
            // failed every listing of `resources/` while a member deleted claims, which live
            // in the same directory: issue 10.)
            for chunk in &chunks[1..] {
                let mut r = c.new_multi_reader();
                for name in *chunk {
                    r.add_get_data(&format!("{dir}/{name}")).map_err(read_err)?;
                }
                for (name, res) in chunk.iter().zip(r.commit().await.map_err(read_err)?) {
                    take(ns, name, Some(res))?;
                }
            }
            let mut stable = true;
            if chunks.len() > 1 {
                let after: BTreeSet<String> = match c.get_children(&dir).await {
                    Ok((children, st)) => {
                        rev = rev.max(stat_rev(&st));
                        children
                            .into_iter()
                            .filter(|n| n.starts_with(&name_prefix))
                            .collect()
                    }
                    Err(zk::Error::NoNode) => BTreeSet::new(),
                    Err(e) => return Err(read_err(e)),
                };
                stable = after == found;
            }
            if found == shape && stable {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                lock(&self.shapes).insert(cache_key, shape);
                return Ok((entries, rev));
            }
            // Children appeared or vanished since the shape was learnt: read the new one.
            shape = found;
        }
        Err(StoreError::Unavailable(format!(
            "{}: the keys under {prefix} kept changing during {LIST_ATTEMPTS} listing rounds",
            self.url
        )))
    }
}
