//! `rebalanser group create|bump-generation`.

use clap::Subcommand;
use rebalanser::Mode;

use super::common::{connect, emit, Access, CliError, StoreArgs};

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

/// Create a group, or bump its token generation.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  rebalanser group create          --store zk://zk1:2181/rebalanser --group jobs
  rebalanser group bump-generation --store zk://zk1:2181/rebalanser --group jobs

Exit status: 0 done, 1 the store or the group failed, 2 bad arguments.")]
pub struct GroupArgs {
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create the group (idempotent).
    #[command(after_help = CREATE_EXAMPLE)]
    Create(CreateArgs),
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

pub async fn run(a: GroupArgs) -> Result<(), CliError> {
    match a.cmd {
        GroupCmd::Create(a) => {
            let conn = connect(&a.store, Access::Write).await?;
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
            let conn = connect(&a.store, Access::Read).await?;
            let generation = conn.bounded(conn.admin.bump_generation()).await?;
            emit(&format!(
                "group {}: token generation is now {generation}\n",
                conn.admin.group()
            ))
        }
    }
}
