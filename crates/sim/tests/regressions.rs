//! Regression scenarios found by a red-team review: real `Member`s driven by hand against
//! `MemModel`, with chosen operations held, applied late or failed. Each test asserts the fixed
//! behaviour; the comment above it says what used to go wrong.
//!
//! The harness judges access like the simulator and the model checker, with their shared
//! oracle ([`rebalanser_sim::access`]), never from what a member believes: an application
//! accesses a resource from the `Grant` it received until it released it or its process was
//! aborted (`StopDeadlineMissed`; the aborted member is driven no further). Violations: two
//! accesses to one resource at once; an access under a session the store no longer has or
//! expires before the access ends; an access the store's claim of its session does not back,
//! or whose token is not that claim's create revision; a token that does not grow.
use std::collections::BTreeSet;

use rebalanser_core::admin;
use rebalanser_core::layout::Layout;
use rebalanser_core::store::{Cond, StoreError, StoreOp, StoreResult, Write};
use rebalanser_core::{Config, Epoch, Event, LeaseId, Member, OpId, ResourceId, Time, Variant};
use rebalanser_sim::access::{judge, just_after, Access, App, AppEffect, Tokens};
use rebalanser_store::{MemModel, ModelConfig};

mod common;
use common::{group_store, member_config, ms};

