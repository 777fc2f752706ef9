//! [`Admin`]: manage a group's resource set and inspect its state.
//!
//! Admin writes only the group marker and `resources/`; it never deletes or rewrites a claim
//! (DESIGN §8 rule 7): a removed resource's owner stops and deletes its own claim once the
//! coordinator unassigns it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rebalanser_core::admin as ops;
use rebalanser_core::layout::{self, Layout, MetaRec, Mode, View};
use rebalanser_core::store::{Cond, Entry, Key, StoreError, StoreOp, StoreReply, Write};
use rebalanser_core::{Epoch, GroupId, MemberId, ResourceId, SessionId, Token};
use rebalanser_store::Store;
use serde::Serialize;

use crate::error::Error;
use crate::url::{open_store, open_store_with, OpenOptions};

/// Resource writes per transaction: within every store's limits (at most
/// `MAX_TXN_WRITES` writes, etcd's 128 operations per branch; ZooKeeper's jute.maxbuffer of
/// about 1 MiB, and a resource key is at most ~1.6 KiB encoded).
const WRITES_PER_TXN: usize = 64;
/// Attempts of an idempotent write whose outcome was unknown or that found the store down.
const ATTEMPTS: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Administration of one group.
#[derive(Clone)]
pub struct Admin {
    store: Arc<dyn Store>,
    group: GroupId,
    layout: Layout,
    op_timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("store", &self.store.describe())
            .field("group", &self.group)
            .finish()
    }
}

impl Admin {
    /// Administers `group` in `store`. Fails only on an invalid group id.
    pub fn new(store: Arc<dyn Store>, group: &str) -> Result<Admin, Error> {
        let group = GroupId::new(group)?;
        Ok(Admin {
            layout: Layout::new(&group),
            store,
            group,
            op_timeout: Duration::from_secs(10),
        })
    }

    /// Administers `group` in the store a URL names (see [`crate::open_store`]).
    ///
    /// Synchronous: opening a `sqlite://` file checks it and may wait up to 2 s for another
    /// process's lock, on the calling thread. From async code where that matters (a
    /// current_thread runtime), call it inside `tokio::task::spawn_blocking`; a member's
    /// `join` does so by itself.
    pub fn connect(url: &str, group: &str) -> Result<Admin, Error> {
        // Validate the group first: its error is the more useful one when both are wrong.
        GroupId::new(group)?;
        Admin::new(open_store(url)?, group)
    }

    /// [`Admin::connect`] with [`OpenOptions`]: read-only for tools that only look (every
    /// write then fails with [`Error::Store`] wrapping `StoreError::Invalid`), or without
    /// creating a missing `sqlite://` file ([`Error::NoStoreFile`]).
    pub fn connect_with(url: &str, group: &str, opts: OpenOptions) -> Result<Admin, Error> {
        GroupId::new(group)?;
        Admin::new(open_store_with(url, opts)?, group)
    }

    /// Longest each store operation may take. Default 10 s.
    pub fn with_op_timeout(mut self, d: Duration) -> Admin {
        self.op_timeout = d;
        self
    }

