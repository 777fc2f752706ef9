//! `rebalanser watch`: the status, redrawn whenever the group changes, changes highlighted.
//!
//! Driven by the store's change notifications (`Store::watch` on the group's key prefix);
//! `--interval` is the least time between two reads, so a burst of changes (a join is a dozen
//! writes) becomes one frame. A slow safety poll re-reads even without notifications, and
//! when the notification stream breaks the status is polled every `--interval` until it is
//! re-armed.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures::StreamExt;
use rebalanser::{GroupStatus, WatchEvent};

use super::common::{
    connect, duration_arg, emit, fmt_duration, one_line, Access, CliError, StoreArgs,
};
use super::view::{diff, to_text, Look, Marks};

/// Re-read at least this often even when no notification came.
const SAFETY_POLL: Duration = Duration::from_secs(2);

const EXAMPLE: &str = "\
Example:
  rebalanser watch --store zk://zk1:2181/rebalanser --group jobs
  rebalanser watch --store sqlite:///var/lib/rb.db -g jobs --interval 1s
  rebalanser watch --store zk://zk1:2181/rebalanser -g jobs --frames 5 > frames.txt

On a terminal the screen is redrawn in place; otherwise each frame is appended, starting with
a line '--- frame N (+SECONDS s) ---'. A frame is drawn when the group changes (and once at the
start); rows whose ownership changed since the previous frame are marked '*' (and bold on a
terminal), and the 'changes:' line lists what moved. Ctrl-C quits.";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Color {
    /// When stdout is a terminal and NO_COLOR is not set.
    Auto,
    /// Even when stdout is not a terminal.
    Always,
    /// Plain text.
    Never,
}

/// The status, redrawn live, with ownership changes highlighted.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLE)]
pub struct WatchArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Least time between two reads of the group (e.g. 100ms, 1s); the poll period when the
    /// store's change notifications are unavailable.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "250ms",
        allow_hyphen_values = true
    )]
    interval: String,
    /// Draw one frame and exit.
    #[arg(long)]
    once: bool,
    /// Exit after drawing N frames.
    #[arg(long, value_name = "N", conflicts_with = "once",
          value_parser = clap::value_parser!(u64).range(1..))]
    frames: Option<u64>,
    /// Colours and bold for changed rows.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub async fn run(a: WatchArgs) -> Result<(), CliError> {
    let interval = duration_arg("--interval", &a.interval)?;
    let conn = connect(&a.store, Access::Read).await?;
    let tty = std::io::stdout().is_terminal();
    let color = match a.color {
        Color::Auto => tty && std::env::var_os("NO_COLOR").is_none(),
        Color::Always => true,
        Color::Never => false,
    };
    let limit = if a.once { Some(1) } else { a.frames };
    // The first read decides: a missing group or an unreachable store ends the command.
    let first = conn.bounded(conn.admin.status()).await?;
    let mut screen = Screen {
        tty,
        color,
        frames: 0,
        start: Instant::now(),
        store: conn.store.clone(),
    };
    let first_marks = Marks {
        changes: vec!["(first frame)".to_string()],
        ..Marks::default()
    };
    screen.draw(&first, &first_marks)?;
    if limit.is_some_and(|n| screen.frames >= n) {
        return Ok(());
    }

    let store = conn.admin.store().clone();
    let prefix = group_prefix(conn.admin.group().as_str());
    let mut events = Some(store.watch(prefix.clone()));
    let mut rearm_at: Option<Instant> = None;
    let mut prev = first;
    let mut dirty = false;
    let mut last_read = Instant::now();
    let mut next_poll = last_read + SAFETY_POLL.max(interval);
    let mut failing: Option<String> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let read_at = if dirty {
            (last_read + interval).min(next_poll)
        } else {
            next_poll
        };
        let wake = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            ev = next_event(&mut events) => Wake::Event(ev),
            _ = tokio::time::sleep_until(read_at.into()) => Wake::Read,
        };
        match wake {
            Wake::Event(Some(WatchEvent::Changed | WatchEvent::Keys(_) | WatchEvent::Reset)) => {
                dirty = true
            }
            Wake::Event(None) => {
                // The notification stream broke: poll until it is re-armed.
                events = None;
                rearm_at = Some(Instant::now() + interval);
                dirty = true;
            }
            Wake::Read => {
                let now = Instant::now();
                if events.is_none() && rearm_at.is_some_and(|t| t <= now) {
                    events = Some(store.watch(prefix.clone()));
                    rearm_at = None;
                }
                last_read = now;
                dirty = false;
                let poll = if events.is_some() {
                    SAFETY_POLL.max(interval)
                } else {
                    interval
                };
                next_poll = now + poll;
                // Ctrl-C must not wait for a slow store.
                let read = tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    r = conn.bounded(conn.admin.status()) => r,
                };
                match read {
                    Ok(st) => {
                        if failing.take().is_some() {
                            eprintln!("rebalanser: the store answers again");
                        }
                        if st != prev {
                            let marks = diff(&prev, &st);
                            screen.draw(&st, &marks)?;
                            prev = st;
                            if limit.is_some_and(|n| screen.frames >= n) {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        let msg = one_line(&e.to_string());
                        if failing.as_deref() != Some(msg.as_str()) {
                            eprintln!(
                                "rebalanser: {msg} (still watching: retrying every {})",
                                fmt_duration(interval)
                            );
                            failing = Some(msg);
                        }
                        next_poll = Instant::now() + interval;
                    }
                }
            }
        }
    }
}

