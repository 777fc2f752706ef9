//! The terminal side of the demo: story lines, and the ownership table, redrawn in place while
//! a step is under way when stdout is a terminal, printed as plain frames otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};

use rebalanser::GroupStatus;

/// Resource entries shown at most; the rest are summarized in one line.
const MAX_SHOWN: usize = 60;

pub struct Screen {
    tty: bool,
    color: bool,
    /// Lines of the live frame currently on screen (TTY only).
    live: usize,
    /// The live frame last drawn: an identical one is not drawn again.
    drawn: Vec<String>,
}

impl Screen {
    pub fn new() -> Screen {
        let tty = std::io::stdout().is_terminal();
        Screen {
            tty,
            color: tty && std::env::var_os("NO_COLOR").is_none(),
            live: 0,
            drawn: Vec::new(),
        }
    }

    pub fn tty(&self) -> bool {
        self.tty
    }

    /// A permanent line (replaces the live frame, if one is shown).
    pub fn say(&mut self, line: impl AsRef<str>) {
        self.lines(&[line.as_ref().to_string()]);
    }

    /// Permanent lines (the live frame, if one is shown, is replaced by them).
    pub fn lines(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        self.clear(&mut out);
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }

    /// Redraws the live frame (a terminal only; elsewhere only permanent frames are shown).
    pub fn live(&mut self, lines: &[String]) {
        if !self.tty || (self.live > 0 && self.drawn == lines) {
            return;
        }
        self.drawn = lines.to_vec();
        let width = self.width().saturating_sub(1).max(20);
        let mut out = std::io::stdout().lock();
        self.clear(&mut out);
        // A wrapped line would break the redraw (it moves up by lines): cut them instead.
        for l in lines {
            let _ = writeln!(out, "{}", cut(l, width));
        }
        self.live = lines.len();
        let _ = out.flush();
    }

    fn clear(&mut self, out: &mut impl Write) {
        if self.live > 0 {
            // Up to the first line of the frame, then erase to the end of the screen.
            let _ = write!(out, "\x1b[{}F\x1b[J", self.live);
            self.live = 0;
        }
    }

    pub fn paint(&self, s: &str, style: Style) -> String {
        if !self.color {
            return s.to_string();
        }
        let code = match style {
            Style::Bold => "1",
            Style::Changed => "1;33",
            Style::Pending => "1;31",
            Style::Dim => "2",
            Style::Good => "1;32",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }

    /// Columns of the terminal, 100 when unknown.
    fn width(&self) -> usize {
        if let Some(w) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
            return w;
        }
        if self.tty {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one winsize into the valid `ws`.
            let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
            if rc == 0 && ws.ws_col > 0 {
                return ws.ws_col.into();
            }
        }
        100
    }

