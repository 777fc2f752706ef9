//! The drawing: a time axis, the group's row (rebalances, membership changes), a row per
//! member (its runs and what happened to it), then a lane per resource with a bar per lease in
//! the owner's colour, hatched from revoke to release (the stopping phase), overlaps in red,
//! handover gaps outlined. Every bar and marker has a `<title>`: the browser's hover text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{EndKind, MarkerKind, Row, RunEnd, Timeline};
use super::parse::Micros;
use super::render::{at, colour, describe, esc, secs};

const WIDTH: f64 = 1400.0;
const LABEL: f64 = 200.0;
const RIGHT: f64 = 24.0;
const AXIS: f64 = 30.0;
const ROW: f64 = 20.0;
const LANE: f64 = 24.0;
const BAR: f64 = 18.0;
const SEP: f64 = 14.0;
/// Room between the labels and the first instant, so that its markers stay clear of them.
const PAD: f64 = 8.0;
/// The least distance between two markers' centres in one row.
const MARK_GAP: f64 = 9.0;

struct Scale {
    t0: Micros,
    span: f64,
}

impl Scale {
    fn x(&self, t: Micros) -> f64 {
        LABEL + PAD + (t - self.t0) as f64 / self.span * (WIDTH - LABEL - PAD - RIGHT)
    }
}

pub fn drawing(tl: &Timeline) -> String {
    let sc = Scale {
        t0: tl.t0,
        span: ((tl.t1 - tl.t0).max(1)) as f64,
    };
    let members_top = AXIS + ROW;
    let lanes_top = members_top + ROW * tl.members.len() as f64 + SEP;
    let height = lanes_top + LANE * tl.resources.len() as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"tl\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" data-x0=\"{}\" \
         data-pw=\"{}\" data-span=\"{}\">",
        LABEL + PAD,
        WIDTH - LABEL - PAD - RIGHT,
        sc.span
    );
    s.push_str(
        "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"2.5\" height=\"6\" fill=\"#fff\" \
         fill-opacity=\"0.7\"/></pattern></defs>\n",
    );
    axis(&mut s, tl, &sc, height);
    // Row labels and backgrounds.
    row_label(&mut s, AXIS, ROW, "group (coordinators)", "row");
    for (i, m) in tl.members.iter().enumerate() {
        let y = members_top + ROW * i as f64;
        row_label(&mut s, y, ROW, &format!("member {}", m.name), "row");
        for r in &m.runs {
            let (x0, x1) = (sc.x(r.start), sc.x(r.end));
            let how = match r.how {
                RunEnd::Stopped => "stopped",
                RunEnd::Crashed => "crashed (its log ends without \"member stopped\")",
            };
            let _ = writeln!(
                s,
                "<g class=\"run\"><line x1=\"{x0:.1}\" x2=\"{:.1}\" y1=\"{y2:.1}\" y2=\"{y2:.1}\" \
                 stroke=\"{}\"/><title>{}</title></g>",
                x1.max(x0 + 1.0),
                colour(i),
                esc(&format!(
                    "{} ran from {} to {}: {how}",
                    m.name,
                    at(tl, r.start),
                    at(tl, r.end)
                )),
                y2 = y + ROW / 2.0
            );
        }
    }
    for (k, r) in tl.resources.iter().enumerate() {
        row_label(&mut s, lanes_top + LANE * k as f64, LANE, r, "lane");
    }
    let lanes: BTreeMap<&str, usize> = tl
        .resources
        .iter()
        .enumerate()
        .map(|(k, r)| (r.as_str(), k))
        .collect();
    // Every interval's resource has a lane: the lanes are made from the intervals.
    let lane_of = |r: &str| lanes.get(r).copied().unwrap_or(0);
    let lane_y = |k: usize| lanes_top + LANE * k as f64 + (LANE - BAR) / 2.0;
    for g in &tl.gaps {
        let (x0, x1) = (sc.x(g.from), sc.x(g.to));
        let _ = writeln!(
            s,
            "<g class=\"gap\"><rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{BAR}\"/>\
             <title>{}</title></g>",
            lane_y(lane_of(&g.resource)),
            (x1 - x0).max(1.0),
            esc(&format!(
                "{}: held by nobody for {} from {}",
                g.resource,
                secs(g.to - g.from),
                at(tl, g.from)
            ))
        );
    }
    for iv in &tl.intervals {
        let y = lane_y(lane_of(&iv.resource));
        let c = colour(iv.member);
        let x0 = sc.x(iv.start);
        let x1 = sc.x(iv.end).max(x0 + 1.0);
        let cut = iv.revoked.as_ref().map_or(x1, |r| sc.x(r.t).clamp(x0, x1));
        let _ = write!(
            s,
            "<g class=\"bar\" data-owner=\"{}\"><rect x=\"{x0:.1}\" y=\"{y:.1}\" \
             width=\"{:.1}\" height=\"{BAR}\" fill=\"{c}\"/>",
            iv.member,
            (cut - x0).max(if iv.revoked.is_some() { 0.0 } else { 1.0 })
        );
        if iv.revoked.is_some() {
            let _ = write!(
                s,
                "<rect x=\"{cut:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR}\" \
                 fill=\"{c}\" fill-opacity=\"0.55\"/><rect class=\"stopping\" x=\"{cut:.1}\" \
                 y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR}\" fill=\"url(#hatch)\"/>",
                w = (x1 - cut).max(1.0)
            );
        }
        if iv.how == EndKind::Crashed {
            cross(&mut s, x1, y + BAR / 2.0, 4.0, "crash-end");
        }
        token_label(&mut s, &iv.token, x0, cut, y);
        let _ = writeln!(s, "<title>{}</title></g>", esc(&describe(tl, iv)));
    }
    for o in &tl.overlaps {
        let y = lane_y(lane_of(&o.resource));
        let (x0, x1) = (sc.x(o.from), sc.x(o.to));
        let (a, b) = (&tl.intervals[o.a], &tl.intervals[o.b]);
        let _ = writeln!(
            s,
            "<g class=\"overlap\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
             height=\"{}\"/><title>{}</title></g>",
            x0 - 1.0,
            y - 2.0,
            (x1 - x0).max(1.0) + 2.0,
            BAR + 4.0,
            esc(&format!(
                "OVERLAP on {} for {}: {} | {}",
                o.resource,
                secs(o.to - o.from),
                describe(tl, a),
                describe(tl, b)
            ))
        );
    }
    let lanes_bottom = lanes_top + LANE * tl.resources.len() as f64;
    // Markers of one row closer than a symbol's width are nudged right, so each stays visible
    // (their hover text has the exact time; a fault's guide line is drawn at it).
    let mut last_x: BTreeMap<Option<usize>, f64> = BTreeMap::new();
    for m in &tl.markers {
        let t_x = sc.x(m.t);
        let (row, y) = match m.row {
            Row::Group => (None, AXIS + ROW / 2.0),
            Row::Member(i) => (Some(i), members_top + ROW * i as f64 + ROW / 2.0),
        };
        let x = last_x.get(&row).map_or(t_x, |&l| t_x.max(l + MARK_GAP));
        last_x.insert(row, x);
        if m.kind.fault() {
            let x = t_x;
            let _ = writeln!(
                s,
                "<line class=\"guide\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y:.1}\" \
                 y2=\"{lanes_bottom:.1}\"/>"
            );
        }
        let _ = write!(s, "<g class=\"mk\">");
        symbol(&mut s, m.kind, x, y);
        let _ = writeln!(s, "<title>{}</title></g>", esc(&m.detail));
    }
    s.push_str(
        "<line id=\"cursor\" x1=\"0\" x2=\"0\" y1=\"0\" y2=\"100%\" style=\"display:none\"/>\
         <text id=\"cursor-text\" x=\"0\" y=\"12\"></text>\n</svg>\n",
    );
    s
}

