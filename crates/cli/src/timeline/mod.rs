//! `rebalanser timeline`: members' JSON logs (`--log-format json`) in, one self-contained HTML
//! page out: a lane per resource with each lease as a bar in its owner's colour, the stopping
//! phase hatched, membership changes and faults marked, and every overlap (two members holding
//! one resource at once, judged from the grant..release intervals) in red and listed at the top.
//!
//! `parse` reads lines into events, `model` turns them into runs, intervals, markers, overlaps
//! and gaps, `render` and `svg` write the page.

mod model;
mod parse;
mod render;
mod svg;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

pub use model::Timeline;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  rebalanser --log-format json member run ... 2> m1.log     # each member logs JSON
  rebalanser timeline --from m1.log m2.log m3.log -o timeline.html

A file may hold one member's lines or several members' (each line names its member). Lines
that are not JSON are skipped and counted. A member whose log ends without \"member stopped\"
is shown as crashed there; the leases it held end at its last line.")]
pub struct TimelineArgs {
    /// The members' JSON log files.
    #[arg(long, value_name = "LOG", num_args = 1.., required = true)]
    from: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(
        short = 'o',
        long,
        value_name = "FILE",
        default_value = "timeline.html"
    )]
    out: PathBuf,
    /// The page's title.
    #[arg(long, default_value = "Rebalanser ownership timeline")]
    title: String,
}

pub fn run(a: TimelineArgs) -> ExitCode {
    match write(&a.from, &a.out, &a.title) {
        Ok(tl) => {
            println!("{}", report(&tl, &a.out));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rebalanser timeline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the logs, writes the page to `out`, returns what it drew.
pub fn write(logs: &[PathBuf], out: &Path, title: &str) -> anyhow::Result<Timeline> {
    let parsed = parse::read_files(logs)?;
    let tl = model::build(parsed);
    let html = render::page(&tl, title);
    std::fs::write(out, html).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(tl)
}

/// What the command prints: where the page is and what it found.
pub fn report(tl: &Timeline, out: &Path) -> String {
    let skipped: usize = tl.files.iter().map(|f| f.skipped).sum();
    let mut s = format!(
        "timeline: {} member(s), {} resource(s), {} lease(s), {} overlap(s), {} crash(es); \
         {} line(s) not JSON skipped\nwrote {}",
        tl.members.len(),
        tl.resources.len(),
        tl.intervals.len(),
        tl.overlaps.len(),
        tl.crashes().count(),
        skipped,
        out.display()
    );
    if tl.intervals.is_empty() {
        s.push_str(
            "\n(no \"lease granted\" line found: were the members run with --log-format json, \
             and does RUST_LOG let their info lines through?)",
        );
    }
    for o in &tl.overlaps {
        s.push_str(&format!(
            "\nOVERLAP: {} held by {} and {} at once for {}",
            o.resource,
            tl.members[tl.intervals[o.a].member].name,
            tl.members[tl.intervals[o.b].member].name,
            render::secs(o.to - o.from)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_came_from_logs() {
        let nasty = r#"<script>alert(1)</script>&"'"#;
        let json_id = serde_json::to_string(nasty).expect("a string serializes");
        let line = |s: u32, m: &str, msg: &str, extra: &str| {
            format!(
                r#"{{"timestamp":"2026-12-05T18:00:0{s}Z","level":"INFO","fields":{{"message":"{msg}"{extra}}},"span":{{"group":"g","member":{m},"name":"member"}}}}"#
            )
        };
        let member = serde_json::to_string("m<1>&").expect("a string serializes");
        let text = [
            line(1, &member, "member starting", ""),
            line(
                2,
                &member,
                "lease granted",
                &format!(r#","resource":{json_id},"token":"7<8""#),
            ),
            line(
                3,
                &member,
                "lease revoked",
                &format!(r#","resource":{json_id},"reason":"x\"y""#),
            ),
            line(
                4,
                &member,
                "lease released",
                &format!(r#","resource":{json_id},"token":"7<8""#),
            ),
            line(5, &member, "member stopped", ""),
        ]
        .join("\n");
        let tl = model::build(parse::parse_text(&text));
        assert_eq!(tl.intervals.len(), 1);
        let html = render::page(&tl, "t<i>tle");
        assert!(!html.contains("<script>alert"), "unescaped resource id");
        assert!(!html.contains("m<1>"), "unescaped member name");
        assert!(!html.contains("7<8"), "unescaped token");
        assert!(!html.contains("t<i>tle"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"));
        assert!(html.contains("m&lt;1&gt;&amp;"));
        // The page's own markup is intact: exactly its two scripts, no stray tags from logs.
        assert_eq!(html.matches("<script>").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
        // Self-contained: nothing is loaded from anywhere.
        assert!(!html.contains(" src=") && !html.contains("<link") && !html.contains("@import"));
    }
}
