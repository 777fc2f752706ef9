//! The network between the members and the store: a request may be lost, fail fast, arrive
//! late or after its client gave up (then it is applied anyway: the `Indeterminate` case),
//! meet a partition or a degraded link (replies just before their timeout), or reach a server
//! that answers a keepalive without the expiry authority seeing it; the store may renegotiate
//! a session's TTL or serve a stale read. Every request that reaches the store goes through
//! [`World::store_apply`]. Change notifications may be lost or duplicated.
//!
//! **Never** deliver a reply after the operation's timeout: the member has then been answered
//! (timed out) already, exactly once.

use std::time::Duration;

use rebalanser_core::store::{StoreError, StoreOp, StoreReply, StoreResult};
use rebalanser_core::{OpId, Time};

use super::run::Ev;
use super::trace::{short_op, short_res};
use super::{ms, World};

impl World {
    pub(super) fn send(&mut self, i: usize, op: OpId, req: StoreOp) {
        let inc = self.slots[i].inc;
        self.log(|| format!("m{i}#{inc} op{} -> {}", op.0, short_op(&req)));
        let f = self.faults;
        let timeout_at = self.now + self.op_timeout;
        let failed = timeout_error(&req);
        if self.slots[i].partitioned || self.rng.chance(f.lost_request) {
            self.reply(timeout_at, i, inc, op, failed);
            return;
        }
        if self.rng.chance(f.fast_fail) {
            let at = self.now + ms(self.rng.range(0, 5));
            let res = Err(StoreError::Unavailable("injected".into()));
            self.reply(at, i, inc, op, res);
            return;
        }
        if req.is_write() && self.rng.chance(f.late_write) {
            // The request is stuck in a queue: the client times out, the store applies it
            // later (etcd, PostgreSQL; PITFALLS 12).
            self.reply(timeout_at, i, inc, op, failed);
            let late = self.rng.range(1, 400);
            self.schedule(timeout_at + ms(late), Ev::LateApply { req });
            return;
        }
        let d1 = self.latency();
        if self.now + d1 >= timeout_at {
            self.reply(timeout_at, i, inc, op, failed);
            return;
        }
        let sent = self.now;
        self.schedule(
            self.now + d1,
            Ev::Arrive {
                slot: i,
                inc,
                op,
                req,
                sent,
            },
        );
    }

    fn reply(&mut self, at: Time, slot: usize, inc: u32, op: OpId, res: StoreResult) {
        self.schedule(at, Ev::Reply { slot, inc, op, res });
    }

    fn latency(&mut self) -> Duration {
        if self.rng.chance(self.faults.slow) {
            ms(self.rng.range(50, 400))
        } else {
            Duration::from_micros(self.rng.range(200, 5000))
        }
    }

    pub(super) fn arrive(&mut self, i: usize, inc: u32, op: OpId, req: StoreOp, sent: Time) {
        let timeout_at = sent + self.op_timeout;
        if self.slots[i].partitioned {
            let res = timeout_error(&req);
            self.reply(timeout_at, i, inc, op, res);
            return;
        }
        if let StoreOp::KeepAlive { session } = &req {
            let session = *session;
            let lied_last = !self.lied.insert(session);
            if lied_last
                || !self.model_alive(session)
                || !self.rng.chance(self.faults.keepalive_lie)
            {
                self.lied.remove(&session);
            } else if let Some(ttl) = self.store.session_ttl(session) {
                // Answered by a server cut off from the one that decides expiry.
                self.log(|| format!("store op{} m{i}#{inc} keepalive answered, not seen", op.0));
                let d2 = self.latency();
                let res = Ok(StoreReply::KeptAlive { ttl });
                self.reply(self.now + d2.min(ms(1)), i, inc, op, res);
                return;
            }
        }
        if let StoreOp::KeepAlive { session } = &req {
            if self.model_alive(*session) && self.rng.chance(self.faults.renegotiate) {
                // Mostly still above the timing budget; sometimes below it, which the member
                // must refuse.
                let budget = self.member_cfg.timing_budget().as_millis() as u64;
                let ttl = if self.rng.chance(0.1) {
                    ms(self.rng.range(500, budget))
                } else {
                    ms(self.rng.range(budget + 50, 1900))
                };
                let session = *session;
                self.schedule(
                    self.now + ms(1),
                    Ev::RenegotiatedReply {
                        slot: i,
                        inc,
                        op,
                        session,
                        ttl,
                    },
                );
                return;
            }
        }
        let stale = match &req {
            StoreOp::Get {
                linearizable: false,
                ..
            }
            | StoreOp::List {
                linearizable: false,
                ..
            }
            | StoreOp::Read {
                linearizable: false,
                ..
            } if self.rng.chance(self.faults.stale_read) => {
                let age = self.rng.range(1, 4) as usize;
                self.store.apply_stale_read(&req, age)
            }
            _ => None,
        };
        let before = self.store.rev();
        let res = match stale {
            Some(r) => r,
            None => self.store_apply(&req),
        };
        self.log(|| format!("store op{} m{i}#{inc} {}", op.0, short_res(&res)));
        if self.store.rev() != before {
            self.notify_all();
        }
        let mut d2 = self.latency();
        if self.slots[i].degraded {
            let room = timeout_at.0.saturating_sub(self.now.0);
            d2 = Duration::from_nanos(room / 100 * self.rng.range(60, 99));
        }
        let lost = self.slots[i].partitioned || self.rng.chance(self.faults.lost_reply);
        if lost || self.now + d2 >= timeout_at {
            // Applied, but the client never learns it: the Indeterminate case.
            let res = timeout_error(&req);
            self.reply(timeout_at, i, inc, op, res);
        } else {
            self.reply(self.now + d2, i, inc, op, res);
        }
    }

    pub(super) fn notify_all(&mut self) {
        let changed = std::sync::Arc::new(self.store.take_changes());
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.core.is_none() || s.partitioned {
                continue;
            }
            let inc = s.inc;
            if self.rng.chance(self.faults.lost_notify) {
                continue;
            }
            // Mostly the keys that changed (the member may then skip the re-read), sometimes
            // a bare notification.
            let keys = (!self.rng.chance(0.2)).then(|| changed.clone());
            let d = self.latency();
            let ev = Ev::Notify { slot: i, inc, keys };
            self.schedule(self.now + d, ev.clone());
            if self.rng.chance(self.faults.dup_notify) {
                let d = self.latency();
                self.schedule(self.now + d, ev);
            }
        }
    }
}

/// What a client sees when it gave up on an operation.
pub(super) fn timeout_error(op: &StoreOp) -> StoreResult {
    if op.is_write() {
        Err(StoreError::Indeterminate("timed out".into()))
    } else {
        Err(StoreError::Unavailable("timed out".into()))
    }
}