fn axis(s: &mut String, tl: &Timeline, sc: &Scale, height: f64) {
    let span_s = sc.span / 1e6;
    let step = [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|st| span_s / st <= 12.0)
    .unwrap_or(7200.0);
    let mut k = 0u32;
    loop {
        let off = f64::from(k) * step;
        if off > span_s + 1e-9 {
            break;
        }
        let x = sc.x(tl.t0 + (off * 1e6) as Micros);
        let _ = writeln!(
            s,
            "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{height:.1}\"/>\
             <text class=\"ticklabel\" x=\"{x:.1}\" y=\"{:.1}\">+{off:.prec$} s</text>",
            AXIS - 6.0,
            AXIS - 10.0,
            prec = if step < 0.1 {
                2
            } else if step < 1.0 {
                1
            } else {
                0
            }
        );
        k += 1;
    }
}

fn row_label(s: &mut String, y: f64, h: f64, text: &str, class: &str) {
    // Long ids are cut on the drawing; the hover text has all of it.
    let short: String = if text.chars().count() > 30 {
        text.chars().take(29).chain(['\u{2026}']).collect()
    } else {
        text.to_string()
    };
    let _ = writeln!(
        s,
        "<rect class=\"{class}\" x=\"{LABEL}\" y=\"{y:.1}\" width=\"{}\" height=\"{h}\"/>\
         <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">{}<title>{}</title></text>",
        WIDTH - LABEL - RIGHT,
        LABEL - 6.0,
        y + h / 2.0 + 4.0,
        esc(&short),
        esc(text)
    );
}

/// The token on its bar, when it fits (about 6.5 px a digit); else its last digits.
fn token_label(s: &mut String, token: &str, x0: f64, x1: f64, y: f64) {
    let room = x1 - x0 - 6.0;
    let fits = |t: &str| t.chars().count() as f64 * 6.5 <= room;
    let text = if fits(token) {
        token.to_string()
    } else {
        let n = token.chars().count();
        let tail: String = token.chars().skip(n.saturating_sub(5)).collect();
        let t = format!("\u{2026}{tail}");
        if !fits(&t) {
            return;
        }
        t
    };
    let _ = write!(
        s,
        "<text class=\"tok\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        x0 + 3.0,
        y + BAR / 2.0 + 4.0,
        esc(&text)
    );
}

