//! Where a group lives in a store: key layout, the one bijective encoding of ids into key
//! components (DESIGN §8 rule 8), the value records, and parsing a listing into a [`View`].
//!
//! ```text
//! <group>/meta                 persistent     marks the group as existing
//! <group>/generation           persistent     token generation, bumped after restore/migration
//! <group>/epoch                persistent     coordinator epoch counter
//! <group>/leader               session-owned  the coordinator and its epoch
//! <group>/members/<m>          session-owned  who is alive, with weight
//! <group>/draining/<m>         session-owned  member m is leaving gracefully
//! <group>/resources/<r>        persistent     the resource set (admin)
//! <group>/assign/<m>/<i>       persistent     chunk i of m's assignment (coordinator only)
//! <group>/claims/<r>           session-owned  who may access r now; creation rev = token
//! <group>/unhealthy/<m>/<r>    session-owned  r keeps failing on m: the coordinator avoids it
//! <group>/barrier              persistent     barrier mode: the round and its phase
//! <group>/acks/<m>             session-owned  barrier mode: m stopped everything for a round
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, GroupId, MemberId, ResourceId, SessionId};
use crate::store::{Entry, Key};

/// Percent-encodes every byte outside `[A-Za-z0-9_-]`, with upper-case hex. Bijective: the
/// decoder accepts only this exact form, so two spellings of one id cannot exist. `.` is
/// encoded too, so `.` and `..` never become path components.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// Inverse of [`encode_component`]; `None` for anything it would not have produced.
pub fn decode_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let v = hi << 4 | lo;
            if v.is_ascii_alphanumeric() || v == b'_' || v == b'-' {
                return None; // non-canonical: this byte is never escaped
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// What a changed key names, as far as deciding whom the change concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `claims/<r>`.
    Claim(ResourceId),
    /// `members/<m>`, `draining/<m>` or `acks/<m>`: one member's record, draining mark and
    /// barrier acknowledgement.
    OfMember(MemberId),
    /// `assign/<m>/<i>`: one member's assignment.
    Assign(MemberId),
    /// `resources/<r>` or `unhealthy/<m>/<r>`: the resource set and where resources keep
    /// failing, which only the coordinator plans from.
    Resource,
    /// Anything else, inside the group or not (the group's own keys, unreadable keys).
    Other,
}

