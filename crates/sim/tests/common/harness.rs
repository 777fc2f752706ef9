//! A hand-driven `Member` against the store model: the harness of the scenario tests, with
//! the outcome of chosen operations forced (`Fate`), and predicates over the operations sent.

use std::time::Duration;

use rebalanser_core::layout::Layout;
use rebalanser_core::store::{StoreError, StoreOp, StoreReply, StoreResult, Write};
use rebalanser_core::{Config, Event, Member, OpId, ResourceId, SessionId, Time};
use rebalanser_store::{MemModel, ModelConfig};

use super::{group_store, member_config, ms};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    Normal,
    /// Applied, but the reply is lost.
    AppliedUnknown,
    /// Not applied, and the reply says the outcome is unknown.
    LostUnknown,
    Unavailable,
    /// Refused as invalid (e.g. a store's transient validation error).
    Invalid,
    /// Sent, but neither applied nor answered yet: kept in `Harness::held`.
    Held,
    /// Answered with a success of the wrong kind (a backend's bug the core must survive).
    WrongKind,
}

pub struct Harness {
    pub model: MemModel,
    pub layout: Layout,
    pub member: Member,
    pub now: Time,
    pub events: Vec<Event>,
    pub ops: Vec<StoreOp>,
    /// When each of `ops` was sent.
    pub sent_at: Vec<Time>,
    /// Ops sent and not answered (`Fate::Held`).
    pub held: Vec<(OpId, StoreOp)>,
    /// Ops and events in the order they happened.
    pub log: Vec<String>,
}

impl Harness {
    pub fn new(resources: &[&str]) -> Harness {
        Harness::with_config(resources, member_config("a"))
    }

    pub fn with_config(resources: &[&str], cfg: Config) -> Harness {
        let (model, layout) = group_store(ModelConfig::default(), resources);
        let mut member = Member::new(cfg);
        member.start(Time::ZERO);
        Harness {
            model,
            layout,
            member,
            now: Time::ZERO,
            events: Vec::new(),
            ops: Vec::new(),
            sent_at: Vec::new(),
            held: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Executes every pending op; `fate` decides each outcome.
    pub fn pump(&mut self, fate: &mut dyn FnMut(&StoreOp) -> Fate) {
        while let Some((id, op)) = self.member.poll_op() {
            let res: StoreResult = match fate(&op) {
                Fate::Held => {
                    self.log.push(format!("op {op:?} (held)"));
                    self.ops.push(op.clone());
                    self.sent_at.push(self.now);
                    self.held.push((id, op));
                    continue;
                }
                Fate::Normal => self.model.apply(self.now, &op),
                Fate::AppliedUnknown => {
                    let _ = self.model.apply(self.now, &op);
                    Err(StoreError::Indeterminate("reply lost".into()))
                }
                Fate::LostUnknown => Err(StoreError::Indeterminate("request lost".into())),
                Fate::Unavailable => Err(StoreError::Unavailable("down".into())),
                Fate::Invalid => Err(StoreError::Invalid("refused".into())),
                Fate::WrongKind => Ok(StoreReply::Closed),
            };
            self.log.push(format!("op {op:?}"));
            self.ops.push(op);
            self.sent_at.push(self.now);
            self.member.handle_reply(self.now, id, res);
            self.drain_events();
        }
        self.drain_events();
    }

    pub fn drain_events(&mut self) {
        while let Some(e) = self.member.poll_event() {
            self.log.push(format!("event {e:?}"));
            self.events.push(e);
        }
    }

    /// Tells the member the group changed, and lets it act.
    pub fn notify(&mut self) {
        self.member.handle_notify(self.now);
        self.pump(&mut |_| Fate::Normal);
    }

    /// Runs timers up to `now + d`, re-reading after every round (as if notified).
    pub fn run_for(&mut self, d: Duration, fate: &mut dyn FnMut(&StoreOp) -> Fate) {
        let end = self.now + d;
        self.pump(fate);
        while let Some(t) = self.member.poll_timeout().filter(|t| *t <= end) {
            self.now = t;
            self.member.handle_timeout(t);
            self.pump(fate);
            self.member.handle_notify(t);
            self.pump(fate);
        }
        self.now = end;
    }

    /// Runs timers up to `now + d` with no notification at all: a member must ask for what
    /// it waits for itself.
    pub fn run_unnotified_for(&mut self, d: Duration, fate: &mut dyn FnMut(&StoreOp) -> Fate) {
        let end = self.now + d;
        self.pump(fate);
        while let Some(t) = self.member.poll_timeout().filter(|t| *t <= end) {
            self.now = t;
            self.member.handle_timeout(t);
            self.pump(fate);
        }
        self.now = end;
    }

    /// When the ops matching `pred` were sent.
    pub fn times_of(&self, pred: impl Fn(&StoreOp) -> bool) -> Vec<Time> {
        self.ops
            .iter()
            .zip(&self.sent_at)
            .filter(|(op, _)| pred(op))
            .map(|(_, t)| *t)
            .collect()
    }

    /// The revoke events so far.
    pub fn revokes(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Revoke { .. }))
            .count()
    }

