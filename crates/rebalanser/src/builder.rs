//! [`Member::builder`] and [`MemberBuilder::join`].

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rebalanser_core::layout::Mode;
use rebalanser_core::{Config, GroupId, Member as Core, MemberId};
use rebalanser_store::Store;
use tokio::sync::{broadcast, mpsc, watch};

use crate::admin::ensure_group;
use crate::driver::Driver;
use crate::error::Error;
use crate::handle::{Member, MemberStatus};
use crate::url::{open_store_with, OpenOptions};

/// Capacity of each status event stream; a slower reader gets [`crate::MemberEvent::Lagged`].
const EVENT_CAPACITY: usize = 1024;

/// What to do when the application keeps a lease past its deadline, or longer than
/// `stop_timeout` after it was revoked (DESIGN §8 rules 3 and 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopPolicy {
    /// Log at error level, then abort the process: the only stop a library can force, and the
    /// only safe one once a lease may outlive its claim.
    #[default]
    Abort,
    /// Log at error level and report [`crate::MemberEvent::StopDeadlineMissed`], nothing more.
    /// For tests and for applications that enforce the stop themselves.
    Log,
}

impl Member {
    /// Entry point for joining a group: `Member::builder("group")…join().await` returns the
    /// running [`Member`].
    ///
    /// Starts configuring a member of `group`. Nothing is validated until
    /// [`MemberBuilder::join`], which reports every problem as a typed [`Error`].
    pub fn builder(group: &str) -> MemberBuilder {
        MemberBuilder {
            group: group.to_string(),
            name: None,
            store: StoreSpec::None,
            weight: None,
            session_ttl: None,
            safety_margin: None,
            min_rebalance_interval: None,
            initial_rebalance_delay: None,
            static_membership: false,
            mode: Mode::Resource,
            unhealthy_backoff: None,
            stop_timeout: None,
            keepalive_interval: None,
            op_timeout: None,
            leave_timeout: None,
            policy: StopPolicy::Abort,
            create_group: false,
        }
    }
}

enum StoreSpec {
    None,
    Store(Arc<dyn Store>),
    Url(String),
}

/// Configures a member; see [`Member::builder`]. Unset timings take the defaults of
/// `rebalanser_core::Config::new` (session TTL 10 s, safety margin 1 s, stop timeout 2 s,
/// keepalive 1 s, op timeout 1.5 s, min rebalance interval 100 ms, leave timeout 30 s).
pub struct MemberBuilder {
    group: String,
    name: Option<String>,
    store: StoreSpec,
    weight: Option<u32>,
    session_ttl: Option<Duration>,
    safety_margin: Option<Duration>,
    min_rebalance_interval: Option<Duration>,
    initial_rebalance_delay: Option<Duration>,
    static_membership: bool,
    mode: Mode,
    unhealthy_backoff: Option<Duration>,
    stop_timeout: Option<Duration>,
    keepalive_interval: Option<Duration>,
    op_timeout: Option<Duration>,
    leave_timeout: Option<Duration>,
    policy: StopPolicy,
    create_group: bool,
}

