//! Reading members' JSON logs (tracing-subscriber's `json` format) into [`Event`]s.
//!
//! A line counts for the protocol only if it carries the library's `member` span (group,
//! member, epoch): `member run` repeats some of the same messages ("lease granted", "lease
//! released", "left the group") from its own code without that span, and counting both would
//! double every lease. Lines without the span but with `group` and `member` fields (the
//! `member run` process and its guards) still tell that the member's process was alive then,
//! which is all a crash's end is judged from.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Map, Value};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// Who wrote a line: the group and the member's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    pub group: String,
    pub member: String,
}

/// What a line says, for the lines the timeline draws.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Starting,
    SessionOpened,
    Joined,
    Granted {
        resource: String,
        token: String,
    },
    Revoked {
        resource: String,
        reason: String,
        to: Option<String>,
    },
    Released {
        resource: String,
        token: String,
    },
    BecameCoordinator,
    SteppedDown,
    Rebalanced,
    /// "member joined" / "member leaving" / "member left" / "member expired", as a
    /// coordinator saw it.
    Membership(String),
    InDoubt,
    Resumed,
    SessionLost,
    Left,
    Stopped,
    /// Any other error-level line of the member's span: shown as a fault.
    Error,
    /// Proof of life only: any other line of the member (its span's or `member run`'s).
    Other,
}

/// One line of a member's log.
#[derive(Clone, Debug)]
pub struct Event {
    pub t: Micros,
    pub who: Who,
    pub kind: Kind,
    pub message: String,
    /// The line's fields other than the message, as text: hover details.
    pub fields: BTreeMap<String, String>,
    /// Where it came from: index into [`Parsed::files`], line number (1-based).
    pub file: usize,
    pub line: usize,
}

/// Counts per file.
#[derive(Clone, Debug, Default)]
pub struct FileStats {
    pub path: PathBuf,
    pub lines: usize,
    /// Not JSON, or JSON without a timestamp.
    pub skipped: usize,
    /// JSON lines of nobody's member (other tools' lines, the store's own).
    pub unattributed: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// In input order: file by file, line by line.
    pub events: Vec<Event>,
    pub files: Vec<FileStats>,
}

#[cfg(test)]
impl Parsed {
    pub fn skipped(&self) -> usize {
        self.files.iter().map(|f| f.skipped).sum()
    }
}

/// Reads every file; a file that cannot be read is an error naming it.
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Parsed> {
    let mut p = Parsed::default();
    for path in paths {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot read log {}", path.display()))?;
        let mut stats = FileStats {
            path: path.clone(),
            ..FileStats::default()
        };
        let file = p.files.len();
        // Bytes, not `lines()`: one line of invalid UTF-8 (a child's output) is skipped, not
        // the end of the file.
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("cannot read log {}", path.display()))?;
            if n == 0 {
                break;
            }
            stats.lines += 1;
            let text = String::from_utf8_lossy(&buf);
            match parse_line(text.trim(), file, stats.lines) {
                Line::Event(e) => p.events.push(e),
                Line::Skipped => stats.skipped += 1,
                Line::Unattributed => stats.unattributed += 1,
            }
        }
        p.files.push(stats);
    }
    Ok(p)
}

/// Parses in-memory log text as if it were one file (tests, and callers holding the text).
#[cfg(test)]
pub fn parse_text(text: &str) -> Parsed {
    let mut stats = FileStats {
        path: PathBuf::from("<text>"),
        ..FileStats::default()
    };
    let mut events = Vec::new();
    for (i, l) in text.lines().enumerate() {
        stats.lines += 1;
        match parse_line(l.trim(), 0, i + 1) {
            Line::Event(e) => events.push(e),
            Line::Skipped => stats.skipped += 1,
            Line::Unattributed => stats.unattributed += 1,
        }
    }
    Parsed {
        events,
        files: vec![stats],
    }
}

enum Line {
    Event(Event),
    Skipped,
    Unattributed,
}

fn parse_line(text: &str, file: usize, line: usize) -> Line {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Line::Skipped;
    };
    let Some(t) = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
    else {
        return Line::Skipped;
    };
    let empty = Map::new();
    let fields = obj
        .get("fields")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let message = fields
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let level = obj.get("level").and_then(Value::as_str).unwrap_or_default();
    let span = member_span(&obj);
    let who = match span {
        Some(s) => Who {
            group: text_of(s.get("group")),
            member: text_of(s.get("member")),
        },
        None => match (fields.get("group"), fields.get("member")) {
            (Some(g), Some(m)) => Who {
                group: text_of(Some(g)),
                member: text_of(Some(m)),
            },
            _ => return Line::Unattributed,
        },
    };
    let kind = if span.is_some() {
        kind_of(&message, level, fields)
    } else {
        Kind::Other
    };
    let fields = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "message")
        .map(|(k, v)| (k.clone(), text_of(Some(v))))
        .collect();
    Line::Event(Event {
        t,
        who,
        kind,
        message,
        fields,
        file,
        line,
    })
}

