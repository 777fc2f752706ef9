//! From events to what the page draws: each member's runs (start to stop, or to the last line
//! of a log that ends without "member stopped": a crash), each lease as an interval from grant
//! to release (with its revoke, the start of the stopping phase), the markers, and what is
//! judged from the intervals: overlaps (two members holding one resource at once) and gaps
//! (a resource held by nobody between two holders).
//!
//! A crashed member's leases end at its log's last line: the process was alive then, and its
//! guards kill its children as soon as it dies, so that line is the best estimate the logs
//! give (its guards' "the member is gone" lines, when they made it, are that moment).

use std::collections::{BTreeMap, BTreeSet};

use super::parse::{clock_of, Event, FileStats, Kind, Micros, Parsed, Who};

#[derive(Clone, Debug)]
pub struct Member {
    /// As the page names it: the member's name, or `group/name` when the logs hold several
    /// groups.
    pub name: String,
    pub runs: Vec<Run>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// "member stopped".
    Stopped,
    /// The log ends (or the member starts again) without "member stopped".
    Crashed,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub start: Micros,
    pub end: Micros,
    pub how: RunEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// "lease released": the end of the member's access.
    Released,
    /// The member's log ended while it held the lease.
    Crashed,
    /// "member stopped" with the lease never reported released.
    StoppedHolding,
    /// Granted again without a release in between.
    Regranted,
}

#[derive(Clone, Debug)]
pub struct Revoke {
    pub t: Micros,
    pub reason: String,
    pub to: Option<String>,
}

/// One lease: a member's access to a resource, from grant to release.
#[derive(Clone, Debug)]
pub struct Interval {
    pub member: usize,
    pub resource: String,
    pub token: String,
    pub epoch: Option<String>,
    pub start: Micros,
    pub revoked: Option<Revoke>,
    pub end: Micros,
    pub how: EndKind,
}

/// Where a marker is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// The group's row: rebalances and membership changes (as a coordinator logged them).
    Group,
    Member(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerKind {
    Starting,
    Joined,
    BecameCoordinator,
    SteppedDown,
    Rebalanced,
    Membership,
    /// A coordinator saw a member's session expire.
    Expired,
    InDoubt,
    Resumed,
    SessionLost,
    Left,
    Stopped,
    Crash,
    Error,
}

impl MarkerKind {
    /// Faults are drawn in the fault colour, with a guide line across the lanes.
    pub fn fault(self) -> bool {
        matches!(
            self,
            MarkerKind::InDoubt
                | MarkerKind::SessionLost
                | MarkerKind::Crash
                | MarkerKind::Error
                | MarkerKind::Expired
        )
    }
}

#[derive(Clone, Debug)]
pub struct Marker {
    pub t: Micros,
    pub row: Row,
    pub kind: MarkerKind,
    /// Short text (the legend's and the summary's words).
    pub label: String,
    /// Everything the line said: hover details.
    pub detail: String,
}

/// Two members holding one resource at once: intervals `a` and `b` (indices into
/// [`Timeline::intervals`]) share `[from, to)`.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub resource: String,
    pub a: usize,
    pub b: usize,
    pub from: Micros,
    pub to: Micros,
}

/// A resource held by nobody between two holders.
#[derive(Clone, Debug)]
pub struct Gap {
    pub resource: String,
    pub from: Micros,
    pub to: Micros,
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub t0: Micros,
    pub t1: Micros,
    pub members: Vec<Member>,
    pub resources: Vec<String>,
    pub intervals: Vec<Interval>,
    pub markers: Vec<Marker>,
    pub overlaps: Vec<Overlap>,
    pub gaps: Vec<Gap>,
    pub files: Vec<FileStats>,
}

impl Timeline {
    pub fn crashes(&self) -> impl Iterator<Item = &Marker> {
        self.markers.iter().filter(|m| m.kind == MarkerKind::Crash)
    }
}

/// What one member's log builds while it is read.
struct MemberBuild<'a> {
    idx: usize,
    name: &'a str,
    /// The files' names, for the hover text's `[file:line]`.
    files: &'a [String],
    run: Option<(Micros, Micros)>,
    open: BTreeMap<String, usize>,
}