    /// The ownership table: one entry per resource (`resource owner token`), laid out in
    /// columns, then the members with their claim counts. `before` is who owned what when the
    /// step began: resources that changed owner are marked `*`, newly placed ones `+`.
    pub fn table(&self, s: &GroupStatus, before: &BTreeMap<String, Option<String>>) -> Vec<String> {
        struct Entry {
            id: String,
            owner: String,
            token: String,
            mark: &'static str,
            style: Option<Style>,
        }
        let mut entries = Vec::new();
        let pending: BTreeSet<String> = s
            .pending_handovers
            .iter()
            .map(|h| h.resource.to_string())
            .collect();
        for r in &s.resources {
            let id = r.id.to_string();
            let holder = r.claim.as_ref().map(|c| c.member.to_string());
            let (owner, style) = match (&holder, pending.contains(&id)) {
                (Some(h), false) => (h.clone(), None),
                (Some(h), true) => match &r.assigned_to {
                    Some(to) => (format!("{h}->{to}"), Some(Style::Pending)),
                    None => (format!("{h}->?"), Some(Style::Pending)),
                },
                (None, _) => match &r.assigned_to {
                    Some(to) => (format!("->{to}"), Some(Style::Pending)),
                    None => ("-".to_string(), Some(Style::Pending)),
                },
            };
            let (mark, style) = match (before.get(&id), &holder) {
                (Some(Some(b)), Some(h)) if b != h && style.is_none() => {
                    ("*", Some(Style::Changed))
                }
                (None | Some(None), Some(_)) if style.is_none() => ("+", Some(Style::Changed)),
                _ => (" ", style),
            };
            entries.push(Entry {
                id,
                owner,
                token: r
                    .claim
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |c| c.token.to_string()),
                mark,
                style,
            });
        }
        // Removed resources whose owner has not let go yet.
        for h in &s.pending_handovers {
            if let Some(c) = h.from.as_ref().filter(|_| h.to.is_none()) {
                if !s.resources.iter().any(|r| r.id == h.resource) {
                    entries.push(Entry {
                        id: h.resource.to_string(),
                        owner: format!("{}->x", c.member),
                        token: c.token.to_string(),
                        mark: " ",
                        style: Some(Style::Pending),
                    });
                }
            }
        }
        let hidden = entries.len().saturating_sub(MAX_SHOWN);
        entries.truncate(MAX_SHOWN);
        let w_id = entries.iter().map(|e| e.id.len()).max().unwrap_or(8).max(8);
        let w_owner = entries
            .iter()
            .map(|e| e.owner.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let w_token = entries
            .iter()
            .map(|e| e.token.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let cell = w_id + 1 + w_owner + 1 + w_token + 1;
        let gap = 4;
        let cols = ((self.width().saturating_sub(2) + gap) / (cell + gap)).clamp(1, 4);
        let rows = entries.len().div_ceil(cols).max(1);
        let mut lines = Vec::new();
        let header = format!(
            "{:<w_id$} {:<w_owner$} {:>w_token$} ",
            "resource", "owner", "token"
        );
        let n_cols = cols.min(entries.len().max(1));
        lines.push(format!(
            "  {}",
            self.paint(
                vec![header; n_cols].join(&" ".repeat(gap)).trim_end(),
                Style::Dim
            )
        ));
        for row in 0..rows {
            let mut line = String::from("  ");
            for col in 0..cols {
                let Some(e) = entries.get(col * rows + row) else {
                    break;
                };
                if col > 0 {
                    line.push_str(&" ".repeat(gap));
                }
                let text = format!(
                    "{:<w_id$} {:<w_owner$} {:>w_token$}{}",
                    e.id, e.owner, e.token, e.mark
                );
                match e.style {
                    Some(st) => line.push_str(&self.paint(&text, st)),
                    None => line.push_str(&text),
                }
            }
            lines.push(line.trim_end().to_string());
        }
        if hidden > 0 {
            lines.push(format!("  ... and {hidden} more"));
        }
        lines.push(self.members_line(s));
        let marks: BTreeSet<&str> = entries.iter().map(|e| e.mark).collect();
        let mut legend = Vec::new();
        if marks.contains("*") {
            legend.push("* moved in this step");
        }
        if marks.contains("+") {
            legend.push("+ newly placed");
        }
        if entries.iter().any(|e| e.owner.contains("->")) {
            legend.push("a->b handover under way");
        }
        if entries.iter().any(|e| e.owner.ends_with("->x")) {
            legend.push("x removed");
        }
        if !legend.is_empty() {
            lines.push(self.paint(&format!("  ({})", legend.join(", ")), Style::Dim));
        }
        lines
    }

    fn members_line(&self, s: &GroupStatus) -> String {
        let coordinator = s.coordinator.as_ref().map(|c| c.member.to_string());
        let mut parts: Vec<String> = s
            .members
            .iter()
            .map(|m| {
                let mut p = format!("{} {}", m.name, m.claimed);
                if coordinator.as_deref() == Some(m.name.as_str()) {
                    p.push_str(" (coordinator)");
                }
                if m.draining {
                    p.push_str(" (leaving)");
                }
                p
            })
            .collect();
        // Claims of sessions that are gone (a killed member) wait for the store to expire them.
        let mut orphaned: BTreeMap<String, usize> = BTreeMap::new();
        for r in &s.resources {
            if let Some(c) = r.claim.as_ref().filter(|c| !c.session_registered) {
                *orphaned.entry(c.member.to_string()).or_default() += 1;
            }
        }
        for (m, n) in orphaned {
            parts.push(self.paint(
                &format!("{m} {n} (gone; its claims expire with its session)"),
                Style::Pending,
            ));
        }
        if parts.is_empty() {
            parts.push("none".to_string());
        }
        format!("  members: {}", parts.join(", "))
    }
}

/// `s` cut to `width` visible characters (ANSI color sequences do not count).
fn cut(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut visible = 0;
    let mut chars = s.chars().peekable();
    let mut cut = false;
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            // CSI: ESC [ params final-byte.
            for c in chars.by_ref() {
                out.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        if visible == width {
            cut = true;
            continue;
        }
        visible += 1;
        out.push(c);
    }
    if cut && out.contains('\x1b') {
        out.push_str("\x1b[0m");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cut_counts_visible_characters_only() {
        assert_eq!(super::cut("abcdef", 3), "abc");
        assert_eq!(
            super::cut("\x1b[1mabcdef\x1b[0m", 3),
            "\x1b[1mabc\x1b[0m\x1b[0m"
        );
        assert_eq!(super::cut("ab", 3), "ab");
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Style {
    Bold,
    Changed,
    Pending,
    Dim,
    Good,
}
