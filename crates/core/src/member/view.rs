//! The member's view of the group: listing reads (one in flight, re-read when notified, a
//! periodic resync, retries), linearizable reads when the coordinator plans or a listing went
//! back in time, and view monotonicity per session. Never writes to the store.

use crate::config::Variant;
use crate::ids::Time;
use crate::layout;
use crate::store::{StoreOp, StoreReply, StoreResult};

use super::{Event, Member, Pending};

impl Member {
    pub(super) fn reads(&mut self, now: Time) {
        if now >= self.next_resync {
            self.next_resync = now + self.cfg.resync_interval;
            self.read_dirty = true;
        }
        let retry_ok = self.read_retry_at.is_none_or(|t| now >= t);
        if self.read_dirty && self.read.is_none() && retry_ok {
            self.read_dirty = false;
            self.reads_sent += 1;
            let number = self.reads_sent;
            // The coordinator plans its writes from what it reads: only linearizable reads
            // (PITFALLS 20; DESIGN §8 rule 6: a stale read decides when, never what).
            let linearizable = self.coord.is_some() || self.want_linearizable;
            self.want_linearizable = false;
            let op = self.send(
                Pending::Read {
                    number,
                    linearizable,
                },
                StoreOp::List {
                    prefix: self.layout.prefix(),
                    linearizable,
                },
            );
            self.read = Some(op);
        }
    }

    pub(super) fn on_read(
        &mut self,
        now: Time,
        number: u64,
        linearizable: bool,
        result: StoreResult,
    ) {
        self.read = None;
        match result {
            Ok(StoreReply::Listed { rev, .. })
                if rev < self.view_rev
                    && !linearizable
                    && self.cfg.variant != Variant::AcceptOlderViews =>
            {
                // Older than what we already acted on (a lagging replica): never go back in
                // time; ask the authority next. A linearizable listing is always current,
                // even below `view_rev` (a store whose revisions went back after a restore).
                self.want_linearizable = true;
                self.read_dirty = true;
                self.read_retry_at = Some(now + self.cfg.retry_delay);
            }
            Ok(StoreReply::Listed { entries, rev }) => {
                self.view_rev = rev;
                let (view, bad) = layout::parse_view(&self.layout, &entries);
                for b in bad {
                    if self.reported_bad.insert(b.key.clone()) {
                        self.events.push_back(Event::BadData(b));
                    }
                }
                self.view = view;
                self.view_seq += 1;
                if let Some(c) = self.coord.as_mut() {
                    if number >= c.fresh_from_read {
                        c.fresh_from_read = 0;
                    }
                }
                self.read_retry_at = None;
            }
            other => {
                if let Err(error) = other {
                    self.events
                        .push_back(Event::StoreError { op: "read", error });
                }
                self.read_dirty = true;
                self.read_retry_at = Some(now + self.cfg.retry_delay);
            }
        }
    }
}