/// The library's `member` span of a line: the innermost one named so.
fn member_span(obj: &Map<String, Value>) -> Option<&Map<String, Value>> {
    fn named(v: &Value) -> Option<&Map<String, Value>> {
        let m = v.as_object()?;
        (m.get("name").and_then(Value::as_str) == Some("member") && m.contains_key("member"))
            .then_some(m)
    }
    if let Some(s) = obj.get("span").and_then(named) {
        return Some(s);
    }
    obj.get("spans")?.as_array()?.iter().rev().find_map(named)
}

fn kind_of(message: &str, level: &str, f: &Map<String, Value>) -> Kind {
    let s = |k: &str| f.get(k).map(|v| text_of(Some(v)));
    let resource = || s("resource").unwrap_or_default();
    match message {
        "member starting" => Kind::Starting,
        "session opened" => Kind::SessionOpened,
        "joined" => Kind::Joined,
        "lease granted" => Kind::Granted {
            resource: resource(),
            token: s("token").unwrap_or_default(),
        },
        "lease revoked" => Kind::Revoked {
            resource: resource(),
            reason: s("reason").unwrap_or_default(),
            to: s("to"),
        },
        "lease released" => Kind::Released {
            resource: resource(),
            token: s("token").unwrap_or_default(),
        },
        "became coordinator" => Kind::BecameCoordinator,
        "stepped down as coordinator" => Kind::SteppedDown,
        "rebalanced" => Kind::Rebalanced,
        "session in doubt: every lease revoked" => Kind::InDoubt,
        "session proved alive again; resuming" => Kind::Resumed,
        "session lost; rejoining" => Kind::SessionLost,
        "left the group" => Kind::Left,
        "member stopped" => Kind::Stopped,
        m if ["joined", "leaving", "left", "expired"]
            .iter()
            .any(|c| m.strip_prefix("member ") == Some(*c)) =>
        {
            Kind::Membership(m.to_string())
        }
        _ if level.eq_ignore_ascii_case("error") => Kind::Error,
        _ => Kind::Other,
    }
}

/// A JSON value as display text: strings without their quotes.
fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (RFC 3339, what tracing-subscriber writes) as
/// microseconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<Micros> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Microseconds since the epoch as `HH:MM:SS.mmm` UTC (the page's absolute times).
pub fn clock_of(t: Micros) -> String {
    let secs = t.div_euclid(1_000_000);
    let ms = t.rem_euclid(1_000_000) / 1000;
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// The path as the page shows it.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            parse_timestamp("2026-12-05T18:10:54.437982Z"),
            Some(1_796_494_254_437_982)
        );
        // Nanoseconds are cut to microseconds; an offset is undone.
        assert_eq!(
            parse_timestamp("2026-12-05T19:10:54.437982999+01:00"),
            Some(1_796_494_254_437_982)
        );
        assert_eq!(
            parse_timestamp("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        for bad in [
            "",
            "2026-12-05",
            "2026-13-05T00:00:00Z",
            "2026-12-05T00:00:00",
            "x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(clock_of(1_796_494_254_437_982), "18:10:54.437");
    }

    #[test]
    fn only_the_member_span_counts_for_the_protocol() {
        let text = r#"not json at all
{"timestamp":"2026-12-05T18:10:54.562015Z","level":"INFO","fields":{"message":"lease granted","resource":"a<b&\"c","token":"17","epoch":1},"target":"rebalanser::driver","span":{"epoch":1,"group":"g","member":"m1","name":"member"},"spans":[{"epoch":1,"group":"g","member":"m1","name":"member"}]}
{"timestamp":"2026-12-05T18:10:54.562286Z","level":"INFO","fields":{"message":"lease granted","group":"g","member":"m1","resource":"a<b&\"c","token":"17"},"target":"rebalanser::member_run"}
{"timestamp":"2026-12-05T18:10:54.6Z","level":"INFO","fields":{"message":"creating a database"},"target":"rebalanser_sqlite"}
{"no timestamp":1}
"#;
        let p = parse_text(text);
        assert_eq!(p.skipped(), 2);
        assert_eq!(p.files[0].unattributed, 1);
        assert_eq!(p.events.len(), 2);
        assert_eq!(
            p.events[0].kind,
            Kind::Granted {
                resource: "a<b&\"c".into(),
                token: "17".into()
            }
        );
        assert_eq!(p.events[0].who.member, "m1");
        assert_eq!(
            p.events[0].fields.get("epoch").map(String::as_str),
            Some("1")
        );
        assert_eq!(p.events[1].kind, Kind::Other);
        assert_eq!(p.events[1].who.member, "m1");
    }
}