fn t(msv: u64) -> Time {
    Time(msv * 1_000_000)
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Act {
    ApplyNowReplyLater,
    DeliverThenApplyHeld,
    Deliver,
    Drop,
    IndeterminateHold,
    IndeterminateNoApply,
}

/// Decides what the network does with one member's op.
pub type Filter = Box<dyn FnMut(usize, &StoreOp) -> Act>;
/// Rewrites a reply before the member sees it.
pub type ReplyHook = Box<dyn FnMut(usize, &StoreOp, StoreResult) -> StoreResult>;

pub struct H {
    pub store: MemModel,
    pub layout: Layout,
    pub m: Vec<Member>,
    pub now: Time,
    /// What each member's application accesses (stamped with the grant's time).
    pub app: Vec<App<Time>>,
    /// The member missed a stop deadline and its process was aborted: driven no further.
    pub aborted: Vec<bool>,
    pub tokens: Tokens,
    pub slow_release: Vec<bool>,
    pub partitioned: Vec<bool>,
    pub held: Vec<(usize, StoreOp)>,
    pub late_replies: Vec<(usize, OpId, StoreResult)>,
    pub filter: Filter,
    pub log: Vec<String>,
    pub violations: Vec<String>,
    /// Findings already reported (an access that breaks a rule does so at every check).
    reported: BTreeSet<String>,
    pub reply_hook: ReplyHook,
}

pub fn cfg(name: &str) -> Config {
    member_config(name)
}

impl H {
    pub fn new(resources: &[&str]) -> H {
        let (store, layout) = group_store(
            ModelConfig {
                min_ttl: ms(100),
                max_ttl: ms(60000),
                history: 0,
            },
            resources,
        );
        H {
            store,
            layout,
            m: vec![],
            now: Time::ZERO,
            app: vec![],
            aborted: vec![],
            tokens: Tokens::default(),
            slow_release: vec![],
            partitioned: vec![],
            held: vec![],
            late_replies: vec![],
            filter: Box::new(|_, _| Act::Deliver),
            log: vec![],
            violations: vec![],
            reported: BTreeSet::new(),
            reply_hook: Box::new(|_, _, r| r),
        }
    }
    pub fn add(&mut self, c: Config) -> usize {
        let mut m = Member::new(c);
        m.start(self.now);
        self.m.push(m);
        self.app.push(App::new());
        self.aborted.push(false);
        self.slow_release.push(false);
        self.partitioned.push(false);
        let i = self.m.len() - 1;
        self.pump();
        i
    }
    fn notify_all(&mut self) {
        for i in 0..self.m.len() {
            if !self.partitioned[i] && !self.aborted[i] {
                self.m[i].handle_notify(self.now);
            }
        }
    }
    /// Executes every queued op of every member (at `now`), feeds replies, handles events;
    /// then judges the applications' access at this instant.
    pub fn pump(&mut self) {
        for _round in 0..300 {
            let mut progress = false;
            for i in 0..self.m.len() {
                if self.aborted[i] {
                    continue;
                }
                while let Some(e) = self.m[i].poll_event() {
                    progress = true;
                    self.event(i, e);
                    if self.aborted[i] {
                        break;
                    }
                }
                if self.aborted[i] {
                    continue;
                }
                let mut k = 0;
                while let Some((id, op)) = self.m[i].poll_op() {
                    progress = true;
                    self.exec(i, id, op);
                    k += 1;
                    if k > 2000 {
                        let n = self.log.len();
                        for l in &self.log[n.saturating_sub(40)..] {
                            println!("{l}");
                        }
                        panic!("member {i} spins at one instant");
                    }
                }
            }
            if !progress {
                self.check(just_after(self.now));
                return;
            }
        }
        {
            let n = self.log.len();
            for l in &self.log[n.saturating_sub(60)..] {
                println!("{l}");
            }
            panic!("pump did not settle");
        }
    }
    fn exec(&mut self, i: usize, id: OpId, op: StoreOp) {
        let act = if self.partitioned[i] {
            Act::IndeterminateNoApply
        } else {
            (self.filter)(i, &op)
        };
        self.log.push(format!(
            "{} m{} op{} {:?} -> {:?}",
            self.now,
            i,
            id.0,
            short(&op),
            act
        ));
        let unknown = |op: &StoreOp| {
            if op.is_write() {
                Err(StoreError::Indeterminate("x".into()))
            } else {
                Err(StoreError::Unavailable("x".into()))
            }
        };
        match act {
            Act::Drop => {}
            Act::Deliver => {
                let before = self.store.rev();
                let res = self.store.apply(self.now, &op);
                let res = (self.reply_hook)(i, &op, res);
                self.log.push(format!("   <- {:?}", shortres(&res)));
                self.m[i].handle_reply(self.now, id, res);
                if self.store.rev() != before {
                    self.notify_all();
                }
            }
            Act::ApplyNowReplyLater => {
                let res = self.store.apply(self.now, &op);
                self.late_replies.push((i, id, res));
                self.notify_all();
            }
            Act::DeliverThenApplyHeld => {
                let res = self.store.apply(self.now, &op);
                self.log.push(format!("   <- {:?}", shortres(&res)));
                for (j, h) in std::mem::take(&mut self.held) {
                    let r = self.store.apply(self.now, &h);
                    self.log.push(format!(
                        "{} LATE apply m{} {:?} -> {:?}",
                        self.now,
                        j,
                        short(&h),
                        shortres(&r)
                    ));
                }
                self.m[i].handle_reply(self.now, id, res);
                self.notify_all();
            }
            Act::IndeterminateHold => {
                self.held.push((i, op.clone()));
                self.m[i].handle_reply(self.now, id, unknown(&op));
            }
            Act::IndeterminateNoApply => {
                self.m[i].handle_reply(self.now, id, unknown(&op));
            }
        }
    }
    /// Applies the held (late) writes now.
    pub fn apply_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (i, op) in held {
            let r = self.store.apply(self.now, &op);
            self.log.push(format!(
                "{} LATE apply m{} {:?} -> {:?}",
                self.now,
                i,
                short(&op),
                shortres(&r)
            ));
        }
        self.notify_all();
        self.pump();
    }
    fn event(&mut self, i: usize, e: Event) {
        self.log.push(format!("{} m{} event {:?}", self.now, i, e));
        match self.app[i].on_event(&e, self.now) {
            AppEffect::Granted {
                resource,
                token,
                session,
                ..
            } => {
                if let Some(p) = self.tokens.grant(&resource, i, session, token) {
                    if p.regressed {
                        let (j, t) = (p.owner, p.token);
                        self.flag(
                            format!("token {resource} {token}"),
                            format!("token for {resource} went from {t} (m{j}) to {token} (m{i})"),
                        );
                    }
                }
            }
            AppEffect::Revoked { resource, lease } => {
                if !self.slow_release[i] {
                    self.app[i].release(&resource, lease);
                    self.m[i].handle_released(self.now, &resource, lease);
                }
            }
            AppEffect::Abort => {
                // The runtime aborts the process: its application stops with it.
                self.log.push(format!("{} m{} ABORTED", self.now, i));
                self.aborted[i] = true;
            }
            AppEffect::None => {}
        }
    }
    pub fn release_all(&mut self, i: usize) {
        let ls: Vec<(ResourceId, LeaseId)> = self.app[i]
            .leases()
            .filter(|(_, _, l)| l.revoked)
            .map(|(r, l, _)| (r.clone(), l))
            .collect();
        for (r, l) in ls {
            self.app[i].release(&r, l);
            self.m[i].handle_released(self.now, &r, l);
        }
        self.pump();
    }
    /// Judges the applications' access from now until `until` (exclusive) against the store
    /// (the shared oracle; never what a member believes).
    pub fn check(&mut self, until: Time) {
        let who = |a: &Access<'_, usize, Time>| {
            format!(
                "m{} (token {}, {}, since {})",
                a.who, a.held.token, a.held.session, a.held.since
            )
        };
        let accesses = self.app.iter().enumerate().flat_map(|(i, a)| a.accesses(i));
        let found: Vec<(String, String)> = judge(&self.store, &self.layout, accesses, until)
            .iter()
            .map(|f| f.describe(who))
            .collect();
        for (key, what) in found {
            self.flag(key, what);
        }
    }
    /// Reports a violation once per `key`.
    fn flag(&mut self, key: String, what: String) {
        if self.reported.insert(key) {
            let s = format!("{} {what}", self.now);
            self.log.push(s.clone());
            self.violations.push(s);
        }
    }
    /// Advances virtual time to `to`, firing member timers and store expiry.
    pub fn advance(&mut self, to: Time) {
        loop {
            let next = self
                .m
                .iter()
                .zip(&self.aborted)
                .filter(|(_, aborted)| !**aborted)
                .filter_map(|(m, _)| m.poll_timeout())
                .filter(|x| *x > self.now)
                .min();
            let step = match next {
                Some(n) if n <= to => n,
                _ => to,
            };
            let step = step.min(self.now + ms(20)); // store tick
                                                    // Nothing happens before `step`: the access goes on until then.
            self.check(step);
            self.now = step;
            if std::env::var("RT_DBG").is_ok() {
                eprintln!("advance {}", self.now);
            }
            let before = self.store.rev();
            let dead = self.store.expire(self.now);
            if !dead.is_empty() {
                self.log
                    .push(format!("{} store expired {:?}", self.now, dead));
            }
            // The store's expiry comes first at this instant: an application still accessing
            // under an expired session overlaps whoever claims next, even if its member stops
            // it at this same instant (a real stop is not instantaneous; as in the model).
            self.check(just_after(self.now));
            if self.store.rev() != before {
                self.notify_all();
            }
            for i in 0..self.m.len() {
                if !self.aborted[i] {
                    self.m[i].handle_timeout(self.now);
                }
            }
            self.pump();
            if self.now >= to {
                return;
            }
        }
    }
    /// Adds `ids` to the group in the store and tells every member.
    pub fn add_resources(&mut self, ids: &[ResourceId]) {
        let res = self
            .store
            .apply(self.now, &admin::add_resources(&self.layout, ids));
        assert!(res.is_ok(), "{res:?}");
        self.notify_all();
    }
    /// From now on, every assignment transaction any member sends, in order.
    pub fn record_assign_writes(&mut self) -> std::rc::Rc<std::cell::RefCell<Vec<StoreOp>>> {
        let writes: std::rc::Rc<std::cell::RefCell<Vec<StoreOp>>> = Default::default();
        let seen = writes.clone();
        self.filter = Box::new(move |_, op| {
            if is_assign_write(op) {
                seen.borrow_mut().push(op.clone());
            }
            Act::Deliver
        });
        writes
    }
    pub fn holders(&self, r: &str) -> Vec<usize> {
        let r = ResourceId::new(r).unwrap();
        (0..self.m.len())
            .filter(|i| self.app[*i].accesses_resource(&r))
            .collect()
    }
    pub fn dump(&self) {
        for l in &self.log {
            println!("{l}");
        }
    }
}

