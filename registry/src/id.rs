//! Session identifiers: the [`SessionId`] newtype and the rules that make an id valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The rule in words; every [`InvalidSessionId`] message ends with it.
const RULE: &str = "only lowercase letters a-z, digits 0-9 and '-' are allowed \
                    (1-63 characters, starting and ending with a letter or digit)";

const EMPTY: &str = "it is empty";
const BAD_CHAR: &str = "it contains a character that is not allowed";
const TOO_LONG: &str = "it is longer than 63 characters";
const LEADING_DASH: &str = "it starts with '-'";
const TRAILING_DASH: &str = "it ends with '-'";

/// The name of one session, e.g. `build-42`.
///
/// Alphabet: 1 to 63 characters, each a lowercase ASCII letter `a-z`, a digit `0-9` or
/// `-`; the first and last character must be a letter or digit. Such an id is a valid
/// DNS label (it appears in the daemon certificate's DNS name), a valid fragment of a
/// Docker or Kubernetes object name, and a single safe path component (no `/`, no `.`,
/// so never `.` or `..`) under `/sessions/<id>`.
///
/// Serializes as a plain string; deserializing validates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Longest accepted id, in characters (the DNS label limit).
    pub const MAX_LEN: usize = 63;

    /// Validates `id` against the alphabet described on [`SessionId`].
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidSessionId> {
        let id = id.into();
        match check(&id) {
            Ok(()) => Ok(Self(id)),
            Err(reason) => Err(InvalidSessionId { id, reason }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn check(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err(EMPTY)
    } else if !id.chars().all(allowed) {
        Err(BAD_CHAR)
    } else if id.len() > SessionId::MAX_LEN {
        Err(TOO_LONG)
    } else if id.starts_with('-') {
        Err(LEADING_DASH)
    } else if id.ends_with('-') {
        Err(TRAILING_DASH)
    } else {
        Ok(())
    }
}

/// A string that is not a valid [`SessionId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSessionId {
    /// The refused input.
    pub id: String,
    /// What is wrong with it, e.g. "it starts with '-'".
    pub reason: &'static str,
}

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid session id {:?}: ", self.id)?;
        let bad = self.id.chars().enumerate().find(|&(_, c)| !allowed(c));
        match (self.reason, bad) {
            (BAD_CHAR, Some((pos, c))) => {
                write!(f, "character {c:?} at position {} is not allowed", pos + 1)?
            }
            (TOO_LONG, _) => write!(f, "it is {} characters long", self.id.chars().count())?,
            (reason, _) => f.write_str(reason)?,
        }
        write!(f, "; {RULE}")
    }
}

impl std::error::Error for InvalidSessionId {}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> Self {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let max = "a".repeat(63);
        for ok in [
            "a",
            "0",
            "build-42",
            "a-b-c",
            "9lives",
            "x--y",
            max.as_str(),
        ] {
            let id: SessionId = ok.parse().unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
        }
    }

    #[test]
    fn refuses_invalid_ids_with_reason() {
        let long = "a".repeat(64);
        let cases: &[(&str, &str)] = &[
            ("", "it is empty"),
            ("Foo", "character 'F' at position 1 is not allowed"),
            ("..", "character '.' at position 1 is not allowed"),
            ("a/b", "character '/' at position 2 is not allowed"),
            (
                "caf\u{e9}",
                "character '\u{e9}' at position 4 is not allowed",
            ),
            ("a b", "character ' ' at position 2 is not allowed"),
            ("a\nb", "character '\\n' at position 2 is not allowed"),
            (&long, "it is 64 characters long"),
            ("-abc", "it starts with '-'"),
            ("abc-", "it ends with '-'"),
            ("-", "it starts with '-'"),
        ];
        for (input, reason) in cases {
            let err = SessionId::new(*input).unwrap_err();
            assert_eq!(err.id, *input);
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input:?}: {msg}");
            assert!(msg.ends_with(RULE), "{msg}");
        }
        assert_eq!(
            SessionId::new("Foo").unwrap_err().to_string(),
            "invalid session id \"Foo\": character 'F' at position 1 is not allowed; \
             only lowercase letters a-z, digits 0-9 and '-' are allowed \
             (1-63 characters, starting and ending with a letter or digit)"
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SessionId::new("s-1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"s-1\"");
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        let err = serde_json::from_str::<SessionId>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("invalid session id"), "{err}");
    }
}
