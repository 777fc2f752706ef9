//! `rebalanser group list|create|describe|delete|bump-generation`.

use clap::Subcommand;
use rebalanser::{GroupListing, GroupStatus, Mode};
use serde_json::json;

use super::common::{connect, connect_store, emit, Access, CliError, StoreArgs, StoreOnlyArgs};
use super::view::{bad_keys_json, bad_keys_table, table, Look, Row};

const LIST_EXAMPLE: &str = "\
Example:
  rebalanser group list --store sqlite:///var/lib/rb.db
  REBALANSER_STORE=zk://zk1:2181/rebalanser rebalanser group list --json | jq -r '.groups[].group'

Output: a table GROUP, MODE, MEMBERS, RESOURCES, COORDINATOR, EPOCH (one row per group, by
name), then BAD KEYS (KEY, REASON) if the store's root holds keys of no group (another
application's, or a deletion that stopped midway): reported, never fatal. A deleted group,
which keeps only its token generation, is not listed. One listing of the whole store; opened
read-only.

--json: {\"format\": 1, \"store\": URL, \"groups\": [{\"group\": \"jobs\", \"mode\": \"resource\",
\"generation\": 0, \"epoch\": 3 | null, \"coordinator\": \"w1\" | null, \"members\": 2,
\"resources\": 10}], \"bad_keys\": [{\"key\": ..., \"reason\": ...}]}";

const DESCRIBE_EXAMPLE: &str = "\
Example:
  rebalanser group describe --store sqlite:///var/lib/rb.db -g jobs
  rebalanser group describe -g jobs --json      # with REBALANSER_STORE set

A group's summary (`status` shows every member and resource): mode, token generation, epoch,
coordinator, members (draining), resources (claimed), handovers in progress, settled. Opened
read-only.

--json: {\"format\": 1, \"group\": \"jobs\", \"store\": URL, \"mode\": \"resource\", \"generation\": 0,
\"epoch\": 3 | null, \"coordinator\": {\"member\": \"w1\", \"session\": \"s1a2b\", \"epoch\": 3} | null,
\"members\": 2, \"draining\": 0, \"resources\": 10, \"claimed\": 10, \"handovers\": 0,
\"settled\": true}";

const DELETE_EXAMPLE: &str = "\
Example:
  # stop every member of the group first, then:
  rebalanser group delete --store sqlite:///var/lib/rb.db -g jobs

Deletes the group's resources, assignments, counters and marker. Refused while any member
session of the group is alive (exit status 1, nothing changed): stop the members first (a
stopped member's session ends within its TTL). The token generation is kept, so a group
re-created under the same name never hands out smaller tokens. A missing group is exit
status 1.";

const CREATE_EXAMPLE: &str = "\
Example:
  rebalanser group create --store zk://zk1:2181/rebalanser --group jobs
  rebalanser group create --store sqlite:///var/lib/rb.db -g jobs

Idempotent: an existing group is left as it is. `resource add` and members (unless told not
to) create a missing group too.";

const BUMP_EXAMPLE: &str = "\
Example (after restoring the store from a backup):
  # stop every member, wait one TTL, then:
  rebalanser group bump-generation --store sqlite:///var/lib/rb.db -g jobs
  # start the members again

Every fencing token granted afterwards is larger than every token granted before, even when
the restored store's revisions went back. The new generation is the larger of the old one + 1
and the wall clock in seconds since 1970 (a backup restores an older generation too). Refused
while any member session is alive (exit status 1, nothing changed). Prints the new generation.";

/// List, create, describe or delete groups, or bump a group's token generation.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  rebalanser group list            --store zk://zk1:2181/rebalanser
  rebalanser group create          --store zk://zk1:2181/rebalanser --group jobs
  rebalanser group describe        --store zk://zk1:2181/rebalanser --group jobs
  rebalanser group delete          --store zk://zk1:2181/rebalanser --group jobs
  rebalanser group bump-generation --store zk://zk1:2181/rebalanser --group jobs

--store and --group may come from REBALANSER_STORE and REBALANSER_GROUP (a flag wins).

Exit status: 0 done, 1 the store or the group failed, 2 bad arguments.")]
pub struct GroupArgs {
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// List the groups of a store.
    #[command(after_help = LIST_EXAMPLE)]
    List(ListArgs),
    /// Create the group (idempotent).
    #[command(after_help = CREATE_EXAMPLE)]
    Create(CreateArgs),
    /// Show a group's summary: mode, generation, coordinator, members and resources counted.
    #[command(after_help = DESCRIBE_EXAMPLE)]
    Describe(DescribeArgs),
    /// Delete the group (refused while members run).
    #[command(after_help = DELETE_EXAMPLE)]
    Delete(BumpArgs),
    /// Bump the token generation after a restore from backup or a store migration.
    #[command(after_help = BUMP_EXAMPLE)]
    BumpGeneration(BumpArgs),
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How the group rebalances, for its whole life: `resource` moves only what must move;
    /// `barrier` stops every resource of every member on any change and starts the new
    /// assignment once all have stopped (members must run with the same --mode).
    #[arg(long, value_enum, default_value_t = ModeArg::Resource)]
    mode: ModeArg,
}

/// `--mode` of `group create`, `member run`, `bench` and `sim`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Resource,
    Barrier,
}

impl ModeArg {
    /// As it is spelled on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ModeArg::Resource => "resource",
            ModeArg::Barrier => "barrier",
        }
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Resource => Mode::Resource,
            ModeArg::Barrier => Mode::Barrier,
        }
    }
}

#[derive(clap::Args, Debug)]
struct BumpArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    store: StoreOnlyArgs,
    /// Print a JSON document instead of a table (its shape: see --help).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct DescribeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print a JSON document instead of text (its shape: see --help).
    #[arg(long)]
    json: bool,
}