fn short(op: &StoreOp) -> String {
    match op {
        StoreOp::Txn { writes, .. } => writes
            .iter()
            .map(|w| match w {
                Write::Create { key, .. } => format!("create {key}"),
                Write::Put { key, .. } => format!("put {key}"),
                Write::Delete { key } => format!("delete {key}"),
            })
            .collect::<Vec<_>>()
            .join(","),
        StoreOp::Get { key, linearizable } => format!("get {key} lin={linearizable}"),
        StoreOp::List { linearizable, .. } => format!("list lin={linearizable}"),
        o => format!("{o:?}"),
    }
}
fn shortres(r: &StoreResult) -> String {
    match r {
        Ok(rebalanser_core::store::StoreReply::Listed { entries, .. }) => {
            format!("listed {}", entries.len())
        }
        o => format!("{o:?}"),
    }
}
fn is_claim_delete(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Txn { writes, .. } if writes.iter().any(|w| matches!(w, Write::Delete { key } if key.contains("/claims/"))))
}
fn is_register(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Txn { writes, .. } if writes.iter().any(|w| matches!(w, Write::Create { key, .. } if key.contains("/members/"))))
}

// ---------------------------------------------------------------------------------------
// F1: an Indeterminate claim delete, "settled" by a linearizable read, lands later.
#[test]
fn late_applied_claim_delete_never_gives_a_double_lease() {
    let mut h = H::new(&["r"]);
    let a = h.add(cfg("a"));
    h.advance(t(500));
    assert_eq!(h.holders("r"), vec![a], "a holds r");
    let b = h.add(cfg("b"));
    h.advance(t(1000));
    assert_eq!(h.holders("r"), vec![a]);
    // r leaves a's desired set (admin removes it); a's delete of its claim times out, is held
    // by the network/store and applied later (after a's verify read).
    let block_get = std::rc::Rc::new(std::cell::Cell::new(true));
    let bg = block_get.clone();
    let mut first = true;
    h.filter = Box::new(move |i, op| {
        if i == 0 && is_claim_delete(op) && first {
            first = false;
            return Act::IndeterminateHold;
        }
        // a's verify read of the claim fails for a while (store busy): r stays unresolved.
        if i == 0 && bg.get() && matches!(op, StoreOp::Get { key, .. } if key.contains("/claims/"))
        {
            return Act::IndeterminateNoApply;
        }
        Act::Deliver
    });
    let lay = h.layout.clone();
    h.store
        .apply(
            h.now,
            &admin::remove_resources(&lay, &[ResourceId::new("r").unwrap()]),
        )
        .unwrap();
    h.notify_all();
    h.pump();
    // Re-added before the handover completes: r goes back to a.
    h.store
        .apply(
            h.now,
            &admin::add_resources(&lay, &[ResourceId::new("r").unwrap()]),
        )
        .unwrap();
    h.notify_all();
    h.pump();
    block_get.set(false);
    h.advance(h.now + ms(100));
    println!(
        "holders after re-add: {:?}; held ops: {}",
        h.holders("r"),
        h.held.len()
    );
    // The late delete lands: claims/r is gone while a holds a lease on it.
    h.apply_held();
    println!(
        "claims/r in store: {:?}",
        h.store.entries().get("g/claims/r").map(|e| e.owner)
    );
    // a leaves gracefully; its app is slow to stop; r moves to b, which finds no claim.
    h.slow_release[a] = true;
    h.m[a].leave(h.now);
    h.pump();
    h.advance(h.now + ms(200));
    h.dump();
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    let _ = b;
}