    pub fn grants(&self) -> Vec<(String, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Grant {
                    resource, token, ..
                } => Some((resource.to_string(), token.revision())),
                _ => None,
            })
            .collect()
    }

    /// Has the member read the group now (it must want to: call after a notify) and returns
    /// the listing's reply to deliver later: a read overtaken by what happens meanwhile.
    pub fn read_now_answer_later(&mut self) -> (OpId, StoreResult) {
        self.member.handle_notify(self.now);
        let (id, op) = self.member.poll_op().expect("a read");
        assert!(matches!(op, StoreOp::Read { .. }), "{op:?}");
        let res = self.model.apply(self.now, &op);
        self.log.push(format!("op {op:?} (answered later)"));
        self.ops.push(op);
        self.sent_at.push(self.now);
        (id, res)
    }

    /// Answers the op `Fate::Held` kept first, as the store would now.
    pub fn answer_held(&mut self) {
        let (id, op) = self.held.remove(0);
        let res = self.model.apply(self.now, &op);
        self.member.handle_reply(self.now, id, res);
        self.drain_events();
    }

    /// Answers the op `Fate::Held` kept first with `res`, without applying it.
    pub fn answer_held_with(&mut self, res: StoreResult) {
        let (id, _) = self.held.remove(0);
        self.member.handle_reply(self.now, id, res);
        self.drain_events();
    }

    /// Deletes `key`, as another member or an operator would.
    pub fn delete_key(&mut self, key: &str) {
        let delete = StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Delete {
                key: key.to_string(),
            }],
        };
        self.model.apply(self.now, &delete).unwrap();
    }

    /// Creates the claim of `r` for another session `owner` (as its member would), at `now`;
    /// returns the claim's key.
    pub fn foreign_claim(&mut self, r: &str, owner: SessionId) -> String {
        let key = self.layout.claim(&ResourceId::new(r).unwrap());
        let create = StoreOp::Txn {
            conds: vec![],
            writes: vec![Write::Create {
                key: key.clone(),
                value: br#"{"member":"other"}"#.to_vec(),
                owner: Some(owner),
            }],
        };
        self.model.apply(self.now, &create).unwrap();
        key
    }

    pub fn release_all_revoked(&mut self) {
        let revoked: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Revoke {
                    lease, resource, ..
                } => Some((resource.clone(), *lease)),
                _ => None,
            })
            .collect();
        self.member
            .handle_released_all(self.now, revoked.iter().map(|(r, l)| (r, *l)));
    }
}

/// A transaction with a write picked by `kind` to a key containing `part`.
pub fn writes_under(op: &StoreOp, part: &str, kind: fn(&Write) -> bool) -> bool {
    let key = |w: &Write| match w {
        Write::Create { key, .. } | Write::Put { key, .. } | Write::Delete { key } => key.clone(),
    };
    matches!(op, StoreOp::Txn { writes, .. }
        if writes.iter().any(|w| kind(w) && key(w).contains(part)))
}

pub fn is_claim_create(op: &StoreOp) -> bool {
    writes_under(op, "/claims/", |w| matches!(w, Write::Create { .. }))
}

/// Answers the first `n` ops matching `pred` with `Unavailable`; runs everything else.
pub fn fail_first(n: usize, pred: fn(&StoreOp) -> bool) -> impl FnMut(&StoreOp) -> Fate {
    first_n(n, pred, Fate::Unavailable)
}

/// The ops matching `pred` were sent twice, `retry_delay` (40 ms) apart.
pub fn assert_sent_twice_retry_delay_apart(h: &Harness, pred: fn(&StoreOp) -> bool) {
    let times = h.times_of(pred);
    assert_eq!(times.len(), 2, "{}", h.log.join("\n"));
    assert_eq!(times[1].saturating_since(times[0]), ms(40), "retry_delay");
}

/// Gives every op matching `pred` the fate `fate`; runs everything else.
pub fn only(pred: fn(&StoreOp) -> bool, fate: Fate) -> impl FnMut(&StoreOp) -> Fate {
    first_n(usize::MAX, pred, fate)
}

/// Gives the first `n` ops matching `pred` the fate `fate`; runs everything else.
pub fn first_n(n: usize, pred: fn(&StoreOp) -> bool, fate: Fate) -> impl FnMut(&StoreOp) -> Fate {
    let mut left = n;
    move |op| {
        if pred(op) && left > 0 {
            left -= 1;
            fate
        } else {
            Fate::Normal
        }
    }
}

pub fn is_claim_get(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Get { key, .. } if key.contains("/claims/"))
}

pub fn is_claim_delete(op: &StoreOp) -> bool {
    writes_under(op, "/claims/", |w| matches!(w, Write::Delete { .. }))
}

pub fn other_session(h: &mut Harness) -> SessionId {
    match h
        .model
        .apply(h.now, &StoreOp::OpenSession { ttl: ms(2000) })
    {
        Ok(StoreReply::Session { session, .. }) => session,
        r => panic!("open: {r:?}"),
    }
}

pub fn claim_txns(h: &Harness) -> Vec<Vec<(&'static str, String)>> {
    h.ops
        .iter()
        .filter_map(|op| match op {
            StoreOp::Txn { writes, .. } => {
                let claims: Vec<(&'static str, String)> = writes
                    .iter()
                    .filter_map(|w| {
                        let (kind, key) = match w {
                            Write::Create { key, .. } => ("create", key),
                            Write::Delete { key } => ("delete", key),
                            Write::Put { key, .. } => ("put", key),
                        };
                        let r = key.split("/claims/").nth(1)?;
                        Some((kind, r.to_string()))
                    })
                    .collect();
                (!claims.is_empty()).then_some(claims)
            }
            _ => None,
        })
        .collect()
}