pub fn build(parsed: Parsed) -> Timeline {
    let files: Vec<String> = parsed
        .files
        .iter()
        .map(|f| {
            f.path.file_name().map_or_else(
                || f.path.display().to_string(),
                |n| n.to_string_lossy().into(),
            )
        })
        .collect();
    let mut by_member: BTreeMap<Who, Vec<&Event>> = BTreeMap::new();
    for e in &parsed.events {
        by_member.entry(e.who.clone()).or_default().push(e);
    }
    let several_groups = parsed
        .events
        .iter()
        .map(|e| e.who.group.as_str())
        .collect::<BTreeSet<_>>()
        .len()
        > 1;
    let mut tl = Timeline {
        t0: parsed.events.iter().map(|e| e.t).min().unwrap_or(0),
        t1: parsed.events.iter().map(|e| e.t).max().unwrap_or(0),
        ..Timeline::default()
    };
    for (who, mut events) in by_member {
        // One process writes its lines in order; a stable sort keeps that order for equal
        // times and merges a member's lines spread over several files.
        events.sort_by_key(|e| e.t);
        let name = if several_groups {
            format!("{}/{}", who.group, who.member)
        } else {
            who.member.clone()
        };
        let idx = tl.members.len();
        tl.members.push(Member {
            name: name.clone(),
            runs: Vec::new(),
        });
        let mut b = MemberBuild {
            idx,
            name: &name,
            files: &files,
            run: None,
            open: BTreeMap::new(),
        };
        for e in events {
            b.event(&mut tl, e);
        }
        if let Some((_, last)) = b.run {
            b.crash(&mut tl, last, "its log ends without \"member stopped\"");
        }
    }
    tl.resources = tl
        .intervals
        .iter()
        .map(|i| i.resource.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    tl.markers.sort_by_key(|m| m.t);
    dedupe_expiries(&mut tl.markers);
    judge(&mut tl);
    tl.files = parsed.files;
    tl
}

impl MemberBuild<'_> {
    fn event(&mut self, tl: &mut Timeline, e: &Event) {
        if e.kind == Kind::Starting {
            if let Some((_, last)) = self.run {
                self.crash(tl, last, "it started again without \"member stopped\"");
            }
            self.run = Some((e.t, e.t));
        } else if e.kind == Kind::Other {
            // Proof of life of a running member only: `member run`'s own lines come before
            // "member starting" and after "member stopped" too.
            if let Some((_, last)) = &mut self.run {
                *last = e.t;
            }
            return;
        }
        let (_, last) = self.run.get_or_insert((e.t, e.t));
        *last = e.t;
        let row = Row::Member(self.idx);
        let mark = |kind: MarkerKind, row: Row, label: &str| Some((kind, row, label.to_string()));
        let m = match &e.kind {
            Kind::Starting => mark(MarkerKind::Starting, row, "member starting"),
            Kind::Joined => mark(MarkerKind::Joined, row, "joined"),
            Kind::BecameCoordinator => {
                mark(MarkerKind::BecameCoordinator, row, "became coordinator")
            }
            Kind::SteppedDown => mark(MarkerKind::SteppedDown, row, "stepped down"),
            Kind::Rebalanced => {
                let mut label = format!("rebalanced by {}", self.name);
                if let Some(r) = e.fields.get("reason").filter(|r| !r.is_empty()) {
                    label.push_str(&format!(" ({r})"));
                }
                if let Some(n) = e.fields.get("moved") {
                    label.push_str(&format!(": {n} moved"));
                }
                // The report names the members whose sessions expired: the moment their
                // resources were freed, which a coordinator elected after the crash never
                // logs as a membership line of its own.
                let expired = e.fields.get("expired").map_or("", String::as_str);
                for who in expired.split(',').filter(|w| !w.is_empty()) {
                    tl.markers.push(Marker {
                        t: e.t,
                        row: Row::Group,
                        kind: MarkerKind::Expired,
                        label: format!("member expired: {who}"),
                        detail: format!(
                            "{who}'s session expired (in the rebalance report of {} at {})",
                            self.name,
                            clock_of(e.t)
                        ),
                    });
                }
                mark(MarkerKind::Rebalanced, Row::Group, &label)
            }
            Kind::Membership(m) => {
                let subject = ["who", "member", "name"]
                    .iter()
                    .find_map(|k| e.fields.get(*k));
                let label = match subject {
                    Some(s) => format!("{m}: {s}"),
                    None => m.clone(),
                };
                let kind = if m.ends_with("expired") {
                    MarkerKind::Expired
                } else {
                    MarkerKind::Membership
                };
                mark(kind, Row::Group, &label)
            }
            Kind::InDoubt => mark(MarkerKind::InDoubt, row, "session in doubt"),
            Kind::Resumed => mark(MarkerKind::Resumed, row, "resumed"),
            Kind::SessionLost => mark(MarkerKind::SessionLost, row, "session lost"),
            Kind::Left => mark(MarkerKind::Left, row, "left the group"),
            Kind::Error => mark(MarkerKind::Error, row, "error"),
            Kind::Stopped => {
                self.close_all(tl, e.t, EndKind::StoppedHolding);
                if let Some((start, _)) = self.run.take() {
                    tl.members[self.idx].runs.push(Run {
                        start,
                        end: e.t,
                        how: RunEnd::Stopped,
                    });
                }
                mark(MarkerKind::Stopped, row, "member stopped")
            }
            Kind::Granted { resource, token } => {
                if let Some(i) = self.open.remove(resource) {
                    end(tl, i, e.t, EndKind::Regranted);
                }
                self.open.insert(resource.clone(), tl.intervals.len());
                tl.intervals.push(Interval {
                    member: self.idx,
                    resource: resource.clone(),
                    token: token.clone(),
                    epoch: e.fields.get("epoch").cloned(),
                    start: e.t,
                    revoked: None,
                    end: e.t,
                    how: EndKind::Released,
                });
                None
            }
            Kind::Revoked {
                resource,
                reason,
                to,
            } => {
                if let Some(&i) = self.open.get(resource) {
                    tl.intervals[i].revoked.get_or_insert(Revoke {
                        t: e.t,
                        reason: reason.clone(),
                        to: to.clone(),
                    });
                }
                None
            }
            Kind::Released { resource, .. } => {
                if let Some(i) = self.open.remove(resource) {
                    end(tl, i, e.t, EndKind::Released);
                }
                None
            }
            Kind::SessionOpened | Kind::Other => None,
        };
        if let Some((kind, row, label)) = m {
            tl.markers.push(Marker {
                t: e.t,
                row,
                kind,
                label,
                detail: detail(self.name, e, self.files),
            });
        }
    }

    /// The run ends at `last` without "member stopped".
    fn crash(&mut self, tl: &mut Timeline, last: Micros, why: &str) {
        self.close_all(tl, last, EndKind::Crashed);
        if let Some((start, _)) = self.run.take() {
            tl.members[self.idx].runs.push(Run {
                start,
                end: last,
                how: RunEnd::Crashed,
            });
        }
        tl.markers.push(Marker {
            t: last,
            row: Row::Member(self.idx),
            kind: MarkerKind::Crash,
            label: format!("{} crashed", self.name),
            detail: format!(
                "{}: crash: {why}; last line at {}",
                self.name,
                clock_of(last)
            ),
        });
    }

    fn close_all(&mut self, tl: &mut Timeline, t: Micros, how: EndKind) {
        for (_, i) in std::mem::take(&mut self.open) {
            end(tl, i, t, how);
        }
    }
}