// F2: an Indeterminate Register "settled" as absent by a read, applied later: blocked by itself.
#[test]
fn late_applied_register_does_not_block_the_member() {
    let mut h = H::new(&["r1", "r2", "r3", "r4"]);
    let _b = h.add(cfg("b"));
    h.advance(t(300));
    let mut first = true;
    h.filter = Box::new(move |i, op| {
        if i == 1 && is_register(op) && first {
            first = false;
            return Act::IndeterminateHold;
        }
        // The verify read is served before the slow Register commits; it commits right after.
        if i == 1 && matches!(op, StoreOp::Get { key, .. } if key.contains("/members/")) {
            return Act::DeliverThenApplyHeld;
        }
        Act::Deliver
    });
    let a = h.add(cfg("a"));
    h.advance(h.now + ms(20_000));
    let leased: usize = (0..h.m.len()).map(|i| h.app[i].len()).sum();
    println!(
        "a leases: {:?}; b leases: {:?}; total {leased}",
        h.app[a].resources().collect::<Vec<_>>(),
        h.app[0].resources().collect::<Vec<_>>()
    );
    for l in h
        .log
        .iter()
        .filter(|l| l.contains("m1 event") || l.contains("LATE"))
    {
        println!("{l}");
    }
    assert_eq!(
        leased, 4,
        "resources never leased 20 s after faults stopped"
    );
}

impl H {
    pub fn deliver_late_replies(&mut self) {
        for (i, id, res) in std::mem::take(&mut self.late_replies) {
            if self.aborted[i] {
                continue;
            }
            self.log.push(format!(
                "{} m{} LATE reply op{} {:?}",
                self.now,
                i,
                id.0,
                shortres(&res)
            ));
            self.m[i].handle_reply(self.now, id, res);
        }
        self.pump();
    }
}

