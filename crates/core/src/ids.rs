//! Identifiers, counters and the logical clock. Newtypes so that a member name can never be
//! passed where a resource id is expected, and a token never compared with an epoch.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest id (in UTF-8 bytes) accepted for a group, member or resource. Keys stay far below
/// every store's key limit even after percent-encoding (×3).
pub const MAX_ID_BYTES: usize = 512;

/// Why an id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} id {id:?} contains the control character {ch:?} at byte {at}")]
    ControlChar {
        kind: &'static str,
        id: String,
        ch: char,
        at: usize,
    },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if let Some((at, ch)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::ControlChar {
            kind,
            id: s.to_string(),
            ch,
            at,
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id: non-empty, at most [`MAX_ID_BYTES`], no control
            /// characters. Ids are compared bytewise; no Unicode normalisation is applied.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

string_id!(
    /// A group: one set of members sharing one set of resources.
    GroupId,
    "group"
);
string_id!(
    /// A member's name. Names are for humans; ownership is always by session (DESIGN §8 rule 1).
    MemberId,
    "member"
);
string_id!(
    /// An opaque resource id (a queue name, a bucket prefix, a shard number...).
    ResourceId,
    "resource"
);

/// A store session: the unit of liveness and of ownership of session-owned keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{:x}", self.0)
    }
}

/// The coordinator's epoch. Informational for leases; it fences only assignment writes.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A fencing token: one unsigned integer that strictly grows per resource across owners and
/// across the group's generations (DESIGN §4.6, §8 rule 9). Its value is
/// `generation × 2^64 + revision`, where `revision` is the store revision that created the
/// claim and `generation` the group's token generation (bumped after a restore from backup or
/// a store migration, when revisions may start over). A resource accepts a writer whose token
/// is at least the largest it has seen, as plain integers.
///
/// While the generation is 0 (never bumped) a token is the claim's revision and fits a `u64`;
/// after a bump it needs more than 64 bits: store it as a decimal (`numeric(39)`), as a
/// 128-bit integer, or as the pair ([`Token::generation`], [`Token::revision`]) compared in
/// that order. It names a claim instance, not a lease: a lease granted again under the same
/// claim (after a resume) carries the same token.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Token(u128);

impl Token {
    pub const fn new(generation: u64, revision: u64) -> Token {
        Token(((generation as u128) << 64) | revision as u128)
    }
    /// The integer itself.
    pub const fn get(self) -> u128 {
        self.0
    }
    /// The group's token generation when the claim was proved.
    pub const fn generation(self) -> u64 {
        (self.0 >> 64) as u64
    }
    /// The store revision that created the claim.
    pub const fn revision(self) -> u64 {
        // Truncation keeps the low 64 bits: the revision, by construction.
        self.0 as u64
    }
}

impl From<Token> for u128 {
    fn from(t: Token) -> u128 {
        t.0
    }
}

impl From<u128> for Token {
    fn from(v: u128) -> Token {
        Token(v)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Token {
    type Err = std::num::ParseIntError;
    /// Parses the decimal form [`Token`]'s `Display` prints (`REBALANSER_TOKEN`).
    fn from_str(s: &str) -> Result<Token, Self::Err> {
        s.parse::<u128>().map(Token)
    }
}

/// Identifies one lease handed to the application, unique within a member's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LeaseId(pub u64);

/// Identifies one store operation emitted by the core; its reply carries the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OpId(pub u64);

/// Logical time, in nanoseconds since an origin the driver chooses. The core never reads a
/// clock: the driver passes `now` into every handler.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub fn from_duration(d: Duration) -> Time {
        Time(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(nanos(d)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(nanos(d)))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:03}s",
            self.0 / 1_000_000_000,
            (self.0 / 1_000_000) % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_input_with_a_reason() {
        assert_eq!(
            ResourceId::new(""),
            Err(IdError::Empty { kind: "resource" })
        );
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(
            ResourceId::new(long),
            Err(IdError::TooLong { len: 513, .. })
        ));
        let e = ResourceId::new("a\nb").unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
        assert!(ResourceId::new("café/q 1.x").is_ok());
        assert!(MemberId::new("x".repeat(MAX_ID_BYTES)).is_ok());
    }

    #[test]
    fn deserializing_an_invalid_id_fails() {
        assert!(serde_json::from_str::<ResourceId>("\"\"").is_err());
        assert!(serde_json::from_str::<ResourceId>("\"ok\"").is_ok());
    }

    #[test]
    fn ids_display_as_logged() {
        // Log lines and `status` output carry these forms; tools parse them.
        assert_eq!(SessionId(0x2a).to_string(), "s2a");
        assert_eq!(Epoch(7).to_string(), "7");
        assert_eq!(Token::new(0, 58).to_string(), "58");
        assert_eq!(Time(61_234_567_890).to_string(), "61.234s");
    }

    #[test]
    fn tokens_order_as_integers_by_generation_then_revision() {
        let old = Token::new(0, u64::MAX);
        let bumped = Token::new(1, 1);
        assert!(
            bumped > old,
            "a bumped generation beats every revision before it"
        );
        assert!(Token::new(1, 2) > bumped);
        assert_eq!(bumped.get(), (1u128 << 64) + 1);
        assert_eq!(bumped.to_string(), "18446744073709551617");
        assert_eq!((bumped.generation(), bumped.revision()), (1, 1));
        assert_eq!("18446744073709551617".parse::<Token>(), Ok(bumped));
        assert!("1.2".parse::<Token>().is_err());
        assert_eq!(
            serde_json::to_string(&bumped).unwrap(),
            "18446744073709551617"
        );
        assert_eq!(
            serde_json::from_str::<Token>("58").unwrap(),
            Token::new(0, 58)
        );
    }

    #[test]
    fn time_arithmetic_saturates_and_round_trips() {
        let d = Duration::from_millis(1500);
        let t = Time::from_duration(d);
        assert_eq!(t, Time(1_500_000_000));
        assert_eq!(t.as_duration(), d);
        assert_eq!(Time::from_duration(Duration::MAX), Time::MAX);
        assert_eq!((t + d).saturating_since(t), d);
        assert_eq!(t.saturating_since(t + d), Duration::ZERO);
        assert_eq!(Time::MAX + d, Time::MAX);
        assert_eq!(Time::ZERO - d, Time::ZERO);
        assert_eq!((t + d) - d, t);
    }
}