impl MemberBuilder {
    /// The member's name, unique in the group among live members. Default:
    /// `HOSTNAME-PID-RANDOM`, new for every process. A fixed name gains nothing across
    /// restarts (ownership is by session, not name), and a restarted process reusing a name
    /// waits for its predecessor's session to expire before it can register.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The store to coordinate through.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = StoreSpec::Store(store);
        self
    }

    /// The store to coordinate through, by URL (this build: `memory://NAME`). Parsed by
    /// `join`.
    pub fn store_url(mut self, url: &str) -> Self {
        self.store = StoreSpec::Url(url.to_string());
        self
    }

    /// Requested session timeout T; the store may grant less. Default 10 s. `join` refuses
    /// a TTL below the store's [`Store::min_session_ttl`] ([`Error::SessionTtlTooShort`]):
    /// 100 ms for `memory://`, 500 ms for SQLite and PostgreSQL, 800 ms for ZooKeeper, 2 s
    /// for etcd.
    pub fn session_ttl(mut self, d: Duration) -> Self {
        self.session_ttl = Some(d);
        self
    }

    /// Subtracted from every lease deadline: covers clock-rate error, scheduling jitter and
    /// process pauses. Default 1 s.
    pub fn safety_margin(mut self, d: Duration) -> Self {
        self.safety_margin = Some(d);
        self
    }

    /// Relative share of resources. Default 1; 0 is rejected.
    pub fn weight(mut self, w: u32) -> Self {
        self.weight = Some(w);
        self
    }

    /// Rate limit of rebalances while coordinating. Default 100 ms.
    pub fn min_rebalance_interval(mut self, d: Duration) -> Self {
        self.min_rebalance_interval = Some(d);
        self
    }

    /// The group's rebalancing mode this member expects (default [`Mode::Resource`]); `join`
    /// fails with [`Error::ModeMismatch`] on a group created in the other mode, and
    /// `create_group_if_missing` creates it in this one. In [`Mode::Barrier`] every change
    /// stops every lease of every member, and the new assignment starts once all stopped.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a resource the application reported failing here
    /// ([`crate::Lease::report_unhealthy`]) is avoided on this member. Default 60 s.
    pub fn unhealthy_backoff(mut self, d: Duration) -> Self {
        self.unhealthy_backoff = Some(d);
        self
    }

    /// Static membership (as Kafka's KIP-345): the member name is a stable instance identity.
    /// Give each process its own fixed name (`.name(..)`); a restart under that name within
    /// the session TTL takes the previous session's member record over at once (instead of
    /// waiting for it to expire, as a dynamic member does) and gets its previous resources
    /// back: nothing moves to other members. The resources are granted once the previous
    /// session's claims are gone: at once after a graceful stop, after that session's expiry
    /// after a crash. If the previous instance is in fact still running, it is told
    /// ([`crate::MemberEvent::Replaced`]), gives everything up and leaves. Default off.
    pub fn static_membership(mut self, on: bool) -> Self {
        self.static_membership = on;
        self
    }

    /// While this member coordinates a group in which no live member has an assignment yet (a
    /// fleet starting), it waits for members arriving together before the first assignment:
    /// until no member joined for this long, and at most 4 times this in all. Without it the
    /// first member to start is given every resource and hands most of them on a moment
    /// later. Default: a tenth of the session TTL (1 s); zero assigns at once.
    pub fn initial_rebalance_delay(mut self, d: Duration) -> Self {
        self.initial_rebalance_delay = Some(d);
        self
    }

    /// Time the application gets to drop a lease after it is revoked. Default 2 s. Overrunning
    /// it applies the [`StopPolicy`].
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = Some(d);
        self
    }

    /// Time between keepalives. Default 1 s.
    pub fn keepalive_interval(mut self, d: Duration) -> Self {
        self.keepalive_interval = Some(d);
        self
    }

    /// Longest a store operation may take before it counts as failed. Default 1.5 s.
    pub fn op_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = Some(d);
        self
    }

    /// How long a graceful leave waits for the coordinator to move this member's resources
    /// before it revokes them itself. Default 30 s.
    pub fn leave_timeout(mut self, d: Duration) -> Self {
        self.leave_timeout = Some(d);
        self
    }

    /// What happens when the application does not stop in time. Default
    /// [`StopPolicy::Abort`].
    pub fn on_stop_deadline_missed(mut self, policy: StopPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Create the group if it does not exist, instead of failing with
    /// [`Error::UnknownGroup`]. Default false, so a typo in a group name fails loudly. Only
    /// with it does [`MemberBuilder::store_url`] create a missing `sqlite://` file; without
    /// it a missing file is [`Error::NoStoreFile`] and nothing is created.
    pub fn create_group_if_missing(mut self, yes: bool) -> Self {
        self.create_group = yes;
        self
    }

    /// Validates everything, checks that the group exists, and starts the member. Returns as
    /// soon as the member's driver runs; watch [`Member::events`] for `Joined`.
    /// Must be called inside a tokio runtime (the driver is a spawned task).
    pub async fn join(self) -> Result<Member, Error> {
        let group = GroupId::new(self.group)?;
        let name = match self.name {
            Some(n) => MemberId::new(n)?,
            None => MemberId::new(default_name())?,
        };
        let mut cfg = Config::new(group.clone(), name.clone());
        if let Some(w) = self.weight {
            cfg.weight = w;
        }
        cfg.static_membership = self.static_membership;
        if let Some(d) = self.unhealthy_backoff {
            cfg.unhealthy_backoff = d;
        }
        // For status displays only (session age); the protocol never reads it.
        cfg.wall_clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .map(|unix_ms| (crate::clock::now(), unix_ms));
        let durations = [
            (&mut cfg.session_ttl, self.session_ttl),
            (&mut cfg.safety_margin, self.safety_margin),
            (&mut cfg.min_rebalance_interval, self.min_rebalance_interval),
            (&mut cfg.stop_timeout, self.stop_timeout),
            (&mut cfg.keepalive_interval, self.keepalive_interval),
            (&mut cfg.op_timeout, self.op_timeout),
            (&mut cfg.leave_timeout, self.leave_timeout),
        ];
        for (field, value) in durations {
            if let Some(v) = value {
                *field = v;
            }
        }
        cfg.initial_rebalance_delay = self.initial_rebalance_delay.unwrap_or(cfg.session_ttl / 10);
        cfg.validate()?;
        let store = match self.store {
            StoreSpec::None => {
                return Err(Error::NoStore {
                    group: group.to_string(),
                })
            }
            StoreSpec::Store(s) => s,
            // A member creates a missing `sqlite://` file only when it may create the group:
            // otherwise a mistyped path would leave an empty database behind.
            StoreSpec::Url(url) => {
                open_off_executor(url, OpenOptions::new().create(self.create_group)).await?
            }
        };
        // Below the store's minimum its own timing (lock waits and fsyncs, expiry checked per
        // tick or poll, TTLs rounded up) is a large part of the TTL: sessions expire although
        // every keepalive went out on time, and the member flaps.
        let min = store.min_session_ttl();
        if cfg.session_ttl < min {
            return Err(Error::SessionTtlTooShort {
                ttl: cfg.session_ttl,
                min,
                store: store.describe(),
            });
        }
        // The store decides what a keepalive proves; on some stores that costs one more
        // keepalive interval of the budget, so check again.
        cfg.count_from_previous_keepalive = store.keepalive_proves_previous();
        cfg.validate()?;
        // Like the core's listings, this one-off check is outside the timing budget: a busy
        // store (a large group starting) must not fail a join that would have worked.
        let check_timeout = cfg.op_timeout.max(cfg.session_ttl);
        ensure_group(&*store, &group, check_timeout, self.create_group, self.mode).await?;

        let leave_bound = cfg.leave_timeout + cfg.stop_timeout + cfg.op_timeout * 2;
        let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
        let (leases_tx, leases_rx) = mpsc::unbounded_channel();
        let (status_tx, first_events) = broadcast::channel(EVENT_CAPACITY);
        let (snapshot_tx, snapshot) = watch::channel(MemberStatus::default());
        let driver = Driver::new(
            Core::new(cfg),
            self.policy,
            cmds_tx.clone(),
            leases_tx,
            status_tx.clone(),
            snapshot_tx,
        );
        let task = tokio::spawn(driver.run(store, cmds_rx));
        Ok(Member {
            group,
            name,
            leases: leases_rx,
            cmds: cmds_tx,
            status_tx,
            first_events: Mutex::new(Some(first_events)),
            snapshot,
            driver: task.abort_handle(),
            leave_bound,
            crashed: false,
        })
    }
}