// F3: the store lowers the session timeout mid-session; the deadline is never lowered.
#[test]
fn ttl_lowered_mid_session_lowers_the_deadline() {
    let mut h = H::new(&["r"]);
    let a = h.add(cfg("a"));
    h.advance(t(500));
    let b = h.add(cfg("b"));
    h.advance(t(1000));
    assert_eq!(h.holders("r"), vec![a]);
    let sa = h.m[a].session().unwrap();
    // ZooKeeper reconnect: negotiated timeout now 1.2 s (still passes Config::validate's budget).
    h.store.renegotiate(sa, ms(1200), h.now);
    h.advance(h.now + ms(210)); // one keepalive reply carries ttl = 1.2 s
    let (_, dl) = h.m[a].deadline().unwrap();
    println!(
        "now {} a's local deadline {} store expiry {:?}",
        h.now,
        dl,
        h.store.expires_at(sa)
    );
    h.partitioned[a] = true;
    // Its application ignores the revoke: only the member's forced stop at its deadline ends
    // the access, and it must come before the store expires the session.
    h.slow_release[a] = true;
    h.advance(h.now + ms(1500));
    for l in h
        .log
        .iter()
        .filter(|l| l.contains("event") || l.contains("DOUBLE") || l.contains("expired"))
        .skip_while(|l| !l.starts_with("1."))
    {
        println!("{l}");
    }
    println!("deadline beyond store expiry: {}", dl > Time(2_400_000_000));
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    let _ = b;
}

// F4: on_open uses `now - op_timeout` as the send time: a reply handled late (process paused,
// executor stalled, system suspend which tokio's timeout does not count) inflates the deadline.
#[test]
fn open_reply_handled_late_does_not_inflate_the_deadline() {
    let mut h = H::new(&["r1", "r2"]);
    let b = h.add(cfg("b"));
    h.advance(t(500));
    h.filter = Box::new(|i, op| {
        if i == 1 && matches!(op, StoreOp::OpenSession { .. }) {
            Act::ApplyNowReplyLater
        } else {
            Act::Deliver
        }
    });
    let a = h.add(cfg("a")); // open applied at 0.5 s
    h.advance(t(1500));
    h.deliver_late_replies(); // handled at 1.5 s (1 s stall)
    let sa = h.m[a].session().unwrap();
    h.advance(t(1550));
    let (_, dl) = h.m[a].deadline().unwrap();
    println!(
        "a's local deadline {} ; store expiry {:?}; a leases {:?}",
        dl,
        h.store.expires_at(sa),
        h.app[a].resources().collect::<Vec<_>>()
    );
    h.partitioned[a] = true;
    // Its application ignores the revoke: only the member's forced stop at its deadline ends
    // the access, and it must come before the store expires the session.
    h.slow_release[a] = true;
    h.advance(t(3500));
    for l in h
        .log
        .iter()
        .filter(|l| l.contains("event") || l.contains("DOUBLE") || l.contains("expired"))
        .skip_while(|l| !l.starts_with("1.5"))
    {
        println!("{l}");
    }
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    let _ = b;
}

// F5: leave() of a member blocked on its name (another live session holds it) never completes.
#[test]
fn leave_while_name_in_use_completes() {
    let mut h = H::new(&["r1"]);
    let _a = h.add(cfg("a"));
    h.advance(t(300));
    let a2 = h.add(cfg("a")); // same name, both live (misconfiguration, or a paused predecessor)
    h.advance(t(600));
    h.m[a2].leave(h.now);
    h.pump();
    h.advance(t(20_000)); // leave_timeout is 3 s
    println!(
        "a2 closed: {}; a2 next timer {:?}",
        h.m[a2].is_closed(),
        h.m[a2].poll_timeout()
    );
    assert!(
        h.m[a2].is_closed(),
        "leave() still pending 19 s later (leave_timeout 3 s)"
    );
}

// F6: the store grants a TTL below the timing budget Config::validate checked.
#[test]
fn granted_ttl_below_budget_is_refused() {
    let mut h = H::new(&["r1", "r2"]);
    h.store = {
        let mut s = MemModel::new(ModelConfig {
            min_ttl: ms(100),
            max_ttl: ms(600),
            history: 0,
        });
        let lay = h.layout.clone();
        s.apply(Time::ZERO, &admin::create_group(&lay)).unwrap();
        s.apply(
            Time::ZERO,
            &admin::add_resources(
                &lay,
                &[
                    ResourceId::new("r1").unwrap(),
                    ResourceId::new("r2").unwrap(),
                ],
            ),
        )
        .unwrap();
        s
    };
    let _a = h.add(cfg("a"));
    h.advance(t(10_000));
    let n = |k: &str| h.log.iter().filter(|l| l.contains(k)).count();
    println!(
        "grants {} suspended {} resumed {} store errors {}",
        n("event Grant"),
        n("Suspended"),
        n("Resumed"),
        n("StoreError")
    );
    assert!(n("event Grant") <= 2, "leases flap");
}

fn is_assign_write(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Txn { writes, .. }
        if writes.iter().any(|w| matches!(w, Write::Put { key, .. } if key.contains("/assign/"))))
}