    pub fn group(&self) -> &GroupId {
        &self.group
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the group exists.
    pub async fn exists(&self) -> Result<bool, Error> {
        Ok(
            read_meta(&*self.store, &self.group, &self.layout, self.op_timeout)
                .await?
                .is_some(),
        )
    }

    /// Creates the group (per-resource mode). Idempotent: succeeds when it already exists in
    /// that mode.
    pub async fn create_group(&self) -> Result<(), Error> {
        self.create_group_with(Mode::Resource).await
    }

    /// Creates the group with its rebalancing mode, fixed for its lifetime (DESIGN §4.10):
    /// [`Mode::Barrier`] stops every member's every resource on any change and starts the new
    /// assignment only when all acknowledged. Idempotent; a group that exists in the other
    /// mode is [`Error::ModeMismatch`].
    pub async fn create_group_with(&self, mode: Mode) -> Result<(), Error> {
        create_group(
            &*self.store,
            &self.group,
            &self.layout,
            self.op_timeout,
            mode,
        )
        .await
    }

    /// Adds resources (idempotent). Every id is validated before anything is written. Large
    /// sets are written in batches of 64, each atomic, so a failure midway may leave a
    /// prefix added; repeating the call is safe.
    pub async fn add_resources<S: AsRef<str>>(&self, ids: &[S]) -> Result<(), Error> {
        let ids = validate(ids)?;
        self.write_resources(&ids, ops::add_resources).await
    }

    /// Removes resources (idempotent). Their owners stop and give them up through the
    /// normal revoke; claims are never deleted here.
    pub async fn remove_resources<S: AsRef<str>>(&self, ids: &[S]) -> Result<(), Error> {
        let ids = validate(ids)?;
        self.write_resources(&ids, ops::remove_resources).await
    }

    /// Deletes the group: its resources, assignments, counters and marker. Refused with
    /// [`Error::GroupInUse`] while any member session is alive, since that would delete live
    /// claims (DESIGN §8 rule 7): stop or leave every member first. It never deletes a
    /// session-owned key, but a member that joins *while* the deletion runs is not stopped:
    /// it is left in a group that no longer exists (stop members before deleting). The token
    /// generation is kept for a later re-creation. A missing group is [`Error::UnknownGroup`].
    pub async fn delete_group(&self) -> Result<(), Error> {
        let (entries, version) = self.idle_group().await?;
        let meta = self.layout.meta();
        // Everything but the marker first, then the marker: a failure midway leaves a group
        // that still exists, and calling again finishes the job.
        // The token generation survives: a re-created group must not hand out tokens that a
        // resource, remembering a bumped generation, would reject (PITFALLS 18).
        let generation = self.layout.generation();
        let rest: Vec<_> = entries
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| *k != meta && *k != generation)
            .collect();
        for batch in rest.chunks(WRITES_PER_TXN) {
            let op = StoreOp::Txn {
                conds: vec![Cond::Version(meta.clone(), version)],
                writes: batch
                    .iter()
                    .map(|k| Write::Delete { key: k.clone() })
                    .collect(),
            };
            self.write_idempotent(op).await?;
        }
        let op = StoreOp::Txn {
            conds: vec![Cond::Version(meta.clone(), version)],
            writes: vec![Write::Delete { key: meta }],
        };
        self.write_idempotent(op).await
    }