/// The version of the `group list|describe --json` documents' shape.
const JSON_FORMAT: u64 = 1;

pub async fn run(a: GroupArgs) -> Result<(), CliError> {
    match a.cmd {
        GroupCmd::List(a) => {
            let conn = connect_store(&a.store, Access::Read).await?;
            let listing = super::common::bounded_on(
                &conn.shown,
                conn.timeout,
                rebalanser::list_groups(&*conn.store, conn.timeout),
            )
            .await?;
            if a.json {
                emit(&format!("{}\n", list_json(&listing, &conn.shown)))
            } else {
                emit(&list_text(&listing))
            }
        }
        GroupCmd::Describe(a) => {
            let conn = connect(&a.store, Access::Read).await?;
            let st = conn.bounded(conn.admin.status()).await?;
            if a.json {
                emit(&format!("{}\n", describe_json(&st, &conn.store)))
            } else {
                emit(&describe_text(&st, &conn.store))
            }
        }
        GroupCmd::Delete(a) => {
            let conn = connect(&a.store, Access::Write).await?;
            conn.bounded(conn.admin.delete_group()).await?;
            emit(&format!(
                "deleted group {} from {} (its token generation is kept for a re-creation)\n",
                conn.admin.group(),
                conn.store
            ))
        }
        GroupCmd::Create(a) => {
            let conn = connect(&a.store, Access::Create).await?;
            let admin = &conn.admin;
            let existed = conn.bounded(admin.exists()).await?;
            conn.bounded(admin.create_group_with(a.mode.into())).await?;
            let what = if existed { "exists" } else { "created" };
            emit(&format!(
                "group {} {what} in {} ({} mode)\n",
                admin.group(),
                conn.store,
                Mode::from(a.mode).as_str()
            ))
        }
        GroupCmd::BumpGeneration(a) => {
            let conn = connect(&a.store, Access::Write).await?;
            let generation = conn.bounded(conn.admin.bump_generation()).await?;
            emit(&format!(
                "group {}: token generation is now {generation}\n",
                conn.admin.group()
            ))
        }
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn list_text(l: &GroupListing) -> String {
    let mut out = String::new();
    let look = Look::default();
    let rows = l
        .groups
        .iter()
        .map(|g| Row {
            marked: false,
            cells: vec![
                g.group.to_string(),
                g.mode.as_str().to_string(),
                g.members.to_string(),
                g.resources.to_string(),
                opt(g.coordinator.as_ref()),
                opt(g.epoch),
            ],
        })
        .collect();
    table(
        &mut out,
        &format!("GROUPS ({})", l.groups.len()),
        &[
            "GROUP",
            "MODE",
            "MEMBERS",
            "RESOURCES",
            "COORDINATOR",
            "EPOCH",
        ],
        rows,
        &look,
    );
    if !l.bad_keys.is_empty() {
        bad_keys_table(&mut out, &l.bad_keys, &look);
    }
    // `table` starts each table with a blank line: not wanted at the top of the output.
    out.trim_start_matches('\n').to_string()
}

fn list_json(l: &GroupListing, store: &str) -> String {
    let doc = json!({
        "format": JSON_FORMAT,
        "store": store,
        "groups": l.groups.iter().map(|g| json!({
            "group": g.group.as_str(),
            "mode": g.mode.as_str(),
            "generation": g.generation,
            "epoch": g.epoch.map(|e| e.0),
            "coordinator": g.coordinator.as_ref().map(|m| m.as_str()),
            "members": g.members,
            "resources": g.resources,
        })).collect::<Vec<_>>(),
        "bad_keys": bad_keys_json(&l.bad_keys),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

/// What `describe` counts, from one status snapshot.
struct Counts {
    draining: usize,
    claimed: usize,
}

fn counts(st: &GroupStatus) -> Counts {
    Counts {
        draining: st.members.iter().filter(|m| m.draining).count(),
        claimed: st.resources.iter().filter(|r| r.claim.is_some()).count(),
    }
}

fn describe_text(st: &GroupStatus, store: &str) -> String {
    let c = counts(st);
    let coordinator = st.coordinator.as_ref().map_or_else(
        || "none".to_string(),
        |c| format!("{} (epoch {}, session {})", c.member, c.epoch, c.session),
    );
    let settled = if st.is_settled() {
        "settled".to_string()
    } else {
        format!(
            "moving: {} handover(s) in progress",
            st.pending_handovers.len()
        )
    };
    format!(
        "group:       {}\n\
         store:       {store}\n\
         mode:        {}\n\
         generation:  {}\n\
         epoch:       {}\n\
         coordinator: {coordinator}\n\
         members:     {} ({} draining)\n\
         resources:   {} ({} claimed)\n\
         state:       {settled}\n",
        st.group,
        st.mode.as_str(),
        st.generation,
        opt(st.epoch),
        st.members.len(),
        c.draining,
        st.resources.len(),
        c.claimed,
    )
}

fn describe_json(st: &GroupStatus, store: &str) -> String {
    let c = counts(st);
    let doc = json!({
        "format": JSON_FORMAT,
        "group": st.group.as_str(),
        "store": store,
        "mode": st.mode.as_str(),
        "generation": st.generation,
        "epoch": st.epoch.map(|e| e.0),
        "coordinator": st.coordinator.as_ref().map(|c| json!({
            "member": c.member.as_str(),
            "session": c.session.to_string(),
            "epoch": c.epoch.0,
        })),
        "members": st.members.len(),
        "draining": c.draining,
        "resources": st.resources.len(),
        "claimed": c.claimed,
        "handovers": st.pending_handovers.len(),
        "settled": st.is_settled(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}