/// The keys of one group.
#[derive(Debug, Clone)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub fn new(group: &GroupId) -> Layout {
        Layout {
            root: encode_component(group.as_str()),
        }
    }
    /// Prefix of every key of the group, with a trailing `/`.
    pub fn prefix(&self) -> Key {
        format!("{}/", self.root)
    }
    pub fn meta(&self) -> Key {
        format!("{}/meta", self.root)
    }
    pub fn generation(&self) -> Key {
        format!("{}/generation", self.root)
    }
    pub fn barrier(&self) -> Key {
        format!("{}/barrier", self.root)
    }
    pub fn ack(&self, m: &MemberId) -> Key {
        format!("{}/acks/{}", self.root, encode_component(m.as_str()))
    }
    pub fn epoch(&self) -> Key {
        format!("{}/epoch", self.root)
    }
    pub fn leader(&self) -> Key {
        format!("{}/leader", self.root)
    }
    pub fn member(&self, m: &MemberId) -> Key {
        format!("{}/members/{}", self.root, encode_component(m.as_str()))
    }
    pub fn draining(&self, m: &MemberId) -> Key {
        format!("{}/draining/{}", self.root, encode_component(m.as_str()))
    }
    pub fn resource(&self, r: &ResourceId) -> Key {
        format!("{}/resources/{}", self.root, encode_component(r.as_str()))
    }
    pub fn claim(&self, r: &ResourceId) -> Key {
        format!("{}/claims/{}", self.root, encode_component(r.as_str()))
    }
    /// `m`'s mark that `r` keeps failing on it (session-owned, by `m`).
    pub fn unhealthy(&self, m: &MemberId, r: &ResourceId) -> Key {
        format!(
            "{}/unhealthy/{}/{}",
            self.root,
            encode_component(m.as_str()),
            encode_component(r.as_str())
        )
    }
    /// What `key` names (see [`KeyKind`]).
    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return KeyKind::Other;
        };
        let (dir, name) = rest.split_once('/').unwrap_or((rest, ""));
        match dir {
            "claims" => match decode_component(name).and_then(|s| ResourceId::new(s).ok()) {
                Some(r) => KeyKind::Claim(r),
                None => KeyKind::Other,
            },
            "members" | "draining" | "assign" | "acks" => {
                let m = if dir == "assign" {
                    name.split_once('/').map_or(name, |(m, _)| m)
                } else {
                    name
                };
                match decode_component(m).and_then(|s| MemberId::new(s).ok()) {
                    Some(m) if dir == "assign" => KeyKind::Assign(m),
                    Some(m) => KeyKind::OfMember(m),
                    None => KeyKind::Other,
                }
            }
            "resources" | "unhealthy" => KeyKind::Resource,
            _ => KeyKind::Other,
        }
    }
    /// The prefixes of what a rebalance plan is made of: every member's record, draining
    /// mark and assignment, the resource set and the unhealthy marks (everything but the
    /// claims and the group's own keys).
    pub fn plan_prefixes(&self) -> Vec<Key> {
        [
            "members",
            "draining",
            "resources",
            "assign",
            "unhealthy",
            "acks",
        ]
        .iter()
        .map(|d| format!("{}/{d}/", self.root))
        .collect()
    }
    /// Prefix of every assignment chunk of `m`, with a trailing `/`.
    pub fn assign_prefix(&self, m: &MemberId) -> Key {
        format!("{}/assign/{}/", self.root, encode_component(m.as_str()))
    }
    pub fn assign_chunk(&self, m: &MemberId, i: u32) -> Key {
        format!(
            "{}/assign/{}/{}",
            self.root,
            encode_component(m.as_str()),
            i
        )
    }
}

/// `members/<m>` value. The owning session comes from the entry, never from the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRec {
    pub weight: u32,
    /// When the member registered, in Unix milliseconds by its host's wall clock: for people
    /// reading the status (session age), never used by the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_unix_ms: Option<u64>,
    /// A static member (`Config::static_membership`): another session of the same name, if
    /// static too, may take this record over, and the assignment goes with the name.
    #[serde(default, rename = "static", skip_serializing_if = "is_false")]
    pub static_member: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `leader` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRec {
    pub member: MemberId,
    pub epoch: Epoch,
}

/// `epoch` and `generation` values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRec {
    pub value: u64,
}

/// `claims/<r>` value: informational (who, for humans); ownership is the entry's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRec {
    pub member: MemberId,
}

/// `meta` value: marks a key space as a Rebalanser group, so foreign data is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRec {
    pub rebalanser: u32,
    /// How the group rebalances, chosen at creation (absent: per resource).
    #[serde(default, skip_serializing_if = "Mode::is_resource")]
    pub mode: Mode,
}

/// How a group rebalances (DESIGN §4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the resources that must move are stopped and moved.
    #[default]
    Resource,
    /// On any change every member stops everything; the new assignment starts only when all
    /// acknowledged.
    Barrier,
}

impl Mode {
    fn is_resource(&self) -> bool {
        *self == Mode::Resource
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Resource => "resource",
            Mode::Barrier => "barrier",
        }
    }
}

/// `barrier` value (barrier mode): round `round`, written by the coordinator of `epoch`, in
/// its stop phase (everyone stops everything and acknowledges) or its start phase (the
/// chunks of this round may be acted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierRec {
    pub epoch: Epoch,
    pub round: u64,
    pub stop: bool,
}

