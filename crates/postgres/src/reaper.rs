//! Expiry without trusting any wall clock (PITFALLS 4): a session is alive until its row is
//! deleted, and a row is deleted only by a process that **watched** its renewal counter stay
//! the same for longer than its TTL on its own monotonic clock.
//!
//! Why this is safe: a member's deadline is at most the send time of its last successful
//! keepalive plus the TTL. That keepalive committed before any read that shows its counter
//! value, so it was sent before the reaper first saw that value (the reaper counts from when
//! the read's answer arrived, later still). The reaper deletes only after TTL × (1 + slack)
//! more on its own clock, with the counter still the one it saw, re-checked under the row's
//! lock in the deleting transaction: a keepalive that commits first changes the counter (the
//! row is kept); one that comes after finds no row (`SessionExpired`). The slack covers clock
//! rates that differ between hosts.
//!
//! Why not the server's clock (`clock_timestamp()`): it is a wall clock. A forward step on
//! the database host (VM resume, `chronyc makestep`) would expire every session early compared
//! with the members' monotonic deadlines, which is double access. Here a step of any clock
//! changes nothing; the cost is that a session expires one poll interval or so later than its
//! TTL, and only while some process with a session of its own watches the table.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::poisons_connection;
use crate::{ops, Inner};

/// A session as last seen.
struct Seen {
    renewals: i64,
    /// When a read first showed this counter value (the reply's arrival).
    since: Instant,
    ttl: Duration,
}

/// Starts the reaper of `inner` unless one runs.
pub(crate) fn ensure_running(inner: &Arc<Inner>) {
    if !inner.reaping.swap(true, Ordering::SeqCst) {
        tokio::spawn(reap_loop(Arc::downgrade(inner)));
    }
}

/// How long a session of `ttl` must be seen unchanged before it is deleted.
pub(crate) fn expiry_after(ttl: Duration, slack_percent: u32) -> Duration {
    ttl + ttl * slack_percent / 100 + Duration::from_millis(1)
}

async fn reap_loop(store: Weak<Inner>) {
    let mut seen: BTreeMap<i64, Seen> = BTreeMap::new();
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let mut interval = inner.opts.max_reap_interval;
        if !inner.reaper_paused.load(Ordering::SeqCst) {
            match reap_once(&inner, &mut seen).await {
                Ok(shortest) => {
                    failures = 0;
                    if let Some(ttl) = shortest {
                        interval = (ttl / 10).clamp(inner.opts.min_reap_interval, interval);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(store = %inner.at, error = %e, failures, "postgres session reaper failing");
                    }
                }
            }
        }
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

/// One look at the sessions table, and the deletion of those seen unchanged for too long.
/// Returns the shortest TTL seen (to pace the next look).
async fn reap_once(
    inner: &Arc<Inner>,
    seen: &mut BTreeMap<i64, Seen>,
) -> Result<Option<Duration>, String> {
    let mut slot = inner.reaper_conn.lock().await;
    let mut conn = match slot.take() {
        Some(c) if !c.client.is_closed() => c,
        _ => inner.connect("reaper").await.map_err(|e| e.to_string())?,
    };
    let ctx = inner.ctx();
    let rows =
        match tokio::time::timeout(inner.opts.op_timeout, ops::sessions(&mut conn, &ctx)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                if !poisons_connection(&e) {
                    *slot = Some(conn);
                }
                return Err(e.to_string());
            }
            Err(_) => return Err("reading the sessions timed out".into()),
        };
    // Counted from the answer's arrival: no earlier than the commit of what it shows.
    let now = Instant::now();
    let mut present = BTreeMap::new();
    for (id, renewals, ttl_us) in rows {
        let ttl = Duration::from_micros(u64::try_from(ttl_us).unwrap_or(0));
        let s = match seen.remove(&id) {
            Some(s) if s.renewals == renewals => s,
            _ => Seen {
                renewals,
                since: now,
                ttl,
            },
        };
        present.insert(id, s);
    }
    *seen = present;
    let shortest = seen.values().map(|s| s.ttl).min();
    let due: Vec<(i64, i64)> = seen
        .iter()
        .filter(|(_, s)| {
            now.duration_since(s.since) >= expiry_after(s.ttl, inner.opts.expiry_slack_percent)
        })
        .map(|(id, s)| (*id, s.renewals))
        .collect();
    if due.is_empty() {
        *slot = Some(conn);
        return Ok(shortest);
    }
    match tokio::time::timeout(inner.opts.op_timeout, ops::reap(&mut conn, &ctx, &due)).await {
        Ok(Ok(dead)) => {
            *slot = Some(conn);
            for id in &dead {
                seen.remove(id);
            }
            if !dead.is_empty() {
                tracing::debug!(store = %inner.at, sessions = ?dead, "expired sessions deleted");
            }
            Ok(shortest)
        }
        Ok(Err((e, raw))) => {
            if !raw.as_ref().is_some_and(poisons_connection) {
                *slot = Some(conn);
            }
            Err(e.to_string())
        }
        Err(_) => Err("deleting expired sessions timed out".into()),
    }
}
