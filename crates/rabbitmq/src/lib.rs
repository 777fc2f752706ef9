//! RabbitMQ consumer groups that keep per-key order through rebalances: the job Rebalanser was
//! first built for.
//!
//! RabbitMQ has no consumer groups. To scale out while keeping the order of messages per key, a
//! publisher routes by key through a consistent-hash exchange onto N durable queues
//! ([`topology::setup`]), and each queue must be consumed by exactly one consumer at a time,
//! reassigned when consumers come and go. The queues are the group's resources; a
//! [`QueueGroup`] consumes every queue its member leases and gives a queue back only once
//! nothing of it is in flight:
//!
//! 1. on a lease: open a channel, set the prefetch, consume the queue with an **exclusive**
//!    consumer (the broker refuses a second consumer on the queue: a guard that does not rest
//!    on the lease) and manual acknowledgements;
//! 2. each delivery goes to the application's handler, one at a time per queue (order), only
//!    while the lease is valid; `Ok` acks it, `Err` ends this consumption (see below);
//! 3. on a revoke: let the delivery in the handler finish and ack it, then close the channel —
//!    the broker cancels the consumer and puts every delivery not acked (the prefetched rest)
//!    back at its place in the queue, in one step — and only then release the lease, so the
//!    next owner starts exactly after the last message this one processed. No `basic.cancel`
//!    before the close: it would drop the exclusive consumer while unacked deliveries still sit
//!    on the channel. A close that fails or hangs (250 ms) leaves the channel to the broker, which
//!    drops it with the connection, requeueing first; until then its exclusive consumer keeps
//!    the next owner out, so the lease is released anyway. A panicking handler counts as a
//!    failed one.
//!
//! **Failures.** A handler `Err` closes the channel (the failed delivery and the prefetched
//! rest go back, in order, marked redelivered), waits a back-off and consumes again; after
//! `unhealthy_after` failures in a row the queue is reported unhealthy
//! ([`rebalanser::Lease::report_unhealthy`]) and moves to another member. A lost connection
//! (the broker restarted, the network cut) is redialled with a back-off; deliveries not acked
//! are redelivered by the broker and the handler sees [`Message::redelivered`]. A lease that
//! stops being valid (the member lost its session) stops the handler's next delivery: the
//! handler should still check [`Message::lease`] (or pass [`Message::token`] to its storage,
//! which must refuse an older token) before a side effect that must not happen twice.
//!
//! **Why N stays fixed.** The exchange maps a key to a queue by hashing it onto the ring of
//! bindings; adding or removing a queue remaps some keys to another queue while messages for
//! them may still wait in the old one, and two queues consumed by two members would then hold
//! one key: its order is lost. Change N only with the publishers stopped and every queue
//! drained (or with a new exchange and queue set, switching publishers over once the old
//! queues are empty).

mod connector;
mod consumer;
pub mod topology;
pub mod verify;

pub use consumer::{HandlerError, Message, QueueGroup};
pub use lapin;

/// What went wrong, with the caller's remedy in each variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The AMQP URL does not parse; fix the URL.
    #[error("bad AMQP URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The broker refused or failed an operation (unreachable, access refused, a plugin
    /// missing); the message names it.
    #[error("RabbitMQ: {0}")]
    Amqp(String),
    /// The Rebalanser side (store or group) failed.
    #[error(transparent)]
    Group(#[from] rebalanser::Error),
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Error {
        Error::Amqp(e.to_string())
    }
}

/// Checks an AMQP URL without connecting, naming what is wrong. Credentials are never echoed.
pub fn check_url(url: &str) -> Result<(), Error> {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::BadUrl {
            url: redact(url),
            // The parser's message may quote the whole input, password included.
            reason: e.replace(url, &redact(url)),
        }),
    }
}

/// `url` with any password replaced by `***`, for messages and logs: whatever follows
/// `user:` up to the last `@`, with or without `//` after the scheme.
pub fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let start = match url.find("://") {
        Some(i) if i < at => i + 3,
        _ => url.find(':').map_or(0, |i| i + 1),
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://bob:secret@h:5672/%2f"),
            "amqp://bob:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact("amqp://bob@h"), "amqp://bob@h");
        assert_eq!(redact("amqp:bob:secret@h"), "amqp:bob:***@h");
        assert_eq!(redact("amqp://bob:s@cr@t@h/v"), "amqp://bob:***@h/v");
    }

    #[test]
    fn a_bad_url_is_a_typed_error_without_the_password() {
        for url in ["amqp://bob:secret@h:notaport/%2f", "amqp:bob:secret@h"] {
            let e = check_url(url).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, Error::BadUrl { .. }), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        check_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
    }
}
