//! Members in this process, served by tasks that hold each lease until it is revoked, and
//! what the application saw: who holds what, grants, revokes, and any resource held by two
//! members at once. "Stable" is judged from that, not from the members' own state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rebalanser::{Member, MemberHandle, StopPolicy, Store};

/// What the application observed, under one lock.
#[derive(Default)]
pub struct Seen {
    /// Resource → the members holding a lease on it now (more than one is a violation).
    pub holders: BTreeMap<String, Vec<usize>>,
    /// Member → how many leases it holds now.
    pub per_member: BTreeMap<usize, usize>,
    pub grants: u64,
    pub revokes: u64,
    /// Grants of a resource another member still held.
    pub doubles: u64,
    /// When the last grant or revoke happened.
    pub last_change: Option<Instant>,
}

impl Seen {
    /// Every resource held by exactly one member, each of `live` members within one of the
    /// others (the balanced assignment of equal weights).
    pub fn stable(&self, resources: usize, live: &[usize]) -> bool {
        if self.holders.len() != resources || self.holders.values().any(|h| h.len() != 1) {
            return false;
        }
        let counts: Vec<usize> = live
            .iter()
            .map(|m| self.per_member.get(m).copied().unwrap_or(0))
            .collect();
        let total: usize = counts.iter().sum();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        total == resources && hi - lo <= 1
    }

    /// Resource → its one holder (for resources with exactly one).
    pub fn owners(&self) -> BTreeMap<String, usize> {
        self.holders
            .iter()
            .filter(|(_, h)| h.len() == 1)
            .map(|(r, h)| (r.clone(), h[0]))
            .collect()
    }
}

/// The members of one group in this process.
pub struct Fleet {
    pub store: Arc<dyn Store>,
    pub group: String,
    pub ttl: Duration,
    pub seen: Arc<Mutex<Seen>>,
    /// Member index → its handle's task (which owns the handle) and a way to stop it.
    members: BTreeMap<usize, tokio::sync::oneshot::Sender<Exit>>,
    tasks: BTreeMap<usize, tokio::task::JoinHandle<()>>,
    next: usize,
}

