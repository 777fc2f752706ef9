//! The pure, deterministic model of the Store contract: the reference every backend must
//! match (the conformance suite runs against it too). No clock: expiry happens at the `now`
//! the caller passes. The async [`crate::MemoryStore`] and the simulator both drive this.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rebalanser_core::ids::{SessionId, Time};
use rebalanser_core::store::{
    key_error, txn_refusal, txn_request_error, Cond, Entry, Key, KeyMeta, StoreError, StoreOp,
    StoreReply, StoreResult, Write,
};

#[derive(Debug, Clone)]
struct Session {
    ttl: Duration,
    /// When the store last heard from the session: it expires at `last_seen + ttl`.
    last_seen: Time,
}

/// Settings of the model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Granted TTLs are clamped into this range, like ZooKeeper's min/max session timeout.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How many past states are kept to serve stale reads (0 = none).
    pub history: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            min_ttl: Duration::from_millis(1),
            max_ttl: Duration::from_secs(3600),
            history: 0,
        }
    }
}

/// The in-memory store state.
#[derive(Clone)]
pub struct MemModel {
    cfg: ModelConfig,
    rev: u64,
    data: BTreeMap<Key, Entry>,
    sessions: BTreeMap<SessionId, Session>,
    /// The keys each live session owns, so an expiry costs what the session owned, not the
    /// size of the store.
    owned: BTreeMap<SessionId, BTreeSet<Key>>,
    /// Keys created, changed or deleted since the last [`MemModel::take_changes`], while
    /// recording (only a store that notifies watchers takes them).
    changed: Option<Vec<Key>>,
    next_session: u64,
    /// Past states with the revision each reflected, oldest first.
    history: VecDeque<(u64, BTreeMap<Key, Entry>)>,
}

impl Default for MemModel {
    fn default() -> Self {
        MemModel::new(ModelConfig::default())
    }
}

impl MemModel {
    pub fn new(cfg: ModelConfig) -> MemModel {
        MemModel {
            cfg,
            rev: 0,
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
            owned: BTreeMap::new(),
            changed: None,
            next_session: 1,
            history: VecDeque::new(),
        }
    }