/// Coordinator `a` sends a rebalance that the network holds; `a` is then cut off until its
/// session expires and `b` is elected under a newer epoch (its own first rebalance held too, so
/// nothing else has changed the assignment). Then `a`'s write reaches the store. Returns the
/// held transaction and the store's answer to it.
fn deposed_coordinator_late_write(variant: Variant) -> (StoreOp, StoreResult) {
    let mut h = H::new(&["r1", "r2"]);
    let mut ca = cfg("a");
    ca.variant = variant;
    let a = h.add(ca);
    h.advance(t(300));
    assert_eq!(h.m[a].is_coordinator(), Some(Epoch(1)));
    let b = h.add(cfg("b"));
    h.advance(t(600));
    h.filter = Box::new(move |i, op| {
        // a's rebalances from now on are held; b's never arrive and are never answered
        // (so b stays coordinator without having written anything).
        if is_assign_write(op) && i == 1 {
            return Act::Drop;
        }
        if is_assign_write(op) {
            return Act::IndeterminateHold;
        }
        Act::Deliver
    });
    let lay = h.layout.clone();
    h.store
        .apply(
            h.now,
            &admin::add_resources(&lay, &[ResourceId::new("r3").unwrap()]),
        )
        .unwrap();
    h.notify_all();
    h.pump();
    assert!(!h.held.is_empty(), "a's rebalance is held");
    let (_, late) = h.held.remove(0);
    h.held.clear();
    h.partitioned[a] = true;
    let give_up = h.now + ms(4000);
    while h.m[b].is_coordinator().is_none_or(|e| e <= Epoch(1)) {
        if h.now >= give_up {
            h.dump();
            panic!("b was never elected");
        }
        h.advance(h.now + ms(20));
    }
    let res = h.store.apply(h.now, &late);
    (late, res)
}

#[test]
fn a_deposed_coordinators_late_write_is_rejected() {
    let (txn, res) = deposed_coordinator_late_write(Variant::Correct);
    // The transaction carries its fence: the leader key it owns and the epoch it read.
    let StoreOp::Txn { conds, .. } = &txn else {
        panic!("{txn:?}")
    };
    assert!(conds
        .iter()
        .any(|c| matches!(c, Cond::Owned { key, .. } if key == "g/leader")));
    assert!(conds
        .iter()
        .any(|c| matches!(c, Cond::Version(key, _) if key == "g/epoch")));
    assert!(
        matches!(res, Err(StoreError::Conflict(_))),
        "a deposed coordinator's write: {res:?}"
    );
    // Without the guard the same late write lands.
    let (_, res) = deposed_coordinator_late_write(Variant::UnguardedRebalance);
    assert!(
        res.is_ok(),
        "the unguarded write was rejected anyway ({res:?}): the test proves nothing"
    );
}

/// A graceful leave marks the member draining, so the coordinator moves its resources at once:
/// the leaver closes within a few round trips, not after `leave_timeout` (3 s here), and
/// every resource ends with the member that stays.
#[test]
fn a_graceful_leave_hands_over_before_its_timeout() {
    let mut h = H::new(&["r1", "r2", "r3", "r4"]);
    let a = h.add(cfg("a"));
    h.advance(t(500));
    let b = h.add(cfg("b"));
    h.advance(t(2000));
    for r in ["r1", "r2", "r3", "r4"] {
        assert_eq!(h.holders(r).len(), 1, "{r} settled before the leave");
    }
    assert!(
        ["r1", "r2", "r3", "r4"].iter().any(|r| h.holders(r) == [b]),
        "b holds something to hand over"
    );
    h.m[b].leave(h.now);
    h.pump();
    let left_at = h.now;
    while !h.m[b].is_closed() && h.now < left_at + ms(5000) {
        h.release_all(a);
        h.release_all(b);
        h.advance(h.now + ms(20));
    }
    assert!(h.m[b].is_closed(), "never closed");
    let took = h.now.saturating_since(left_at);
    assert!(
        took < ms(1000),
        "the leave took {took:?} (leave_timeout 3 s)"
    );
    h.advance(h.now + ms(1000));
    for r in ["r1", "r2", "r3", "r4"] {
        assert_eq!(h.holders(r), [a], "{r} after the leave");
    }
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}