/// One expiry is often told twice (a "member expired" line and the report of the rebalance it
/// caused): the first telling stays.
fn dedupe_expiries(markers: &mut Vec<Marker>) {
    const SAME: Micros = 10_000_000;
    let mut seen: BTreeMap<String, Micros> = BTreeMap::new();
    markers.retain(|m| {
        if m.kind != MarkerKind::Expired {
            return true;
        }
        let dup = seen.get(&m.label).is_some_and(|&t| m.t - t <= SAME);
        if !dup {
            seen.insert(m.label.clone(), m.t);
        }
        !dup
    });
}

fn end(tl: &mut Timeline, i: usize, t: Micros, how: EndKind) {
    let iv = &mut tl.intervals[i];
    iv.end = t.max(iv.start);
    iv.how = how;
}

/// `member at HH:MM:SS.mmm: message (k=v, ...) [file:line]`.
fn detail(member: &str, e: &Event, files: &[String]) -> String {
    let mut s = format!("{member} at {}: {}", clock_of(e.t), e.message);
    if !e.fields.is_empty() {
        let kv: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" ({})", kv.join(", ")));
    }
    if let Some(f) = files.get(e.file) {
        s.push_str(&format!(" [{f}:{}]", e.line));
    }
    s
}

/// Overlaps and gaps, per resource, from the intervals alone.
fn judge(tl: &mut Timeline) {
    let mut per: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, iv) in tl.intervals.iter().enumerate() {
        per.entry(iv.resource.as_str()).or_default().push(i);
    }
    let mut overlaps = Vec::new();
    let mut gaps = Vec::new();
    for (resource, mut ids) in per {
        ids.sort_by_key(|&i| (tl.intervals[i].start, tl.intervals[i].end));
        for (k, &a) in ids.iter().enumerate() {
            let ia = &tl.intervals[a];
            for &b in &ids[k + 1..] {
                let ib = &tl.intervals[b];
                if ib.start >= ia.end {
                    break;
                }
                if ib.member != ia.member {
                    overlaps.push(Overlap {
                        resource: resource.to_string(),
                        a,
                        b,
                        from: ib.start,
                        to: ia.end.min(ib.end),
                    });
                }
            }
        }
        let mut covered = tl.intervals[ids[0]].end;
        for &i in &ids[1..] {
            let iv = &tl.intervals[i];
            if iv.start > covered {
                gaps.push(Gap {
                    resource: resource.to_string(),
                    from: covered,
                    to: iv.start,
                });
            }
            covered = covered.max(iv.end);
        }
    }
    tl.overlaps = overlaps;
    tl.gaps = gaps;
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_text;
    use super::*;

    /// One JSON line of member `m` (span with group g) at second `s` of a minute.
    fn line(s: f64, m: &str, msg: &str, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",{extra}")
        };
        format!(
            r#"{{"timestamp":"2026-12-05T18:00:{s:09.6}Z","level":"INFO","fields":{{"message":"{msg}"{extra}}},"target":"rebalanser::driver","span":{{"group":"g","member":"{m}","name":"member"}},"spans":[{{"group":"g","member":"{m}","name":"member"}}]}}"#
        )
    }

    fn grant(s: f64, m: &str, r: &str, tok: u32) -> String {
        line(
            s,
            m,
            "lease granted",
            &format!(r#""resource":"{r}","token":"{tok}","epoch":1"#),
        )
    }

    fn revoke(s: f64, m: &str, r: &str) -> String {
        line(
            s,
            m,
            "lease revoked",
            &format!(r#""resource":"{r}","reason":"reassigned""#),
        )
    }

    fn release(s: f64, m: &str, r: &str, tok: u32) -> String {
        line(
            s,
            m,
            "lease released",
            &format!(r#""resource":"{r}","token":"{tok}""#),
        )
    }

    fn build_from(lines: &[String]) -> Timeline {
        build(parse_text(&lines.join("\n")))
    }

    #[test]
    fn a_clean_handover_is_no_overlap() {
        let tl = build_from(&[
            line(1.0, "a", "member starting", ""),
            grant(1.1, "a", "r", 1),
            line(2.0, "b", "member starting", ""),
            revoke(3.0, "a", "r"),
            release(3.5, "a", "r", 1),
            grant(3.6, "b", "r", 2),
            line(5.0, "a", "member stopped", ""),
            release(6.0, "b", "r", 2),
            line(6.1, "b", "member stopped", ""),
        ]);
        assert!(tl.overlaps.is_empty(), "{:?}", tl.overlaps);
        assert_eq!(tl.intervals.len(), 2);
        let a = &tl.intervals[0];
        assert_eq!((a.start, a.end), (tl.t0 + 100_000, tl.t0 + 2_500_000));
        assert_eq!(a.revoked.as_ref().map(|r| r.t), Some(tl.t0 + 2_000_000));
        assert_eq!(a.how, EndKind::Released);
        assert_eq!(tl.gaps.len(), 1);
        assert_eq!(tl.gaps[0].to - tl.gaps[0].from, 100_000);
        assert_eq!(tl.crashes().count(), 0);
        assert!(tl.members.iter().all(|m| m.runs.len() == 1));
    }

    #[test]
    fn a_deliberate_overlap_is_flagged() {
        let tl = build_from(&[
            line(1.0, "a", "member starting", ""),
            grant(1.1, "a", "r", 1),
            grant(1.1, "a", "other", 1),
            line(2.0, "b", "member starting", ""),
            // b is granted r while a still holds it: 0.5 s of double access.
            grant(3.0, "b", "r", 2),
            revoke(3.2, "a", "r"),
            release(3.5, "a", "r", 1),
            line(5.0, "a", "member stopped", ""),
            line(6.0, "b", "member stopped", ""),
        ]);
        assert_eq!(tl.overlaps.len(), 1, "{:?}", tl.overlaps);
        let o = &tl.overlaps[0];
        assert_eq!(o.resource, "r");
        assert_eq!(o.to - o.from, 500_000);
        let members: BTreeSet<usize> = [o.a, o.b].iter().map(|&i| tl.intervals[i].member).collect();
        assert_eq!(members.len(), 2);
        // b never released r: it ends with b's stop.
        assert_eq!(tl.intervals[o.b].how, EndKind::StoppedHolding);
    }

    #[test]
    fn a_log_without_member_stopped_is_a_crash_ending_at_its_last_line() {
        let guard_line = r#"{"timestamp":"2026-12-05T18:00:04.000000Z","level":"WARN","fields":{"message":"the member is gone","group":"g","member":"a"},"target":"rebalanser::member_run::guard"}"#;
        let tl = build_from(&[
            line(1.0, "a", "member starting", ""),
            grant(1.1, "a", "r", 1),
            guard_line.to_string(),
            line(2.0, "b", "member starting", ""),
            grant(6.0, "b", "r", 2),
            release(7.0, "b", "r", 2),
            line(7.1, "b", "member stopped", ""),
        ]);
        let crashes: Vec<&Marker> = tl.crashes().collect();
        assert_eq!(crashes.len(), 1);
        assert_eq!(crashes[0].row, Row::Member(0));
        assert_eq!(crashes[0].t, tl.t0 + 3_000_000);
        assert_eq!(tl.intervals[0].how, EndKind::Crashed);
        assert_eq!(tl.intervals[0].end, tl.t0 + 3_000_000);
        assert!(tl.overlaps.is_empty());
        assert_eq!(tl.members[0].runs[0].how, RunEnd::Crashed);
        assert_eq!(tl.members[1].runs[0].how, RunEnd::Stopped);
    }

    #[test]
    fn a_restart_without_stop_is_a_crash_and_membership_goes_to_the_group_row() {
        let tl = build_from(&[
            line(1.0, "a", "member starting", ""),
            grant(1.1, "a", "r", 1),
            line(2.0, "a", "member starting", ""),
            line(2.5, "a", "member joined", r#""who":"b","change":"joined""#),
            line(2.55, "a", "member expired", r#""who":"c""#),
            line(2.6, "a", "rebalanced", r#""moved":3,"expired":"c,d""#),
            line(3.0, "a", "member stopped", ""),
        ]);
        assert_eq!(tl.crashes().count(), 1);
        assert_eq!(tl.members[0].runs.len(), 2);
        let group: Vec<&str> = tl
            .markers
            .iter()
            .filter(|m| m.row == Row::Group)
            .map(|m| m.label.as_str())
            .collect();
        assert_eq!(
            group,
            [
                "member joined: b",
                "member expired: c",
                "member expired: d",
                "rebalanced by a: 3 moved"
            ]
        );
        assert!(tl.markers.iter().any(|m| m.kind == MarkerKind::Expired));
    }
}