    /// The revision of the last committed write.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    pub fn entries(&self) -> &BTreeMap<Key, Entry> {
        &self.data
    }

    /// From now on, remember the keys each write and expiry changes, for
    /// [`MemModel::take_changes`].
    pub fn record_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    /// The keys created, changed or deleted since the last call (by writes and expiries), in
    /// the order it happened, possibly repeated: what a store notifies its watchers of. Empty
    /// unless [`MemModel::record_changes`] was called.
    pub fn take_changes(&mut self) -> Vec<Key> {
        self.changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note_change(&mut self, key: &str) {
        if let Some(c) = self.changed.as_mut() {
            c.push(key.to_string());
        }
    }

    pub fn session_alive(&self, s: SessionId) -> bool {
        self.sessions.contains_key(&s)
    }

    /// When `s` will expire if nothing more is heard from it.
    pub fn expires_at(&self, s: SessionId) -> Option<Time> {
        self.sessions.get(&s).map(|x| x.last_seen + x.ttl)
    }

    /// The TTL in force for a live session.
    pub fn session_ttl(&self, s: SessionId) -> Option<Duration> {
        self.sessions.get(&s).map(|x| x.ttl)
    }

    /// Changes a live session's timeout, touching it at `now`: what ZooKeeper does when a
    /// client reconnects to a server with a smaller `maxSessionTimeout`.
    pub fn renegotiate(&mut self, s: SessionId, ttl: Duration, now: Time) {
        if let Some(x) = self.sessions.get_mut(&s) {
            x.ttl = ttl.clamp(self.cfg.min_ttl, self.cfg.max_ttl);
            x.last_seen = now;
        }
    }

    /// Expires every session whose TTL has run out at `now`, deleting its keys. Returns the
    /// expired sessions.
    pub fn expire(&mut self, now: Time) -> Vec<SessionId> {
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now >= s.last_seen + s.ttl)
            .map(|(id, _)| *id)
            .collect();
        for s in &dead {
            self.drop_session(*s);
        }
        dead
    }

    fn drop_session(&mut self, s: SessionId) {
        if self.sessions.remove(&s).is_none() {
            return;
        }
        let keys = self.owned.remove(&s).unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        let snapshot = (self.cfg.history > 0).then(|| self.data.clone());
        for k in keys {
            debug_assert_eq!(self.data.get(&k).and_then(|e| e.owner), Some(s));
            self.data.remove(&k);
            self.note_change(&k);
        }
        if let Some(old) = snapshot {
            self.remember(self.rev, old);
        }
        self.rev += 1;
    }

    fn remember(&mut self, rev: u64, old: BTreeMap<Key, Entry>) {
        if self.cfg.history == 0 {
            return;
        }
        self.history.push_back((rev, old));
        while self.history.len() > self.cfg.history {
            self.history.pop_front();
        }
    }

    /// Serves a read from `age` states ago (0 = current), for stale-read injection.
    pub fn apply_stale_read(&self, op: &StoreOp, age: usize) -> Option<StoreResult> {
        let (rev, data) = if age == 0 {
            (self.rev, &self.data)
        } else {
            let (rev, data) = self.history.get(self.history.len().checked_sub(age)?)?;
            (*rev, data)
        };
        match op {
            StoreOp::Get { key, .. } => Some(Ok(StoreReply::Got(data.get(key).cloned()))),
            StoreOp::List { prefix, .. } => Some(Ok(StoreReply::Listed {
                entries: list(data, prefix),
                rev,
            })),
            StoreOp::Read { keys, prefixes, .. } => Some(read_many(data, rev, keys, prefixes)),
            _ => None,
        }
    }

    /// Applies one operation at `now` (expiring sessions first).
    pub fn apply(&mut self, now: Time, op: &StoreOp) -> StoreResult {
        self.expire(now);
        match op {
            StoreOp::OpenSession { ttl } => {
                let id = SessionId(self.next_session);
                self.next_session += 1;
                let ttl = (*ttl).clamp(self.cfg.min_ttl, self.cfg.max_ttl);
                self.sessions.insert(
                    id,
                    Session {
                        ttl,
                        last_seen: now,
                    },
                );
                Ok(StoreReply::Session { session: id, ttl })
            }
            StoreOp::KeepAlive { session } => match self.sessions.get_mut(session) {
                Some(s) => {
                    s.last_seen = now;
                    Ok(StoreReply::KeptAlive { ttl: s.ttl })
                }
                None => Err(StoreError::SessionExpired),
            },
            StoreOp::CloseSession { session } => {
                self.drop_session(*session);
                Ok(StoreReply::Closed)
            }
            StoreOp::Get { key, .. } => match key_error(key) {
                Some(e) => Err(StoreError::Invalid(e)),
                None => Ok(StoreReply::Got(self.data.get(key).cloned())),
            },
            StoreOp::List { prefix, .. } => Ok(StoreReply::Listed {
                entries: list(&self.data, prefix),
                rev: self.rev,
            }),
            StoreOp::Read { keys, prefixes, .. } => read_many(&self.data, self.rev, keys, prefixes),
            StoreOp::Txn { conds, writes } => self.txn(conds, writes),
        }
    }

    fn txn(&mut self, conds: &[Cond], writes: &[Write]) -> StoreResult {
        if let Some(e) = txn_request_error(conds, writes) {
            return Err(StoreError::Invalid(e));
        }
        if let Some(e) = txn_refusal(
            conds,
            writes,
            |k| self.data.get(k).map(KeyMeta::from),
            |s| self.sessions.contains_key(&s),
        ) {
            return Err(e);
        }
        if writes.is_empty() {
            return Ok(StoreReply::Committed { rev: self.rev });
        }
        let snapshot = if self.cfg.history > 0 {
            Some((self.rev, self.data.clone()))
        } else {
            None
        };
        self.rev += 1;
        let rev = self.rev;
        for w in writes {
            self.note_change(w.key());
            match w {
                Write::Create { key, value, owner } => {
                    if let Some(s) = owner {
                        self.owned.entry(*s).or_default().insert(key.clone());
                    }
                    self.data.insert(key.clone(), fresh(value, rev, *owner));
                }
                Write::Put { key, value } => match self.data.get_mut(key) {
                    Some(e) => {
                        e.value = value.clone();
                        e.version += 1;
                        e.mod_rev = rev;
                    }
                    None => {
                        self.data.insert(key.clone(), fresh(value, rev, None));
                    }
                },
                Write::Delete { key } => {
                    let owner = self.data.remove(key).and_then(|e| e.owner);
                    if let Some(keys) = owner.and_then(|s| self.owned.get_mut(&s)) {
                        keys.remove(key);
                    }
                }
            }
        }
        if let Some((rev, s)) = snapshot {
            self.remember(rev, s);
        }
        Ok(StoreReply::Committed { rev })
    }
}