    /// Bumps the group's token generation, so that every fencing token granted afterwards is
    /// larger than every token granted before, even where the store's revisions went back: run
    /// it after restoring the store from a backup or moving the group to another store
    /// (DESIGN §1 "Not covered", §8 rule 9). Returns the new generation.
    ///
    /// The new generation is the larger of the current one + 1 and the wall clock in seconds
    /// since the Unix epoch: a backup restores an older `generation` too, and a bump made
    /// since that backup must not be repeated with the same value (their tokens would go
    /// back). So bumps more than a second apart always grow, whatever was restored, as long
    /// as the wall clock does not go back.
    ///
    /// Refused with [`Error::GroupInUse`] while any member session is alive: a member running
    /// across the bump could grant a token of the old generation with a revision from after the
    /// restore. Stop every member, wait one TTL (sessions restored from the backup expire),
    /// bump, start the members. A missing group is [`Error::UnknownGroup`].
    pub async fn bump_generation(&self) -> Result<u64, Error> {
        let (entries, meta_version) = self.idle_group().await?;
        let meta = self.layout.meta();
        let key = self.layout.generation();
        let current = entries.iter().find(|(k, _)| *k == key);
        let (old, guard) = match current {
            None => (0, Cond::Absent(key.clone())),
            Some((_, e)) => match layout::decode::<layout::CounterRec>(&e.value) {
                Some(c) => (c.value, Cond::Version(key.clone(), e.version)),
                None => {
                    return Err(Error::Store {
                        store: self.store.describe(),
                        source: StoreError::Invalid(format!(
                            "{key} holds data that is not a token generation"
                        )),
                    })
                }
            },
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let new = old.saturating_add(1).max(now);
        // No election since the listing (an election writes the epoch, and nothing is granted
        // without a coordinator): no member started across the bump.
        let epoch = self.layout.epoch();
        let epoch_guard = match entries.iter().find(|(k, _)| *k == epoch) {
            Some((_, e)) => Cond::Version(epoch, e.version),
            None => Cond::Absent(epoch),
        };
        let op = StoreOp::Txn {
            conds: vec![Cond::Version(meta, meta_version), guard, epoch_guard],
            writes: vec![Write::Put {
                key: key.clone(),
                value: layout::encode(&layout::CounterRec { value: new }),
            }],
        };
        match exec(&*self.store, op, self.op_timeout).await {
            Ok(_) => Ok(new),
            // Unknown outcome: it landed if the generation now reads `new` (nobody else writes
            // this value but a bump racing this one, which is as good).
            Err(
                e @ Error::Store {
                    source: StoreError::Indeterminate(_),
                    ..
                },
            ) => match self.view().await {
                Ok((v, _)) if v.generation >= new => Ok(v.generation),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Every key of the group and the version of its marker, for a change that needs every
    /// member stopped: [`Error::UnknownGroup`] without the marker, [`Error::GroupInUse`] if
    /// any key is owned by a live session.
    async fn idle_group(&self) -> Result<(Vec<(Key, Entry)>, u64), Error> {
        let entries = self.list().await?;
        let meta = self.layout.meta();
        let Some(version) = entries
            .iter()
            .find(|(k, _)| *k == meta)
            .map(|(_, e)| e.version)
        else {
            return Err(Error::UnknownGroup {
                group: self.group.clone(),
            });
        };
        let live: BTreeSet<_> = entries.iter().filter_map(|(_, e)| e.owner).collect();
        if !live.is_empty() {
            return Err(Error::GroupInUse {
                group: self.group.clone(),
                sessions: live.len(),
                keys: entries.iter().filter(|(_, e)| e.owner.is_some()).count(),
            });
        }
        Ok((entries, version))
    }

    /// The resource set, sorted.
    pub async fn list_resources(&self) -> Result<Vec<ResourceId>, Error> {
        let (view, _) = self.view().await?;
        Ok(view.resources.into_iter().collect())
    }

    /// A linearizable snapshot of the group: members, coordinator, assignments, claims and
    /// the handovers in progress; and, where the store can tell ([`Store::session_info`]),
    /// each member session's time since its last keepalive and until its expiry.
    pub async fn status(&self) -> Result<GroupStatus, Error> {
        let (view, bad) = self.view().await?;
        let mut st = GroupStatus::from_view(self.group.clone(), &view, bad);
        let sessions = st.members.iter().map(|m| m.session).collect();
        // For people only: a store that cannot tell, or fails to, leaves the fields empty
        // rather than failing the status.
        if let Ok(Ok(info)) =
            tokio::time::timeout(self.op_timeout, self.store.session_info(sessions)).await
        {
            for m in &mut st.members {
                if let Some(i) = info.get(&m.session) {
                    m.since_keepalive = Some(i.since_keepalive);
                    m.expires_in = Some(i.expires_in);
                }
            }
        }
        Ok(st)
    }

    /// Every key of the group, read linearizably.
    async fn list(&self) -> Result<Vec<(Key, Entry)>, Error> {
        let reply = exec(
            &*self.store,
            StoreOp::List {
                prefix: self.layout.prefix(),
                linearizable: true,
            },
            self.op_timeout,
        )
        .await?;
        match reply {
            StoreReply::Listed { entries, .. } => Ok(entries),
            other => Err(self.unexpected("list", &other)),
        }
    }

    async fn view(&self) -> Result<(View, Vec<layout::BadData>), Error> {
        let entries = self.list().await?;
        let (view, bad) = layout::parse_view(&self.layout, &entries);
        if !view.exists {
            // A present but malformed marker shows up in `bad`.
            let marker = self.layout.meta();
            if bad.iter().any(|b| b.key == marker) {
                return Err(Error::NotAGroup {
                    group: self.group.clone(),
                    store: self.store.describe(),
                    key: marker,
                });
            }
            return Err(Error::UnknownGroup {
                group: self.group.clone(),
            });
        }
        Ok((view, bad))
    }

    async fn write_resources(
        &self,
        ids: &[ResourceId],
        build: fn(&Layout, &[ResourceId]) -> StoreOp,
    ) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some((version, _)) =
            read_meta(&*self.store, &self.group, &self.layout, self.op_timeout).await?
        else {
            return Err(Error::UnknownGroup {
                group: self.group.clone(),
            });
        };
        for batch in ids.chunks(WRITES_PER_TXN) {
            let mut op = build(&self.layout, batch);
            // Guarded by the group marker, so a write cannot land in a group deleted meanwhile.
            if let StoreOp::Txn { conds, .. } = &mut op {
                conds.push(Cond::Version(self.layout.meta(), version));
            }
            match self.write_idempotent(op).await {
                Err(Error::Store {
                    source: StoreError::Conflict(_),
                    ..
                }) if !self.exists().await? => {
                    return Err(Error::UnknownGroup {
                        group: self.group.clone(),
                    })
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Retries a write that is idempotent (adding or removing resources) when its outcome is
    /// unknown: applying it twice is the same as once.
    async fn write_idempotent(&self, op: StoreOp) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            match exec(&*self.store, op.clone(), self.op_timeout).await {
                Ok(_) => return Ok(()),
                Err(Error::Store {
                    source: StoreError::Indeterminate(_) | StoreError::Unavailable(_),
                    ..
                }) if attempt < ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn unexpected(&self, op: &str, reply: &StoreReply) -> Error {
        Error::Store {
            store: self.store.describe(),
            source: StoreError::Invalid(format!("unexpected reply to {op}: {reply:?}")),
        }
    }
}

fn validate<S: AsRef<str>>(ids: &[S]) -> Result<Vec<ResourceId>, Error> {
    let mut set = BTreeSet::new();
    for id in ids {
        set.insert(ResourceId::new(id.as_ref())?);
    }
    Ok(set.into_iter().collect())
}

/// Runs one operation with a timeout, mapping failures to [`Error::Store`].
pub(crate) async fn exec(
    store: &dyn Store,
    op: StoreOp,
    timeout: Duration,
) -> Result<StoreReply, Error> {
    let write = op.is_write();
    let err = |source| Error::Store {
        store: store.describe(),
        source,
    };
    match tokio::time::timeout(timeout, store.execute(op)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(err(e)),
        Err(_) => {
            let why = format!("no reply within {timeout:?}");
            Err(err(if write {
                StoreError::Indeterminate(why)
            } else {
                StoreError::Unavailable(why)
            }))
        }
    }
}

/// The version of the group marker and the group's mode, `None` when the group does not
/// exist.
async fn read_meta(
    store: &dyn Store,
    group: &GroupId,
    layout: &Layout,
    timeout: Duration,
) -> Result<Option<(u64, Mode)>, Error> {
    let key = layout.meta();
    let reply = exec(
        store,
        StoreOp::Get {
            key: key.clone(),
            linearizable: true,
        },
        timeout,
    )
    .await?;
    match reply {
        StoreReply::Got(None) => Ok(None),
        StoreReply::Got(Some(e)) => match layout::decode::<MetaRec>(&e.value) {
            Some(m) => Ok(Some((e.version, m.mode))),
            None => Err(Error::NotAGroup {
                group: group.clone(),
                store: store.describe(),
                key,
            }),
        },
        other => Err(Error::Store {
            store: store.describe(),
            source: StoreError::Invalid(format!("unexpected reply to get: {other:?}")),
        }),
    }
}

async fn create_group(
    store: &dyn Store,
    group: &GroupId,
    layout: &Layout,
    timeout: Duration,
    mode: Mode,
) -> Result<(), Error> {
    match exec(store, ops::create_group_with(layout, mode), timeout).await {
        Ok(_) => Ok(()),
        // Conflict: it exists (created concurrently, perhaps). Unknown outcome: look.
        Err(
            e @ Error::Store {
                source: StoreError::Conflict(_) | StoreError::Indeterminate(_),
                ..
            },
        ) => match read_meta(store, group, layout, timeout).await? {
            Some((_, m)) => same_mode(group, m, mode),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// [`Error::ModeMismatch`] unless the group's mode is the one wanted.
fn same_mode(group: &GroupId, group_mode: Mode, wanted: Mode) -> Result<(), Error> {
    if group_mode == wanted {
        return Ok(());
    }
    Err(Error::ModeMismatch {
        group: group.clone(),
        group_mode: group_mode.as_str(),
        wanted: wanted.as_str(),
    })
}

/// Checks at join that the group exists, creating it when asked to.
pub(crate) async fn ensure_group(
    store: &dyn Store,
    group: &GroupId,
    timeout: Duration,
    create: bool,
    mode: Mode,
) -> Result<(), Error> {
    let layout = Layout::new(group);
    if let Some((_, m)) = read_meta(store, group, &layout, timeout).await? {
        return same_mode(group, m, mode);
    }
    if create {
        return create_group(store, group, &layout, timeout, mode).await;
    }
    Err(Error::UnknownGroup {
        group: group.clone(),
    })
}

/// A snapshot of one group (see [`Admin::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupStatus {
    pub group: GroupId,
    /// The token generation (bumped after a restore or a store migration).
    pub generation: u64,
    /// How the group rebalances (chosen at creation).
    pub mode: Mode,
    /// The epoch counter: the epoch of the latest coordinator ever elected.
    pub epoch: Option<Epoch>,
    pub coordinator: Option<CoordinatorInfo>,
    /// Registered members, by name.
    pub members: Vec<MemberInfo>,
    /// Every resource of the set, by id.
    pub resources: Vec<ResourceStatus>,
    /// Resources whose assigned member is not (yet) the claim holder, including removed
    /// resources whose claim is still held and resources assigned but not yet claimed.
    pub pending_handovers: Vec<Handover>,
    /// Keys under the group that could not be understood.
    pub bad_data: Vec<BadKey>,
    /// Resources the application reported failing on some members
    /// ([`crate::Lease::report_unhealthy`]), which the coordinator avoids giving them.
    pub unhealthy: Vec<Unhealthy>,
}

/// A resource reported failing on some live members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Unhealthy {
    pub resource: ResourceId,
    /// The live members it fails on (each avoids it for its back-off).
    pub members: Vec<MemberId>,
    /// It fails on every live member: assigned to nobody until a back-off ends.
    pub everywhere: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CoordinatorInfo {
    pub member: MemberId,
    pub session: SessionId,
    pub epoch: Epoch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MemberInfo {
    pub name: MemberId,
    pub session: SessionId,
    pub weight: u32,
    /// Leaving gracefully: the coordinator moves its resources off.
    pub draining: bool,
    /// Resources in its current assignment.
    pub assigned: usize,
    /// Claims its session holds.
    pub claimed: usize,
    /// When it joined (Unix ms, its host's wall clock), if it recorded it: for session age.
    pub joined_unix_ms: Option<u64>,
    /// Time since its session's last keepalive, if the store can tell (SQLite, etcd and
    /// memory can).
    pub since_keepalive: Option<Duration>,
    /// Time left before its session expires unless kept alive, if the store can tell.
    pub expires_in: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ResourceStatus {
    pub id: ResourceId,
    /// The member whose complete, current assignment contains it.
    pub assigned_to: Option<MemberId>,
    pub claim: Option<ClaimInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClaimInfo {
    /// The member that created the claim (informational: ownership is the session).
    pub member: MemberId,
    pub session: SessionId,
    pub token: Token,
    /// Whether the owning session is still registered under `members/`. A claim whose
    /// session is not is waiting for that session to expire (or the member is restarting).
    pub session_registered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Handover {
    pub resource: ResourceId,
    /// The current claim holder, if any.
    pub from: Option<ClaimInfo>,
    /// The member it is assigned to; `None` for a removed (or not yet assigned) resource.
    pub to: Option<MemberId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BadKey {
    pub key: String,
    pub reason: &'static str,
}

impl GroupStatus {
    fn from_view(group: GroupId, v: &View, bad: Vec<layout::BadData>) -> GroupStatus {
        let token = |rev| Token::new(v.generation, rev);
        let sessions: BTreeSet<SessionId> = v.members.values().map(|m| m.session).collect();
        let claim_info = |c: &layout::ClaimView| ClaimInfo {
            member: c.member.clone(),
            session: c.session,
            token: token(c.create_rev),
            session_registered: sessions.contains(&c.session),
        };
        // Only a member's complete assignment for its current session counts: chunks for an
        // earlier incarnation of the name are not acted on by anyone.
        let mut assigned: BTreeMap<&ResourceId, (&MemberId, SessionId)> = BTreeMap::new();
        let mut assigned_count: BTreeMap<&MemberId, usize> = BTreeMap::new();
        let mut sets = Vec::new();
        for (m, mv) in &v.members {
            if let Some((_, set)) = v.assignment_of(m, mv.session) {
                sets.push((m, mv.session, set));
            }
        }
        for (m, s, set) in &sets {
            assigned_count.insert(m, set.len());
            for r in set {
                assigned.insert(r, (m, *s));
            }
        }
        let members = v
            .members
            .iter()
            .map(|(m, mv)| MemberInfo {
                name: m.clone(),
                session: mv.session,
                weight: mv.weight,
                joined_unix_ms: mv.joined_unix_ms,
                since_keepalive: None,
                expires_in: None,
                draining: v.draining.get(m) == Some(&mv.session),
                assigned: assigned_count.get(m).copied().unwrap_or(0),
                claimed: v
                    .claims
                    .values()
                    .filter(|c| c.session == mv.session)
                    .count(),
            })
            .collect();
        let resources = v
            .resources
            .iter()
            .map(|r| ResourceStatus {
                id: r.clone(),
                assigned_to: assigned.get(r).map(|(m, _)| (*m).clone()),
                claim: v.claims.get(r).map(claim_info),
            })
            .collect();
        let all: BTreeSet<&ResourceId> = v.resources.iter().chain(v.claims.keys()).collect();
        let pending_handovers = all
            .into_iter()
            .filter_map(|r| {
                // Assigned resources that are not in the set do not count as assigned.
                let to = assigned.get(r).filter(|_| v.resources.contains(r));
                let claim = v.claims.get(r);
                let settled = match (to, claim) {
                    (Some((_, s)), Some(c)) => c.session == *s,
                    (None, None) => true,
                    _ => false,
                };
                (!settled).then(|| Handover {
                    resource: r.clone(),
                    from: claim.map(claim_info),
                    to: to.map(|(m, _)| (*m).clone()),
                })
            })
            .collect();
        let live = v.live_members();
        let unhealthy = v
            .avoided()
            .into_iter()
            .map(|(resource, on)| Unhealthy {
                // As the assignor sees it: no member with weight left to take it.
                everywhere: live.iter().all(|(m, mv)| mv.weight == 0 || on.contains(m)),
                resource,
                members: on.into_iter().collect(),
            })
            .collect();
        GroupStatus {
            group,
            unhealthy,
            generation: v.generation,
            mode: v.mode,
            epoch: v.epoch.map(|(e, _)| e),
            coordinator: v.leader.as_ref().map(|l| CoordinatorInfo {
                member: l.member.clone(),
                session: l.session,
                epoch: l.epoch,
            }),
            members,
            resources,
            pending_handovers,
            bad_data: bad
                .into_iter()
                .map(|b| BadKey {
                    key: b.key,
                    reason: b.reason,
                })
                .collect(),
        }
    }

    /// True when every resource is claimed by the member it is assigned to and nothing is in
    /// transit: the group is at rest.
    pub fn is_settled(&self) -> bool {
        self.pending_handovers.is_empty() && self.resources.iter().all(|r| r.claim.is_some())
    }

    /// Claims held per member name (for balance checks).
    pub fn claims_per_member(&self) -> BTreeMap<MemberId, usize> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), m.claimed))
            .collect()
    }
}
