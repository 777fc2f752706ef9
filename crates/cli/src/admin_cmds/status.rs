//! `rebalanser status`.

use super::common::{connect, emit, Access, CliError, StoreArgs};
use super::view::{to_json, to_text, Look};

const EXAMPLE: &str = "\
Example:
  rebalanser status --store zk://zk1:2181/rebalanser --group jobs
  rebalanser status --store sqlite:///var/lib/rb.db -g jobs --json | jq '.resources[].claim.member'";

const LONG_HELP: &str = "\
Example:
  rebalanser status --store zk://zk1:2181/rebalanser --group jobs
  rebalanser status --store sqlite:///var/lib/rb.db -g jobs --json | jq '.resources[].claim.member'

The text form: group, store, coordinator (member, epoch, session), epoch counter and token
generation, state (settled, or how many handovers are in progress); then the tables MEMBERS
(NAME, SESSION, AGE, LIVENESS, KEEPALIVE, WEIGHT, ASSIGNED, CLAIMED, STATE:
coordinator/draining/active), RESOURCES
(RESOURCE, ASSIGNED TO, CLAIM HOLDER, TOKEN), HANDOVERS IN PROGRESS (RESOURCE, FROM, TO),
UNHEALTHY (RESOURCE, FAILING ON, STATE: resources reported failing on members, which the
coordinator avoids giving them; shown only when there are some) and BAD KEYS (KEY, REASON). '-' is none; a claim holder marked '(session gone)' holds a claim of a
session that is no longer registered (it expires, or the member is restarting). AGE is how long
ago the member's current session registered, by the member's wall clock ('-' if it did not
record it; a member that lost its session and rejoined counts from the rejoin). LIVENESS is
what the group's records say of the session: alive, or draining (leaving). KEEPALIVE is what
the store says of it, where it can tell (SQLite, on the clock that expires it; etcd, in whole
seconds from its leader): how long ago its last keepalive was and how long until it expires
unless kept alive ('-': the store cannot tell; ZooKeeper and PostgreSQL cannot).

The --json document (stable; \"format\" changes only on an incompatible change; sessions and
tokens are strings, since they do not fit a JSON number exactly; format 2 made the token one
integer):
  {
    \"format\": 2,
    \"group\": \"jobs\",
    \"store\": \"zk://zk1:2181/rebalanser\",      credentials redacted
    \"generation\": 1,                          token generation
    \"mode\": \"resource\" | \"barrier\",          how the group rebalances
    \"epoch\": 7 | null,                        epoch counter (latest coordinator elected)
    \"coordinator\": {\"member\": \"w1\", \"session\": \"s1a2b\", \"epoch\": 7} | null,
    \"settled\": true,                          every resource claimed by its assignee
    \"members\": [{\"name\": \"w1\", \"session\": \"s1a2b\", \"weight\": 1, \"draining\": false,
                 \"coordinator\": true, \"assigned\": 2, \"claimed\": 2,
                 \"joined_unix_ms\": 1764100000000 | null,
                 \"liveness\": \"alive\" | \"draining\",
                 \"since_keepalive_ms\": 300 | null, \"expires_in_ms\": 1700 | null}],
    \"resources\": [{\"id\": \"q1\", \"assigned_to\": \"w1\" | null,
                   \"claim\": CLAIM | null}],
    \"handovers\": [{\"resource\": \"q3\", \"from\": CLAIM | null, \"to\": \"w2\" | null}],
    \"unhealthy\": [{\"resource\": \"q4\", \"failing_on\": [\"w2\"], \"everywhere\": false}],
    \"bad_keys\": [{\"key\": \"...\", \"reason\": \"...\"}]
  }
  CLAIM = {\"member\": \"w1\", \"session\": \"s1a2b\",
           \"token\": \"18446744073709555858\", \"session_registered\": true}
TOKEN is the fencing token: one integer, generation × 2^64 + the claim's store revision (while
the generation is 0, the revision itself); a resource accepts the largest it has seen.
Keys are printed sorted. Members are sorted by name, resources and handovers by id. A handover's \"to\" is null for a
removed (or not yet assigned) resource.

Exit status: 0 shown, 1 the store or the group failed (a missing group included), 2 bad
arguments.";

/// Show a group: members, coordinator and epoch, each resource's owner and token, handovers.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLE, after_long_help = LONG_HELP)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print a JSON document instead of tables (its shape: see --help).
    #[arg(long)]
    json: bool,
}

pub async fn run(a: StatusArgs) -> Result<(), CliError> {
    let conn = connect(&a.store, Access::Read).await?;
    let st = conn.bounded(conn.admin.status()).await?;
    if a.json {
        let doc = to_json(&st, &conn.store);
        let text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
        emit(&format!("{text}\n"))
    } else {
        emit(&to_text(&st, &conn.store, &Look::default()))
    }
}