/// The state a reader could observe, and nothing derived from it: the model checker
/// fingerprints states by this rendering, so the key index and the change log stay out.
impl std::fmt::Debug for MemModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemModel")
            .field("cfg", &self.cfg)
            .field("rev", &self.rev)
            .field("data", &self.data)
            .field("sessions", &self.sessions)
            .field("next_session", &self.next_session)
            .field("history", &self.history)
            .finish()
    }
}

/// A key created by the transaction at `rev`.
fn fresh(value: &[u8], rev: u64, owner: Option<SessionId>) -> Entry {
    Entry {
        value: value.to_vec(),
        version: 0,
        create_rev: rev,
        mod_rev: rev,
        owner,
    }
}

fn list(data: &BTreeMap<Key, Entry>, prefix: &str) -> Vec<(Key, Entry)> {
    data.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect()
}

/// `StoreOp::Read`: the keys and the prefixes' keys, sorted, each once.
fn read_many(data: &BTreeMap<Key, Entry>, rev: u64, keys: &[Key], prefixes: &[Key]) -> StoreResult {
    if let Some(e) = keys.iter().find_map(|k| key_error(k)) {
        return Err(StoreError::Invalid(e));
    }
    let mut out: BTreeMap<Key, Entry> = BTreeMap::new();
    for k in keys {
        if let Some(e) = data.get(k) {
            out.insert(k.clone(), e.clone());
        }
    }
    for p in prefixes {
        out.extend(list(data, p));
    }
    Ok(StoreReply::Listed {
        entries: out.into_iter().collect(),
        rev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time(ms * 1_000_000)
    }

    fn create(key: &str, owner: Option<SessionId>) -> StoreOp {
        StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: key.into(),
                value: b"v".to_vec(),
                owner,
            }],
        }
    }

    fn open(m: &mut MemModel, now: Time, ttl_ms: u64) -> SessionId {
        match m.apply(
            now,
            &StoreOp::OpenSession {
                ttl: Duration::from_millis(ttl_ms),
            },
        ) {
            Ok(StoreReply::Session { session, .. }) => session,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_removes_only_the_sessions_keys_and_keepalive_extends() {
        let mut m = MemModel::default();
        let a = open(&mut m, t(0), 100);
        let b = open(&mut m, t(0), 100);
        m.apply(t(1), &create("g/claims/x", Some(a))).unwrap();
        m.apply(t(1), &create("g/claims/y", Some(b))).unwrap();
        m.apply(t(1), &create("g/resources/x", None)).unwrap();
        m.apply(t(90), &StoreOp::KeepAlive { session: b }).unwrap();
        assert_eq!(m.expire(t(100)), vec![a]);
        assert!(!m.entries().contains_key("g/claims/x"));
        assert!(m.entries().contains_key("g/claims/y"));
        assert!(m.entries().contains_key("g/resources/x"));
        assert_eq!(
            m.apply(t(100), &StoreOp::KeepAlive { session: a }),
            Err(StoreError::SessionExpired)
        );
    }

    #[test]
    fn owned_condition_rejects_a_recreated_key() {
        let mut m = MemModel::default();
        let a = open(&mut m, t(0), 1000);
        let Ok(StoreReply::Committed { rev }) = m.apply(t(0), &create("ns/k", Some(a))) else {
            panic!()
        };
        let del = |rev| StoreOp::Txn {
            conds: vec![Cond::Owned {
                key: "ns/k".into(),
                session: a,
                create_rev: rev,
            }],
            writes: vec![Write::Delete { key: "ns/k".into() }],
        };
        m.apply(t(1), &del(rev)).unwrap();
        m.apply(t(2), &create("ns/k", Some(a))).unwrap();
        // The ABA retry of the first delete must not remove the new instance.
        assert!(matches!(
            m.apply(t(3), &del(rev)),
            Err(StoreError::Conflict(_))
        ));
        assert!(m.entries().contains_key("ns/k"));
    }

    #[test]
    fn session_owned_keys_cannot_be_rewritten_and_txns_are_atomic() {
        let mut m = MemModel::default();
        let a = open(&mut m, t(0), 1000);
        m.apply(t(0), &create("ns/k", Some(a))).unwrap();
        let put = StoreOp::Txn {
            conds: vec![],
            writes: vec![
                Write::Put {
                    key: "other".into(),
                    value: b"v".to_vec(),
                },
                Write::Put {
                    key: "ns/k".into(),
                    value: b"v".to_vec(),
                },
            ],
        };
        assert!(matches!(m.apply(t(1), &put), Err(StoreError::Invalid(_))));
        assert!(!m.entries().contains_key("other"), "all or nothing");
    }
}
