//! The status of a group as text (a few aligned tables) and as JSON, shared by `status` and
//! `watch`; and the difference between two snapshots, for `watch`'s highlighting.

use std::collections::{BTreeMap, BTreeSet};

use rebalanser::{
    BadKey, ClaimInfo, GroupStatus, MemberId, MemberInfo, ResourceId, SessionId, Token,
};

use super::common::fmt_duration;
use serde_json::{json, Value};

/// The version of the JSON document's shape; bumped on any incompatible change.
pub const JSON_FORMAT: u64 = 2;

/// The `status --json` document (see `rebalanser status --help`).
pub fn to_json(st: &GroupStatus, store: &str) -> Value {
    let coordinator = st.coordinator.as_ref();
    json!({
        "format": JSON_FORMAT,
        "group": st.group.as_str(),
        "store": store,
        "generation": st.generation,
        "mode": st.mode.as_str(),
        "epoch": st.epoch.map(|e| e.0),
        "coordinator": coordinator.map(|c| json!({
            "member": c.member.as_str(),
            "session": c.session.to_string(),
            "epoch": c.epoch.0,
        })),
        "settled": st.is_settled(),
        "members": st.members.iter().map(|m| json!({
            "name": m.name.as_str(),
            "session": m.session.to_string(),
            "weight": m.weight,
            "joined_unix_ms": m.joined_unix_ms,
            "liveness": liveness(m),
            "since_keepalive_ms": m.since_keepalive.map(|d| d.as_millis() as u64),
            "expires_in_ms": m.expires_in.map(|d| d.as_millis() as u64),
            "draining": m.draining,
            "coordinator": coordinator.is_some_and(|c| c.member == m.name && c.session == m.session),
            "assigned": m.assigned,
            "claimed": m.claimed,
        })).collect::<Vec<_>>(),
        "resources": st.resources.iter().map(|r| json!({
            "id": r.id.as_str(),
            "assigned_to": r.assigned_to.as_ref().map(MemberId::as_str),
            "claim": r.claim.as_ref().map(claim_json),
        })).collect::<Vec<_>>(),
        "handovers": st.pending_handovers.iter().map(|h| json!({
            "resource": h.resource.as_str(),
            "from": h.from.as_ref().map(claim_json),
            "to": h.to.as_ref().map(MemberId::as_str),
        })).collect::<Vec<_>>(),
        "unhealthy": st.unhealthy.iter().map(|u| json!({
            "resource": u.resource.as_str(),
            "failing_on": u.members.iter().map(MemberId::as_str).collect::<Vec<_>>(),
            "everywhere": u.everywhere,
        })).collect::<Vec<_>>(),
        "bad_keys": bad_keys_json(&st.bad_data),
    })
}

fn claim_json(c: &ClaimInfo) -> Value {
    json!({
        "member": c.member.as_str(),
        "session": c.session.to_string(),
        "token": c.token.to_string(),
        "session_registered": c.session_registered,
    })
}

/// What `watch` highlights: rows that changed since the previous frame, and a summary line.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    pub resources: BTreeSet<ResourceId>,
    pub members: BTreeSet<MemberId>,
    pub coordinator: bool,
    /// Human-readable changes, in order: `q1 w1→w2`, `q9 added`, `w3 joined`, ...
    pub changes: Vec<String>,
}

/// Ownership of one resource as far as a frame shows it.
#[derive(PartialEq, Eq, Clone)]
struct Owner {
    assigned: Option<MemberId>,
    claim: Option<(MemberId, SessionId, Token)>,
}

fn owners(st: &GroupStatus) -> BTreeMap<&ResourceId, Owner> {
    st.resources
        .iter()
        .map(|r| {
            (
                &r.id,
                Owner {
                    assigned: r.assigned_to.clone(),
                    claim: r
                        .claim
                        .as_ref()
                        .map(|c| (c.member.clone(), c.session, c.token)),
                },
            )
        })
        .collect()
}

fn holder(o: &Owner) -> String {
    o.claim
        .as_ref()
        .map_or_else(|| "-".to_string(), |(m, _, t)| format!("{m} ({t})"))
}