/// After its session expired, a member's name is still assigned resources under the old
/// session until the coordinator rewrites the assignment. The member must not act on it under
/// its new session: those resources may already be planned for someone else (mutant: the
/// session check of the assignment replaced by `true` survived every other test).
#[test]
fn an_assignment_to_an_earlier_session_of_the_name_is_not_acted_on() {
    let mut h = H::new(&["r1", "r2", "r3", "r4"]);
    let a = h.add(cfg("a"));
    h.advance(t(500));
    let b = h.add(cfg("b"));
    h.advance(t(2000));
    let mine: Vec<&str> = ["r1", "r2", "r3", "r4"]
        .into_iter()
        .filter(|r| h.holders(r) == [b])
        .collect();
    assert!(!mine.is_empty(), "b holds something");
    assert!(h.m[a].is_coordinator().is_some());
    // The coordinator's rewrite is slow (sent, not answered): it stays coordinator.
    h.filter = Box::new(move |i, op| {
        if i == a && is_assign_write(op) {
            Act::Drop
        } else {
            Act::Deliver
        }
    });
    let old = h.m[b].session().expect("b's session");
    h.partitioned[b] = true;
    let cut = h.now;
    while h.store.session_alive(old) && h.now < cut + ms(5000) {
        h.release_all(b);
        h.advance(h.now + ms(20));
    }
    assert!(!h.store.session_alive(old), "the store expired b's session");
    h.partitioned[b] = false;
    let healed = h.now;
    while h.now < healed + ms(1500) {
        h.release_all(b);
        h.advance(h.now + ms(20));
        let new = h.m[b].session();
        assert!(
            new.is_none() || new == Some(old) || mine.iter().all(|r| h.holders(r).is_empty()),
            "b granted its old session's assignment under {new:?}"
        );
    }
    assert_ne!(h.m[b].session(), Some(old), "b reopened a session");
    assert!(h.m[a].is_coordinator().is_some());
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}

/// PITFALLS 21: a rebalance too large for one transaction writes every removal before any
/// addition, so no stored state has a resource in two assignments. Here the plan is within
/// `max_txn_writes` but over `max_txn_bytes` (mutant: the fit test's `&&` read as `||`,
/// which sent the joining member's additions first, while the old owner still had them).
#[test]
fn a_rebalance_over_the_byte_limit_writes_removals_first() {
    let (writes, got) = split_rebalance(
        Change::Join,
        (64, 256 + rebalanser_core::store::MAX_KEY_BYTES),
    );
    let to_a = |op: &StoreOp| {
        matches!(op, StoreOp::Txn { writes, .. } if writes.iter().any(|w| matches!(w,
            Write::Put { key, .. } if key.contains("/assign/a/"))))
    };
    assert!(
        writes.len() >= 2,
        "one rebalance in {} transaction(s)",
        writes.len()
    );
    assert!(!to_a(&writes[0]), "the first transaction adds to a");
    assert_eq!(got, 10, "a got its half");
}

/// The change a split rebalance is made for.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// b holds 20 resources alone, then a joins: b's removals, then a's additions.
    Join,
    /// a and b hold 10 of 20 each, then 10 more are added: additions to both at once.
    AddResources,
}

/// The assignment transactions written for `change`, with `limits` applied to both members'
/// `(max_txn_writes, max_txn_bytes)`, and how many resources a ends with.
fn split_rebalance(change: Change, limits: (usize, usize)) -> (Vec<StoreOp>, usize) {
    let id = |i: usize| format!("r{i:02}-{}", "x".repeat(160));
    let ids: Vec<String> = (0..20).map(id).collect();
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut h = H::new(&names);
    let config = |name: &str| {
        let mut c = cfg(name);
        c.assignment_chunk_bytes = 256;
        (c.max_txn_writes, c.max_txn_bytes) = limits;
        c.validate().unwrap();
        c
    };
    let b = h.add(config("b"));
    h.advance(t(1000));
    assert!(
        names.iter().all(|r| h.holders(r) == [b]),
        "b holds everything"
    );
    let (a, writes) = match change {
        Change::Join => {
            let writes = h.record_assign_writes();
            (h.add(config("a")), writes)
        }
        Change::AddResources => {
            let a = h.add(config("a"));
            h.advance(h.now + ms(2000));
            let writes = h.record_assign_writes();
            let more: Vec<ResourceId> = (20..30).map(|i| ResourceId::new(id(i)).unwrap()).collect();
            h.add_resources(&more);
            (a, writes)
        }
    };
    h.advance(h.now + ms(2000));
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    let got = (0..30).filter(|i| h.holders(&id(*i)) == [a]).count();
    let writes = writes.borrow().clone();
    (writes, got)
}

