//! Member configuration and its validation (DESIGN §8 rule 3: timings are checked at start-up).

use std::time::Duration;

use crate::ids::{GroupId, MemberId, Time};

/// Deliberately broken protocol variants, used only to prove that the simulator and the model
/// checker catch what they claim to catch. Never use outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    #[default]
    Correct,
    /// Grants a lease as soon as the resource is assigned, before its claim exists.
    GrantBeforeClaim,
    /// Never revokes at the local lease deadline and reports leases valid forever.
    IgnoreDeadline,
    /// Admin removal of a resource also deletes its claim (the original design's TLA+ bug).
    RemoveDeletesClaim,
    /// Acts on listings older than one already acted on (a lagging replica's), so members
    /// go back in time and revoke what never moved.
    AcceptOlderViews,
    /// Counts the deadline from the last keepalive even on a store where a success proves
    /// only the previous one (ZooKeeper via a cut-off follower).
    TrustLastKeepalive,
    /// Counts the deadline from when a keepalive's reply *arrived* instead of when it was
    /// sent: a late reply stretches the deadline past the store's expiry.
    DeadlineFromReply,
    /// No safety margin: the deadline is the store's expiry as the member's clock sees it.
    NoSafetyMargin,
    /// The forced stop (`StopDeadlineMissed`) comes one stop budget after the deadline.
    LateAbort,
    /// The coordinator debounces (waits until nothing changed for `min_rebalance_interval`)
    /// instead of rate-limiting with a trailing edge: a steady trickle starves rebalances.
    DebounceRebalance,
    /// The coordinator's rebalance transaction carries no leader/epoch guard: a deposed
    /// coordinator's late write lands.
    UnguardedRebalance,
    /// A claim verification adopts the claim whoever owns it.
    AdoptAnyClaim,
    /// Grants a lease right after sending the claim's create, before its reply.
    GrantOnClaimSent,
    /// Barrier mode: the coordinator starts a round on acknowledgements of the previous one.
    BarrierOlderAck,
}

/// The initial settle delay ends at most this many delays after the coordinator first saw
/// the group without assignments, however members keep arriving.
pub const INITIAL_DELAY_CAP: u32 = 4;

/// Everything a member needs to run the protocol. Durations are on the member's local clock.
#[derive(Debug, Clone)]
pub struct Config {
    pub group: GroupId,
    pub name: MemberId,
    /// Relative share of resources; 0 is rejected (leave instead).
    pub weight: u32,
    /// Static membership (as Kafka's KIP-345): the name is a stable instance identity. A
    /// restart under the same name takes over the member record of the previous session
    /// (if that record is static too) instead of waiting for it to expire, and the
    /// coordinator hands the new session the previous one's assignment: nothing moves.
    /// The previous session's claims still rule their resources until they are deleted or
    /// expire; a live instance whose record was taken over gives everything up and leaves.
    pub static_membership: bool,
    /// One reading of the runtime's clock and of the wall clock (Unix ms) taken together,
    /// supplied by the runtime. Each registration writes the wall time of its own `now`
    /// derived from it into the member record (`joined_unix_ms`, for status displays: the
    /// session's age, which restarts when the member rejoins after losing its session); the
    /// core decides nothing by it.
    pub wall_clock: Option<(Time, u64)>,
    /// Requested session timeout. The store may grant less; the smallest value seen rules.
    pub session_ttl: Duration,
    /// Subtracted from the deadline: covers clock-rate error, scheduling jitter and the pause
    /// tolerance.
    pub safety_margin: Duration,
    /// Time the application gets to stop after a revoke. Revocation for a session in doubt
    /// starts at `deadline - stop_timeout`.
    pub stop_timeout: Duration,
    /// Time between keepalives.
    pub keepalive_interval: Duration,
    /// Longest a store operation may take before the driver reports it failed (max RTT).
    /// Listings of the group get up to `session_ttl` instead: they are not in the timing
    /// budget, and a large group's listing takes longer than a keepalive.
    pub op_timeout: Duration,
    /// Rate limit of rebalances (with a trailing edge).
    pub min_rebalance_interval: Duration,
    /// How long a coordinator of a group that has no assignment yet (every live member
    /// without one: a fleet starting) waits for members arriving together before the first
    /// assignment: until no member joined for this long, at most
    /// [`INITIAL_DELAY_CAP`] times it in all. Without it the first member is given everything
    /// and gives most of it back ~100 ms later. Zero assigns at once.
    pub initial_rebalance_delay: Duration,
    /// How long a resource the application reported failing here
    /// (`Member::report_unhealthy`) is avoided on this member: given back, and assigned
    /// elsewhere (or to nobody, if it fails on every member) until then.
    pub unhealthy_backoff: Duration,
    /// Period of the full re-read that bounds the cost of a lost notification.
    pub resync_interval: Duration,
    /// How long a graceful leave waits for its resources to be handed over.
    pub leave_timeout: Duration,
    /// Delay before retrying an operation that failed.
    pub retry_delay: Duration,
    /// Largest encoded size of one assignment chunk.
    pub assignment_chunk_bytes: usize,
    /// Largest number of writes in one transaction (etcd's default `--max-txn-ops` is 128).
    /// A larger rebalance is written in several transactions, removals first.
    pub max_txn_writes: usize,
    /// Largest encoded size (keys and values) of one transaction's writes: ZooKeeper's
    /// jute.maxbuffer is about 1 MiB, etcd's request limit 1.5 MiB.
    pub max_txn_bytes: usize,
    /// Largest number of claim operations (creates, verifying reads, deletes) in flight at
    /// once; the rest wait for replies. Unbounded, a member with thousands of claims to
    /// settle overloaded the store until every operation timed out, and each timeout caused
    /// more operations (issue 10: 28,000 transactions a second on ZooKeeper for a minute).
    pub max_claim_ops_in_flight: usize,
    /// Count the deadline from the second-to-last successful keepalive: for stores where a
    /// keepalive can succeed before the server that decides expiry has seen it (ZooKeeper
    /// followers). Costs one keepalive interval of the budget. Set from the store.
    pub count_from_previous_keepalive: bool,
    /// Failed rebalances in a row after which a coordinator resigns.
    pub max_failed_rebalances: u32,
    #[doc(hidden)]
    pub variant: Variant,
}

