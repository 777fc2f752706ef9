//! Encoding: keys to znode paths and back (the `%` escaping), zxids to revisions, stats to
//! [`Entry`]s, and the namespaces this store refuses. Pure functions: no IO, no knowledge of
//! the key layout above the namespace.

use rebalanser_core::SessionId;
use rebalanser_store::Entry;
use zookeeper_client as zk;

use crate::Inner;

/// The znode path of a key (relative to the chroot): `ns/a/b` is the znode `/ns/a%2Fb`. Keys
/// are flat under one directory znode per namespace (their first component), so a key is never
/// a directory and a directory is never a key: no directory ever needs removing, and no key can
/// be created where a directory was (which would defeat version checks: a re-created znode
/// restarts at version 0).
pub(crate) fn path(key: &str) -> String {
    let (ns, rest) = key.split_once('/').unwrap_or((key, ""));
    format!("/{ns}/{}", escape(rest))
}

/// The key of the znode `name` in namespace `ns`; `None` for a name this store never writes.
pub(crate) fn key_of(ns: &str, name: &str) -> Option<String> {
    Some(format!("{ns}/{}", unescape(name)?))
}

/// `%` → `%25`, `/` → `%2F`: bijective, and the only characters a znode name cannot hold as-is
/// (besides the ones keys may not contain at all).
pub(crate) fn escape(rest: &str) -> String {
    rest.replace('%', "%25").replace('/', "%2F")
}

fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut it = name.split('%');
    out.push_str(it.next()?);
    for part in it {
        if let Some(r) = part.strip_prefix("25") {
            out.push('%');
            out.push_str(r);
        } else if let Some(r) = part.strip_prefix("2F") {
            out.push('/');
            out.push_str(r);
        } else {
            return None;
        }
    }
    Some(out)
}

/// The namespace directory of a znode path.
pub(crate) fn dir_of(p: &str) -> String {
    match p[1..].find('/') {
        Some(i) => p[..i + 1].to_string(),
        None => "/".to_string(),
    }
}

pub(crate) fn zxid(z: i64) -> u64 {
    u64::try_from(z).unwrap_or(0)
}

pub(crate) fn entry(value: Vec<u8>, stat: &zk::Stat) -> Entry {
    Entry {
        value,
        version: u64::try_from(stat.version).unwrap_or(0),
        create_rev: zxid(stat.czxid),
        mod_rev: zxid(stat.mzxid),
        // Session ids are signed in ZooKeeper (the server id sits in the top byte); the cast
        // is a bijection, and `open_session` uses the same one.
        owner: (stat.ephemeral_owner != 0).then_some(SessionId(stat.ephemeral_owner as u64)),
    }
}

/// The largest zxid a stat shows: creation, last data change, last child change.
pub(crate) fn stat_rev(stat: &zk::Stat) -> u64 {
    zxid(stat.czxid.max(stat.mzxid).max(stat.pzxid))
}

impl Inner {
    /// Why `key` cannot live in this store beyond the contract's own rules: without a chroot,
    /// the namespace `zookeeper` is the server's own tree.
    pub(crate) fn reserved(&self, key: &str) -> Option<String> {
        let ns = key.split('/').next().unwrap_or(key);
        (self.url.chroot == "/" && ns == "zookeeper")
            .then(|| format!("{key:?}: the namespace `zookeeper` is ZooKeeper's own; use a chroot"))
    }
}
