//! The page: one self-contained HTML file (inline CSS, SVG and script; nothing fetched), with
//! the summary at the top, the legend, and the drawing ([`super::svg`]). Every string that
//! came from a log goes through [`esc`]: resource ids and member names are anybody's text.

use std::fmt::Write as _;

use super::model::{EndKind, Interval, MarkerKind, Timeline};
use super::parse::{clock_of, shown, Micros};
use super::svg;

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// Owner colours, distinct from each other and from the overlap red, the fault black and the
/// lanes' greys. Past these, hues are spread by the golden angle.
const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#393b79", "#637939", "#7b4173", "#3182bd",
];

/// The colour of member `i` as `#rrggbb`.
pub fn colour(i: usize) -> String {
    if let Some(c) = PALETTE.get(i) {
        return (*c).to_string();
    }
    let hue = (i as f64 * 137.508) % 360.0;
    let (r, g, b) = hsl(hue, 0.55, 0.5);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn hsl(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let v = |f: f64| ((f + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (v(r), v(g), v(b))
}

/// Text as HTML/XML text or attribute value: `&`, `<`, `>`, both quotes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML text (the SVG is parsed as such by
            // some viewers); a log's text may hold any.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A duration in seconds, for people.
pub fn secs(d: Micros) -> String {
    format!("{:.3} s", d as f64 / 1e6)
}

/// `+1.234 s (18:10:54.123)`: relative to the timeline's start, and the UTC clock.
pub fn at(tl: &Timeline, t: Micros) -> String {
    format!("+{} ({})", secs(t - tl.t0), clock_of(t))
}

/// How a lease is described on hover and in the summary.
pub fn describe(tl: &Timeline, iv: &Interval) -> String {
    let mut s = format!(
        "{} held {} (token {}{}) from {}",
        tl.members[iv.member].name,
        iv.resource,
        iv.token,
        iv.epoch
            .as_ref()
            .map(|e| format!(", epoch {e}"))
            .unwrap_or_default(),
        at(tl, iv.start)
    );
    if let Some(r) = &iv.revoked {
        let _ = write!(s, "; revoked at {} ({}", at(tl, r.t), r.reason);
        if let Some(to) = &r.to {
            let _ = write!(s, ", to {to}");
        }
        s.push(')');
    }
    let end = match iv.how {
        EndKind::Released => "released",
        EndKind::Crashed => "its log ended (crash; access ended then at the earliest)",
        EndKind::StoppedHolding => "the member stopped without reporting a release",
        EndKind::Regranted => "granted again without a release",
    };
    let _ = write!(
        s,
        "; {end} at {}; held {}",
        at(tl, iv.end),
        secs(iv.end - iv.start)
    );
    s
}

pub fn page(tl: &Timeline, title: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n\
         <script>window.onerror=function(m,s,l){{document.documentElement.setAttribute(\
         'data-js-error',String(m)+' (line '+l+')');}};</script>\n\
         <style>\n{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    h.push_str(&summary(tl));
    h.push_str(&legend(tl));
    h.push_str(&svg::drawing(tl));
    h.push_str(&files(tl));
    let _ = write!(h, "<script>\n{JS}</script>\n</body>\n</html>\n");
    h
}

fn summary(tl: &Timeline) -> String {
    let mut h = String::from("<section id=\"summary\">\n");
    let _ = writeln!(
        h,
        "<p>{} member(s), {} resource(s), {} lease(s) from {} to {} UTC ({}).</p>",
        tl.members.len(),
        tl.resources.len(),
        tl.intervals.len(),
        clock_of(tl.t0),
        clock_of(tl.t1),
        secs(tl.t1 - tl.t0)
    );
    if tl.overlaps.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"ok\" id=\"overlaps\" data-overlaps=\"0\">No overlap: no resource was \
             held by two members at once (judged from each lease's grant&#8230;release \
             interval).</p>"
        );
    } else {
        let _ = writeln!(
            h,
            "<div class=\"bad\" id=\"overlaps\" data-overlaps=\"{n}\"><p><strong>{n} \
             OVERLAP(S): a resource held by two members at once</strong> (red on the \
             lanes)</p>\n<ul>",
            n = tl.overlaps.len()
        );
        for o in &tl.overlaps {
            let (a, b) = (&tl.intervals[o.a], &tl.intervals[o.b]);
            let _ = writeln!(
                h,
                "<li>{}: {} (token {}) and {} (token {}) for {} from {}</li>",
                esc(&o.resource),
                esc(&tl.members[a.member].name),
                esc(&a.token),
                esc(&tl.members[b.member].name),
                esc(&b.token),
                secs(o.to - o.from),
                esc(&at(tl, o.from))
            );
        }
        h.push_str("</ul></div>\n");
    }
    let crashes: Vec<String> = tl
        .crashes()
        .map(|m| format!("{} at {}", m.label, at(tl, m.t)))
        .collect();
    let faults = |k: MarkerKind| tl.markers.iter().filter(|m| m.kind == k).count();
    let mut notes = Vec::new();
    if !crashes.is_empty() {
        notes.push(format!("Crashes: {}.", esc(&crashes.join("; "))));
    }
    let (doubt, lost, errors) = (
        faults(MarkerKind::InDoubt),
        faults(MarkerKind::SessionLost),
        faults(MarkerKind::Error),
    );
    if doubt + lost + errors > 0 {
        notes.push(format!(
            "Sessions in doubt: {doubt}; sessions lost: {lost}; error lines: {errors}."
        ));
    }
    let rebalances = faults(MarkerKind::Rebalanced);
    let membership = faults(MarkerKind::Membership) + faults(MarkerKind::Expired);
    notes.push(format!(
        "Rebalances: {rebalances}; membership changes seen by a coordinator: {membership}."
    ));
    if let Some(g) = tl.gaps.iter().max_by_key(|g| g.to - g.from) {
        notes.push(format!(
            "Handover gaps (a resource held by nobody between two holders): {}; the longest \
             {} on {} from {}.",
            tl.gaps.len(),
            secs(g.to - g.from),
            esc(&g.resource),
            esc(&at(tl, g.from))
        ));
    }
    for n in notes {
        let _ = writeln!(h, "<p>{n}</p>");
    }
    h.push_str("</section>\n");
    h
}

fn legend(tl: &Timeline) -> String {
    let mut h = String::from("<section id=\"legend\">\n<div class=\"owners\">Owners:");
    for (i, m) in tl.members.iter().enumerate() {
        let c = colour(i);
        let _ = write!(
            h,
            " <span class=\"owner\" data-owner=\"{i}\"><svg width=\"14\" height=\"14\">\
             <rect class=\"swatch\" data-colour=\"{c}\" width=\"14\" height=\"14\" \
             fill=\"{c}\"/></svg> {}</span>",
            esc(&m.name)
        );
    }
    h.push_str("</div>\n<div class=\"keys\">");
    h.push_str(&svg::keys());
    h.push_str("</div>\n</section>\n");
    h
}

fn files(tl: &Timeline) -> String {
    let mut h = String::from("<section id=\"files\"><p>Read:</p><ul>\n");
    for f in &tl.files {
        let _ = writeln!(
            h,
            "<li>{}: {} line(s), {} not JSON (skipped), {} of no member</li>",
            esc(&shown(&f.path)),
            f.lines,
            f.skipped,
            f.unattributed
        );
    }
    h.push_str("</ul></section>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<a href="x">&'b'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;b&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{1}b"), "a\u{fffd}b");
    }

    #[test]
    fn colours_are_distinct_hex() {
        let all: std::collections::BTreeSet<String> = (0..40).map(colour).collect();
        assert_eq!(all.len(), 40);
        assert!(all.iter().all(|c| c.len() == 7
            && c.starts_with('#')
            && c[1..].bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