/// The changes from `prev` to `cur`, for highlighting.
pub fn diff(prev: &GroupStatus, cur: &GroupStatus) -> Marks {
    let mut marks = Marks::default();
    let (before, after) = (owners(prev), owners(cur));
    for (id, o) in &after {
        match before.get(id) {
            None => {
                marks.resources.insert((*id).clone());
                marks.changes.push(format!("{id} added"));
            }
            Some(p) if p != o => {
                marks.resources.insert((*id).clone());
                if p.claim != o.claim {
                    marks
                        .changes
                        .push(format!("{id} claim {}→{}", holder(p), holder(o)));
                } else {
                    let name = |m: &Option<MemberId>| {
                        m.as_ref()
                            .map_or_else(|| "-".to_string(), |m| m.to_string())
                    };
                    marks.changes.push(format!(
                        "{id} assigned {}→{}",
                        name(&p.assigned),
                        name(&o.assigned)
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        marks.changes.push(format!("{id} removed"));
    }
    let members = |st: &GroupStatus| -> BTreeMap<MemberId, (SessionId, bool, u32)> {
        st.members
            .iter()
            .map(|m| (m.name.clone(), (m.session, m.draining, m.weight)))
            .collect()
    };
    let (mb, ma) = (members(prev), members(cur));
    for (name, now) in &ma {
        match mb.get(name) {
            None => {
                marks.members.insert(name.clone());
                marks.changes.push(format!("{name} joined"));
            }
            Some(was) if was.0 != now.0 => {
                marks.members.insert(name.clone());
                marks
                    .changes
                    .push(format!("{name} rejoined (session {})", now.0));
            }
            Some(was) if was != now => {
                marks.members.insert(name.clone());
                if now.1 && !was.1 {
                    marks.changes.push(format!("{name} draining"));
                } else {
                    marks.changes.push(format!("{name} changed"));
                }
            }
            Some(_) => {}
        }
    }
    for name in mb.keys().filter(|n| !ma.contains_key(*n)) {
        marks.changes.push(format!("{name} left"));
    }
    let coord = |st: &GroupStatus| st.coordinator.as_ref().map(|c| (c.member.clone(), c.epoch));
    if coord(prev) != coord(cur) {
        marks.coordinator = true;
        let show = |c: Option<(MemberId, rebalanser::Epoch)>| {
            c.map_or_else(|| "none".to_string(), |(m, e)| format!("{m} (epoch {e})"))
        };
        marks.changes.push(format!(
            "coordinator {}→{}",
            show(coord(prev)),
            show(coord(cur))
        ));
    }
    marks
}

/// How to draw: with a change-marker column (watch) and with ANSI colours (a terminal).
#[derive(Default)]
pub struct Look<'a> {
    pub marks: Option<&'a Marks>,
    pub color: bool,
}

const BOLD_YELLOW: &str = "\x1b[1;33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// The text form: a key/value header, then MEMBERS, RESOURCES, HANDOVERS IN PROGRESS and
/// BAD KEYS tables. Ends with a newline.
pub fn to_text(st: &GroupStatus, store: &str, look: &Look) -> String {
    let mut out = String::new();
    let coordinator = match &st.coordinator {
        Some(c) => format!("{} (epoch {}, session {})", c.member, c.epoch, c.session),
        None => "none".to_string(),
    };
    let epoch = st.epoch.map_or_else(|| "-".to_string(), |e| e.to_string());
    let unclaimed = st.resources.iter().filter(|r| r.claim.is_none()).count();
    let state = if st.is_settled() {
        if st.resources.is_empty() {
            "settled (no resources)".to_string()
        } else {
            "settled: every resource is claimed by its assigned member".to_string()
        }
    } else if st.members.is_empty() && st.pending_handovers.is_empty() {
        format!("idle: no members; {unclaimed} resource(s) unclaimed")
    } else {
        format!(
            "moving: {} handover(s) in progress, {unclaimed} resource(s) unclaimed",
            st.pending_handovers.len()
        )
    };
    let coord_marked = look.marks.is_some_and(|m| m.coordinator);
    out.push_str(&format!("group:       {}\n", st.group));
    out.push_str(&format!("store:       {store}\n"));
    let line = format!("coordinator: {coordinator}");
    out.push_str(&style(&line, coord_marked && look.color, BOLD_YELLOW));
    out.push('\n');
    out.push_str(&format!(
        "epoch:       {epoch}    generation: {}    mode: {}\n",
        st.generation,
        st.mode.as_str()
    ));
    out.push_str(&format!("state:       {state}\n"));
    if let Some(m) = look.marks {
        out.push_str(&format!("changes:     {}\n", summary(&m.changes)));
    }

    let is_coord = |name: &MemberId, session: SessionId| {
        st.coordinator
            .as_ref()
            .is_some_and(|c| c.member == *name && c.session == session)
    };
    let members = st
        .members
        .iter()
        .map(|m| {
            let mut state = Vec::new();
            if is_coord(&m.name, m.session) {
                state.push("coordinator");
            }
            if m.draining {
                state.push("draining");
            }
            if state.is_empty() {
                state.push("active");
            }
            Row {
                marked: look.marks.is_some_and(|k| k.members.contains(&m.name)),
                cells: vec![
                    m.name.to_string(),
                    m.session.to_string(),
                    session_age(m.joined_unix_ms),
                    liveness(m).to_string(),
                    keepalive(m),
                    m.weight.to_string(),
                    m.assigned.to_string(),
                    m.claimed.to_string(),
                    state.join(", "),
                ],
            }
        })
        .collect();
    table(
        &mut out,
        &format!("MEMBERS ({})", st.members.len()),
        &[
            "NAME",
            "SESSION",
            "AGE",
            "LIVENESS",
            "KEEPALIVE",
            "WEIGHT",
            "ASSIGNED",
            "CLAIMED",
            "STATE",
        ],
        members,
        look,
    );

    let resources = st
        .resources
        .iter()
        .map(|r| Row {
            marked: look.marks.is_some_and(|k| k.resources.contains(&r.id)),
            cells: vec![
                r.id.to_string(),
                opt_member(r.assigned_to.as_ref()),
                r.claim
                    .as_ref()
                    .map_or_else(|| "-".to_string(), claim_holder),
                r.claim
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |c| c.token.to_string()),
            ],
        })
        .collect();
    table(
        &mut out,
        &format!("RESOURCES ({})", st.resources.len()),
        &["RESOURCE", "ASSIGNED TO", "CLAIM HOLDER", "TOKEN"],
        resources,
        look,
    );

    let in_set: BTreeSet<&ResourceId> = st.resources.iter().map(|r| &r.id).collect();
    let handovers = st
        .pending_handovers
        .iter()
        .map(|h| Row {
            marked: look
                .marks
                .is_some_and(|k| k.resources.contains(&h.resource)),
            cells: vec![
                h.resource.to_string(),
                h.from.as_ref().map_or_else(
                    || "- (unclaimed)".to_string(),
                    |c| format!("{} ({})", claim_holder(c), c.token),
                ),
                match &h.to {
                    Some(m) => m.to_string(),
                    None if in_set.contains(&h.resource) => "- (unassigned)".to_string(),
                    None => "- (removed)".to_string(),
                },
            ],
        })
        .collect();
    table(
        &mut out,
        &format!("HANDOVERS IN PROGRESS ({})", st.pending_handovers.len()),
        &["RESOURCE", "FROM", "TO"],
        handovers,
        look,
    );

    if !st.unhealthy.is_empty() {
        let rows = st
            .unhealthy
            .iter()
            .map(|u| Row {
                marked: true,
                cells: vec![
                    u.resource.to_string(),
                    u.members
                        .iter()
                        .map(MemberId::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    if u.everywhere {
                        "failing on every member: assigned to nobody".to_string()
                    } else {
                        "avoided there".to_string()
                    },
                ],
            })
            .collect();
        table(
            &mut out,
            &format!("UNHEALTHY ({})", st.unhealthy.len()),
            &["RESOURCE", "FAILING ON", "STATE"],
            rows,
            look,
        );
    }

    bad_keys_table(&mut out, &st.bad_data, look);
    out
}

/// The keys that could not be understood, with why (`status`, `group list`).
pub(super) fn bad_keys_table(out: &mut String, keys: &[BadKey], look: &Look) {
    let rows = keys
        .iter()
        .map(|b| Row {
            marked: false,
            cells: vec![b.key.clone(), b.reason.to_string()],
        })
        .collect();
    table(
        out,
        &format!("BAD KEYS ({})", keys.len()),
        &["KEY", "REASON"],
        rows,
        look,
    );
}

/// The same, for `--json`.
pub(super) fn bad_keys_json(keys: &[BadKey]) -> Value {
    keys.iter()
        .map(|b| json!({ "key": b.key, "reason": b.reason }))
        .collect()
}

/// What the group's records say of a member's session: registered means alive (the store
/// removes an expired session's keys); a draining one is leaving.
fn liveness(m: &MemberInfo) -> &'static str {
    if m.draining {
        "draining"
    } else {
        "alive"
    }
}

/// What the store says of the session's keepalives: `0.3s ago, expires in 1.7s`, or `-` when
/// the store cannot tell.
fn keepalive(m: &MemberInfo) -> String {
    match (m.since_keepalive, m.expires_in) {
        (Some(since), Some(left)) => {
            format!(
                "{} ago, expires in {}",
                fmt_duration(since),
                fmt_duration(left)
            )
        }
        _ => "-".to_string(),
    }
}

fn opt_member(m: Option<&MemberId>) -> String {
    m.map_or_else(|| "-".to_string(), |m| m.to_string())
}

/// The claim holder; a claim whose session is no longer registered is waiting to expire.
fn claim_holder(c: &ClaimInfo) -> String {
    if c.session_registered {
        c.member.to_string()
    } else {
        format!("{} (session gone)", c.member)
    }
}

fn summary(changes: &[String]) -> String {
    const MAX: usize = 12;
    if changes.is_empty() {
        return "none".to_string();
    }
    let mut s = changes
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if changes.len() > MAX {
        s.push_str(&format!(" and {} more", changes.len() - MAX));
    }
    s
}

fn style(text: &str, on: bool, code: &str) -> String {
    if on {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

pub(super) struct Row {
    pub marked: bool,
    pub cells: Vec<String>,
}

/// A titled table, columns padded to their widest cell (in characters). With marks, a first
/// column holds `*` for a changed row; with colour, changed rows are bold yellow.
pub(super) fn table(out: &mut String, title: &str, headers: &[&str], rows: Vec<Row>, look: &Look) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    if rows.is_empty() {
        out.push_str(&style("  (none)", look.color, DIM));
        out.push('\n');
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(&r.cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i + 1 < widths.len() {
                s.push_str(&" ".repeat(w - c.chars().count()));
            }
        }
        s.trim_end().to_string()
    };
    let marker = |on: bool| match (look.marks.is_some(), on) {
        (false, _) => "  ",
        (true, false) => "    ",
        (true, true) => "  * ",
    };
    out.push_str(marker(false));
    out.push_str(&line(&mut headers.iter().copied()));
    out.push('\n');
    for r in &rows {
        let text = format!(
            "{}{}",
            marker(r.marked),
            line(&mut r.cells.iter().map(String::as_str))
        );
        out.push_str(&style(&text, r.marked && look.color, BOLD_YELLOW));
        out.push('\n');
    }
}

/// How long ago a member joined, by this host's wall clock against the member's: `-` when the
/// member did not record it (an older version) or the clocks disagree.
fn session_age(joined_unix_ms: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    match joined_unix_ms.and_then(|j| now.checked_sub(u128::from(j))) {
        Some(ms) => {
            let s = ms / 1000;
            match s {
                0..=59 => format!("{s}s"),
                60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
                _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
            }
        }
        None => "-".to_string(),
    }
}