impl fmt::Debug for MemberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &self.store {
            StoreSpec::None => "none".to_string(),
            StoreSpec::Store(s) => s.describe(),
            StoreSpec::Url(u) => u.clone(),
        };
        f.debug_struct("MemberBuilder")
            .field("group", &self.group)
            .field("name", &self.name)
            .field("store", &store)
            .finish_non_exhaustive()
    }
}

/// [`open_store_with`] for a member joining on an executor thread. Opening a `sqlite://` file
/// checks it and may wait for another process's lock for up to its open timeout (2 s): done
/// in place, that would stall every task sharing the thread (on a current_thread runtime, all
/// of them), so it runs on tokio's blocking pool. The other stores open without IO.
async fn open_off_executor(url: String, opts: OpenOptions) -> Result<Arc<dyn Store>, Error> {
    let is_sqlite = url
        .get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("sqlite://"));
    if !is_sqlite {
        return open_store_with(&url, opts);
    }
    let at = url.clone();
    match tokio::task::spawn_blocking(move || open_store_with(&url, opts)).await {
        Ok(r) => r,
        // A panic in the open is the caller's, as if it had opened the store itself.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // SQLite URLs carry no password, so naming the URL is safe.
        Err(_) => Err(Error::StoreOpen {
            url: at,
            reason: "the tokio runtime shut down while the file was being opened".into(),
        }),
    }
}

/// `HOSTNAME-PID-RANDOM`: distinct for every process, readable in logs.
fn default_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `len` bytes; gethostname NUL-terminates on success when
    // the name fits, and we stop at the first NUL or at the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
    } else {
        String::new()
    };
    let host = if host.is_empty() { "host".into() } else { host };
    // std's RandomState is seeded from the OS per process: enough to tell two processes apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        h.finish() & 0xffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_and_distinct() {
        let a = default_name();
        let b = default_name();
        assert!(MemberId::new(a.clone()).is_ok(), "{a}");
        assert!(a.contains(&std::process::id().to_string()), "{a}");
        assert_ne!(a, b);
    }
}