enum Wake {
    Event(Option<WatchEvent>),
    Read,
}

/// The next notification, or never when there is no stream.
async fn next_event(
    events: &mut Option<futures::stream::BoxStream<'static, WatchEvent>>,
) -> Option<WatchEvent> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The key prefix of a group: `encode_component(group) + "/"` — the key layout's bijective
/// encoding (every byte outside `[A-Za-z0-9_-]` as `%XX`, upper-case hex). Should it ever
/// drift from the layout, the watch only loses its notifications: the safety poll still
/// re-reads every few seconds.
fn group_prefix(group: &str) -> String {
    let mut out = String::with_capacity(group.len() + 1);
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('/');
    out
}

struct Screen {
    tty: bool,
    color: bool,
    frames: u64,
    start: Instant,
    store: String,
}

impl Screen {
    fn draw(&mut self, st: &GroupStatus, marks: &Marks) -> Result<(), CliError> {
        self.frames += 1;
        let look = Look {
            marks: Some(marks),
            color: self.color,
        };
        let body = to_text(st, &self.store, &look);
        let at = self.start.elapsed().as_secs_f64();
        if self.tty {
            // Home, then every line followed by clear-to-end-of-line, then clear below: no
            // flicker, nothing left over from a longer previous frame.
            let mut s = String::from(if self.frames == 1 {
                "\x1b[2J\x1b[H"
            } else {
                "\x1b[H"
            });
            let header = format!(
                "rebalanser watch  frame {}  +{at:.1}s  (redrawn on change; Ctrl-C quits)",
                self.frames
            );
            for line in std::iter::once(header.as_str()).chain(body.lines()) {
                s.push_str(line);
                s.push_str("\x1b[K\n");
            }
            s.push_str("\x1b[J");
            emit(&s)
        } else {
            let sep = if self.frames == 1 { "" } else { "\n" };
            emit(&format!(
                "{sep}--- frame {} (+{at:.1}s) ---\n{body}",
                self.frames
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_encodes_like_the_layout() {
        assert_eq!(group_prefix("jobs"), "jobs/");
        assert_eq!(group_prefix("it.group"), "it%2Egroup/");
        assert_eq!(group_prefix("a b/é"), "a%20b%2F%C3%A9/");
    }
}
