//! Metrics through the [`metrics`] facade: names, descriptions, and what each member records.
//!
//! The library installs no recorder and exports nothing: an application that wants the
//! numbers installs a recorder (e.g. `metrics-exporter-prometheus`; `rebalanser member run
//! --metrics-addr` does) **before** its members join — each member takes its handles when it
//! joins, and handles taken with no recorder installed record nothing. Without a recorder
//! every call here is a no-op.
//!
//! Every series carries the labels `group` and `member` (one process may run several
//! members); some add one more, named with the metric. The list, with units and meanings, is
//! `docs/metrics.md`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Label, Unit,
};
use rebalanser_core::store::{StoreError, StoreResult};
use rebalanser_core::{OpId, RevokeReason, Time};

use crate::clock;

/// Gauge: leases this member's application holds (granted and not yet released; a revoked
/// lease counts until the application drops it).
pub const LEASES_HELD: &str = "rebalanser_leases_held";
/// Counter: leases granted.
pub const GRANTS: &str = "rebalanser_grants_total";
/// Counter: leases revoked, label `reason` ([`RevokeReason::as_str`]).
pub const REVOKES: &str = "rebalanser_revokes_total";
/// Counter: rebalances this member committed as coordinator.
pub const REBALANCES: &str = "rebalanser_rebalances_total";
/// Counter: resources those rebalances moved from one member to another.
pub const RESOURCES_MOVED: &str = "rebalanser_resources_moved_total";
/// Histogram, seconds: on the member that gains a resource, from the resource entering its
/// assignment to its lease being granted (the old owner's stop and release included).
pub const HANDOVER_SECONDS: &str = "rebalanser_handover_seconds";
/// Gauge: 1 for the member's current session state, 0 for the others; label `state`
/// ([`SessionState::as_str`]).
pub const SESSION_STATE: &str = "rebalanser_session_state";
/// Histogram, seconds: successful keepalives, from send to reply.
pub const KEEPALIVE_SECONDS: &str = "rebalanser_keepalive_seconds";
/// Counter: keepalives that failed (an error reply, or none within `op_timeout`).
pub const KEEPALIVE_FAILURES: &str = "rebalanser_keepalive_failures_total";
/// Histogram, seconds: store operations from call to reply, any outcome; label `op`.
pub const STORE_OP_SECONDS: &str = "rebalanser_store_op_seconds";
/// Counter: store operations that failed; labels `op` and `error` ([`error_name`]).
pub const STORE_ERRORS: &str = "rebalanser_store_errors_total";
/// Gauge: the epoch this member coordinates, 0 when it is not the coordinator.
pub const COORDINATOR_EPOCH: &str = "rebalanser_coordinator_epoch";
/// Counter: data under the group that could not be understood and was skipped.
pub const BAD_DATA: &str = "rebalanser_bad_data_total";

/// Where a member's session stands, as [`SESSION_STATE`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Opening a session and registering (at start, and after a session was lost).
    Opening,
    /// Registered in the group under a live session.
    Joined,
    /// The session is in doubt: every lease was revoked until a keepalive proves it alive.
    Suspended,
    /// Left the group. Final.
    Left,
}

impl SessionState {
    pub const ALL: [SessionState; 4] = [
        SessionState::Opening,
        SessionState::Joined,
        SessionState::Suspended,
        SessionState::Left,
    ];

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Opening => "opening",
            SessionState::Joined => "joined",
            SessionState::Suspended => "suspended",
            SessionState::Left => "left",
        }
    }
}

/// The `error` label value of a failed store operation: its [`StoreError`] variant in snake
/// case (`other` for a variant this version does not know).
pub fn error_name(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict(_) => "conflict",
        StoreError::SessionExpired => "session_expired",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Indeterminate(_) => "indeterminate",
        StoreError::Invalid(_) => "invalid",
        // A variant added to the contract later, until it is named here.
        _ => "other",
    }
}

/// Registers every metric's description and unit with the installed recorder. Each member
/// calls it when it joins; call it yourself to have the descriptions before any member runs.
pub fn describe() {
    describe_gauge!(
        LEASES_HELD,
        "Leases the application holds (granted, not yet released)."
    );
    describe_counter!(GRANTS, "Leases granted.");
    describe_counter!(REVOKES, "Leases revoked, by reason.");
    describe_counter!(
        REBALANCES,
        "Rebalances committed by this member as coordinator."
    );
    describe_counter!(
        RESOURCES_MOVED,
        "Resources moved between members by this member's rebalances."
    );
    describe_histogram!(
        HANDOVER_SECONDS,
        Unit::Seconds,
        "From a resource entering this member's assignment to its lease being granted here."
    );
    describe_gauge!(
        SESSION_STATE,
        "1 for the member's current session state, 0 for the others."
    );
    describe_histogram!(
        KEEPALIVE_SECONDS,
        Unit::Seconds,
        "Successful keepalives, from send to reply."
    );
    describe_counter!(KEEPALIVE_FAILURES, "Keepalives that failed or timed out.");
    describe_histogram!(
        STORE_OP_SECONDS,
        Unit::Seconds,
        "Store operations from call to reply, by operation kind."
    );
    describe_counter!(
        STORE_ERRORS,
        "Failed store operations, by operation kind and error."
    );
    describe_gauge!(
        COORDINATOR_EPOCH,
        "Epoch this member coordinates; 0 when it is not the coordinator."
    );
    describe_counter!(BAD_DATA, "Data under the group skipped as not understood.");
}