fn cross(s: &mut String, x: f64, y: f64, r: f64, class: &str) {
    let _ = write!(
        s,
        "<path class=\"{class}\" d=\"M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}\"/>",
        x - r,
        y - r,
        x + r,
        y + r,
        x - r,
        y + r,
        x + r,
        y - r
    );
}

/// Each kind of marker's shape (and CSS class, which gives its colour).
fn symbol(s: &mut String, k: MarkerKind, x: f64, y: f64) {
    let class = class(k);
    let _ = match k {
        MarkerKind::Starting
        | MarkerKind::Joined
        | MarkerKind::Membership
        | MarkerKind::Expired => write!(
            s,
            "<circle class=\"{class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4.5\"/>"
        ),
        MarkerKind::BecameCoordinator | MarkerKind::SteppedDown => write!(
            s,
            "<path class=\"{class}\" d=\"M{x:.1} {:.1}l6 6l-6 6l-6 -6z\"/>",
            y - 6.0
        ),
        MarkerKind::Rebalanced | MarkerKind::Resumed => write!(
            s,
            "<path class=\"{class}\" d=\"M{x:.1} {:.1}l6 11h-12z\"/>",
            y - 6.0
        ),
        MarkerKind::InDoubt => write!(
            s,
            "<path class=\"{class}\" d=\"M{x:.1} {:.1}l6 -11h-12z\"/>",
            y + 6.0
        ),
        MarkerKind::SessionLost | MarkerKind::Left | MarkerKind::Stopped => write!(
            s,
            "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\"/>",
            x - 4.5,
            y - 4.5
        ),
        MarkerKind::Crash | MarkerKind::Error => {
            cross(s, x, y, 6.0, class);
            Ok(())
        }
    };
}

fn class(k: MarkerKind) -> &'static str {
    match k {
        MarkerKind::Starting => "m-starting",
        MarkerKind::Joined => "m-joined",
        MarkerKind::Membership => "m-membership",
        MarkerKind::Expired => "m-expired",
        MarkerKind::BecameCoordinator => "m-coord",
        MarkerKind::SteppedDown => "m-stepdown",
        MarkerKind::Rebalanced => "m-rebalanced",
        MarkerKind::Resumed => "m-resumed",
        MarkerKind::InDoubt => "m-doubt",
        MarkerKind::SessionLost => "m-lost",
        MarkerKind::Left => "m-left",
        MarkerKind::Stopped => "m-stopped",
        MarkerKind::Crash => "m-crash",
        MarkerKind::Error => "m-error",
    }
}

/// The legend's keys: each style and marker, drawn as on the lanes.
pub fn keys() -> String {
    let mut s = String::new();
    let item = |s: &mut String, draw: &dyn Fn(&mut String), text: &str| {
        s.push_str("<span class=\"key\"><svg width=\"30\" height=\"18\">");
        draw(s);
        let _ = write!(s, "</svg> {text}</span>");
    };
    item(
        &mut s,
        &|s| s.push_str("<rect x=\"1\" y=\"2\" width=\"28\" height=\"14\" fill=\"#777\"/>"),
        "holding (grant &#8594; revoke)",
    );
    item(
        &mut s,
        &|s| {
            s.push_str(
                "<rect x=\"1\" y=\"2\" width=\"28\" height=\"14\" fill=\"#777\" \
                 fill-opacity=\"0.55\"/><rect x=\"1\" y=\"2\" width=\"28\" height=\"14\" \
                 fill=\"url(#hatch)\"/>",
            )
        },
        "stopping (revoke &#8594; release)",
    );
    item(
        &mut s,
        &|s| s.push_str("<rect class=\"gapkey\" x=\"1\" y=\"2\" width=\"28\" height=\"14\"/>"),
        "held by nobody (handover gap)",
    );
    item(
        &mut s,
        &|s| s.push_str("<rect class=\"overlapkey\" x=\"1\" y=\"1\" width=\"28\" height=\"16\"/>"),
        "OVERLAP (two holders)",
    );
    let marks = [
        (MarkerKind::Starting, "member starting"),
        (MarkerKind::Joined, "joined"),
        (MarkerKind::Membership, "member joined/left (coordinator)"),
        (MarkerKind::Expired, "member expired (coordinator)"),
        (MarkerKind::Rebalanced, "rebalanced"),
        (MarkerKind::BecameCoordinator, "became coordinator"),
        (MarkerKind::SteppedDown, "stepped down"),
        (MarkerKind::InDoubt, "session in doubt"),
        (MarkerKind::Resumed, "resumed"),
        (MarkerKind::SessionLost, "session lost"),
        (MarkerKind::Left, "left"),
        (MarkerKind::Stopped, "stopped"),
        (MarkerKind::Crash, "crash (log ends)"),
        (MarkerKind::Error, "error line"),
    ];
    for (k, text) in marks {
        item(&mut s, &|s| symbol(s, k, 15.0, 9.0), text);
    }
    s
}