/// `acks/<m>` value (barrier mode): `m` holds nothing since the stop of this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRec {
    pub epoch: Epoch,
    pub round: u64,
}

/// One chunk of a member's assignment. A member acts only on a complete set of chunks that
/// share `(epoch, seq)` and name its current session (DESIGN §8 rule 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRec {
    pub session: SessionId,
    pub epoch: Epoch,
    pub seq: u64,
    pub i: u32,
    pub n: u32,
    pub resources: Vec<ResourceId>,
    /// Barrier mode: the round this assignment is for (0 in per-resource mode).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail: no maps with non-string keys, no
    // custom Serialize impls that error.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    serde_json::from_slice(b).ok()
}

/// A key under the group that could not be understood: reported with the key named, skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadData {
    pub key: Key,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub session: SessionId,
    /// The record's creation revision (a takeover is guarded by it).
    pub create_rev: u64,
    pub weight: u32,
    /// Informative only (see [`MemberRec::joined_unix_ms`]).
    pub joined_unix_ms: Option<u64>,
    /// See [`MemberRec::static_member`].
    pub static_member: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub session: SessionId,
    pub member: MemberId,
    pub epoch: Epoch,
    pub create_rev: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimView {
    pub session: SessionId,
    pub member: MemberId,
    pub create_rev: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkView {
    pub key: Key,
    pub version: u64,
    pub rec: ChunkRec,
}

/// A parsed snapshot of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub exists: bool,
    pub generation: u64,
    /// (value, version) of the epoch key.
    pub epoch: Option<(Epoch, u64)>,
    pub leader: Option<LeaderView>,
    pub members: BTreeMap<MemberId, MemberView>,
    pub draining: BTreeMap<MemberId, SessionId>,
    pub resources: BTreeSet<ResourceId>,
    pub assign: BTreeMap<MemberId, Vec<ChunkView>>,
    pub claims: BTreeMap<ResourceId, ClaimView>,
    /// Per resource, the members it keeps failing on, with the session that marked it (a
    /// mark counts only while that session is the member's current one).
    pub unhealthy: BTreeMap<ResourceId, BTreeMap<MemberId, SessionId>>,
    /// How the group rebalances (from `meta`).
    pub mode: Mode,
    /// Barrier mode: the round record and its version.
    pub barrier: Option<(BarrierRec, u64)>,
    /// Barrier mode: each member's acknowledgement, with the session that wrote it.
    pub acks: BTreeMap<MemberId, (SessionId, AckRec)>,
    /// What a rebalance plan reads, in brief: the number of keys under `members/`,
    /// `draining/`, `resources/` and `assign/`, and the largest revision that wrote one. Any
    /// create or update raises the revision and a delete alone lowers the count, so two views
    /// with the same signature plan alike (the coordinator plans once per signature).
    pub plan_input: (usize, u64),
}

impl View {
    /// The complete assignment of `m` for `session`, if its chunks form one complete set.
    pub fn assignment_of(
        &self,
        m: &MemberId,
        session: SessionId,
    ) -> Option<(Epoch, BTreeSet<ResourceId>)> {
        let chunks = self.assign.get(m)?;
        complete_set(chunks)
            .filter(|(s, _, _)| *s == session)
            .map(|(_, e, r)| (e, r))
    }

    /// Per resource, the live members it keeps failing on (by a mark of their current
    /// session): the coordinator assigns it elsewhere.
    pub fn avoided(&self) -> BTreeMap<ResourceId, BTreeSet<MemberId>> {
        self.unhealthy
            .iter()
            .filter_map(|(r, marks)| {
                let on: BTreeSet<MemberId> = marks
                    .iter()
                    .filter(|(m, s)| self.members.get(*m).is_some_and(|mv| mv.session == **s))
                    .map(|(m, _)| m.clone())
                    .collect();
                (!on.is_empty()).then(|| (r.clone(), on))
            })
            .collect()
    }

