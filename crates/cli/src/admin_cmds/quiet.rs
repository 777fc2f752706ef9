//! Quieter default logs for the admin commands: the ZooKeeper client logs every session it
//! opens and closes at INFO, which would bury a command's one-line answer (and break the
//! one-line error contract). Unless RUST_LOG is set (then the user's filter rules), the
//! runtime threads of these commands log through a wrapper around the global subscriber that
//! drops `zookeeper_client` events below WARN. Format and destination stay the global one's.
//!
//! (Lowering `zookeeper_client` to WARN in the CLI's default filter, `logging.rs`, would make
//! this module unnecessary.)

use tracing::span;
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Level, Metadata};

/// The dispatcher to install on the command's threads, or `None` to keep the global one.
pub fn dispatch() -> Option<Dispatch> {
    if std::env::var_os("RUST_LOG").is_some() {
        return None;
    }
    let global = tracing::dispatcher::get_default(Dispatch::clone);
    Some(Dispatch::new(Quiet(global)))
}

fn noisy(m: &Metadata<'_>) -> bool {
    // More verbose levels compare greater: INFO, DEBUG and TRACE are > WARN.
    *m.level() > Level::WARN && m.target().starts_with("zookeeper_client")
}

struct Quiet(Dispatch);

impl Subscriber for Quiet {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if noisy(m) {
            Interest::never()
        } else {
            self.0.register_callsite(m)
        }
    }
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        !noisy(m) && self.0.enabled(m)
    }
    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.0.new_span(span)
    }
    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.0.record(span, values)
    }
    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.0.record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        self.0.event(event)
    }
    fn enter(&self, span: &span::Id) {
        self.0.enter(span)
    }
    fn exit(&self, span: &span::Id) {
        self.0.exit(span)
    }
    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.0.clone_span(id)
    }
    fn try_close(&self, id: span::Id) -> bool {
        self.0.try_close(id)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
}