/// A configuration that cannot work, with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("{field} is {value:?}; it must be at most {max:?}")]
    TooLarge {
        field: &'static str,
        value: Duration,
        max: Duration,
    },
    #[error(
        "timings do not fit in the session timeout: 2 x keepalive_interval ({keepalive:?}) + \
         op_timeout ({op:?}) + stop_timeout ({stop:?}) + safety_margin ({margin:?}) must be \
         less than session_ttl ({ttl:?})"
    )]
    Budget {
        keepalive: Duration,
        op: Duration,
        stop: Duration,
        margin: Duration,
        ttl: Duration,
    },
    #[error("assignment_chunk_bytes is {0}; it must be between 256 and 262144")]
    ChunkSize(usize),
    #[error(
        "max_txn_bytes ({max_txn_bytes}) must hold one assignment chunk ({chunk} bytes) plus \
         its key (4096 bytes), and be at most the stores' limit (917504 bytes)"
    )]
    TxnBytes { max_txn_bytes: usize, chunk: usize },
    #[error("max_txn_writes is {0}; every store takes at most 128 writes per transaction")]
    TxnWrites(usize),
}

impl Config {
    /// A configuration with defaults derived from the session TTL (10 s).
    pub fn new(group: GroupId, name: MemberId) -> Config {
        Config {
            group,
            name,
            weight: 1,
            static_membership: false,
            wall_clock: None,
            session_ttl: Duration::from_secs(10),
            safety_margin: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(1),
            op_timeout: Duration::from_millis(1500),
            min_rebalance_interval: Duration::from_millis(100),
            initial_rebalance_delay: Duration::ZERO,
            unhealthy_backoff: Duration::from_secs(60),
            resync_interval: Duration::from_secs(10),
            leave_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(100),
            assignment_chunk_bytes: 64 * 1024,
            max_txn_writes: 64,
            max_txn_bytes: 512 * 1024,
            max_claim_ops_in_flight: 16,
            count_from_previous_keepalive: false,
            max_failed_rebalances: 5,
            variant: Variant::Correct,
        }
    }

    /// What a session timeout must exceed: 2 keepalive intervals + max RTT + stop budget +
    /// margin (DESIGN §8 rule 3). Checked against the requested TTL here, and against every
    /// TTL the store grants by the member.
    pub fn timing_budget(&self) -> Duration {
        let intervals = if self.count_from_previous_keepalive {
            3
        } else {
            2
        };
        // Saturating: the fields are user input, and an absurd one must become a typed
        // error in `validate`, not an overflow panic.
        self.keepalive_interval
            .saturating_mul(intervals)
            .saturating_add(self.op_timeout)
            .saturating_add(self.stop_timeout)
            .saturating_add(self.safety_margin)
    }

