//! `rebalanser resource add|remove|list`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use rebalanser::ResourceId;

use super::common::{connect, emit, Access, CliError, StoreArgs};

const ADD_EXAMPLE: &str = "\
Example:
  rebalanser resource add --store zk://zk1:2181/rebalanser --group jobs q1 q2 'bucket/a b'
  grep -v '^tmp' queues.txt | rebalanser resource add --store sqlite:///var/lib/rb.db -g jobs --from-file -

Ids file: one id per line; surrounding whitespace is trimmed, blank lines and lines starting
with # are skipped. Ids are opaque (spaces, '/', Unicode are fine): non-empty, at most 512
bytes, no control characters. Every id is checked before anything is written.";

const REMOVE_EXAMPLE: &str = "\
Example:
  rebalanser resource remove --store zk://zk1:2181/rebalanser --group jobs q2
  rebalanser resource remove --store sqlite:///var/lib/rb.db -g jobs --from-file retired.txt

The owner of a removed resource stops and gives it up through the normal revoke.";

const LIST_EXAMPLE: &str = "\
Example:
  rebalanser resource list --store zk://zk1:2181/rebalanser --group jobs
  rebalanser resource list --store sqlite:///var/lib/rb.db -g jobs --json

Output: one id per line, sorted; with --json: {\"group\": \"jobs\", \"resources\": [\"q1\", ...]}";

/// Add, remove or list the resources of a group.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  rebalanser resource add    --store zk://zk1:2181/rebalanser --group jobs q1 q2 q3
  rebalanser resource list   --store zk://zk1:2181/rebalanser --group jobs
  rebalanser resource remove --store zk://zk1:2181/rebalanser --group jobs q3

Exit status: 0 done, 1 the store or the group failed, 2 bad arguments.")]
pub struct ResourceArgs {
    #[command(subcommand)]
    cmd: ResourceCmd,
}

#[derive(Subcommand, Debug)]
enum ResourceCmd {
    /// Add resources (idempotent); creates the group if it is missing, unless --no-create.
    #[command(after_help = ADD_EXAMPLE)]
    Add(AddArgs),
    /// Remove resources (idempotent).
    #[command(after_help = REMOVE_EXAMPLE)]
    Remove(RemoveArgs),
    /// List the resources of a group, one id per line.
    #[command(after_help = LIST_EXAMPLE)]
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
struct IdArgs {
    /// Resource ids.
    #[arg(value_name = "IDS")]
    ids: Vec<String>,
    /// Read ids from a file, one per line (# comments and blank lines skipped; - = stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    from_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct AddArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ids: IdArgs,
    /// Fail if the group does not exist instead of creating it.
    #[arg(long)]
    no_create: bool,
}

#[derive(clap::Args, Debug)]
struct RemoveArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ids: IdArgs,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print {"group": ..., "resources": [...]} instead of one id per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: ResourceArgs) -> Result<(), CliError> {
    match a.cmd {
        ResourceCmd::Add(a) => add(a).await,
        ResourceCmd::Remove(a) => remove(a).await,
        ResourceCmd::List(a) => list(a).await,
    }
}

async fn add(a: AddArgs) -> Result<(), CliError> {
    let ids = collect_ids(&a.ids, "add")?;
    // --no-create: neither the group nor a missing store file.
    let access = if a.no_create {
        Access::Write
    } else {
        Access::Create
    };
    let conn = connect(&a.store, access).await?;
    let admin = &conn.admin;
    let group = admin.group().clone();
    if !conn.bounded(admin.exists()).await? {
        if a.no_create {
            return Err(CliError::NoGroup {
                group: group.to_string(),
                store: conn.store.clone(),
                hint: "--no-create was given",
            });
        }
        conn.bounded(admin.create_group()).await?;
        eprintln!("rebalanser: created group {group} in {}", conn.store);
    }
    let before: BTreeSet<ResourceId> = conn
        .bounded(admin.list_resources())
        .await?
        .into_iter()
        .collect();
    let names: Vec<&str> = ids.iter().map(ResourceId::as_str).collect();
    conn.bounded(admin.add_resources(&names)).await?;
    let present = ids.iter().filter(|id| before.contains(*id)).count();
    emit(&format!(
        "added {} resource(s) to group {group} ({present} already present)\n",
        ids.len() - present
    ))
}

async fn remove(a: RemoveArgs) -> Result<(), CliError> {
    let ids = collect_ids(&a.ids, "remove")?;
    let conn = connect(&a.store, Access::Write).await?;
    let admin = &conn.admin;
    let group = admin.group().clone();
    // Also proves that the group exists: a missing one is an error, not "0 removed".
    let before: BTreeSet<ResourceId> = conn
        .bounded(admin.list_resources())
        .await?
        .into_iter()
        .collect();
    let names: Vec<&str> = ids.iter().map(ResourceId::as_str).collect();
    conn.bounded(admin.remove_resources(&names)).await?;
    let present = ids.iter().filter(|id| before.contains(*id)).count();
    emit(&format!(
        "removed {present} resource(s) from group {group} ({} not present)\n",
        ids.len() - present
    ))
}

async fn list(a: ListArgs) -> Result<(), CliError> {
    let conn = connect(&a.store, Access::Read).await?;
    let ids = conn.bounded(conn.admin.list_resources()).await?;
    let text = if a.json {
        let doc = serde_json::json!({
            "group": conn.admin.group().as_str(),
            "resources": ids.iter().map(ResourceId::as_str).collect::<Vec<_>>(),
        });
        format!("{doc}\n")
    } else {
        ids.iter().map(|id| format!("{id}\n")).collect()
    };
    emit(&text)
}

/// The ids of the arguments and the file, validated and de-duplicated (in first-seen order).
fn collect_ids(a: &IdArgs, verb: &'static str) -> Result<Vec<ResourceId>, CliError> {
    let mut raw: Vec<(String, String)> = a
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("argument {}", i + 1)))
        .collect();
    if let Some(path) = &a.from_file {
        raw.extend(read_ids_file(path)?);
    } else if raw.is_empty() {
        return Err(CliError::NoIds { verb });
    }
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    for (id, origin) in raw {
        let rid =
            ResourceId::new(id.clone()).map_err(|reason| CliError::BadId { id, origin, reason })?;
        if seen.insert(rid.clone()) {
            ids.push(rid);
        }
    }
    Ok(ids)
}

/// `(id, "line N of FILE")` for every id line of the file (`-` = stdin).
fn read_ids_file(path: &PathBuf) -> Result<Vec<(String, String)>, CliError> {
    let stdin = path.as_os_str() == "-";
    let name = if stdin {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let fail = |reason: String| CliError::ReadFile {
        path: name.clone(),
        reason,
    };
    let mut bytes = Vec::new();
    let read = if stdin {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| fail(e.to_string()))?;
    parse_ids(&bytes, &name).map_err(fail)
}

/// One id per line, trimmed; blank lines and `#` comment lines skipped.
fn parse_ids(bytes: &[u8], name: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line =
            std::str::from_utf8(line).map_err(|_| format!("line {} is not valid UTF-8", i + 1))?;
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        out.push((id.to_string(), format!("line {} of {name}", i + 1)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_files_skip_comments_and_blank_lines() {
        let got = parse_ids(
            b"# header\nq1\n\n  a b  \r\n\t# indented comment\nx/y\n",
            "f",
        )
        .unwrap();
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["q1", "a b", "x/y"]);
        assert_eq!(got[1].1, "line 4 of f");
        assert!(parse_ids(b"ok\n\xff\n", "f")
            .unwrap_err()
            .contains("line 2"));
    }
}