/// One member's handles, taken once when it joins (a handle per record would rebuild its
/// labels every time), and the last values of its gauges, set only when they change.
pub(crate) struct MemberMetrics {
    labels: Vec<Label>,
    leases_held: Gauge,
    grants: Counter,
    revokes: BTreeMap<&'static str, Counter>,
    rebalances: Counter,
    moved: Counter,
    handover: Histogram,
    session: Vec<(SessionState, Gauge)>,
    epoch: Gauge,
    bad_data: Counter,
    ops: BTreeMap<&'static str, OpMetrics>,
    last_leases: Option<usize>,
    last_state: Option<SessionState>,
    last_epoch: Option<u64>,
}

impl MemberMetrics {
    pub(crate) fn new(group: &str, member: &str) -> MemberMetrics {
        describe();
        let labels = vec![
            Label::new("group", group.to_string()),
            Label::new("member", member.to_string()),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new(k, v));
            l
        };
        let session = SessionState::ALL
            .into_iter()
            .map(|s| (s, gauge!(SESSION_STATE, with("state", s.as_str()))))
            .collect();
        let mut m = MemberMetrics {
            leases_held: gauge!(LEASES_HELD, labels.clone()),
            grants: counter!(GRANTS, labels.clone()),
            revokes: BTreeMap::new(),
            rebalances: counter!(REBALANCES, labels.clone()),
            moved: counter!(RESOURCES_MOVED, labels.clone()),
            handover: histogram!(HANDOVER_SECONDS, labels.clone()),
            session,
            epoch: gauge!(COORDINATOR_EPOCH, labels.clone()),
            bad_data: counter!(BAD_DATA, labels.clone()),
            ops: BTreeMap::new(),
            labels,
            last_leases: None,
            last_state: None,
            last_epoch: None,
        };
        // Every series exists from the start, so a scrape shows the member before it acts.
        m.observe(0, SessionState::Opening, None);
        m
    }

    pub(crate) fn grant(&self, waited: Option<Duration>) {
        self.grants.increment(1);
        if let Some(w) = waited {
            self.handover.record(w.as_secs_f64());
        }
    }

    pub(crate) fn revoke(&mut self, reason: RevokeReason) {
        let labels = &self.labels;
        self.revokes
            .entry(reason.as_str())
            .or_insert_with(|| {
                let mut l = labels.clone();
                l.push(Label::new("reason", reason.as_str()));
                counter!(REVOKES, l)
            })
            .increment(1);
    }

    pub(crate) fn rebalanced(&self, moved: usize) {
        self.rebalances.increment(1);
        self.moved.increment(moved as u64);
    }

    pub(crate) fn bad_data(&self) {
        self.bad_data.increment(1);
    }

    /// The gauges, after an input: each is set only when its value changed.
    pub(crate) fn observe(&mut self, leases: usize, state: SessionState, epoch: Option<u64>) {
        if self.last_leases != Some(leases) {
            self.last_leases = Some(leases);
            self.leases_held.set(leases as f64);
        }
        if self.last_state != Some(state) {
            self.last_state = Some(state);
            for (s, g) in &self.session {
                g.set(if *s == state { 1.0 } else { 0.0 });
            }
        }
        let epoch = epoch.unwrap_or(0);
        if self.last_epoch != Some(epoch) {
            self.last_epoch = Some(epoch);
            self.epoch.set(epoch as f64);
        }
    }

    /// The handles for store operations of kind `op` (`driver::op_kind`).
    pub(crate) fn op(&mut self, op: &'static str) -> OpMetrics {
        let labels = &self.labels;
        self.ops
            .entry(op)
            .or_insert_with(|| {
                let mut l = labels.clone();
                l.push(Label::new("op", op));
                let keepalive = (op == "keepalive").then(|| {
                    (
                        histogram!(KEEPALIVE_SECONDS, labels.clone()),
                        counter!(KEEPALIVE_FAILURES, labels.clone()),
                    )
                });
                OpMetrics(Arc::new(OpHandles {
                    latency: histogram!(STORE_OP_SECONDS, l.clone()),
                    keepalive,
                    labels: l,
                }))
            })
            .clone()
    }
}

/// What one store operation records when its reply comes: shared by every operation of its
/// kind (one per operation would copy the labels each time).
#[derive(Clone)]
pub(crate) struct OpMetrics(Arc<OpHandles>);

struct OpHandles {
    latency: Histogram,
    /// For keepalives: their own latency histogram and failure counter.
    keepalive: Option<(Histogram, Counter)>,
    /// `group`, `member`, `op`: an error's counter is taken when one happens (errors are
    /// rare, and their `error` label is known only then).
    labels: Vec<Label>,
}

impl OpMetrics {
    /// Times `op` (the store call starts inside it, so `started` is read before it is
    /// created) and records its outcome.
    pub(crate) async fn timed(
        self,
        started: Time,
        op: impl Future<Output = (OpId, StoreResult)>,
    ) -> (OpId, StoreResult) {
        let (id, res) = op.await;
        self.record(clock::now().saturating_since(started), &res);
        (id, res)
    }

    fn record(&self, took: Duration, res: &StoreResult) {
        let h = &self.0;
        let secs = took.as_secs_f64();
        h.latency.record(secs);
        match (res, &h.keepalive) {
            (Ok(_), Some((keepalive, _))) => keepalive.record(secs),
            (Err(e), keepalive) => {
                let mut l = h.labels.clone();
                l.push(Label::new("error", error_name(e)));
                counter!(STORE_ERRORS, l).increment(1);
                if let Some((_, failures)) = keepalive {
                    failures.increment(1);
                }
            }
            (Ok(_), None) => {}
        }
    }
}