    /// The safety margin the member subtracts from every deadline.
    pub(crate) fn margin(&self) -> Duration {
        if self.variant == Variant::NoSafetyMargin {
            // Test-only mutation.
            return Duration::ZERO;
        }
        self.safety_margin
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("session_ttl", self.session_ttl),
            ("safety_margin", self.safety_margin),
            ("stop_timeout", self.stop_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("op_timeout", self.op_timeout),
            ("resync_interval", self.resync_interval),
            ("leave_timeout", self.leave_timeout),
            ("retry_delay", self.retry_delay),
            ("unhealthy_backoff", self.unhealthy_backoff),
        ];
        for (field, d) in nonzero {
            if d.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.weight == 0 {
            return Err(ConfigError::Zero { field: "weight" });
        }
        // Far beyond any sane value; also keeps Time arithmetic far from overflow.
        let day = Duration::from_secs(86_400);
        for (field, d) in [
            ("session_ttl", self.session_ttl),
            ("safety_margin", self.safety_margin),
            ("stop_timeout", self.stop_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("op_timeout", self.op_timeout),
            ("min_rebalance_interval", self.min_rebalance_interval),
            ("initial_rebalance_delay", self.initial_rebalance_delay),
            ("unhealthy_backoff", self.unhealthy_backoff),
            ("resync_interval", self.resync_interval),
            ("leave_timeout", self.leave_timeout),
            ("retry_delay", self.retry_delay),
        ] {
            if d > day {
                return Err(ConfigError::TooLarge {
                    field,
                    value: d,
                    max: day,
                });
            }
        }
        if self.timing_budget() >= self.session_ttl {
            return Err(ConfigError::Budget {
                keepalive: self.keepalive_interval,
                op: self.op_timeout,
                stop: self.stop_timeout,
                margin: self.safety_margin,
                ttl: self.session_ttl,
            });
        }
        for (field, n) in [
            ("max_txn_writes", self.max_txn_writes),
            ("max_claim_ops_in_flight", self.max_claim_ops_in_flight),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.max_txn_writes > crate::store::MAX_TXN_WRITES {
            return Err(ConfigError::TxnWrites(self.max_txn_writes));
        }
        if !(256..=crate::store::MAX_VALUE_BYTES).contains(&self.assignment_chunk_bytes) {
            return Err(ConfigError::ChunkSize(self.assignment_chunk_bytes));
        }
        // One member's chunk plus its key must fit in a transaction on its own, and every
        // transaction in a store's limit.
        if self.assignment_chunk_bytes + crate::store::MAX_KEY_BYTES > self.max_txn_bytes
            || self.max_txn_bytes > crate::store::MAX_TXN_BYTES
        {
            return Err(ConfigError::TxnBytes {
                max_txn_bytes: self.max_txn_bytes,
                chunk: self.assignment_chunk_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(GroupId::new("g").unwrap(), MemberId::new("m").unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
    }

    #[test]
    fn bad_timings_name_the_problem() {
        let mut c = cfg();
        c.stop_timeout = Duration::from_secs(8);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::Budget { .. }));
        assert!(e.to_string().contains("stop_timeout"), "{e}");
        let mut c = cfg();
        c.session_ttl = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                field: "session_ttl"
            })
        );
        let mut c = cfg();
        c.keepalive_interval = Duration::MAX;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooLarge {
                field: "keepalive_interval",
                ..
            })
        ));
        assert_eq!(c.timing_budget(), Duration::MAX, "saturates, never panics");
        let mut c = cfg();
        c.weight = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "weight" }));
    }

    #[test]
    fn limits_are_inclusive() {
        let day = Duration::from_secs(86_400);
        let mut c = cfg();
        c.leave_timeout = day;
        assert_eq!(c.validate(), Ok(()), "a day is allowed");
        c.leave_timeout = day + Duration::from_nanos(1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooLarge {
                field: "leave_timeout",
                ..
            })
        ));
        // One chunk and its key fit exactly; a byte less does not.
        let mut c = cfg();
        c.max_txn_bytes = c.assignment_chunk_bytes + crate::store::MAX_KEY_BYTES;
        assert_eq!(c.validate(), Ok(()));
        c.max_txn_bytes -= 1;
        assert!(matches!(c.validate(), Err(ConfigError::TxnBytes { .. })));
        // The store's transaction limit, exactly, and one byte beyond it (each condition on
        // its own is enough to refuse).
        let mut c = cfg();
        c.max_txn_bytes = crate::store::MAX_TXN_BYTES;
        assert_eq!(c.validate(), Ok(()));
        c.max_txn_bytes += 1;
        assert!(matches!(c.validate(), Err(ConfigError::TxnBytes { .. })));
    }
}