/// (writes, bytes) of an assignment transaction, counted as the core counts them.
fn txn_size(op: &StoreOp) -> (usize, usize) {
    match op {
        StoreOp::Txn { writes, .. } => (
            writes.len(),
            writes
                .iter()
                .map(|w| match w {
                    Write::Create { key, value, .. } | Write::Put { key, value } => {
                        key.len() + value.len()
                    }
                    Write::Delete { key } => key.len(),
                })
                .sum(),
        ),
        _ => (0, 0),
    }
}

/// A rebalance is split exactly when it exceeds a limit, by writes or by bytes, and every
/// transaction stays within both (mutants of `batch`'s and `write_bytes`'s arithmetic: the
/// simulator's store does not enforce the limits, so only this counts them).
#[test]
fn a_rebalance_is_split_exactly_at_the_transaction_limits() {
    let roomy = (
        rebalanser_core::store::MAX_TXN_WRITES,
        rebalanser_core::store::MAX_TXN_BYTES,
    );
    for (change, a_gets) in [(Change::Join, 10), (Change::AddResources, 15)] {
        let (whole, got) = split_rebalance(change, roomy);
        assert_eq!(
            (whole.len(), got),
            (1, a_gets),
            "{change:?}: one transaction with room"
        );
        let (w, b) = txn_size(&whole[0]);
        assert!(
            b > 256 + rebalanser_core::store::MAX_KEY_BYTES,
            "{b} bytes: too few to test"
        );
        for limits in [(w, roomy.1), (roomy.0, b)] {
            let (txns, got) = split_rebalance(change, limits);
            assert_eq!(
                (txns.len(), got),
                (1, a_gets),
                "{change:?} exactly at {limits:?}"
            );
        }
        for limits in [(w - 1, roomy.1), (roomy.0, b - 1)] {
            let (txns, got) = split_rebalance(change, limits);
            assert!(txns.len() >= 2, "{change:?} over {limits:?}: not split");
            assert_eq!(got, a_gets, "{change:?} over {limits:?}: not completed");
            for op in &txns {
                let (tw, tb) = txn_size(op);
                assert!(
                    tw <= limits.0 && tb <= limits.1,
                    "{change:?}: {tw} writes, {tb} bytes > {limits:?}"
                );
            }
        }
    }
}

/// DESIGN §1.4: when a rebalance takes several transactions, the member whose stored
/// assignment is oldest is written first, so a trickle of changes to one member cannot starve
/// the others (mutants: the age of a member's chunks ignored).
#[test]
fn a_split_rebalance_writes_the_oldest_assignment_first() {
    let ids: Vec<String> = (0..30).map(|i| format!("r{i:02}")).collect();
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut h = H::new(&names);
    let config = |name: &str| {
        let mut c = cfg(name);
        c.assignment_chunk_bytes = 256;
        // One member's chunks per transaction.
        c.max_txn_writes = 2;
        c.validate().unwrap();
        c
    };
    for m in ["a", "b", "c"] {
        h.add(config(m));
        h.advance(h.now + ms(1000));
    }
    let writes = h.record_assign_writes();
    let written = |op: &StoreOp| -> BTreeSet<String> {
        match op {
            StoreOp::Txn { writes, .. } => writes
                .iter()
                .filter_map(|w| match w {
                    Write::Put { key, .. } => key.split("/assign/").nth(1),
                    _ => None,
                })
                .filter_map(|k| k.split('/').next())
                .map(str::to_string)
                .collect(),
            _ => BTreeSet::new(),
        }
    };
    let add = |h: &mut H, from: usize, to: usize| {
        let more: Vec<ResourceId> = (from..to)
            .map(|i| ResourceId::new(format!("r{i:02}")).unwrap())
            .collect();
        h.add_resources(&more);
        h.advance(h.now + ms(1000));
    };
    // One more resource: one member's assignment is rewritten, and becomes the newest.
    add(&mut h, 30, 31);
    let newest: BTreeSet<String> = writes.borrow().iter().flat_map(written).collect();
    assert_eq!(newest.len(), 1, "{newest:?}");
    // Its name sorts first: name order alone would write it first.
    assert!(newest.contains("a"), "{newest:?}");
    writes.borrow_mut().clear();
    // Five more (12 each): all three assignments grow, in transactions of one member each.
    add(&mut h, 31, 36);
    let txns = writes.borrow();
    assert_eq!(txns.len(), 3, "{} transaction(s)", txns.len());
    assert!(
        written(&txns[2]).is_subset(&newest),
        "last written: {:?}",
        written(&txns[2])
    );
    assert!(
        written(&txns[0]).is_disjoint(&newest),
        "first written: {:?}",
        written(&txns[0])
    );
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}