    /// Members the coordinator balances over: registered and not draining.
    pub fn live_members(&self) -> BTreeMap<MemberId, MemberView> {
        self.members
            .iter()
            .filter(|(m, v)| self.draining.get(*m) != Some(&v.session))
            .map(|(m, v)| (m.clone(), v.clone()))
            .collect()
    }
}

/// `(session, epoch, resources)` of a complete chunk set, or `None` when torn or mixed.
pub fn complete_set(chunks: &[ChunkView]) -> Option<(SessionId, Epoch, BTreeSet<ResourceId>)> {
    let first = &chunks.first()?.rec;
    let n = first.n;
    if chunks.len() != n as usize {
        return None;
    }
    let mut out = BTreeSet::new();
    for (i, c) in chunks.iter().enumerate() {
        let r = &c.rec;
        if r.i as usize != i || r.n != n || r.seq != first.seq || r.epoch != first.epoch {
            return None;
        }
        if r.session != first.session {
            return None;
        }
        out.extend(r.resources.iter().cloned());
    }
    Some((first.session, first.epoch, out))
}

/// Parses a listing of the group prefix. Unknown or malformed keys are returned as
/// [`BadData`] and otherwise ignored, so foreign data never stops the protocol.
pub fn parse_view(layout: &Layout, entries: &[(Key, Entry)]) -> (View, Vec<BadData>) {
    let mut v = View::default();
    let mut bad = Vec::new();
    let prefix = layout.prefix();
    for (key, e) in entries {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let mut parts = rest.split('/');
        let kind = parts.next().unwrap_or("");
        let a = parts.next();
        let b = parts.next();
        let extra = parts.next().is_some();
        if matches!(
            kind,
            "members" | "draining" | "resources" | "assign" | "unhealthy" | "acks" | "barrier"
        ) {
            v.plan_input.0 += 1;
            v.plan_input.1 = v.plan_input.1.max(e.mod_rev);
        }
        let mut fail = |reason| {
            bad.push(BadData {
                key: key.clone(),
                reason,
            })
        };
        if extra {
            fail("unexpected key");
            continue;
        }
        match (kind, a, b) {
            ("meta", None, None) => match decode::<MetaRec>(&e.value) {
                Some(m) => {
                    v.exists = true;
                    v.mode = m.mode;
                }
                None => fail("malformed group marker"),
            },
            ("barrier", None, None) => match decode::<BarrierRec>(&e.value) {
                Some(b) => v.barrier = Some((b, e.version)),
                None => fail("malformed barrier record"),
            },
            ("acks", Some(m), None) => {
                let m = decode_component(m).and_then(|s| MemberId::new(s).ok());
                match (m, decode::<AckRec>(&e.value), e.owner) {
                    (Some(m), Some(a), Some(s)) => {
                        v.acks.insert(m, (s, a));
                    }
                    _ => fail("malformed barrier acknowledgement"),
                }
            }
            ("generation", None, None) => match decode::<CounterRec>(&e.value) {
                Some(c) => v.generation = c.value,
                None => fail("malformed generation"),
            },
            ("epoch", None, None) => match decode::<CounterRec>(&e.value) {
                Some(c) => v.epoch = Some((Epoch(c.value), e.version)),
                None => fail("malformed epoch"),
            },
            ("leader", None, None) => match (decode::<LeaderRec>(&e.value), e.owner) {
                (Some(l), Some(s)) => {
                    v.leader = Some(LeaderView {
                        session: s,
                        member: l.member,
                        epoch: l.epoch,
                        create_rev: e.create_rev,
                    })
                }
                _ => fail("malformed leader record"),
            },
            ("members", Some(m), None) => {
                let id = decode_component(m).and_then(|s| MemberId::new(s).ok());
                match (id, decode::<MemberRec>(&e.value), e.owner) {
                    (Some(id), Some(rec), Some(s)) => {
                        v.members.insert(
                            id,
                            MemberView {
                                session: s,
                                create_rev: e.create_rev,
                                weight: rec.weight,
                                joined_unix_ms: rec.joined_unix_ms,
                                static_member: rec.static_member,
                            },
                        );
                    }
                    _ => fail("malformed member record"),
                }
            }
            ("draining", Some(m), None) => {
                match (
                    decode_component(m).and_then(|s| MemberId::new(s).ok()),
                    e.owner,
                ) {
                    (Some(id), Some(s)) => {
                        v.draining.insert(id, s);
                    }
                    _ => fail("malformed draining record"),
                }
            }
            ("resources", Some(r), None) => {
                match decode_component(r).and_then(|s| ResourceId::new(s).ok()) {
                    Some(id) => {
                        v.resources.insert(id);
                    }
                    None => fail("resource key is not a valid encoded id"),
                }
            }
            ("claims", Some(r), None) => {
                let id = decode_component(r).and_then(|s| ResourceId::new(s).ok());
                match (id, decode::<ClaimRec>(&e.value), e.owner) {
                    (Some(id), Some(rec), Some(s)) => {
                        v.claims.insert(
                            id,
                            ClaimView {
                                session: s,
                                member: rec.member,
                                create_rev: e.create_rev,
                            },
                        );
                    }
                    _ => fail("malformed claim"),
                }
            }
            ("assign", Some(m), Some(_)) => {
                let id = decode_component(m).and_then(|s| MemberId::new(s).ok());
                match (id, decode::<ChunkRec>(&e.value)) {
                    (Some(id), Some(rec)) => v.assign.entry(id).or_default().push(ChunkView {
                        key: key.clone(),
                        version: e.version,
                        rec,
                    }),
                    _ => fail("malformed assignment chunk"),
                }
            }
            ("unhealthy", Some(m), Some(r)) => {
                let m = decode_component(m).and_then(|s| MemberId::new(s).ok());
                let r = decode_component(r).and_then(|s| ResourceId::new(s).ok());
                match (m, r, e.owner) {
                    (Some(m), Some(r), Some(s)) => {
                        v.unhealthy.entry(r).or_default().insert(m, s);
                    }
                    _ => fail("malformed unhealthy mark"),
                }
            }
            _ => fail("unexpected key"),
        }
    }
    for chunks in v.assign.values_mut() {
        chunks.sort_by_key(|c| c.rec.i);
    }
    (v, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_and_counter_keys_are_where_the_parser_reads_them() {
        // The runtime's admin (which keeps the generation across a group's deletion) and the
        // parser must agree on the key.
        let layout = Layout::new(&crate::ids::GroupId::new("g").unwrap());
        let entry = |value: u64| Entry {
            value: encode(&CounterRec { value }),
            version: 0,
            create_rev: 1,
            mod_rev: 1,
            owner: None,
        };
        let (v, _) = parse_view(&layout, &[(layout.generation(), entry(5))]);
        assert!(!v.exists, "no marker, no group");
        let marker = Entry {
            value: encode(&MetaRec {
                rebalanser: 1,
                mode: Mode::Resource,
            }),
            ..entry(0)
        };
        let (v, bad) = parse_view(
            &layout,
            &[
                (layout.meta(), marker),
                (layout.generation(), entry(5)),
                (layout.epoch(), entry(9)),
            ],
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert!(v.exists, "the marker makes the group exist");
        assert_eq!(v.generation, 5);
        assert_eq!(v.epoch.map(|(e, _)| e), Some(crate::ids::Epoch(9)));
    }

    /// A set is complete only when every chunk agrees with the first on `n`, `seq`, `epoch`
    /// and session and the chunks are `0..n` in order; one field off alone tears it.
    #[test]
    fn a_chunk_set_is_complete_only_when_every_field_agrees() {
        let chunk = |i: u32, n: u32, seq: u64, epoch: u64, session: u64, r: &str| ChunkView {
            key: format!("g/assign/m/{i}"),
            version: 0,
            rec: ChunkRec {
                session: SessionId(session),
                epoch: Epoch(epoch),
                seq,
                i,
                n,
                resources: vec![ResourceId::new(r).unwrap()],
                round: 0,
            },
        };
        let good = [chunk(0, 2, 7, 3, 1, "a"), chunk(1, 2, 7, 3, 1, "b")];
        let (s, e, set) = complete_set(&good).expect("a complete set");
        assert_eq!((s, e), (SessionId(1), Epoch(3)));
        assert_eq!(set.len(), 2);
        let torn = [
            ("index", chunk(0, 2, 7, 3, 1, "b")),
            ("count", chunk(1, 3, 7, 3, 1, "b")),
            ("seq", chunk(1, 2, 8, 3, 1, "b")),
            ("epoch", chunk(1, 2, 7, 4, 1, "b")),
            ("session", chunk(1, 2, 7, 3, 2, "b")),
        ];
        for (field, second) in torn {
            let set = [good[0].clone(), second];
            assert_eq!(
                complete_set(&set),
                None,
                "a second chunk with another {field}"
            );
        }
        assert_eq!(complete_set(&good[..1]), None, "one chunk of two");
        assert_eq!(complete_set(&[]), None, "no chunks");
    }

    #[test]
    fn a_key_is_classified_by_what_its_writer_put_there() {
        let g = crate::ids::GroupId::new("g 1").unwrap();
        let l = Layout::new(&g);
        let r = ResourceId::new("a/b c").unwrap();
        let m = MemberId::new("w-1").unwrap();
        assert_eq!(l.classify(&l.claim(&r)), KeyKind::Claim(r.clone()));
        for k in [l.member(&m), l.draining(&m)] {
            assert_eq!(l.classify(&k), KeyKind::OfMember(m.clone()), "{k}");
        }
        let chunk = l.assign_chunk(&m, 3);
        assert_eq!(l.classify(&chunk), KeyKind::Assign(m.clone()));
        assert!(chunk.starts_with(&l.assign_prefix(&m)));
        let longer = MemberId::new("w-10").unwrap();
        assert!(!l.assign_chunk(&longer, 0).starts_with(&l.assign_prefix(&m)));
        assert_eq!(l.classify(&l.resource(&r)), KeyKind::Resource);
        for k in [l.leader(), l.epoch(), l.meta(), l.generation()] {
            assert_eq!(l.classify(&k), KeyKind::Other, "{k}");
        }
        // Another group's claim, and keys the layout never writes, concern everyone.
        let other = Layout::new(&crate::ids::GroupId::new("g").unwrap());
        assert_eq!(l.classify(&other.claim(&r)), KeyKind::Other);
        assert_eq!(
            l.classify(&format!("{}claims/%zz", l.prefix())),
            KeyKind::Other
        );
        assert_eq!(
            l.classify(&format!("{}members/", l.prefix())),
            KeyKind::Other
        );
    }

    #[test]
    fn encoding_round_trips_and_is_canonical() {
        for s in ["a", "café", "a/b", "x y.z", "..", "%41", "日本", "-_-"] {
            let e = encode_component(s);
            assert!(!e.contains('/') && !e.contains('.'), "{e}");
            assert_eq!(decode_component(&e).as_deref(), Some(s));
        }
        assert_eq!(decode_component("%41"), None, "escaped safe byte");
        assert_eq!(decode_component("%5F"), None, "escaped underscore");
        assert_eq!(decode_component("%2D"), None, "escaped dash");
        assert_eq!(decode_component("%2e"), None, "lower-case hex");
        assert_eq!(decode_component("a.b"), None, "raw dot");
        assert_ne!(
            encode_component("caf\u{e9}"),
            encode_component("cafe\u{301}"),
            "NFC and NFD stay distinct ids"
        );
    }
}