/// How a member ends.
enum Exit {
    Leave,
    Crash,
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, group: &str, ttl: Duration) -> Fleet {
        Fleet {
            store,
            group: group.to_string(),
            ttl,
            seen: Arc::default(),
            members: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members still running.
    pub fn live(&self) -> Vec<usize> {
        self.members.keys().copied().collect()
    }

    /// Joins one member; returns its index.
    pub async fn join(&mut self) -> anyhow::Result<usize> {
        let joined = self.join_many(1).await?;
        Ok(joined[0])
    }

    /// Joins `n` members at once (their joins run concurrently); returns their indexes.
    pub async fn join_many(&mut self, n: usize) -> anyhow::Result<Vec<usize>> {
        let first = self.next;
        self.next += n;
        let joins = (first..first + n).map(|i| self.join_one(i));
        let handles = futures::future::try_join_all(joins).await?;
        let mut out = Vec::with_capacity(n);
        for (i, handle) in (first..).zip(handles) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(serve(i, handle, rx, self.seen.clone()));
            self.members.insert(i, tx);
            self.tasks.insert(i, task);
            out.push(i);
        }
        Ok(out)
    }

    async fn join_one(&self, i: usize) -> anyhow::Result<MemberHandle> {
        let ttl = self.ttl;
        // Timings scaled to the TTL, within `Config::validate`: 2/10 + 1/8 + 1/5 + 1/10 of it.
        let handle = Member::builder(&self.group)
            .name(&format!("m{i}"))
            .store(self.store.clone())
            .session_ttl(ttl)
            .keepalive_interval(ttl / 10)
            .op_timeout(ttl / 8)
            .stop_timeout(ttl / 5)
            .safety_margin(ttl / 10)
            .min_rebalance_interval(Duration::from_millis(20))
            // A bench reports a late stop; it must not abort the process it measures.
            .on_stop_deadline_missed(StopPolicy::Log)
            .join()
            .await?;
        Ok(handle)
    }

    /// Graceful leave of member `i`, returning once it has left.
    pub async fn leave(&mut self, i: usize) {
        self.stop(i, Exit::Leave).await;
    }

    /// Member `i` dies without a word: its session ends only by the store's expiry.
    pub async fn crash(&mut self, i: usize) {
        self.stop(i, Exit::Crash).await;
    }

    async fn stop(&mut self, i: usize, how: Exit) {
        if let Some(tx) = self.members.remove(&i) {
            let _ = tx.send(how);
        }
        if let Some(t) = self.tasks.remove(&i) {
            let _ = t.await;
        }
    }

    /// Waits until the application sees the group stable and quiet for `quiet`; returns when
    /// it became stable (the last grant or revoke before it), or `None` after `limit`.
    pub async fn wait_stable(
        &self,
        resources: usize,
        since: Instant,
        quiet: Duration,
        limit: Duration,
    ) -> Option<Duration> {
        let live = self.live();
        loop {
            let now = Instant::now();
            {
                let seen = self.seen();
                if seen.stable(resources, &live) {
                    let at = seen.last_change.unwrap_or(since).max(since);
                    if now.duration_since(at) >= quiet {
                        return Some(at.duration_since(since));
                    }
                }
            }
            if now.duration_since(since) > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Leaves with every member still running.
    pub async fn shutdown(&mut self) {
        for i in self.live() {
            self.leave(i).await;
        }
    }
}

/// Member `i`'s application: holds every lease until it is revoked, recording what it holds.
async fn serve(
    i: usize,
    mut handle: MemberHandle,
    mut exit: tokio::sync::oneshot::Receiver<Exit>,
    seen: Arc<Mutex<Seen>>,
) {
    loop {
        tokio::select! {
            how = &mut exit => {
                match how {
                    Ok(Exit::Crash) => handle.simulate_crash(),
                    _ => { let _ = handle.leave().await; }
                }
                return;
            }
            lease = handle.next_lease() => {
                let Some(lease) = lease else { return };
                let r = lease.resource().to_string();
                {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let holders = s.holders.entry(r.clone()).or_default();
                    let double = !holders.is_empty();
                    holders.push(i);
                    if double {
                        s.doubles += 1;
                    }
                    *s.per_member.entry(i).or_default() += 1;
                    s.grants += 1;
                    s.last_change = Some(Instant::now());
                }
                let seen = seen.clone();
                tokio::spawn(async move {
                    lease.revoked().await;
                    {
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(h) = s.holders.get_mut(&r) {
                            h.retain(|m| *m != i);
                            if h.is_empty() {
                                s.holders.remove(&r);
                            }
                        }
                        if let Some(n) = s.per_member.get_mut(&i) {
                            *n = n.saturating_sub(1);
                        }
                        s.revokes += 1;
                        s.last_change = Some(Instant::now());
                    }
                    // The access stops here: dropping the lease tells the member.
                    drop(lease);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holders: &[(&str, &[usize])]) -> Seen {
        let mut s = Seen::default();
        for (r, hs) in holders {
            s.holders.insert(r.to_string(), hs.to_vec());
            for m in *hs {
                *s.per_member.entry(*m).or_default() += 1;
            }
        }
        s
    }

    #[test]
    fn stable_means_each_resource_once_and_the_members_balanced() {
        let ok = seen(&[("a", &[0]), ("b", &[1]), ("c", &[0])]);
        assert!(ok.stable(3, &[0, 1]));
        assert!(!ok.stable(4, &[0, 1]), "a resource nobody holds");
        assert!(!ok.stable(3, &[0, 1, 2]), "member 2 holds nothing: 2 vs 0");
        let twice = seen(&[("a", &[0, 1]), ("b", &[1])]);
        assert!(!twice.stable(2, &[0, 1]), "a resource held twice");
        let lopsided = seen(&[("a", &[0]), ("b", &[0]), ("c", &[0]), ("d", &[1])]);
        assert!(!lopsided.stable(4, &[0, 1]), "3 vs 1");
        assert_eq!(ok.owners().len(), 3);
        assert_eq!(
            twice.owners().len(),
            1,
            "only resources with one holder have an owner"
        );
    }
}
